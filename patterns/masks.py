"""Masks the rewrite must *read*: constant masks folded at rewrite time (fold.py) and classified (masks.py),
and masks that read input data or parameters, which must stay masks.

A mask that reads no input data (constants, registered buffers, arange / tril / triu / ones / full,
comparisons, static slices, input sizes) is evaluated once and compared with the causal shapes:

- all visible                    -> no attn_mask                     (verdict "none")
- top-left causal, any L and S   -> is_causal=True                   (verdict "causal")
- lower-right causal, L < S      -> the causal_lower_right helper: on CPU SDPA with a bool mask
- sliding window / other pattern -> the mask, kept                   ("sliding window" / "constant mask")
- constant non-0/-inf values     -> a float mask                     ("bias", e.g. ALiBi)

A mask that reads a forward() input is an "input mask", one that reads a Parameter a "bias".
Spellings follow karpathy/nanoGPT, transformers' mask builders (4.3x `_make_causal_mask`, v5
`masking_utils`), torch's `nn.Transformer.generate_square_subsequent_mask`, Mistral's sliding window,
ALiBi (bloom / mpt) and prefix-LM (T5 / UL2 style) masks.

Sizes are read from `q.size(...)`; finfo is taken of a static float32 (upstream reads the runtime dtype,
which `symbolic_trace` cannot) so most entries trace both ways.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import Entry, Expect, padding_mask, qkv

B, H, L, E = 2, 4, 8, 16
SCALE = 1.0 / math.sqrt(E)          # 0.25
BLOCK = 16                          # nanoGPT's block_size: the buffer is sliced to the live lengths
NEG = torch.finfo(torch.float32).min


def scores(q, k):
    return (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))


def attend(s, v):
    return F.softmax(s, dim=-1) @ v


# ---- constant causal masks ---------------------------------------------------------------------

class TrilBuffer(nn.Module):
    """nanoGPT: a (1,1,T,T) tril buffer sliced to T, masked_fill(== 0, -inf)."""

    def __init__(self, block_size=BLOCK):
        super().__init__()
        self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size))

    def forward(self, q, k, v):
        T = q.size(-2)
        att = scores(q, k)
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        return attend(att, v)


class TriuInForward(nn.Module):
    """A `triu(ones, 1).bool()` upper triangle built in forward, masked_fill(-inf)."""

    def forward(self, q, k, v):
        T = q.size(-2)
        masked = torch.triu(torch.ones((T, T), device=q.device), diagonal=1).bool()
        att = scores(q, k).masked_fill(masked, float("-inf"))
        return attend(att, v)


class V5SdpaMask(nn.Module):
    """transformers v5 masking_utils: `kv_idx <= q_idx` from aranges (causal_mask_function), expanded to
    (B,1,L,S), made additive by `torch.where(mask, 0.0, finfo.min)` (the eager mask) and added to scores."""

    def forward(self, q, k, v):
        batch, q_len, kv_len = q.size(0), q.size(-2), k.size(-2)
        cache_position = torch.arange(q_len, device=q.device)
        kv_arange = torch.arange(kv_len, device=q.device)
        causal = kv_arange[None, :] <= cache_position[:, None]
        mask = causal[None, None, :, :].expand(batch, -1, -1, -1)
        mask = torch.where(mask, torch.tensor(0.0, device=q.device), torch.finfo(torch.float32).min).to(q.dtype)
        attn_weights = torch.matmul(q, k.transpose(2, 3)) * SCALE
        attn_weights = attn_weights + mask
        return torch.matmul(F.softmax(attn_weights, dim=-1), v)


class V5PackedSequenceCheck(nn.Module):
    """transformers v5 masking_utils without a KV cache: the position ids (B, L) are checked for packed
    sequences (find_packed_sequence_indices: diff, != 1, cumsum), causal_mask_function is remapped to the
    positions and ANDed with packed_sequence_mask_function, and both are broadcast over (b, h, q, kv) by
    indexing with aranges (_non_vmap_expansion_sdpa); made additive by where(0, finfo.min). Under Dynamo
    with a symbolic batch, `arange(batch)` indexes the expanded position ids: it must still fold."""

    def forward(self, q, k, v):
        batch, q_len = q.size(0), q.size(-2)
        position_ids = torch.arange(q_len, device=q.device)[None].expand(batch, -1)
        packed = (torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1) != 1).cumsum(-1)
        b = torch.arange(batch, device=q.device)[:, None, None, None]
        qi = torch.arange(q_len, device=q.device)[None, None, :, None]
        ki = torch.arange(q_len, device=q.device)[None, None, None, :]
        mask = qi.new_ones((), dtype=torch.bool)
        mask = mask & (position_ids[b, ki] <= position_ids[b, qi])
        mask = mask & (packed[b, qi] == packed[b, ki])
        mask = torch.where(mask.expand(batch, -1, q_len, q_len), torch.tensor(0.0, device=q.device), torch.finfo(torch.float32).min).to(q.dtype)
        attn_weights = torch.matmul(q, k.transpose(2, 3)) * SCALE + mask
        return torch.matmul(F.softmax(attn_weights, dim=-1), v)


class KeepWhereTril(nn.Module):
    """A boolean keep mask `torch.ones(L, S).tril().bool()`, applied as where(keep, scores, -inf)."""

    def forward(self, q, k, v):
        keep = torch.ones((q.size(-2), k.size(-2)), device=q.device).tril().bool()
        att = torch.where(keep, scores(q, k), float("-inf"))
        return attend(att, v)


class MakeCausalMask43(nn.Module):
    """transformers 4.3x modeling_attn_mask_utils._make_causal_mask: full(finfo.min), an in-place
    masked_fill_ of the lower triangle with 0, `[None, None].expand(bsz, 1, L, L)`, added to scores."""

    def forward(self, q, k, v):
        bsz, tgt_len = q.size(0), q.size(-2)
        mask = torch.full((tgt_len, tgt_len), NEG, device=q.device)
        mask_cond = torch.arange(mask.size(-1), device=q.device)
        mask.masked_fill_(mask_cond < (mask_cond + 1).view(mask.size(-1), 1), 0)
        mask = mask.to(q.dtype)
        causal_mask = mask[None, None, :, :].expand(bsz, 1, tgt_len, tgt_len)
        attn_weights = torch.matmul(q, k.transpose(2, 3)) * SCALE + causal_mask
        return torch.matmul(F.softmax(attn_weights, dim=-1), v)


class SquareSubsequentMask(nn.Module):
    """torch nn.Transformer.generate_square_subsequent_mask: triu(full(-inf), 1), an additive float mask."""

    def forward(self, q, k, v):
        T = q.size(-2)
        mask = torch.triu(torch.full((T, T), float("-inf"), device=q.device), diagonal=1).to(q.dtype)
        return attend(scores(q, k) + mask, v)


class FinfoMinWhere(nn.Module):
    """A tril buffer as a keep condition with a finite fill: where(bias, scores, finfo.min) (gpt2 style)."""

    def __init__(self, block_size=BLOCK):
        super().__init__()
        self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size, dtype=torch.bool))
                             .view(1, 1, block_size, block_size))

    def forward(self, q, k, v):
        T = q.size(-2)
        causal = self.bias[:, :, :T, :T]
        att = torch.where(causal, scores(q, k), torch.tensor(NEG, dtype=q.dtype, device=q.device))
        return attend(att, v)


# ---- KV cache: lower-right causal ---------------------------------------------------------------

class KVCacheSlice(nn.Module):
    """gpt2 / gpt-j with a KV cache: `bias[:, :, S - L:S, :S]` aligns the L new queries to the end of the
    S keys (lower-right causal); with L == 1 (a decode step) the row is all ones."""

    def __init__(self, block_size=BLOCK):
        super().__init__()
        self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size, dtype=torch.bool))
                             .view(1, 1, block_size, block_size))

    def forward(self, q, k, v):
        query_length, key_length = q.size(-2), k.size(-2)
        causal_mask = self.bias[:, :, key_length - query_length:key_length, :key_length]
        att = scores(q, k).masked_fill(~causal_mask, float("-inf"))
        return attend(att, v)


class V5CacheOffsetMask(nn.Module):
    """transformers v5 masking_utils with a KV cache: the L new queries sit at cache_position =
    arange(past, past + L), the keys at arange(past + L); causal_mask_function `kv_idx <= q_idx` over them,
    expanded and made additive with where(0, finfo.min). A decode step (L == 1) sees every key. Under
    Dynamo the cache length `past` is symbolic after a few steps: the mask must still be proven."""

    def forward(self, q, k, v):
        batch, q_len, kv_len = q.size(0), q.size(-2), k.size(-2)
        past = kv_len - q_len
        cache_position = torch.arange(past, past + q_len, device=q.device)
        kv_arange = torch.arange(kv_len, device=q.device)
        causal = kv_arange[None, None, None, :] <= cache_position[None, None, :, None]
        mask = torch.where(causal.expand(batch, -1, -1, -1), torch.tensor(0.0, device=q.device), torch.finfo(torch.float32).min).to(q.dtype)
        attn_weights = torch.matmul(q, k.transpose(2, 3)) * SCALE + mask
        return torch.matmul(F.softmax(attn_weights, dim=-1), v)


class V5CachedChunk(nn.Module):
    """A chunk of L queries after a KV cache (chunked prefill, assisted decoding): the new keys and values are
    `cat`-ed onto the cache, as transformers' DynamicCache.update does, so S = past + L and S >= L are facts of
    the graph's sizes, and v5's `kv_idx <= q_idx` mask at cache_position = arange(past, past + L) is lower-right
    causal for every past and L: SDPA with the causal_lower_right helper and no mask, also when Dynamo makes
    the lengths symbolic. Called as (q, k_new, v_new, k_cache, v_cache)."""

    def forward(self, q, k, v, k_cache, v_cache):
        k, v = torch.cat([k_cache, k], dim=-2), torch.cat([v_cache, v], dim=-2)
        return V5CacheOffsetMask.forward(self, q, k, v)


# ---- constant masks that stay masks ------------------------------------------------------------

class SlidingWindow(nn.Module):
    """Mistral, transformers v5 masking_utils.sliding_window_causal_mask_function: causal AND
    `kv_idx > q_idx - sliding_window`, from aranges, applied with masked_fill(~mask, -inf)."""

    def __init__(self, sliding_window=3):
        super().__init__()
        self.sliding_window = sliding_window

    def forward(self, q, k, v):
        q_idx = torch.arange(q.size(-2), device=q.device)[:, None]
        kv_idx = torch.arange(k.size(-2), device=q.device)[None, :]
        keep = (kv_idx <= q_idx) & (kv_idx > q_idx - self.sliding_window)
        att = scores(q, k).masked_fill(~keep, float("-inf"))
        return attend(att, v)


class SlidingWindowV4(nn.Module):
    """Mistral / Qwen2 before masking_utils (transformers 4.4x): `_prepare_4d_causal_attention_mask_with_cache_position`
    fills a finfo.min matrix, keeps the diagonal-and-below by `arange > cache_position`, ORs in the keys a window
    behind (`arange <= cache_position - window`, in place), multiplies in place, and adds the result."""

    def __init__(self, sliding_window=3):
        super().__init__()
        self.sliding_window = sliding_window

    def forward(self, q, k, v):
        L, S = q.size(-2), k.size(-2)
        cache_position = torch.arange(L, device=q.device)
        causal_mask = torch.full((L, S), torch.finfo(q.dtype).min, dtype=q.dtype, device=q.device)
        diagonal_attend_mask = torch.arange(S, device=q.device) > cache_position.reshape(-1, 1)
        sliding_attend_mask = torch.arange(S, device=q.device) <= (cache_position.reshape(-1, 1) - self.sliding_window)
        diagonal_attend_mask.bitwise_or_(sliding_attend_mask)
        causal_mask *= diagonal_attend_mask
        causal_mask = causal_mask[None, None, :, :].expand(q.size(0), 1, -1, -1)
        return attend(scores(q, k) + causal_mask, v)


class ChunkedCausal(nn.Module):
    """Llama 4's chunked (local) attention, transformers v5 masking_utils.chunked_causal_mask_function: causal AND
    `kv_idx // chunk_size == q_idx // chunk_size`, from aranges: each query sees its own chunk's earlier keys."""

    def __init__(self, chunk_size=3):
        super().__init__()
        self.chunk_size = chunk_size

    def forward(self, q, k, v):
        q_idx = torch.arange(q.size(-2), device=q.device)[:, None]
        kv_idx = torch.arange(k.size(-2), device=q.device)[None, :]
        keep = (kv_idx <= q_idx) & (kv_idx // self.chunk_size == q_idx // self.chunk_size)
        att = scores(q, k).masked_fill(~keep, float("-inf"))
        return attend(att, v)


class PrefixLM(nn.Module):
    """A prefix-LM mask (T5 / UL2 prefix LM, PaliGemma): the first `prefix` keys are visible to every
    query, the rest causal — a constant mask that is neither causal nor a window."""

    def __init__(self, prefix=3):
        super().__init__()
        self.prefix = prefix

    def forward(self, q, k, v):
        q_idx = torch.arange(q.size(-2), device=q.device)[:, None]
        kv_idx = torch.arange(k.size(-2), device=q.device)[None, :]
        keep = (kv_idx <= q_idx) | (kv_idx < self.prefix)
        att = torch.where(keep, scores(q, k), float("-inf"))
        return attend(att, v)


class AllVisible(nn.Module):
    """A mask that masks nothing: `ones(...).bool()` used in where(keep, scores, -inf)."""

    def forward(self, q, k, v):
        keep = torch.ones((q.size(0), 1, q.size(-2), k.size(-2)), device=q.device).bool()
        att = torch.where(keep, scores(q, k), float("-inf"))
        return attend(att, v)


class ConstantAlibi(nn.Module):
    """ALiBi (bloom / mpt build_alibi_bias): fixed slopes 2^(-8(h+1)/H) times the key-query distance
    from aranges, added to the scores — constant, but a bias, not a 0/-inf mask."""

    def __init__(self, n_heads=H):
        super().__init__()
        slopes = torch.tensor([2.0 ** (-8.0 * (i + 1) / n_heads) for i in range(n_heads)])
        self.register_buffer("slopes", slopes.view(1, n_heads, 1, 1))

    def forward(self, q, k, v):
        q_pos = torch.arange(q.size(-2), device=q.device, dtype=torch.float32)[:, None]
        k_pos = torch.arange(k.size(-2), device=q.device, dtype=torch.float32)[None, :]
        alibi = (self.slopes * (k_pos - q_pos)[None, None]).to(q.dtype)   # bloom: build_alibi_tensor(..., dtype)
        return attend(scores(q, k) + alibi, v)


class ParameterBias(nn.Module):
    """A learned (1,H,L,S) relative bias (T5 / Swin-style position bias table, here a dense Parameter)."""

    def __init__(self, n_heads=H, l=L, s=L):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.rel_bias = nn.Parameter(torch.randn(1, n_heads, l, s, generator=g))

    def forward(self, q, k, v):
        return attend(scores(q, k) + self.rel_bias, v)


class SwinMinus100Buffer(nn.Module):
    """Swin (microsoft/Swin-Transformer: models/swin_transformer.py, SwinTransformerBlock): a registered
    additive mask buffer filled with -100.0 where masked, added to the scores. -100 leaves weight exp(-100)
    on a masked key: a constant bias, not a 0/-inf mask (here the pattern is causal, the buffer full size)."""

    def __init__(self, n=L):
        super().__init__()
        attn_mask = torch.ones(n, n).triu(1)
        attn_mask = attn_mask.masked_fill(attn_mask != 0, -100.0).masked_fill(attn_mask == 0, 0.0)
        self.register_buffer("attn_mask", attn_mask[None, None])

    def forward(self, q, k, v):
        return attend(scores(q, k) + self.attn_mask, v)


# ---- masks that read inputs --------------------------------------------------------------------

class WhereKeepMask(nn.Module):
    """A bool keep mask input (True = attend) of any broadcastable shape: where(mask, scores, -inf)."""

    def forward(self, q, k, v, mask):
        return attend(torch.where(mask, scores(q, k), float("-inf")), v)


class MaskedFillInput(nn.Module):
    """A bool masked-position input (True = masked): scores.masked_fill(mask, -inf)."""

    def forward(self, q, k, v, mask):
        return attend(scores(q, k).masked_fill(mask, float("-inf")), v)


class IntPaddingMask(nn.Module):
    """BERT-style 0/1 integer attention_mask (1 = attend), (B,1,1,S): masked_fill(mask == 0, -inf)."""

    def forward(self, q, k, v, attention_mask):
        return attend(scores(q, k).masked_fill(attention_mask == 0, float("-inf")), v)


class AdditiveInputMask(nn.Module):
    """An additive (B,1,L,S) float mask input (0 / finfo.min), added to the scores."""

    def forward(self, q, k, v, attention_mask):
        return attend(scores(q, k) + attention_mask, v)


class CausalBufferAndPadding(nn.Module):
    """A tril buffer masked_fill(-inf) combined with an additive padding mask input: still an input mask."""

    def __init__(self, block_size=BLOCK):
        super().__init__()
        self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size))

    def forward(self, q, k, v, attention_mask):
        T = q.size(-2)
        att = scores(q, k).masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = att + attention_mask
        return attend(att, v)


# ---- example inputs ----------------------------------------------------------------------------

def keep_mask(shape, seed):
    """A random bool keep mask (True = attend) whose every row keeps its diagonal: no fully masked row."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(*shape, generator=g) < 0.6
    return keep | torch.eye(shape[-2], shape[-1], dtype=torch.bool)


def int_padding(b=B, s=L):
    m = torch.ones(b, 1, 1, s, dtype=torch.long)
    m[1, ..., s - 3:] = 0
    return m


def _with(seed, *extra, **kw):
    return lambda: qkv(seed=seed, **kw) + tuple(x() if callable(x) else x for x in extra)


_causal = Expect(scale=SCALE, mask="none", is_causal=True, verdict="causal")
_none = Expect(scale=SCALE, mask="none", verdict="none")

ENTRIES = [
    Entry("masks/tril_buffer_masked_fill", "karpathy/nanoGPT: model.py: CausalSelfAttention.forward (slow path)",
          TrilBuffer, _with(101), (_causal,), traceable=False),
    Entry("masks/triu_ones_in_forward", "variant: triu(ones(T, T), 1).bool() built in forward, masked_fill(-inf)",
          TriuInForward, _with(102), (_causal,)),
    Entry("masks/v5_arange_where_finfo_min",
          "transformers: masking_utils.py sdpa_mask / eager_mask (v5): causal_mask_function + where(0, finfo.min)",
          V5SdpaMask, _with(103), (_causal,)),
    Entry("masks/v5_packed_sequence_check",
          "transformers: masking_utils.py (v5, no cache): find_packed_sequence_indices + packed_sequence_mask_function, "
          "_non_vmap_expansion_sdpa", V5PackedSequenceCheck, _with(116), (_causal,)),
    Entry("masks/keep_where_tril_ones", "variant: where(ones(L, S).tril().bool(), scores, -inf)",
          KeepWhereTril, _with(104), (_causal,)),
    Entry("masks/make_causal_mask_4x",
          "transformers 4.3x: modeling_attn_mask_utils._make_causal_mask (full(finfo.min) + masked_fill_)",
          MakeCausalMask43, _with(105), (_causal,)),
    Entry("masks/square_subsequent_mask", "pytorch: nn.Transformer.generate_square_subsequent_mask (additive -inf)",
          SquareSubsequentMask, _with(106), (_causal,)),
    Entry("masks/where_finfo_min_buffer", "transformers: gpt2 _attn: where(causal_mask, w, finfo.min) on a bool buffer",
          FinfoMinWhere, _with(107), (_causal,), traceable=False),
    Entry("masks/top_left_causal_l_ne_s", "variant: where(ones(L, S).tril(), ...) with L=4 queries, S=8 keys (top-left)",
          KeepWhereTril, _with(108, l=4, s=8), (_causal,)),
    Entry("masks/kv_cache_lower_right", "transformers 4.x gpt2/gptj _attn: bias[:, :, S-L:S, :S] with a KV cache",
          KVCacheSlice, _with(109, l=4, s=12),
          (Expect(scale=SCALE, mask="bool", verdict="causal lower-right"),), traceable=False),
    Entry("masks/kv_cache_decode_step", "transformers 4.x gpt2/gptj _attn: the same slice, one query (decode)",
          KVCacheSlice, _with(110, l=1, s=12), (_none,), traceable=False),
    Entry("masks/v5_cache_offset_decode_step",
          "transformers: masking_utils.py (v5) causal_mask_function at cache_position = arange(past, past + 1)",
          V5CacheOffsetMask, _with(117, l=1, s=12), (_none,)),
    Entry("masks/v5_cache_offset_chunk",
          "transformers: masking_utils.py (v5) causal_mask_function, 4 new queries after a cache of 8 (lower-right)",
          V5CacheOffsetMask, _with(118, l=4, s=12),
          (Expect(scale=SCALE, mask="bool", verdict="causal lower-right"),)),
    Entry("masks/sliding_window", "mistral sliding window: masking_utils.sliding_window_causal_mask_function (v5)",
          SlidingWindow, _with(111), (Expect(scale=SCALE, mask="bool", verdict="sliding window"),)),
    Entry("masks/sliding_window_v4",
          "transformers 4.4x mistral/qwen2: _prepare_4d_causal_attention_mask_with_cache_position (sliding window)",
          SlidingWindowV4, _with(119, l=8), (Expect(scale=SCALE, mask="float", verdict="sliding window"),),
          traceable=False),
    Entry("masks/chunked_causal", "llama4 chunked attention: masking_utils.chunked_causal_mask_function (v5)",
          ChunkedCausal, _with(120), (Expect(scale=SCALE, mask="bool", verdict="constant mask"),),
          notes="neither causal nor a window: kept as the mask; a long one on CUDA without gradients goes to "
                "FlexAttention with the BlockMask of its visible tiles (plan.py), which skips the other chunks"),
    Entry("masks/prefix_lm", "prefix-LM mask (T5/UL2 prefix LM, paligemma token_type_ids_mask_function)",
          PrefixLM, _with(112), (Expect(scale=SCALE, mask="bool", verdict="constant mask"),)),
    Entry("masks/all_visible", "variant: where(ones(B, 1, L, S).bool(), scores, -inf): masks nothing",
          AllVisible, _with(113), (_none,)),
    Entry("masks/alibi_constant", "ALiBi (bloom/mpt): fixed slopes * arange distance, added to scores",
          ConstantAlibi, _with(114), (Expect(scale=SCALE, mask="float", verdict="bias"),)),
    Entry("masks/swin_minus100_buffer", "microsoft/Swin-Transformer: swin_transformer.py: attn_mask buffer, -100.0 fill",
          SwinMinus100Buffer, _with(122), (Expect(scale=SCALE, mask="float", verdict="bias"),)),
    Entry("masks/parameter_bias", "T5 / Swin style learned position bias (a Parameter added to scores)",
          ParameterBias, _with(115), (Expect(scale=SCALE, mask="float", verdict="bias"),)),
    Entry("masks/input_keep_b1ls", "variant: a (B,1,L,S) bool keep mask input, where(mask, s, -inf)",
          WhereKeepMask, _with(116, lambda: keep_mask((B, 1, L, L), 116)),
          (Expect(scale=SCALE, mask="bool", verdict="input mask"),)),
    Entry("masks/input_masked_11ls", "variant: a (1,1,L,S) bool masked-position input, masked_fill(mask, -inf)",
          MaskedFillInput, _with(117, lambda: ~keep_mask((1, 1, L, L), 117)),
          (Expect(scale=SCALE, mask="bool", verdict="input mask"),)),
    Entry("masks/input_keep_ls", "variant: an (L,S) bool keep mask input, where(mask, s, -inf)",
          WhereKeepMask, _with(118, lambda: keep_mask((L, L), 118)),
          (Expect(scale=SCALE, mask="bool", verdict="input mask"),)),
    Entry("masks/input_int_padding", "transformers bert-style 0/1 attention_mask: masked_fill(mask == 0, -inf)",
          IntPaddingMask, _with(119, int_padding), (Expect(scale=SCALE, mask="bool", verdict="input mask"),)),
    Entry("masks/input_additive_padding", "transformers: an additive (B,1,L,S) 0/finfo.min attention_mask input",
          AdditiveInputMask, _with(120, padding_mask), (Expect(scale=SCALE, mask="float", verdict="input mask"),)),
    Entry("masks/causal_buffer_plus_padding", "nanoGPT tril buffer + an additive padding mask input",
          CausalBufferAndPadding, _with(121, padding_mask),
          (Expect(scale=SCALE, mask="float", verdict="input mask"),), traceable=False),
]
