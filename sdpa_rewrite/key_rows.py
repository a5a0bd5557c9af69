"""Stage 4b, masks (continued): a bias constant along the queries, split off a causal band.

ALiBi as Bloom lays it out is one row of key offsets per head, slope[h]·j, broadcast over the queries (the
paper's slope[h]·(j - i) differs from it by a shift per query, which softmax drops), summed with the causal mask.
Folded whole it is a bias, and SDPA reads it as a dense (B, H, L, S) float mask. Split, it is two things
FlexAttention says cheaply: the rows (H·S values, added by the score_mod) and the band (a BlockMask that skips
the tiles it hides).

The split is exact when
- each row term has size 1 at the query dim, and no tensor factor after it;
- the rows' values are finite, with room to spare in every dtype the sum is taken in (folded, or bounded by
  bounds.py): flex adds them as eager does, and a row that lowers a key far below the others (MPT's slope·(j - S + 1)
  reaches -5792 at S 8192) lowers it there too, where the band still leaves each query a key;
- the rest (the other terms and the fills) folds to a band (none, causal, lower-right or a sliding window) whose
  hidden values stay masking once a row is added: at or below -(MASKING + the rows' span).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import torch

from .bounds import value_bounds
from .fold import Folder
from .masks import MASKING, Verdict, classify, mask_form, mask_nodes, runtime_key, visible_pattern
from .scores import Scores, Term
from .view import dtype, meta_value, shape
from .view import hashable as _h

BAND_KINDS = ("none", "causal", "causal lower-right", "sliding window")


@dataclass(frozen=True)
class KeyRows:
    terms: tuple          # the additive Terms constant along the queries
    band: Verdict         # what the rest of the mask is: one of BAND_KINDS
    rest: tuple           # the rest's mask nodes (erased once unused)
    constant: bool        # the rows fold to constants too (ALiBi from the slopes): no gradient reaches them

    @property
    def has_band(self) -> bool:
        """The rest hides keys: a BlockMask says it (else the rows are the whole mask)."""
        return self.band.kind != "none"


def key_rows(sc: Scores, top_shape: tuple, folder: Optional[Folder], reader,
             verdict: Optional[Verdict] = None) -> Optional[KeyRows]:
    """The site's additive mask as rows along the keys plus a band, or None when it is not one. Where the rows or
    the rest read the graph's inputs (Bloom's ALiBi from `attention_mask`), the rest's verdict and the rows' span
    are taken at run time (runtime.py), and a variant compiled for a band gets the split."""
    if folder is None or sc.clamp is not None or not all(isinstance(d, int) for d in top_shape[-2:]):
        return None
    rows = [i for i, t in enumerate(sc.terms) if along_keys(t, top_shape)]
    if not rows or any(sc.terms[i].factors for i in rows):
        return None
    key = ("key rows", tuple((t.node, t.coeff, _h(t.at)) for t in sc.terms),
           tuple((f.cond, f.masked_when, f.value, f.terms_after, _h(f.at)) for f in sc.fills), _h(top_shape),
           reader if folder.inplace else None)
    if key not in folder.verdicts:
        try:
            folder.verdicts[key] = _split(sc, top_shape, folder, reader, rows, verdict)
        except Exception:                      # keeping the whole mask is always exact
            folder.verdicts[key] = None
    return folder.verdicts[key]


def bias_along_keys(sc: Scores, top_shape: tuple, folder: Optional[Folder], reader) -> bool:
    """The mask holds a row along the keys with a value that is a visible bias: nonzero and above -MASKING (folded,
    or every value so by bounds.py), split or not. Such a mask is a float bias, not a keep-pattern of 0 and hidden
    values (plan.py keeps it off the dense-mask flex path, which reads it whole); a padding row of 0 and finfo.min
    holds no such value."""
    if folder is None:
        return False
    try:
        return any(_visible_bias(t, folder, reader) for t in sc.terms if along_keys(t, top_shape) and not t.factors)
    except Exception:                          # unknown: the mask is read as it always was
        return False


def _visible_bias(term: Term, folder: Folder, reader) -> bool:
    """Some value of coeff·term lies strictly between 0 and MASKING in size, so it shifts a visible logit (folded);
    or bounds.py keeps every value within MASKING and the term is not provably zero (a performance choice only)."""
    value = folder.value(term.node, reader)
    if value is not None:
        v = value.double().abs() * abs(term.coeff)
        return bool(((v > 0) & (v < MASKING)).any())
    bounds = value_bounds(term.node)
    return bounds is not None and tuple(bounds) != (0, 0) and max(map(abs, bounds)) * abs(term.coeff) < MASKING


def along_keys(term: Term, top_shape: tuple) -> bool:
    """The term's value is the same for every query: size 1 (or no dim) at the scores' query dim."""
    s, at = shape(term.node), term.at or top_shape
    if s is None or len(s) > len(at) or tuple(at[-2:]) != tuple(top_shape[-2:]):
        return False
    return len(s) < 2 or (isinstance(s[-2], int) and s[-2] == 1)


def _split(sc: Scores, top_shape: tuple, folder: Folder, reader, rows: list, verdict) -> Optional[KeyRows]:
    row_terms = tuple(sc.terms[i] for i in rows)
    n = len(sc.terms)
    rest_terms = tuple(t for i, t in enumerate(sc.terms) if i not in rows)
    fills = tuple(dataclasses.replace(f, terms_after=sum(1 for i in range(n - f.terms_after, n) if i not in rows))
                  for f in sc.fills)
    rest = dataclasses.replace(sc, terms=rest_terms, fills=fills)
    nodes = mask_nodes(rest)
    span, constant = _span(row_terms, folder, reader)
    values = {m: folder.value(m, reader) for m in nodes}
    if span is None or any(v is None for v in values.values()):
        return _at_run_time(rest, row_terms, top_shape, folder, reader, verdict)
    top = min(torch.finfo(d).max for d in {dtype(sc.q.node), *(dtype(t.node) for t in row_terms)}
              if d is not None and d.is_floating_point) / 4       # finite in every dtype the sum is taken in
    if not (-top < span[0] and span[1] < top):
        return None
    if not nodes:
        return KeyRows(row_terms, Verdict("none", "no mask beside the rows"), (), constant)
    form, slots = mask_form(rest)
    pattern = visible_pattern(form, top_shape, [values[m] for m in slots], MASKING + span[1] - span[0])
    if pattern is None or not bool(pattern[1].all()):
        return None
    band = classify(pattern[0], top_shape[-2], top_shape[-1])
    if band.kind not in BAND_KINDS:
        return None
    return KeyRows(row_terms, band, tuple(dict.fromkeys(nodes)), constant)


# A bias constant along the queries beside a causal band (ALiBi as Bloom lays it out) goes to flex (plan.py), which
# reads one row of S values per head and skips the band's hidden tiles, when L and S are both at least this (with
# gradients, the second figure): SDPA reads a dense (B, H, L, S) float mask instead. Attention alone on the H200
# (bench/RESULTS.md, B4 H16 E128 bf16, against SDPA with the dense bias): forward 0.95x at 2048, 1.35x at 4096,
# 1.97x at 8192; forward and backward 1.34x, 1.85x, 2.20x.
KEY_ROW_FLEX_MIN = 4096
KEY_ROW_FLEX_MIN_TRAIN = 2048


def flex_min_length(train: bool) -> int:
    """The L and S from which rows along the keys go to flex: with a backward, or without."""
    return KEY_ROW_FLEX_MIN_TRAIN if train else KEY_ROW_FLEX_MIN

# Devices where a split read at run time is asked for (one more run-time verdict, and a variant compiled when it
# holds): where plan.py chooses flex for rows (Conditions.fast_on's default).
RUN_TIME_ON = ("cuda",)


def _at_run_time(rest: Scores, rows: tuple, top_shape: tuple, folder: Folder, reader, verdict) -> Optional[KeyRows]:
    """The split of a mask that reads the graph's inputs: in a variant compiled for the rest's run-time verdict (a
    band, the rows' span cleared: masks.visible_pattern), the KeyRows; otherwise None, and the rest registered for a
    run-time verdict where the split could pay (on RUN_TIME_ON, L and S long enough for plan.py to choose it)."""
    nodes = tuple(dict.fromkeys(mask_nodes(rest)))
    if not nodes:
        return None
    key = runtime_key(rest, top_shape)
    assumed = folder.assumed.get(key)
    if assumed is not None:
        return KeyRows(rows, assumed, nodes, False) if assumed.kind in BAND_KINDS else None
    value = meta_value(rest.q.node)
    if not isinstance(value, torch.Tensor):
        return None
    least = flex_min_length(train=value.requires_grad)
    if verdict is not None and verdict.kind == "input mask" and value.device.type in RUN_TIME_ON and \
            min(top_shape[-2:]) >= least:
        folder.input_masks.setdefault(key, (rest, top_shape, reader, verdict, rows))
    return None


def _span(rows: list, folder: Folder, reader) -> tuple:
    """((lo, hi) bounding every value of Σ coeffᵢ·rowᵢ, or None; whether every row folds to a constant): the folded
    values, else bounds.py's interval."""
    lo = hi = 0.0
    constant = True
    for t in rows:
        value = folder.value(t.node, reader)
        constant = constant and value is not None
        if value is not None:
            v = value.double() * t.coeff
            a, b = float(v.min()), float(v.max())
        else:
            bounds = value_bounds(t.node)
            if bounds is None:
                return None, False
            a, b = sorted((bounds[0] * t.coeff, bounds[1] * t.coeff))
        if math.isnan(a) or math.isnan(b):
            return None, False
        lo, hi = lo + a, hi + b
    return (lo, hi), constant
