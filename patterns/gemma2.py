"""Soft-capped logits: `β·tanh(α·QKᵀ / c)`-style spellings (Gemma 2, Grok-1). SDPA has no score function, so the
site becomes FlexAttention with `score_mod = β·tanh(score)` and `scale = α` (every scalar met inside the tanh);
the mask keeps its form (score_mod adds it, or a BlockMask says it when it folds to a causal band). Flex has no
backward on the CPU: there, with gradients, the site stays eager and says so.
"""

import torch
import torch.nn.functional as F

from . import Entry, Expect, Heads, hidden, padding_mask


class Gemma2SoftCap(Heads):
    """transformers models/gemma2/modeling_gemma2.py: eager_attention_forward with attn_logit_softcapping."""

    def __init__(self, softcap=50.0):
        super().__init__()
        self.scaling = self.head_dim ** -0.5
        self.softcap = softcap

    def forward(self, x, attention_mask):
        q, k, v = self.qkv(x)
        attn_weights = torch.matmul(q, k.transpose(2, 3)) * self.scaling
        attn_weights = attn_weights / self.softcap
        attn_weights = torch.tanh(attn_weights)
        attn_weights = attn_weights * self.softcap
        attn_weights = attn_weights + attention_mask
        attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(q.dtype)
        return self.out(torch.matmul(attn_weights, v))


class Gemma2SlidingLayer(Gemma2SoftCap):
    """Gemma 2's sliding layers: the soft-cap plus a causal window built in the graph (masking_utils' v5 functions:
    `kv_idx <= q_idx` and `kv_idx > q_idx - window`), an additive finfo.min mask."""

    def __init__(self, softcap=20.0, window=5):
        super().__init__(softcap)
        self.window = window

    def forward(self, x):
        l = x.shape[1]
        q_idx = torch.arange(l, device=x.device)[:, None]
        kv_idx = torch.arange(l, device=x.device)[None, :]
        keep = (kv_idx <= q_idx) & (kv_idx > q_idx - self.window)
        mask = torch.zeros(l, l, device=x.device).masked_fill(~keep, torch.finfo(x.dtype).min)
        return super().forward(x, mask[None, None])


class GrokCap(Heads):
    """xai-org/grok-1 model.py (in torch): `attn_logits = 30 * tanh(attn_logits / 30)` after a division by
    sqrt(d), with a boolean causal mask applied by where(mask, logits, -1e30)."""

    def forward(self, x):
        q, k, v = self.qkv(x)
        logits = (q @ k.transpose(-2, -1)) / self.head_dim ** 0.5
        logits = 30.0 * torch.tanh(logits / 30.0)
        l = x.shape[1]
        causal = torch.ones(l, l, dtype=torch.bool, device=x.device).tril()
        logits = torch.where(causal, logits, -1e30)
        return self.out(logits.softmax(-1) @ v)


def causal_additive(b=2, l=8):
    m = padding_mask(b, l, l)
    causal = torch.triu(torch.full((l, l), torch.finfo(torch.float32).min), diagonal=1)
    return torch.maximum(m + causal, torch.full_like(m, torch.finfo(torch.float32).min))


ENTRIES = [
    Entry("gemma2/softcap_padded",
          "huggingface/transformers: models/gemma2/modeling_gemma2.py: eager_attention_forward (softcap)",
          lambda: Gemma2SoftCap().eval(), lambda: (hidden(2, 8, 64, seed=40)[0], causal_additive()),
          (Expect(scale=0.25 / 50.0, mask="float", verdict="input mask", target="flex", cap=50.0),)),
    Entry("gemma2/softcap_sliding_window",
          "gemma2 eager_attention_forward on a sliding layer, the window mask built in the graph (masking_utils v5)",
          lambda: Gemma2SlidingLayer().eval(), lambda: hidden(2, 12, 64, seed=46),
          (Expect(scale=0.25 / 20.0, mask="none", verdict="sliding window", target="flex", cap=20.0),),
          traceable=False),
    Entry("gemma2/grok_softcap",
          "xai-org/grok-1: model.py: MultiHeadAttention (30·tanh(logits/30)), written in torch",
          lambda: GrokCap().eval(), lambda: hidden(2, 8, 64, seed=47),
          (Expect(scale=0.25 / 30.0, mask="none", is_causal=True, verdict="causal", target="flex", cap=30.0),),
          traceable=False),
]
