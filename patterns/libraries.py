"""Spellings from attention written by hand outside transformers (the third-party corpus of
sdpa_rewrite/scan/corpus.py): each entry is the smallest module that shows one shape of graph a library's attention
takes, written here after the named source."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import Entry, Expect, qkv


def _causal_above(i: int, j: int, device) -> torch.Tensor:
    return torch.ones((i, j), dtype=torch.bool, device=device).triu(j - i + 1)


class SavedSimilarities(nn.Module):
    """x-transformers Attend (flash off): `sim.clone()` kept for the intermediates the caller drops, a causal
    fill of -finfo.max, the softmax upcast to fp32 and cast back."""

    def forward(self, q, k, v):
        sim = torch.einsum("b h i d, b h j d -> b h i j", q, k) * 0.25
        saved = sim.clone()  # noqa: F841 - stored, never read
        i, j = sim.shape[-2:]
        sim = sim.masked_fill(_causal_above(i, j, sim.device), -torch.finfo(sim.dtype).max)
        attn = sim.softmax(dim=-1, dtype=torch.float32).type(sim.dtype)
        return torch.einsum("b h i j, b h j d -> b h i d", attn, v)


class ZeroPaddedBias(nn.Module):
    """x-transformers with a relative-position bias: the bias is padded by the memory key/values' count (0 without
    them), then added; key padding filled with -finfo.max."""

    def __init__(self, heads=4, n=8):
        super().__init__()
        self.bias = nn.Parameter(torch.randn(heads, n, n))

    def forward(self, q, k, v, keep):
        sim = torch.einsum("b h i d, b h j d -> b h i j", q, k) * 0.25
        sim = sim + F.pad(self.bias, (0, 0), value=0.0)
        sim = sim.masked_fill(~keep[:, None, None, :], -torch.finfo(sim.dtype).max)
        return torch.einsum("b h i j, b h j d -> b h i d", sim.softmax(dim=-1), v)


class ReturnedLogits(nn.Module):
    """openai-whisper MultiHeadAttention.qkv_attention (use_sdpa off): q and k each scaled by d^-1/4, a -inf causal
    buffer sliced to the length, the logits upcast and returned as `qk.detach()` beside the output; the residual
    block keeps only the output."""

    def __init__(self, n_ctx=8):
        super().__init__()
        self.register_buffer("mask", torch.empty(n_ctx, n_ctx).fill_(-math.inf).triu_(1), persistent=False)

    def attention(self, q, k, v):
        n_ctx, scale = q.shape[2], q.shape[-1] ** -0.25
        qk = (q * scale) @ (k * scale).transpose(-1, -2)
        qk = (qk + self.mask[:n_ctx, :n_ctx]).float()
        w = F.softmax(qk, dim=-1).to(q.dtype)
        return w @ v, qk.detach()

    def forward(self, q, k, v):
        return self.attention(q, k, v)[0]


class HeadAveragedWeights(nn.Module):
    """fair-esm MultiheadAttention (need_weights): bmm over (B·H, L, S), the fp32 softmax cast back with `type_as`
    twice, and the weights averaged over heads for a caller that drops them."""

    def forward(self, q, k, v):
        w = torch.bmm(q * 0.25, k.transpose(1, 2))
        wf = F.softmax(w, dim=-1, dtype=torch.float32)
        w = wf.type_as(w)
        out = torch.bmm(F.dropout(wf.type_as(w), p=0.0, training=False), v)
        averaged = wf.view(2, 4, 8, 8).type_as(out).transpose(1, 0).mean(dim=0)  # noqa: F841 - dropped
        return out


class TiedRowAttention(nn.Module):
    """fair-esm RowSelfAttention (MSA Transformer): one map per alignment, Q·Kᵀ summed over its R rows and the
    features ('rinhd,rjnhd->hnij'), then applied to every row's values ('hnij,rjnhd->rinhd')."""

    def forward(self, q, k, v):
        scaling = q.shape[-1] ** -0.5 / math.sqrt(q.shape[0])
        p = torch.einsum("rinhd,rjnhd->hnij", q * scaling, k).softmax(-1)
        return torch.einsum("hnij,rjnhd->rinhd", p, v)


def _rows(r=3, c=8, n=2, h=4, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(r, c, n, h, d, generator=g) for _ in range(3))


class DecomposedRelPos(nn.Module):
    """segment-anything ImageEncoderViT Attention (use_rel_pos): Q·Kᵀ on (B·H, h·w, h·w) viewed as (B·H, h, w, h, w),
    a bias along key rows and one along key columns (both computed from q) added there, viewed back."""

    def __init__(self, size=4, dim=16):
        super().__init__()
        self.size = size
        self.rel_pos_h = nn.Parameter(torch.randn(2 * size - 1, dim))
        self.rel_pos_w = nn.Parameter(torch.randn(2 * size - 1, dim))

    def _rel(self, table):
        coords = torch.arange(self.size)[:, None] - torch.arange(self.size)[None, :] + (self.size - 1)
        return table[coords.long()]

    def forward(self, q, k, v):
        bh, n, c = q.shape
        h = w = self.size
        attn = (q * c ** -0.5) @ k.transpose(-2, -1)
        r_q = q.reshape(bh, h, w, c)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, self._rel(self.rel_pos_h))
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, self._rel(self.rel_pos_w))
        attn = (attn.view(bh, h, w, h, w) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).view(bh, h * w, h * w)
        return attn.softmax(dim=-1) @ v


def _windows(bh=8, n=16, e=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(bh, n, e, generator=g) for _ in range(3))


class MultiQueryStableSoftmax(nn.Module):
    """CoCa-pytorch / PaLM parallel block: multi-query, one key/value head read as 'b h i d, b j d -> b h i j', a
    causal fill, and the row maximum subtracted, detached, before the softmax."""

    def forward(self, q, k, v):
        sim = torch.einsum("b h i d, b j d -> b h i j", q * 0.25, k)
        i, j = sim.shape[-2:]
        sim = sim.masked_fill(_causal_above(i, j, sim.device), -torch.finfo(sim.dtype).max)
        sim = sim - sim.amax(dim=-1, keepdim=True).detach()
        return torch.einsum("b h i j, b j d -> b h i d", sim.softmax(dim=-1), v)


def _one_kv_head(b=2, h=4, l=8, e=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, l, e, generator=g), torch.randn(b, l, e, generator=g), torch.randn(b, l, e, generator=g)


def _keep():
    keep = torch.ones(2, 8, dtype=torch.bool)
    keep[1, 5:] = False
    return keep


ENTRIES = [
    Entry("libraries/x_transformers_saved_similarities", "lucidrains/x-transformers: x_transformers/attend.py: Attend",
          SavedSimilarities, lambda: qkv(seed=201), (Expect(scale=0.25, is_causal=True, verdict="causal"),),
          traceable=False),
    Entry("libraries/x_transformers_zero_padded_bias", "lucidrains/x-transformers: attend.py + x_transformers.py "
          "(rel_pos_bias, no memory tokens)", ZeroPaddedBias, lambda: qkv(seed=202) + (_keep(),),
          (Expect(scale=0.25, mask="float"),), traceable=False),
    Entry("libraries/whisper_returned_logits", "openai/whisper: whisper/model.py: MultiHeadAttention.qkv_attention",
          ReturnedLogits, lambda: qkv(seed=203), (Expect(scale=0.25, is_causal=True, verdict="causal"),),
          traceable=False),
    Entry("libraries/esm_head_averaged_weights", "facebookresearch/esm: esm/multihead_attention.py: "
          "MultiheadAttention.forward (need_weights)", HeadAveragedWeights, lambda: _windows(8, 8, 16, seed=204),
          (Expect(scale=0.25),)),
    Entry("libraries/esm_tied_row_attention", "facebookresearch/esm: esm/axial_attention.py: RowSelfAttention",
          TiedRowAttention, lambda: _rows(seed=205), (Expect(scale=16 ** -0.5 / math.sqrt(3)),)),
    Entry("libraries/sam_decomposed_rel_pos", "facebookresearch/segment-anything: modeling/image_encoder.py: "
          "Attention + add_decomposed_rel_pos", DecomposedRelPos, lambda: _windows(seed=206),
          (Expect(scale=0.25, mask="float"),)),
    Entry("libraries/coca_multi_query_stable_softmax", "lucidrains/CoCa-pytorch: coca_pytorch.py: "
          "ParallelTransformerBlock", MultiQueryStableSoftmax, lambda: _one_kv_head(seed=207),
          (Expect(scale=0.25, is_causal=True, enable_gqa=True, verdict="causal"),), traceable=False),
]
