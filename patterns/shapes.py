"""Shape and spelling corner cases the engine must read by algebra, not by name: a positive softmax dim,
q used as its own key (self-similarity, e.g. Reformer's shared-QK attention: reformer/modeling_reformer.py,
LSHSelfAttention), torch.softmax with an fp32 upcast and `.to(dtype)` back, two sites in one module, and unbatched
(L, E) attention."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import Entry, Expect, qkv


class PositiveDim(nn.Module):
    """softmax over dim=3 of a 4-D score tensor: the last dim spelled positively."""

    def forward(self, q, k, v):
        s = torch.matmul(q, k.transpose(2, 3)) * 0.25
        return torch.matmul(torch.softmax(s, 3), v)


class SharedQK(nn.Module):
    """Q used as its own key (shared-QK attention), an upcast softmax cast back with .to(dtype)."""

    def forward(self, q, k, v):
        s = q @ q.transpose(-1, -2) / 4.0
        w = torch.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)
        return w @ v


class OneSequence(nn.Module):
    """Unbatched (L, E) attention with `k.T`: one graph's node attention, or a loop over sequences and heads.
    SDPA gets it as (1, 1, L, E), the only layout its fused kernels take."""

    def forward(self, q, k, v):
        q, k, v = q[0, 0], k[0, 0], v[0, 0]
        return torch.softmax(q @ k.T / q.size(-1) ** 0.5, dim=-1) @ v


class OneSequencePadded(nn.Module):
    """The same with a key padding mask (S,) filled with -inf: a bool keep-mask broadcast over the queries."""

    def forward(self, q, k, v, keep):
        s = (q[0, 0] @ k[0, 0].transpose(0, 1)) * 0.25
        return torch.softmax(s.masked_fill(~keep, float("-inf")), dim=-1) @ v[0, 0]


class TwoSites(nn.Module):
    """Self-attention then cross-attention on another memory, in one forward."""

    def forward(self, q, k, v):
        x = F.softmax(q @ k.transpose(-2, -1) * 0.25, dim=-1) @ v
        mem = k[:, :, :5]
        y = F.softmax(x @ mem.transpose(-2, -1), dim=-1) @ v[:, :, :5]
        return x + y


ENTRIES = [
    Entry("shapes/one_sequence_2d", "variant: unbatched (L, E) q, k, v, q @ k.T / sqrt(E) (graph-node attention)",
          OneSequence, lambda: qkv(seed=64), (Expect(scale=0.25),)),
    Entry("shapes/one_sequence_2d_key_padding", "variant: unbatched (L, E), masked_fill(~keep, -inf) with keep (S,)",
          OneSequencePadded, lambda: qkv(seed=65) + (torch.arange(8) < 6,), (Expect(scale=0.25, mask="bool"),)),
    Entry("shapes/positive_softmax_dim", "variant: softmax(s, 3) on (B,H,L,S), k.transpose(2, 3)",
          PositiveDim, lambda: qkv(seed=61), (Expect(scale=0.25),)),
    Entry("shapes/q_as_key", "reformer/modeling_reformer.py style shared QK: q @ qᵀ, fp32 softmax cast back",
          SharedQK, lambda: qkv(seed=62), (Expect(scale=0.25),)),
    Entry("shapes/two_sites_self_then_cross", "variant: two sites in one forward, the second with L != S, unscaled",
          TwoSites, lambda: qkv(seed=63), (Expect(scale=0.25), Expect(scale=1.0))),
]
