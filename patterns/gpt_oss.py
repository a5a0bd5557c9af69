"""Attention sinks: a learned logit per head concatenated to the scores as one more key column, softmaxed with
them, then sliced off (the sink takes weight but adds no value). SDPA has no such key, so the site becomes
either SDPA with one extra all-zero key whose mask column holds the sink logit (exact on every kernel that takes
a float mask, trainable on the CPU), or FlexAttention plus the correction from its log-sum-exp,
out · sigmoid(lse − sink), on CUDA where flex's block sparsity pays.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import Entry, Expect


def _repeat_kv(x, n):
    b, h, s, d = x.shape
    if n == 1:
        return x
    return x[:, :, None, :, :].expand(b, h, n, s, d).reshape(b, h * n, s, d)


class GptOssSinks(nn.Module):
    """transformers models/gpt_oss/modeling_gpt_oss.py: eager_attention_forward (sinks, GQA, row-max shift)."""

    def __init__(self, dim=64, heads=4, kv_heads=2):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.scaling = self.head_dim ** -0.5
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, self.kv_heads * self.head_dim)
        self.v_proj = nn.Linear(dim, self.kv_heads * self.head_dim)
        self.o_proj = nn.Linear(dim, dim)
        self.sinks = nn.Parameter(torch.randn(heads, generator=torch.Generator().manual_seed(7)))

    def forward(self, x, attention_mask):
        b, l, _ = x.shape
        q = self.q_proj(x).view(b, l, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, l, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, l, self.kv_heads, self.head_dim).transpose(1, 2)
        key_states = _repeat_kv(k, self.heads // self.kv_heads)
        value_states = _repeat_kv(v, self.heads // self.kv_heads)
        attn_weights = torch.matmul(q, key_states.transpose(2, 3)) * self.scaling
        attn_weights = attn_weights + attention_mask
        sinks = self.sinks.reshape(1, -1, 1, 1).expand(q.shape[0], -1, q.shape[-2], -1)
        combined_logits = torch.cat([attn_weights, sinks], dim=-1)
        combined_logits = combined_logits - combined_logits.max(dim=-1, keepdim=True).values
        probs = F.softmax(combined_logits, dim=-1, dtype=combined_logits.dtype)
        scores = probs[..., :-1]
        attn_weights = F.dropout(scores, p=0.0, training=self.training).to(value_states.dtype)
        out = torch.matmul(attn_weights, value_states).transpose(1, 2).reshape(b, l, -1)
        return self.o_proj(out)


class CausalSinks(GptOssSinks):
    """The same site with the causal mask built in the graph (no padding): the mask folds to causal, and the sink
    still needs its column, so SDPA gets the causal mask as a float column block."""

    def forward(self, x):
        l = x.shape[1]
        causal = torch.full((l, l), torch.finfo(x.dtype).min, device=x.device).triu(1)
        return super().forward(x, causal[None, None])


def _padded():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 12, 64, generator=g)
    keep = torch.ones(2, 12, dtype=torch.bool)
    keep[1, :4] = False                                   # left padding
    causal = torch.ones(12, 12, dtype=torch.bool).tril()
    visible = causal[None] & keep[:, None, :]
    mask = torch.zeros(2, 1, 12, 12).masked_fill(~visible[:, None], torch.finfo(torch.float32).min)
    return x, mask


SCALE = 16 ** -0.5
ENTRIES = [
    Entry("gpt_oss/sinks_padded", "transformers models/gpt_oss/modeling_gpt_oss.py: eager_attention_forward",
          GptOssSinks, _padded, (Expect(scale=SCALE, mask="float", enable_gqa=True, verdict="input mask",
                                        sink=True),)),
    Entry("gpt_oss/sinks_causal", "gpt_oss eager_attention_forward with a causal mask built in the graph",
          CausalSinks, lambda: (torch.randn(2, 12, 64, generator=torch.Generator().manual_seed(9)),),
          (Expect(scale=SCALE, mask="float", enable_gqa=True, verdict="causal", sink=True),), traceable=False),
]
