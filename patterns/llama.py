"""Llama / Mistral / Qwen2 eager attention (huggingface/transformers: models/llama/modeling_llama.py).

`repeat_kv` (expand a new axis + reshape) for grouped-query attention, `matmul(q, k.transpose(2, 3)) * scaling`,
an additive causal mask sliced to the key length, `softmax(dim=-1, dtype=float32).to(query.dtype)`,
`F.dropout(p, training)`. Mistral and Qwen2 copy this template (`# Copied from ... Llama`); older Mistral /
Mixtral / Gemma wrote the repeat as `torch.repeat_interleave(k, n_rep, dim=1)`.
"""
import torch
import torch.nn as nn

from . import Entry, Expect, hidden, padding_mask

B, L, D, H, E = 2, 8, 64, 4, 16


def causal_padding_mask(b=B, l=L, s=L):
    m = padding_mask(b, l, s)
    return m.masked_fill(torch.ones(l, s, dtype=torch.bool).triu(1), torch.finfo(torch.float32).min)


def rope(b=B, l=L, e=E, base=10000.0):
    inv_freq = 1.0 / (base ** (torch.arange(0, e, 2, dtype=torch.float32) / e))
    freqs = torch.arange(l, dtype=torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos()[None].expand(b, l, e).contiguous(), emb.sin()[None].expand(b, l, e).contiguous()


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    q_embed = (q * cos) + (rotate_half(q) * sin)
    k_embed = (k * cos) + (rotate_half(k) * sin)
    return q_embed, k_embed


def repeat_kv(hidden_states, n_rep):
    # upstream: `batch, num_key_value_heads, slen, head_dim = hidden_states.shape` (not symbolically traceable)
    shape = hidden_states.shape
    batch, num_key_value_heads, slen, head_dim = shape[0], shape[1], shape[2], shape[3]
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0):
    key_states = repeat_kv(key, module.num_key_value_groups)
    value_states = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        causal_mask = attention_mask[:, :, :, : key_states.shape[-2]]
        attn_weights = attn_weights + causal_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states)
    attn_output = attn_output.transpose(1, 2).contiguous()
    return attn_output, attn_weights


def eager_attention_forward_repeat_interleave(module, query, key, value, attention_mask, scaling, dropout=0.0):
    key_states = torch.repeat_interleave(key, dim=1, repeats=module.num_key_value_groups)
    value_states = torch.repeat_interleave(value, dim=1, repeats=module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        causal_mask = attention_mask[:, :, :, : key_states.shape[-2]]
        attn_weights = attn_weights + causal_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states)
    attn_output = attn_output.transpose(1, 2).contiguous()
    return attn_output, attn_weights


class LlamaAttention(nn.Module):
    """transformers 5.x LlamaAttention.forward (no cache), eager interface."""

    def __init__(self, hidden_size=D, num_heads=H, num_key_value_heads=2, attention_dropout=0.0,
                 use_rope=True, attention_fn=eager_attention_forward):
        super().__init__()
        self.head_dim = hidden_size // num_heads
        self.num_key_value_groups = num_heads // num_key_value_heads
        self.scaling = self.head_dim ** -0.5
        self.attention_dropout = attention_dropout
        self.use_rope = use_rope
        self.attention_fn = attention_fn
        self.q_proj = nn.Linear(hidden_size, num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, num_key_value_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * self.head_dim, hidden_size, bias=False)

    def forward(self, hidden_states, cos, sin, attention_mask):
        # upstream takes position_embeddings=(cos, sin); passed apart here so symbolic_trace can read them
        # upstream: hidden_shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        b, l = hidden_states.shape[0], hidden_states.shape[1]
        query_states = self.q_proj(hidden_states).view(b, l, -1, self.head_dim).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(b, l, -1, self.head_dim).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(b, l, -1, self.head_dim).transpose(1, 2)
        if self.use_rope:
            query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        attn_output, _ = self.attention_fn(
            self, query_states, key_states, value_states, attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout, scaling=self.scaling)
        attn_output = attn_output.reshape(b, l, -1).contiguous()
        return self.o_proj(attn_output)


class Qwen2Attention(LlamaAttention):
    """Qwen2: biased q/k/v projections, otherwise the Llama template (mask sized to a longer cache)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        kv = self.k_proj.out_features
        self.q_proj = nn.Linear(self.q_proj.in_features, self.q_proj.out_features, bias=True)
        self.k_proj = nn.Linear(self.k_proj.in_features, kv, bias=True)
        self.v_proj = nn.Linear(self.v_proj.in_features, kv, bias=True)


def _x(seed):
    return lambda: hidden(B, L, D, seed=seed) + rope() + (causal_padding_mask(),)


def _x_long_mask():
    """The 4-D mask is built for a longer (static-cache) key length and sliced to the keys by the attention."""
    m = torch.full((B, 1, L, L + 4), torch.finfo(torch.float32).min)
    m[:, :, :, :L] = causal_padding_mask()
    return hidden(B, L, D, seed=24) + rope() + (m,)


SRC = "huggingface/transformers: src/transformers/models/"
ENTRIES = [
    Entry("llama/eager_attention_forward_gqa",
          SRC + "llama/modeling_llama.py: LlamaAttention.forward + repeat_kv + eager_attention_forward "
          "(4 q heads, 2 kv heads)",
          lambda: LlamaAttention().eval(), _x(21),
          (Expect(scale=0.25, mask="float", enable_gqa=True),)),
    Entry("llama/eager_attention_forward_mha",
          SRC + "llama/modeling_llama.py: eager_attention_forward with num_key_value_heads == num_heads "
          "(repeat_kv returns its input)",
          lambda: LlamaAttention(num_key_value_heads=H).eval(), _x(22),
          (Expect(scale=0.25, mask="float"),)),
    Entry("llama/mqa_no_rope",
          SRC + "llama/modeling_llama.py: eager_attention_forward with one kv head (repeat_kv n_rep=4), no rope",
          lambda: LlamaAttention(num_key_value_heads=1, use_rope=False).eval(), _x(23),
          (Expect(scale=0.25, mask="float", enable_gqa=True),)),
    Entry("llama/qwen2_sliced_long_mask",
          SRC + "qwen2/modeling_qwen2.py: Qwen2Attention (biased qkv) + eager_attention_forward, "
          "attention_mask[:, :, :, : key_states.shape[-2]] slicing a longer mask",
          lambda: Qwen2Attention().eval(), _x_long_mask,
          (Expect(scale=0.25, mask="float", enable_gqa=True),)),
    Entry("llama/repeat_interleave_gqa",
          SRC + "mistral/modeling_mistral.py (4.3x): torch.repeat_interleave(k, dim=1, repeats=n_rep)",
          lambda: LlamaAttention(attention_fn=eager_attention_forward_repeat_interleave).eval(), _x(25),
          (Expect(scale=0.25, mask="float", enable_gqa=True),)),
    Entry("llama/eager_attention_forward_gqa_train",
          SRC + "llama/modeling_llama.py: eager_attention_forward, attention_dropout=0.1 in training",
          lambda: LlamaAttention(attention_dropout=0.1).train(), _x(26),
          (Expect(scale=0.25, mask="float", dropout_p=0.1, enable_gqa=True),), training=True),
]
