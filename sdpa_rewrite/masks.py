"""Stage 4b, masks: say what a site's mask *is*, so emit can call SDPA's fastest exact form.

Flash attention runs only without an `attn_mask`; a causal mask built in the graph (transformers' eager
models build one even with no padding) would keep SDPA on a slower kernel. When every mask ingredient
folds to a constant (`fold.py`), its keep-pattern is compared with the causal shapes:

    none                all positions visible                -> attn_mask=None
    causal              keep j <= i (top-left)               -> is_causal=True
    causal lower-right  keep j <= i + S - L (L < S)          -> causal_lower_right(L, S) or the mask
    sliding window      causal band of width w               -> the mask, kept
    constant mask       anything else                        -> the mask, kept

A masked position is one the eager softmax gives weight 0: a -inf or a large finite fill (|f| >= 1e3,
far below any logit). A mask that reads input data stays a mask ("input mask"); one that reads
parameters is a "bias". With symbolic shapes the fold stops; a mask made of index comparisons over
aranges may still be proven all-visible or causal for every size (`ramps.py`), else the report says
"symbolic shapes".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.fx as fx

from .fold import Folder
from .ramps import symbolic_verdict
from .scores import Scores
from .view import hashable as _h
from .view import same_batch

# A fill or additive value at or below -MASKING leaves exp(logit - rowmax) at exactly 0 in fp32 for any
# logit range under ~900 (exp underflows below -104); -1e4 in bf16 is -9984, so the bar sits at 1e3.
MASKING = 1e3


@dataclass(frozen=True)
class Verdict:
    kind: str                 # none | causal | causal lower-right | sliding window | constant mask | input mask | bias | mask
    detail: str = ""
    empty_rows: Optional[bool] = None   # a row with every key masked: proven yes / no, or unknown (None)
    window: Optional[tuple] = None      # sliding window: (width, lower_right): keep 0 <= i - j + off < width, off
                                        # = S - L when lower_right else 0

    @property
    def alignment(self) -> str:
        """The causal flag a causal verdict gives: "top-left", "lower-right", or "" for any other verdict."""
        return {"causal": "top-left", "causal lower-right": "lower-right"}.get(self.kind, "")

    @property
    def drops_mask(self) -> bool:
        """The mask can be replaced by flags: SDPA gets no attn_mask at all."""
        return self.kind in ("none", "causal", "causal lower-right")

    def __str__(self) -> str:
        return f"{self.kind} ({self.detail})" if self.detail else self.kind


def judge(sc: Scores, top_shape: tuple, folder: Optional[Folder], reader: fx.Node) -> Optional[Verdict]:
    """The mask verdict of a site, or None when it has no mask at all."""
    nodes = mask_nodes(sc)
    if not nodes:
        return None
    if folder is None:
        return Verdict("mask", "not folded: no graph values")
    assumed = folder.assumed.get(runtime_key(sc, top_shape))
    if assumed is not None:                      # a variant compiled for the verdict this mask had at run time
        return assumed
    key = (tuple((t.node, t.coeff, _h(t.factors), _h(t.at)) for t in sc.terms),
           tuple((f.cond, f.masked_when, f.value, f.terms_after, _h(f.at)) for f in sc.fills), _h(top_shape),
           reader if folder.inplace else None)    # where the mask is read matters only if something writes it
    if key not in folder.verdicts:               # every layer reads the same mask: classify it once
        try:
            folder.verdicts[key] = _judge(sc, top_shape, folder, reader, nodes)
        except Exception as e:                   # keeping the mask is always exact: never fail a site here
            folder.verdicts[key] = Verdict("mask", f"not classified ({type(e).__name__}: {e})")
        if folder.verdicts[key].kind == "input mask":         # runtime.py may take its verdict at run time
            folder.input_masks.setdefault(runtime_key(sc, top_shape),
                                          (sc, top_shape, reader, folder.verdicts[key], ()))
    return folder.verdicts[key]


def _judge(sc: Scores, top_shape: tuple, folder: Folder, reader: fx.Node, nodes: list) -> Verdict:
    values = {}
    for n in nodes:
        value = folder.value(n, reader)
        if value is None:
            reason = folder.why_not(n)
            data = folder.input_read(n) if "symbolic" in reason else ""
            if data:                                              # name the data, not the first refusal met
                reason = f"depends on the input `{data}`"
            elif "symbolic" in reason:                            # a few index comparisons: prove them
                proven = symbolic_verdict(sc, top_shape, MASKING, lambda m: folder.mutated(m, reader),
                                          lambda m: folder.exact_value(m, reader))
                if proven is not None:
                    return Verdict(*proven, empty_rows=False)
            return _unfolded(reason)
        values[n] = value
    if not all(isinstance(d, int) for d in top_shape[-2:]):
        return _unfolded("symbolic shapes")                   # the (L, S) pattern itself varies
    try:
        visible = _visible(sc, top_shape, values)
    except _SymbolicRegroup:
        return _unfolded("symbolic shapes")
    if visible is None:
        return Verdict("bias", "constant, not a 0/-inf mask")
    return classify(visible, top_shape[-2], top_shape[-1])


def mask_nodes(sc: Scores) -> list:
    """Every tensor the mask is made of: additive terms, their tensor factors, fill conditions."""
    return [t.node for t in sc.terms] + [f.cond for f in sc.fills] + \
        [t for term in sc.terms for _, t in term.factors if isinstance(t, fx.Node)]


def classify(visible: torch.Tensor, L: int, S: int) -> Verdict:
    """Compare a boolean keep-pattern (broadcastable to (..., L, S)) with the causal shapes."""
    visible = torch.broadcast_to(visible, tuple(visible.shape[:-2]) + (L, S)) if visible.dim() >= 2 else \
        torch.broadcast_to(visible, (L, S))
    if bool(visible.all()):
        return Verdict("none", "mask folded: all positions visible", False)
    if not bool(visible.any(-1).all()):
        return Verdict("constant mask", "fully masked rows", True)
    rows = torch.arange(L, device=visible.device)[:, None]
    cols = torch.arange(S, device=visible.device)[None, :]
    delta = rows - cols                                    # i - j
    if _same(visible, delta >= 0):
        return Verdict("causal", "top-left, mask folded", False)
    if L < S and _same(visible, delta + (S - L) >= 0):
        return Verdict("causal lower-right", f"queries are the last {L} of {S} keys", False)
    for offset in (0, S - L):
        width = int(visible.reshape(-1, L, S)[0, -1].sum())
        if _same(visible, (delta + offset >= 0) & (delta + offset < width)):
            return Verdict("sliding window", f"width {width}", False, window=(width, offset != 0))
    return Verdict("constant mask", "", False)


def _same(visible: torch.Tensor, pattern: torch.Tensor) -> bool:
    return bool((visible == pattern.to(visible.device)).all())


def runtime_key(sc: Scores, top_shape: tuple) -> tuple:
    """Names a site's mask across copies of one graph (node names survive a copy; nodes do not)."""
    return tuple(n.name for n in mask_nodes(sc)), _h(top_shape)


@dataclass(frozen=True)
class MaskForm:
    """A site's mask with its tensors numbered instead of named by graph nodes: how to combine them, and nothing
    of the graph (runtime.py evaluates it on run-time values, and compiles it)."""
    terms: tuple     # (slot, coeff, factors ((kind, slot or None, number), ...), at)
    fills: tuple     # (slot, masked_when, value, terms_after, at)
    rows: tuple = ()  # (slot, coeff): rows along the keys split off this mask (key_rows.py), read for their span


def mask_form(sc: Scores, rows: tuple = ()) -> tuple:
    """(MaskForm, the nodes its slots number); `rows`: Terms split off the mask whose span its masking must clear."""
    nodes = list(dict.fromkeys(mask_nodes(sc) + [t.node for t in rows]))
    slot = {n: i for i, n in enumerate(nodes)}
    terms = tuple((slot[t.node], t.coeff, tuple((kind, slot.get(f) if isinstance(f, fx.Node) else None,
                                                 None if isinstance(f, fx.Node) else f) for kind, f in t.factors),
                   _h(t.at)) for t in sc.terms)
    fills = tuple((slot[f.cond], f.masked_when, f.value, f.terms_after, _h(f.at)) for f in sc.fills)
    return MaskForm(terms, fills, tuple((slot[t.node], t.coeff) for t in rows)), nodes


def _visible(sc: Scores, top_shape: tuple, values: dict) -> Optional[torch.Tensor]:
    """True where eager's softmax can give weight; None when the values are not a 0 / masked pattern."""
    form, nodes = mask_form(sc)
    pattern = visible_pattern(form, top_shape, [values[n] for n in nodes])
    if pattern is None or not bool(pattern[1].all()):
        return None
    return pattern[0]


def visible_pattern(form: MaskForm, top_shape: tuple, vals: list, masking: float = MASKING) -> Optional[tuple]:
    """(visible, is_mask): True where eager's softmax can give weight, and a bool tensor that broadcasts against
    it, True where the additive value is 0 or masking (at or below -`masking`), so that `is_mask.all()` says the
    values are a 0 / masking pattern (read without a host sync); None when a fill is not a masking one. With
    `form.rows`, masking must also clear the rows' span (key_rows.py), and the rows must be finite with room to
    spare: both read on the device, into is_mask."""
    checks = []
    if form.rows:
        lo = hi = 0.0
        for slot, coeff in form.rows:
            x = vals[slot].to(torch.float64) * coeff
            lo, hi = lo + x.amin(), hi + x.amax()
            if vals[slot].is_floating_point():
                room = torch.finfo(vals[slot].dtype).max / 4
                checks.append((lo > -room) & (hi < room))
        masking = masking + (hi - lo)
    additive = None
    for slot, coeff, factors, at in form.terms:
        x = vals[slot]
        if len(form.terms) > 1 or coeff != 1 or factors or not x.is_floating_point():
            x = x.to(torch.float64) * coeff            # exact sums; one plain term compares exactly as it is
        x = _laid_out(x, at, top_shape)
        for kind, t_slot, number in factors:
            t = vals[t_slot].to(torch.float64) if t_slot is not None else float(number)
            x = x * t if kind == "mul" else x / t
        additive = x if additive is None else additive + x
    masked = None
    for slot, masked_when, value, terms_after, at in form.fills:
        if terms_after:
            return None
        if isinstance(masking, torch.Tensor):
            checks.append(value <= -masking)
        elif not value <= -masking:
            return None
        cond = _laid_out(vals[slot].to(torch.bool), at, top_shape)
        m = cond if masked_when else ~cond
        masked = m if masked is None else masked | m
    if additive is not None:
        visible = additive == 0
        is_mask = visible | (additive <= -masking)
        visible = visible if masked is None else visible & ~masked
    else:
        visible, is_mask = ~masked, torch.ones((), dtype=torch.bool, device=masked.device)
    for check in checks:
        is_mask = is_mask & check.to(is_mask.device)
    return visible, is_mask


class _SymbolicRegroup(Exception):
    pass


def _laid_out(x: torch.Tensor, at: Optional[tuple], final: tuple) -> torch.Tensor:
    """A value broadcast against the scores at shape `at`, regrouped like the scores to `final`."""
    if same_batch(at, final):
        return x
    if not all(isinstance(d, int) for d in tuple(at) + tuple(final)):
        raise _SymbolicRegroup
    return x.expand(*at).reshape(*final)


def _unfolded(reason: str) -> Verdict:
    if "symbolic" in reason:
        return Verdict("mask", "not folded: symbolic shapes (dynamic=True)")
    if "parameter" in reason:
        return Verdict("bias", reason)
    if reason.startswith("depends on the input"):
        return Verdict("input mask", reason)
    return Verdict("mask", f"not folded: {reason}" if reason else "not folded")
