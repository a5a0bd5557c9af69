"""GPT-2 (huggingface/transformers: models/gpt2/modeling_gpt2.py), current and older eager spellings.

- eager_attention_forward (transformers 5.x): `matmul(q, k.transpose(-1, -2)) * scaling`, additive mask.
- GPT2Attention._attn (4.3x-4.4x): divide by `torch.full([], value.size(-1) ** 0.5, ...)`, then
  `where(causal_bool_buffer, w, full([], finfo.min))`, then the additive padding mask.
- GPT2Attention._attn (4.1x-4.2x): `/ (value.size(-1) ** 0.5)`, `where(causal, w, self.masked_bias)` with
  a -1e4 buffer, `nn.Softmax(dim=-1)(w)`.
- GPT2Attention._upcast_and_reordered_attn (reorder_and_upcast_attn=True): fp32
  `baddbmm(empty, q, k, beta=0, alpha=1/sqrt(d)/(layer_idx+1))`.

Projections use a small Conv1D (transformers' pytorch_utils.Conv1D: addmm with a (nx, nf) weight).
"""
import math

import torch
import torch.nn as nn

from . import Entry, Expect, hidden, padding_mask

B, L, D, H, E = 2, 8, 64, 4, 16


def causal_padding_mask(b=B, l=L, s=L):
    """Additive (b,1,l,s): finfo.min above the diagonal and on the padded keys of batch 1, 0 elsewhere."""
    m = padding_mask(b, l, s)
    upper = torch.ones(l, s, dtype=torch.bool).triu(1)
    return m.masked_fill(upper, torch.finfo(torch.float32).min)


class Conv1D(nn.Module):
    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.15)
        self.bias = nn.Parameter(torch.randn(nf) * 0.02)

    def forward(self, x):
        size_out = x.size()[:-1] + (self.nf,)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)


def eager_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0):
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1)
    attn_weights = attn_weights.type(value.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value)
    attn_output = attn_output.transpose(1, 2)
    return attn_output, attn_weights


class GPT2AttentionBase(nn.Module):
    def __init__(self, embed_dim=D, num_heads=H, max_positions=16, attn_pdrop=0.0, layer_idx=0,
                 scale_attn_by_inverse_layer_idx=False):
        super().__init__()
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.split_size = embed_dim
        self.layer_idx = layer_idx
        self.scale_attn_weights = True
        self.scale_attn_by_inverse_layer_idx = scale_attn_by_inverse_layer_idx
        self.is_cross_attention = False
        self.scaling = self.head_dim ** -0.5
        if scale_attn_by_inverse_layer_idx:
            self.scaling /= float(layer_idx + 1)
        self.register_buffer(
            "bias", torch.tril(torch.ones((max_positions, max_positions), dtype=torch.bool)).view(
                1, 1, max_positions, max_positions), persistent=False)
        self.register_buffer("masked_bias", torch.tensor(-1e4), persistent=False)
        self.c_attn = Conv1D(3 * embed_dim, embed_dim)
        self.c_proj = Conv1D(embed_dim, embed_dim)
        self.attn_dropout = nn.Dropout(attn_pdrop)

    def heads(self, hidden_states):
        b, l = hidden_states.shape[0], hidden_states.shape[1]
        q, k, v = self.c_attn(hidden_states).split(self.split_size, dim=2)
        q = q.view(b, l, -1, self.head_dim).transpose(1, 2)
        k = k.view(b, l, -1, self.head_dim).transpose(1, 2)
        v = v.view(b, l, -1, self.head_dim).transpose(1, 2)
        return q, k, v

    def merge(self, attn_output, hidden_states):
        b, l = hidden_states.shape[0], hidden_states.shape[1]
        attn_output = attn_output.reshape(b, l, -1).contiguous()
        return self.c_proj(attn_output)


class GPT2Attention(GPT2AttentionBase):
    """transformers 5.x GPT2Attention.forward with the eager interface."""

    def forward(self, hidden_states, attention_mask=None):
        q, k, v = self.heads(hidden_states)
        attn_output, _ = eager_attention_forward(
            self, q, k, v, attention_mask, scaling=self.scaling,
            dropout=self.attn_dropout.p if self.training else 0.0)
        return self.merge(attn_output, hidden_states)


class GPT2AttentionFullDivisor(GPT2AttentionBase):
    """transformers 4.3x-4.4x GPT2Attention._attn: torch.full divisor and where(causal, w, full(finfo.min))."""

    def _attn(self, query, key, value, attention_mask=None):
        attn_weights = torch.matmul(query, key.transpose(-1, -2))
        if self.scale_attn_weights:
            attn_weights = attn_weights / torch.full(
                [], value.size(-1) ** 0.5, dtype=attn_weights.dtype, device=attn_weights.device)
        if not self.is_cross_attention:
            query_length, key_length = query.size(-2), key.size(-2)
            causal_mask = self.bias[:, :, key_length - query_length: key_length, :key_length]
            mask_value = torch.finfo(attn_weights.dtype).min
            mask_value = torch.full([], mask_value, dtype=attn_weights.dtype, device=attn_weights.device)
            attn_weights = torch.where(causal_mask, attn_weights.to(attn_weights.dtype), mask_value)
        if attention_mask is not None:
            causal_mask = attention_mask[:, :, :, : key.shape[-2]]
            attn_weights = attn_weights + causal_mask
        attn_weights = nn.functional.softmax(attn_weights, dim=-1)
        attn_weights = attn_weights.type(value.dtype)
        attn_weights = self.attn_dropout(attn_weights)
        attn_output = torch.matmul(attn_weights, value)
        return attn_output.transpose(1, 2), attn_weights

    def forward(self, hidden_states, attention_mask=None):
        q, k, v = self.heads(hidden_states)
        attn_output, _ = self._attn(q, k, v, attention_mask)
        return self.merge(attn_output, hidden_states)


class GPT2CrossAttentionFullDivisor(GPT2AttentionFullDivisor):
    """transformers 4.3x-4.4x GPT2Attention with is_cross_attention=True: q_attn on the decoder states,
    c_attn (2 x embed) on the encoder states; _attn skips the causal where."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.is_cross_attention = True
        self.c_attn = Conv1D(2 * self.embed_dim, self.embed_dim)
        self.q_attn = Conv1D(self.embed_dim, self.embed_dim)

    def forward(self, hidden_states, encoder_hidden_states, encoder_attention_mask):
        b, l, s = hidden_states.shape[0], hidden_states.shape[1], encoder_hidden_states.shape[1]
        q = self.q_attn(hidden_states).view(b, l, -1, self.head_dim).transpose(1, 2)
        k, v = self.c_attn(encoder_hidden_states).split(self.split_size, dim=2)
        k = k.view(b, s, -1, self.head_dim).transpose(1, 2)
        v = v.view(b, s, -1, self.head_dim).transpose(1, 2)
        attn_output, _ = self._attn(q, k, v, encoder_attention_mask)
        return self.merge(attn_output, hidden_states)


class GPT2AttentionMaskedBias(GPT2AttentionBase):
    """transformers 4.1x-4.2x GPT2Attention._attn: python-float divisor, where(causal, w, masked_bias=-1e4)."""

    def _attn(self, query, key, value, attention_mask=None):
        attn_weights = torch.matmul(query, key.transpose(-1, -2))
        if self.scale_attn_weights:
            attn_weights = attn_weights / (value.size(-1) ** 0.5)
        if not self.is_cross_attention:
            query_length, key_length = query.size(-2), key.size(-2)
            causal_mask = self.bias[:, :, key_length - query_length: key_length, :key_length].bool()
            attn_weights = torch.where(causal_mask, attn_weights, self.masked_bias.to(attn_weights.dtype))
        if attention_mask is not None:
            attn_weights = attn_weights + attention_mask
        attn_weights = nn.Softmax(dim=-1)(attn_weights)
        attn_weights = attn_weights.type(value.dtype)
        attn_weights = self.attn_dropout(attn_weights)
        attn_output = torch.matmul(attn_weights, value)
        return attn_output.transpose(1, 2), attn_weights

    def forward(self, hidden_states, attention_mask=None):
        q, k, v = self.heads(hidden_states)
        attn_output, _ = self._attn(q, k, v, attention_mask)
        return self.merge(attn_output, hidden_states)


class GPT2AttentionUpcastReordered(GPT2AttentionBase):
    """transformers 4.x GPT2Attention._upcast_and_reordered_attn (reorder_and_upcast_attn=True)."""

    def _upcast_and_reordered_attn(self, query, key, value, attention_mask=None):
        bsz, num_heads, q_seq_len, dk = query.size()
        _, _, k_seq_len, _ = key.size()
        attn_weights = torch.empty(bsz * num_heads, q_seq_len, k_seq_len, dtype=torch.float32, device=query.device)
        scale_factor = 1.0
        if self.scale_attn_weights:
            scale_factor /= float(value.size(-1)) ** 0.5
        if self.scale_attn_by_inverse_layer_idx:
            scale_factor /= float(self.layer_idx + 1)
        with torch.autocast(query.device.type, enabled=False):
            q, k = query.reshape(-1, q_seq_len, dk), key.transpose(-1, -2).reshape(-1, dk, k_seq_len)
            attn_weights = torch.baddbmm(attn_weights, q.float(), k.float(), beta=0, alpha=scale_factor)
            attn_weights = attn_weights.reshape(bsz, num_heads, q_seq_len, k_seq_len)
        if not self.is_cross_attention:
            query_length, key_length = query.size(-2), key.size(-2)
            causal_mask = self.bias[:, :, key_length - query_length: key_length, :key_length]
            mask_value = torch.finfo(attn_weights.dtype).min
            mask_value = torch.tensor(mask_value, dtype=attn_weights.dtype).to(attn_weights.device)
            attn_weights = torch.where(causal_mask, attn_weights, mask_value)
        if attention_mask is not None:
            attn_weights = attn_weights + attention_mask
        attn_weights = nn.functional.softmax(attn_weights, dim=-1)
        attn_weights = attn_weights.type(value.dtype)
        attn_weights = self.attn_dropout(attn_weights)
        attn_output = torch.matmul(attn_weights, value)
        return attn_output.transpose(1, 2), attn_weights

    def forward(self, hidden_states, attention_mask=None):
        q, k, v = self.heads(hidden_states)
        attn_output, _ = self._upcast_and_reordered_attn(q, k, v, attention_mask)
        return self.merge(attn_output, hidden_states)


class OpenAIGPTAttention(nn.Module):
    """transformers models/openai/modeling_openai.py Attention._attn (GPT-1): k is split pre-transposed,
    the causal mask is a float 0/1 buffer applied arithmetically: `w * b + -1e4 * (1 - b)`."""

    def __init__(self, embed_dim=D, num_heads=H, n_ctx=16):
        super().__init__()
        self.n_head, self.split_size, self.scale = num_heads, embed_dim, True
        self.register_buffer("bias", torch.tril(torch.ones(n_ctx, n_ctx)).view(1, 1, n_ctx, n_ctx), persistent=False)
        self.c_attn = Conv1D(3 * embed_dim, embed_dim)
        self.c_proj = Conv1D(embed_dim, embed_dim)
        self.attn_dropout = nn.Dropout(0.0)

    def _attn(self, q, k, v, attention_mask=None):
        w = torch.matmul(q, k)
        if self.scale:
            w = w / math.sqrt(v.size(-1))
        b = self.bias[:, :, : w.size(-2), : w.size(-1)]
        w = w * b + -1e4 * (1 - b)
        if attention_mask is not None:
            w = w + attention_mask
        w = nn.functional.softmax(w, dim=-1)
        w = self.attn_dropout(w)
        return torch.matmul(w, v)

    def split_heads(self, x, k=False):
        x = x.view(*x.size()[:-1], self.n_head, x.size(-1) // self.n_head)
        return x.permute(0, 2, 3, 1) if k else x.permute(0, 2, 1, 3)

    def forward(self, x, attention_mask=None):
        query, key, value = self.c_attn(x).split(self.split_size, dim=2)
        a = self._attn(self.split_heads(query), self.split_heads(key, k=True), self.split_heads(value), attention_mask)
        a = a.permute(0, 2, 1, 3).contiguous()
        return self.c_proj(a.view(*a.size()[:-2], a.size(-2) * a.size(-1)))


def _x_mask():
    return hidden(B, L, D, seed=1) + (causal_padding_mask(),)


def _x_pad():
    return hidden(B, L, D, seed=2) + (padding_mask(B, L, L),)


def _x_cross():
    return hidden(B, L, D, seed=4) + hidden(B, 6, D, seed=5) + (padding_mask(B, L, 6),)


def _x():
    return hidden(B, L, D, seed=3)


SRC = "huggingface/transformers: src/transformers/models/gpt2/modeling_gpt2.py: "
ENTRIES = [
    Entry("gpt2/eager_attention_forward", SRC + "eager_attention_forward (5.x), `* scaling` + additive mask",
          lambda: GPT2Attention().eval(), _x_mask,
          (Expect(scale=0.25, mask="float"),)),
    Entry("gpt2/eager_attention_forward_train", SRC + "eager_attention_forward, attn_pdrop=0.1 in training",
          lambda: GPT2Attention(attn_pdrop=0.1).train(), _x_mask,
          (Expect(scale=0.25, mask="float", dropout_p=0.1),), training=True),
    Entry("gpt2/attn_full_divisor_where_finfo_plus_mask",
          SRC + "GPT2Attention._attn (4.3x-4.4x): / torch.full([], v.size(-1)**0.5), where(causal, w, finfo.min) "
          "+ padding mask",
          lambda: GPT2AttentionFullDivisor().eval(), _x_pad,
          (Expect(scale=0.25, mask="float"),), traceable=False,
          notes="slicing a buffer by sizes is not symbolically traceable"),
    Entry("gpt2/attn_full_divisor_where_finfo_only",
          SRC + "GPT2Attention._attn (4.3x-4.4x) with attention_mask=None: the finfo.min causal fill alone",
          lambda: GPT2AttentionFullDivisor().eval(), _x,
          (Expect(scale=0.25, mask="none", is_causal=True),), traceable=False,
          notes="fill finfo(float32).min (>= 2**44) with no additive term: float mask"),
    Entry("gpt2/cross_attention_full_divisor",
          SRC + "GPT2Attention._attn (4.3x-4.4x), is_cross_attention=True: / torch.full([], v.size(-1)**0.5) "
          "+ encoder padding mask",
          lambda: GPT2CrossAttentionFullDivisor().eval(), _x_cross,
          (Expect(scale=0.25, mask="float"),)),
    Entry("gpt2/attn_masked_bias_where",
          SRC + "GPT2Attention._attn (4.1x-4.2x): / (v.size(-1)**0.5), where(causal, w, masked_bias=-1e4), "
          "nn.Softmax(dim=-1)",
          lambda: GPT2AttentionMaskedBias().eval(), _x,
          (Expect(scale=0.25, mask="none", is_causal=True, verdict="causal"),), traceable=False,
          notes="the -1e4 fill is a buffer (a graph input under Dynamo): its value is read at rewrite time "
                "like the causal buffer, and the pair folds to is_causal"),
    Entry("gpt2/attn_masked_bias_where_plus_mask",
          SRC + "GPT2Attention._attn (4.1x-4.2x): where(causal, w, -1e4) + additive padding mask",
          lambda: GPT2AttentionMaskedBias().eval(), _x_pad,
          None, reason="a finite masked fill combined with other masks", traceable=False,
          notes="a known miss: a finite (-1e4) fill under an additive padding mask; eager's fully masked rows "
                "depend on how the two combine, so it stays eager"),
    Entry("gpt2/openai_gpt_arithmetic_causal_mask",
          "huggingface/transformers: src/transformers/models/openai/modeling_openai.py: Attention._attn: "
          "w * b + -1e4 * (1 - b) with a float 0/1 tril buffer",
          lambda: OpenAIGPTAttention().eval(), _x,
          (Expect(scale=0.25, mask="none", is_causal=True, verdict="causal"),), traceable=False,
          notes="with b a 0/1 constant, w·b + c·(1 − b) is where(b, w, c): a -1e4 fill, folded to is_causal"),
    Entry("gpt2/openai_gpt_arithmetic_mask_plus_padding",
          "huggingface/transformers: src/transformers/models/openai/modeling_openai.py: Attention._attn "
          "+ additive padding mask",
          lambda: OpenAIGPTAttention().eval(), _x_pad,
          None, reason="a finite masked fill combined with other masks", traceable=False,
          notes="as gpt2/attn_masked_bias_where_plus_mask: a finite fill under a padding mask stays eager"),
    Entry("gpt2/upcast_reordered_baddbmm",
          SRC + "GPT2Attention._upcast_and_reordered_attn: fp32 baddbmm(empty, q, k, beta=0, "
          "alpha=1/sqrt(d)/(layer_idx+1)), where(causal, w, finfo.min) + mask",
          lambda: GPT2AttentionUpcastReordered(layer_idx=1, scale_attn_by_inverse_layer_idx=True).eval(), _x_pad,
          (Expect(scale=0.125, mask="float"),), traceable=False,
          notes="size() unpacking and float(size) are not symbolically traceable"),
]
