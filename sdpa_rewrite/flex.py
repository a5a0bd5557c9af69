"""What a site planned for FlexAttention calls at run time: `flex_attention` with the soft-cap and the mask as a
`score_mod`, a causal band or a dense mask's visible tiles as a `BlockMask`, and attention sinks applied from the
log-sum-exp.

These functions are called from the rewritten graph; under torch.compile they are traced like any other code
(Inductor lowers flex_attention to its fused kernel). A block mask depends only on (L, S) and the band, or on the
mask it is built from, so the sites of one graph that read one mask share one (rewrite.share_common_nodes merges
the identical calls).
"""
from __future__ import annotations

import inspect
import math
from typing import Optional

import torch
import torch.nn.functional as F

from .masks import MASKING

BLOCK = 128        # FlexAttention's default sparse block size


def band_block_mask(L: int, S: int, lo: int, hi: Optional[int], device: torch.device):
    """The BlockMask of `lo <= i - j <= hi` (hi None: no upper bound) over an (L, S) grid, built from the block
    grid alone (`band_tiles`): no L×S mask is ever materialised (create_block_mask would evaluate every
    position)."""
    def mask_mod(b, h, q_idx, kv_idx):
        d = q_idx - kv_idx
        keep = d >= lo
        return keep & (d <= hi) if hi is not None else keep

    return _block_mask(L, S, band_tiles(L, S, lo, hi, device), mask_mod)


def band_tiles(L: int, S: int, lo: int, hi: Optional[int], device: torch.device) -> list[torch.Tensor]:
    """The tile lists (`_tile_lists`) of the band's (1, 1, L/BLOCK, S/BLOCK) grid: a tile is full, partial or
    empty by the extreme values of i - j over it. Traced into the graph, where Inductor fuses it into a few
    kernels once a forward: no sort among them (`_ordered`)."""
    nq, nk = -(-L // BLOCK), -(-S // BLOCK)
    q_first = torch.arange(nq, device=device) * BLOCK
    k_first = torch.arange(nk, device=device) * BLOCK
    q_last = torch.clamp_max(q_first + BLOCK, L) - 1
    k_last = torch.clamp_max(k_first + BLOCK, S) - 1
    d_min = q_first[:, None] - k_last[None, :]
    d_max = q_last[:, None] - k_first[None, :]
    full = d_min >= lo
    empty = d_max < lo
    if hi is not None:
        full = full & (d_max <= hi)
        empty = empty | (d_min > hi)
    partial = ~full & ~empty
    return _tile_lists(partial[None, None], full[None, None])


def dense_block_mask(mask: torch.Tensor, L: int, S: int, per_row: bool = False):
    """The BlockMask of a dense mask (a bool keep-mask, True = attend, or an additive float mask; broadcastable to
    (B, H, L, S)), built on the device in one pass over it, with no host sync. A tile that no position of any
    batch row or head sees (False, or at or below -MASKING, whose weight is exactly 0: masks.py) is skipped: the
    causal triangle of a padded batch and the padding its rows share. A bool mask's tiles that every row sees
    whole are full (no mask_mod there) and the others read it through the mask_mod; a float mask is added by the
    score_mod on every tile flex visits, so each tile it keeps is full.

    `per_row=True` (the rewrite's default, plan.DENSE_FLEX_PER_ROW) keeps one entry per batch row of the mask, so
    each row also skips its own padding; False, one entry for the whole batch (B = H = 1): the tiles every row
    hides. The tile lists come from an opaque op (`visible_tiles`), like the mask the mod functions read
    (`laid_out`), so Inductor lowers flex with buffers whose layout is fixed: built in the graph, a per-row
    BlockMask made torch 2.11's CUDA kernel fault (illegal memory access, bench/RESULTS.md)."""
    from torch.nn.attention.flex_attention import noop_mask

    keep = _four_d(mask)
    lists = torch.ops.sdpa_rewrite.visible_tiles(keep, L, S, per_row)
    return _block_mask(L, S, lists, _reader(keep) if keep.dtype == torch.bool else noop_mask)


@torch.library.custom_op("sdpa_rewrite::visible_tiles", mutates_args=())
def visible_tiles(keep: torch.Tensor, L: int, S: int, per_row: bool = False) -> list[torch.Tensor]:
    """The tile lists (`_tile_lists`) of the (1, 1, L/BLOCK, S/BLOCK) tile grid of a 4-D mask, as
    dense_block_mask says ((B, 1, ...) with `per_row`)."""
    visible = keep if keep.dtype == torch.bool else keep > -MASKING
    visible = visible.expand(*visible.shape[:2], L, S)
    nq, nk = -(-L // BLOCK), -(-S // BLOCK)
    if (nq * BLOCK, nk * BLOCK) != (L, S):          # the tail tiles: never full, read through the mask_mod
        visible = F.pad(visible, (0, nk * BLOCK - S, 0, nq * BLOCK - L))
    tiles = visible.reshape(*visible.shape[:2], nq, BLOCK, nk, BLOCK)
    seen = tiles.any(-1).any(-2).any(1, keepdim=True)
    seen = seen if per_row else seen.any(0, keepdim=True)
    if keep.dtype == torch.bool:
        full = tiles.all(-1).all(-2).all(1, keepdim=True)
        full = full if per_row else full.all(0, keepdim=True)
        partial = seen & ~full
    else:
        full, partial = seen, torch.zeros_like(seen)
    return _tile_lists(partial, full)


@visible_tiles.register_fake
def _(keep: torch.Tensor, L: int, S: int, per_row: bool = False):
    return _tile_lists_like(keep.shape[0] if per_row else 1, -(-L // BLOCK), -(-S // BLOCK), keep.device)


@torch.library.custom_op("sdpa_rewrite::laid_out", mutates_args=())
def laid_out(mask: torch.Tensor) -> torch.Tensor:
    """A copy of a dense mask with a layout of its own, for the score_mod or mask_mod to read. Inductor's flex
    lowering refused a mask computed in its graph (its layout still undecided there: "convert FlexibleLayout to
    FixedLayout first", torch 2.11, a padded Llama); an opaque op's output is laid out when it is made."""
    return mask.clone()


@laid_out.register_fake
def _(mask: torch.Tensor):
    return torch.empty_like(mask)


def _tile_lists(partial: torch.Tensor, full: torch.Tensor) -> list[torch.Tensor]:
    """A BlockMask's eight lists from its (rows, 1, nq, nk) grids of partial and full tiles: (count, indices) of the
    partial and full kv tiles of every query block, then of the partial and full query tiles of every kv block
    (what the backward reads; BlockMask.from_kv_blocks would derive them by sorting inside the traced graph)."""
    return [*_ordered(partial), *_ordered(full), *_ordered(partial.mT), *_ordered(full.mT)]


def _tile_lists_like(rows: int, nq: int, nk: int, device) -> list[torch.Tensor]:
    """Empty lists shaped as `_tile_lists`' are: `visible_tiles`' fake implementation."""
    by_q = torch.empty((rows, 1, nq), dtype=torch.int32, device=device)
    by_kv = torch.empty((rows, 1, nk), dtype=torch.int32, device=device)
    kv_lists = torch.empty((rows, 1, nq, nk), dtype=torch.int32, device=device)
    q_lists = torch.empty((rows, 1, nk, nq), dtype=torch.int32, device=device)
    return [by_q, kv_lists, torch.empty_like(by_q), torch.empty_like(kv_lists),
            by_kv, q_lists, torch.empty_like(by_kv), torch.empty_like(q_lists)]


def _block_mask(L: int, S: int, lists, mask_mod):
    """The BlockMask of `_tile_lists`' eight lists; on a torch whose BlockMask cannot take the q lists, of the kv
    lists alone (it then derives the others)."""
    from torch.nn.attention.flex_attention import BlockMask

    kv_num, kv_idx, full_num, full_idx, q_num, q_idx, full_q_num, full_q_idx = lists
    if not _TAKES_Q_LISTS:
        return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=BLOCK, mask_mod=mask_mod,
                                        seq_lengths=(L, S))
    return BlockMask(seq_lengths=(L, S), kv_num_blocks=kv_num, kv_indices=kv_idx, full_kv_num_blocks=full_num,
                     full_kv_indices=full_idx, q_num_blocks=q_num, q_indices=q_idx, full_q_num_blocks=full_q_num,
                     full_q_indices=full_q_idx, BLOCK_SIZE=(BLOCK, BLOCK), mask_mod=mask_mod)


def _takes_q_lists() -> bool:
    try:
        from torch.nn.attention.flex_attention import BlockMask
    except ImportError:
        return False
    named = set(inspect.signature(BlockMask.__init__).parameters)
    return {"seq_lengths", "kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices", "q_num_blocks",
            "q_indices", "full_q_num_blocks", "full_q_indices", "BLOCK_SIZE", "mask_mod"} <= named


_TAKES_Q_LISTS = _takes_q_lists()


def _ordered(blocks: torch.Tensor) -> tuple:
    """(count, indices) of the kept tiles along the last dim, kept ones first, each in order: from_kv_blocks'
    layout. A stable partition by running counts, not a sort: traced, an argsort became Triton sort networks whose
    compile time grows with S/BLOCK (Mistral-like, S16384: 57 s of a 71 s first call, torch 2.11, bench/RESULTS.md),
    and run in ATen it cost ~0.8 ms of launches a forward. Contiguous, as `_tile_lists_like` says."""
    kept = blocks.to(torch.int64)
    before = kept.cumsum(-1) - kept                 # kept tiles left of each one
    count = kept.sum(-1)
    index = torch.arange(blocks.shape[-1], device=blocks.device).expand_as(kept)
    slot = torch.where(blocks, before, count[..., None] + index - before)
    order = torch.zeros_like(kept).scatter(-1, slot, index)
    return count.to(torch.int32).contiguous(), order.to(torch.int32).contiguous()


def band(L: int, S: int, causal: str, window: Optional[tuple]) -> tuple:
    """(lo, hi) on i - j for a causal verdict ("top-left" / "lower-right") or a window (width, lower_right)."""
    if window is not None:
        width, lower_right = window
        offset = S - L if lower_right else 0
        return -offset, width - 1 - offset
    return (L - S if causal == "lower-right" else 0), None


def flex_attention_site(q, k, v, mask: Optional[torch.Tensor] = None, sink: Optional[torch.Tensor] = None,
                        block_mask=None, *, scale: float, cap: Optional[float] = None, enable_gqa: bool = False,
                        lse: bool = False):
    """softmax(cap·tanh(scale·q·kᵀ) + mask [, sink columns]) · v, by FlexAttention.

    `mask`: a bool keep-mask (True = attend) or an additive float mask, broadcastable to (B, H, L, S), read by the
    score_mod; `block_mask`: the causal band, if the mask is one. `sink`: logits (B, H, L, n) of columns with no
    value: flex attends to the keys only, and the weights are rescaled by the mass the sinks take,
    exp(lse) / (exp(lse) + Σ exp(sink)) = sigmoid(lse − logsumexp(sink)), in fp32. `lse`: also return the
    scores' log-sum-exp (B, H, L), fp32, for a graph that reads it beside the softmax."""
    from torch.nn.attention.flex_attention import flex_attention

    if q.device.type == "cpu":        # Inductor's CPU flex kernel takes only contiguous (B, H, L, E) inputs
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    if cap is not None and not isinstance(cap, (int, float)):   # symbolic (dynamic=True): a score_mod closes over
        cap = torch.scalar_tensor(cap, dtype=torch.float32, device=q.device)  # tensors, not symbolic floats
    score_mod = _score_mod(cap, mask)
    kwargs = dict(score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=enable_gqa)
    with _static_inner_compile():
        if sink is None and not lse:
            return flex_attention(q, k, v, **kwargs)
        out, log_sum_exp = _with_lse(flex_attention, q, k, v, kwargs)
    if sink is None:
        return out, log_sum_exp.float()
    sink_lse = torch.logsumexp(sink.float(), dim=-1)
    kept = torch.sigmoid(log_sum_exp.float() - sink_lse)       # rows of no visible key: lse = -inf, weight 0
    return (out.float() * kept.unsqueeze(-1)).to(out.dtype)


def _static_inner_compile():
    """Traced outside Dynamo (AOTAutograd traces the rewritten graph), flex_attention compiles its own small
    wrapper with Dynamo, whose cache outlives the trace: a second site with another mask shape would recompile it
    with that size made symbolic, and Inductor cannot update a score_mod subgraph that takes a size as an argument
    (two windowed layers' masks in one decode step did this). Sizes symbolic in the outer trace stay symbolic."""
    import torch._dynamo

    return torch._dynamo.config.patch(automatic_dynamic_shapes=False)


def _with_lse(flex_attention, q, k, v, kwargs):
    try:
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:                                  # torch < 2.9: the older flag
        return flex_attention(q, k, v, return_lse=True, **kwargs)
    out, aux = flex_attention(q, k, v, return_aux=AuxRequest(lse=True), **kwargs)
    return out, aux.lse


def _score_mod(cap: Optional[float], mask: Optional[torch.Tensor]):
    if cap is None and mask is None:
        return None
    read = _reader(mask) if mask is not None else None
    is_bool = mask is not None and mask.dtype == torch.bool

    def score_mod(score, b, h, q_idx, kv_idx):
        if cap is not None:
            score = cap * torch.tanh(score)
        if read is not None:
            m = read(b, h, q_idx, kv_idx)
            score = torch.where(m, score, -math.inf) if is_bool else score + m
        return score

    return score_mod


def _four_d(mask: torch.Tensor) -> torch.Tensor:
    return mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape)) if mask.dim() < 4 else mask


def _reader(mask: torch.Tensor):
    """mask[b, h, q, kv] as a mod function reads it: a broadcast dim (size 1, always a plain int) at index 0; a
    symbolic size is never 1 here."""
    mask = _four_d(mask)
    spread = [not (isinstance(mask.size(i), int) and mask.size(i) == 1) for i in range(4)]

    def read(b, h, q_idx, kv_idx):
        at = [i if wide else 0 for i, wide in zip((b, h, q_idx, kv_idx), spread)]
        return mask[at[0], at[1], at[2], at[3]]

    return read
