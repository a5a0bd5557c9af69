"""GPT-J / CodeGen / GPT-Neo (huggingface/transformers): fp32 q·k, causal `where` on a bool buffer.

- GPT-J eager_attention_forward (5.x): `matmul(q.to(float32), k.to(float32).transpose(2, 3)) * scaling`,
  additive mask, `softmax(dim=-1).to(value.dtype)`.
- GPTJAttention._attn (4.2x-4.4x): q/k upcast, `where(bias[...], w, torch.tensor(finfo(float32).min))`,
  `/ self.scale_attn` (a 0-d tensor sqrt(head_dim): a tensor scale, so scale=1.0 by contract), + mask.
- CodeGenAttention._attn (4.4x): q/k upcast, `w += attention_mask[:, :, :, :S]`, then `/ self.scale_attn`
  (the mask is added before the division, so it is scaled too), `nn.Softmax(dim=-1)(w)`.
- GPTNeoSelfAttention._attn: q/k upcast, no scale at all, `where(bias[...], w, finfo.min)`, + additive mask;
  local layers use `bias ^ tril(bias, -window_size)` (a sliding window).
"""
import torch
import torch.nn as nn

from . import Entry, Expect, hidden, padding_mask

B, L, D, H, E = 2, 8, 64, 4, 16
MAX_POS = 16


def causal_padding_mask(b=B, l=L, s=L):
    m = padding_mask(b, l, s)
    return m.masked_fill(torch.ones(l, s, dtype=torch.bool).triu(1), torch.finfo(torch.float32).min)


def causal_buffer(max_positions=MAX_POS, window_size=None):
    bias = torch.tril(torch.ones((max_positions, max_positions), dtype=torch.bool)).view(
        1, 1, max_positions, max_positions)
    if window_size is not None:
        bias = torch.bitwise_xor(bias, torch.tril(bias, -window_size))
    return bias


def gptj_eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0):
    attn_weights = torch.matmul(query.to(torch.float32), key.to(torch.float32).transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1).to(value.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value)
    attn_output = attn_output.transpose(1, 2).contiguous()
    return attn_output, attn_weights


class Heads(nn.Module):
    """Separate q/k/v projections into (B, H, L, E) heads (GPT-J / GPT-Neo layout, no rotary)."""

    def __init__(self, embed_dim=D, num_heads=H, attn_pdrop=0.0, window_size=None):
        super().__init__()
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim ** -0.5
        self.scale_attn = torch.sqrt(torch.tensor(self.head_dim, dtype=torch.float32)).to(torch.get_default_dtype())
        self.register_buffer("bias", causal_buffer(window_size=window_size), persistent=False)
        self.attn_dropout = nn.Dropout(attn_pdrop)
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def heads(self, hidden_states):
        b, l = hidden_states.shape[0], hidden_states.shape[1]
        q = self.q_proj(hidden_states).view(b, l, self.num_heads, self.head_dim).permute(0, 2, 1, 3)
        k = self.k_proj(hidden_states).view(b, l, self.num_heads, self.head_dim).permute(0, 2, 1, 3)
        v = self.v_proj(hidden_states).view(b, l, self.num_heads, self.head_dim).permute(0, 2, 1, 3)
        return q, k, v

    def merge(self, attn_output, hidden_states):
        b, l = hidden_states.shape[0], hidden_states.shape[1]
        attn_output = attn_output.permute(0, 2, 1, 3).contiguous().view(b, l, self.embed_dim)
        return self.out_proj(attn_output)

    def forward(self, hidden_states, attention_mask=None):
        q, k, v = self.heads(hidden_states)
        attn_output = self._attn(q, k, v, attention_mask)
        return self.merge(attn_output, hidden_states)


class GPTJEager(Heads):
    """transformers 5.x GPTJAttention.forward → eager_attention_forward."""

    def _attn(self, q, k, v, attention_mask):
        out, _ = gptj_eager_attention_forward(self, q, k, v, attention_mask, scaling=self.scaling,
                                              dropout=self.attn_dropout.p if self.training else 0.0)
        return out.transpose(1, 2)


class GPTJLegacy(Heads):
    """transformers 4.2x-4.4x GPTJAttention._attn: where(causal, w, torch.tensor(finfo.min)) / scale_attn + mask."""

    def _attn(self, query, key, value, attention_mask=None):
        query_length, key_length = query.size(-2), key.size(-2)
        causal_mask = self.bias[:, :, key_length - query_length: key_length, :key_length]
        query = query.to(torch.float32)
        key = key.to(torch.float32)
        attn_weights = torch.matmul(query, key.transpose(-1, -2))
        mask_value = torch.finfo(attn_weights.dtype).min
        mask_value = torch.tensor(mask_value, dtype=attn_weights.dtype).to(attn_weights.device)
        attn_weights = torch.where(causal_mask, attn_weights, mask_value)
        attn_weights = attn_weights / self.scale_attn
        if attention_mask is not None:
            attn_weights = attn_weights + attention_mask
        attn_weights = nn.functional.softmax(attn_weights, dim=-1)
        attn_weights = attn_weights.to(value.dtype)
        attn_weights = self.attn_dropout(attn_weights)
        return torch.matmul(attn_weights, value)


class GPTJFloatFill(Heads):
    """GPT-J style with the fill as a Python float: where(causal, w, torch.finfo(torch.float32).min), then a
    Python-float division by sqrt(head_dim); no padding mask."""

    def _attn(self, query, key, value, attention_mask=None):
        query_length, key_length = query.size(-2), key.size(-2)
        causal_mask = self.bias[:, :, key_length - query_length: key_length, :key_length]
        attn_weights = torch.matmul(query.to(torch.float32), key.to(torch.float32).transpose(-1, -2))
        attn_weights = torch.where(causal_mask, attn_weights, torch.finfo(torch.float32).min)
        attn_weights = attn_weights / (self.head_dim ** 0.5)
        attn_weights = nn.functional.softmax(attn_weights, dim=-1).to(value.dtype)
        attn_weights = self.attn_dropout(attn_weights)
        return torch.matmul(attn_weights, value)


class CodeGenLegacy(Heads):
    """transformers 4.4x CodeGenAttention._attn: mask added in place, then divided by scale_attn."""

    def _attn(self, query, key, value, attention_mask=None):
        query = query.to(torch.float32)
        key = key.to(torch.float32)
        attn_weights = torch.matmul(query, key.transpose(-1, -2))
        if attention_mask is not None:
            causal_mask = attention_mask[:, :, :, : key.shape[-2]]
            attn_weights += causal_mask
        attn_weights = attn_weights / self.scale_attn
        attn_weights = nn.Softmax(dim=-1)(attn_weights)
        attn_weights = attn_weights.to(value.dtype)
        attn_weights = self.attn_dropout(attn_weights)
        return torch.matmul(attn_weights, value)


class GPTNeoSelfAttention(Heads):
    """transformers GPTNeoSelfAttention._attn: no scale, where(bias, w, finfo.min tensor), + sliced mask."""

    def _attn(self, query, key, value, attention_mask=None):
        query = query.to(torch.float32)
        key = key.to(torch.float32)
        attn_weights = torch.matmul(query, key.transpose(-1, -2))
        query_length, key_length = query.size(-2), key.size(-2)
        causal_mask = self.bias[:, :, key_length - query_length: key_length, :key_length]
        mask_value = torch.finfo(attn_weights.dtype).min
        mask_value = torch.tensor(mask_value, dtype=attn_weights.dtype, device=attn_weights.device)
        attn_weights = torch.where(causal_mask, attn_weights, mask_value)
        if attention_mask is not None:
            causal_mask = attention_mask[:, :, :, : key.shape[-2]]
            attn_weights = attn_weights + causal_mask
        attn_weights = nn.functional.softmax(attn_weights, dim=-1)
        attn_weights = attn_weights.to(value.dtype)
        attn_weights = self.attn_dropout(attn_weights)
        return torch.matmul(attn_weights, value)


def _x_mask(seed):
    return lambda: hidden(B, L, D, seed=seed) + (causal_padding_mask(),)


def _x_pad(seed):
    return lambda: hidden(B, L, D, seed=seed) + (padding_mask(B, L, L),)


def _x(seed):
    return lambda: hidden(B, L, D, seed=seed)


SRC = "huggingface/transformers: src/transformers/models/"
BUF = "slicing the causal buffer by sizes is not symbolically traceable"
ENTRIES = [
    Entry("gptj/eager_attention_forward",
          SRC + "gptj/modeling_gptj.py: eager_attention_forward (5.x): fp32 q·k * scaling + mask",
          lambda: GPTJEager().eval(), _x_mask(41),
          (Expect(scale=0.25, mask="float"),)),
    Entry("gptj/legacy_where_tensor_fill_then_scale",
          SRC + "gptj/modeling_gptj.py (4.2x-4.4x): GPTJAttention._attn: where(causal, w, tensor(finfo.min)) "
          "/ scale_attn + mask",
          lambda: GPTJLegacy().eval(), _x_pad(42),
          None, reason="tensor-valued scale is applied after a masked fill", traceable=False,
          notes="a known miss: scale_attn is a 0-d tensor attribute (Dynamo lifts it as a graph input); it "
                "divides the finfo.min fill, whose result (absorbing or not, its sign) is unknown at rewrite "
                "time; " + BUF),
    Entry("gptj/where_python_float_fill",
          SRC + "gptj/modeling_gptj.py spelling with the fill as a Python float torch.finfo(torch.float32).min, "
          "no padding mask",
          lambda: GPTJFloatFill().eval(), _x(43),
          (Expect(scale=0.25, mask="none", is_causal=True),), traceable=False,
          notes="fill finfo(float32).min (>= 2**44) with no additive term: float mask; " + BUF),
    Entry("gptj/codegen_mask_then_scale",
          SRC + "codegen/modeling_codegen.py (4.4x): CodeGenAttention._attn: w += mask[..., :S]; w / scale_attn; "
          "nn.Softmax(dim=-1)",
          lambda: CodeGenLegacy().eval(), _x_mask(44),
          (Expect(scale=1.0, mask="float"),), traceable=False,
          notes="the mask is added before the division, so it is divided too; scale_attn is a 0-d tensor "
                "attribute (a graph input under Dynamo): a tensor scale, folded into q with scale=1.0; "
                "nn.Softmax built inside forward is not symbolically traceable"),
    Entry("gptj/gpt_neo_global_no_scale",
          SRC + "gpt_neo/modeling_gpt_neo.py: GPTNeoSelfAttention._attn (global): no scale, "
          "where(bias, w, finfo.min) + mask",
          lambda: GPTNeoSelfAttention().eval(), _x_pad(45),
          (Expect(scale=1.0, mask="float"),), traceable=False, notes=BUF),
    Entry("gptj/gpt_neo_local_window",
          SRC + "gpt_neo/modeling_gpt_neo.py: GPTNeoSelfAttention (attention_type='local', window_size=4): "
          "bias ^ tril(bias, -window), no padding mask",
          lambda: GPTNeoSelfAttention(window_size=4).eval(), _x(46),
          (Expect(scale=1.0, mask="float"),), traceable=False, notes=BUF),
    Entry("gptj/gpt_neo_global_train",
          SRC + "gpt_neo/modeling_gpt_neo.py: GPTNeoSelfAttention, attention_dropout 0.1 in training",
          lambda: GPTNeoSelfAttention(attn_pdrop=0.1).train(), _x_pad(47),
          (Expect(scale=1.0, mask="float", dropout_p=0.1),), traceable=False, training=True, notes=BUF),
]
