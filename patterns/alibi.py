"""ALiBi built in the graph beside a causal mask: a bias constant along the queries (one row of key offsets per
head) that, with no padding, folds to a constant with the mask (key_rows.py splits it into rows and a band).

- huggingface/transformers: models/bloom/modeling_bloom.py, BloomModel.forward with no attention_mask (5.x):
  `slopes[:, None, None] * arange(S)`, repeated over the batch to (B*H, 1, S), entering `baddbmm` unscaled; the
  causal mask is masking_utils' additive (B, 1, L, S) mask.
- huggingface/transformers: models/mpt/modeling_mpt.py, build_mpt_alibi_tensor + MptAttention.forward:
  `arange(1 - max_seq_len, 1) * slopes` (H, 1, max_seq_len), its last S keys sliced, added after the scale; the
  causal mask is a bool mask filled with finfo.min after the bias.

On the CPU, or shorter than plan.KEY_ROW_FLEX_MIN, the sum stays SDPA's dense float mask (a "bias" verdict); on CUDA
at long sequences flex reads the rows in its score_mod and the band as a BlockMask (tests/test_flex.py).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import Entry, Expect, hidden
from .bloom import BloomAttention

B, L, D, H = 2, 12, 64, 4
MIN = torch.finfo(torch.float32).min


def _hidden_keys(l, device):
    """The keys after each query (masking_utils' causal_mask_function, negated), from index comparisons."""
    return torch.arange(l, device=device)[None, :] > torch.arange(l, device=device)[:, None]


def bloom_slopes(heads: int, device) -> torch.Tensor:
    """_get_alibi_slopes for a power-of-two head count: 2^(-8i/H), i = 1..H."""
    base = torch.tensor(2 ** (-(2 ** -(math.log2(heads) - 3))), dtype=torch.float32, device=device)
    return torch.pow(base, torch.arange(1, 1 + heads, dtype=torch.int32, device=device))


class BloomNoPadding(nn.Module):
    """BloomModel.forward without an attention_mask: alibi and the causal mask built in the forward."""

    def __init__(self):
        super().__init__()
        self.attn = BloomAttention()

    def forward(self, x):
        b, l = x.shape[0], x.shape[1]
        alibi = bloom_slopes(H, x.device)[:, None, None] * torch.arange(l, dtype=torch.float32, device=x.device)
        alibi = alibi.repeat(b, 1, 1).to(x.dtype)
        causal = torch.where(_hidden_keys(l, x.device), MIN, 0.0)[None, None].expand(b, 1, l, l).to(x.dtype)
        return self.attn(x, alibi, causal)


def mpt_alibi(heads: int, max_len: int, device, alibi_bias_max: int = 8) -> torch.Tensor:
    """build_mpt_alibi_tensor for a power-of-two head count: (H, 1, max_len), slope·(j - max_len + 1)."""
    alibi = torch.arange(1 - max_len, 1, dtype=torch.int32, device=device).view(1, 1, 1, max_len)
    base = torch.arange(1, heads + 1, dtype=torch.int64, device=device).float() * (alibi_bias_max / heads)
    slopes = (1.0 / torch.pow(2, base)).view(1, heads, 1, 1)
    return (alibi * slopes).squeeze(0)


class MptAttention(nn.Module):
    """MptModel.forward's alibi (for max_seq_len keys) and bool causal mask, and MptAttention.forward."""

    def __init__(self, dim=D, heads=H, max_seq_len=16):
        super().__init__()
        self.heads, self.head_dim, self.max_seq_len = heads, dim // heads, max_seq_len
        self.softmax_scale = 1 / math.sqrt(self.head_dim)
        self.Wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        b, l = x.shape[0], x.shape[1]
        position_bias = mpt_alibi(self.heads, self.max_seq_len, x.device)
        causal = torch.where(_hidden_keys(l, x.device), MIN, 0.0)[None, None].expand(b, 1, l, l)
        attention_mask = causal.to(torch.bool)
        q, k, v = self.Wqkv(x).chunk(3, dim=2)
        q, k, v = (t.reshape(b, l, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        attention_scores = torch.matmul(q, k.transpose(-1, -2)) * self.softmax_scale
        position_bias = position_bias[:, :, self.max_seq_len - l:]     # upstream's query offset max(0, 1 - L) is 0
        attention_scores = attention_scores + position_bias
        attention_scores = attention_scores.masked_fill(attention_mask, torch.finfo(q.dtype).min)
        attn_weights = F.softmax(attention_scores.float(), dim=-1).to(v.dtype)
        context = torch.matmul(attn_weights, v)
        return self.out_proj(context.permute(0, 2, 1, 3).reshape(b, l, -1))


BLOOM = "huggingface/transformers: src/transformers/models/bloom/modeling_bloom.py: BloomModel.forward (5.x)"
MPT = "huggingface/transformers: src/transformers/models/mpt/modeling_mpt.py: build_mpt_alibi_tensor, MptAttention"
ENTRIES = [
    Entry("alibi/bloom_rows_no_padding",
          BLOOM + ": no attention_mask, alibi from the slopes and arange(S), additive causal mask",
          lambda: BloomNoPadding().eval(), lambda: hidden(B, L, D, seed=161),
          (Expect(scale=0.25, mask="float", verdict="bias"),),
          notes="alibi + causal mask fold to a constant bias; split into key rows and a causal band for flex"),
    Entry("alibi/mpt_rows_masked_fill",
          MPT + ": alibi (H, 1, max_seq_len) sliced to S keys, masked_fill(bool causal mask, finfo.min) after it",
          lambda: MptAttention().eval(), lambda: hidden(B, L, D, seed=162),
          (Expect(scale=0.25, mask="float", verdict="bias"),), traceable=False,
          notes="the rows are negative (slope·(j - 15)); the fill after them is still a causal band; a constant "
                "sliced by the input's length is not symbolically traceable"),
]
