"""Stage 4a', ramps: prove a mask causal or all-visible when its sizes are symbolic.

With dynamic shapes the fold (fold.py) cannot evaluate a mask whose query or key length is symbolic: the
cache length of a decode step, or the sequence length under `dynamic=True`. Yet the masks transformers
builds are a few index comparisons over aranges (`kv_idx <= q_idx`, the query positions offset by the
cache length). This module reads that small language symbolically:

    ramp      arange(start, end) + c, laid along one dim: its value at index x is x[dim] + offset
    band      a comparison of a query ramp (dim -2, row i) with a key ramp (dim -1, column j):
              True where lo <= j - i <= hi; `&` of bands keeps every bound
    additive  where(band, 0, fill) with a masking fill

and asks torch's shape environment whether the band is provably all-visible or the top-left causal one
for every size the graph's guards allow (`statically_known_true` adds no guard). Anything outside the
language, or not provable, returns None and the mask stays a mask.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.fx as fx

from .view import meta_value

_COMPARE = {"le": "le", "lt": "lt", "ge": "ge", "gt": "gt", "__le__": "le", "__lt__": "lt", "__ge__": "ge",
            "__gt__": "gt"}
_FLIP = {"le": "ge", "lt": "gt", "ge": "le", "gt": "lt"}
_AND = {"and_", "__and__", "logical_and", "__rand__", "bitwise_and"}
_NOT = {"invert", "__invert__", "logical_not", "bitwise_not"}
_KEEP = {"to", "bool", "contiguous", "clone", "detach", "expand", "expand_as", "broadcast_to"}
_ARITH = {"add": operator.add, "__add__": operator.add, "__radd__": operator.add, "sub": operator.sub,
          "__sub__": operator.sub}


class NotARamp(Exception):
    pass


@dataclass(frozen=True)
class Ramp:
    offset: Any          # int or SymInt
    length: Any          # entries along `dim`
    dim: int             # counted from the right (-1: the last dim)
    ndim: int


@dataclass(frozen=True)
class Band:
    lo: tuple = ()       # bounds on j - i, all of which hold (a conjunction)
    hi: tuple = ()
    rows: Any = None     # the query ramp's length (None: no ramp, e.g. all True)
    cols: Any = None
    negated: bool = False


@dataclass(frozen=True)
class Additive:
    band: Band           # where(band, 0, fill): 0 where the band holds, a masking fill elsewhere


def symbolic_verdict(sc, top_shape: tuple, masking: float, mutated) -> Optional[tuple]:
    """(kind, detail) — ("none", …) or ("causal", …) — when the site's mask is provably that for every size;
    else None. `mutated(node)` says whether an in-place op writes into a mask node's cone."""
    L, S = top_shape[-2], top_shape[-1]
    reader = _Reader(masking)
    visible = []
    try:
        for term in sc.terms:
            if term.coeff != 1 or term.factors or not _same_batch(term.at, top_shape) or mutated(term.node):
                return None
            value = reader.read(term.node)
            if not isinstance(value, Additive):
                return None
            visible.append(value.band)
        for f in sc.fills:
            if not (f.value <= -masking) or f.terms_after or not _same_batch(f.at, top_shape) or mutated(f.cond):
                return None
            cond = reader.read(f.cond)
            if not isinstance(cond, Band):
                return None
            visible.append(_negate(cond) if f.masked_when else cond)
    except NotARamp:
        return None
    band = Band()
    for b in visible:
        band = _and(band, b)
        if band is None:
            return None
    return _classify(band, L, S)


def _classify(band: Band, L, S) -> Optional[tuple]:
    if band.negated or (band.rows is not None and not _known(band.rows == L)) or \
            (band.cols is not None and not _known(band.cols == S)):
        return None
    every_row = all(_known(lo <= 1 - L) for lo in band.lo)          # no lower bound cuts a key off a row
    if every_row and all(_known(hi >= S - 1) for hi in band.hi):
        return ("none", "all positions visible, proven for every size")
    if every_row and any(_known(hi == 0) and all(_known(h >= 0) for h in band.hi) for hi in band.hi):
        return ("causal", "top-left, proven for every size")
    return None


def _known(cond) -> bool:
    if isinstance(cond, bool):
        return cond
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    return bool(statically_known_true(cond))


def _same_batch(at, final) -> bool:
    from .masks import _h

    return at is None or _h(tuple(at[:-2])) == _h(tuple(final[:-2]))


def _negate(band: Band) -> Band:
    return Band(band.lo, band.hi, band.rows, band.cols, not band.negated)


def _and(a: Band, b: Band) -> Optional[Band]:
    if a.negated or b.negated:
        return None
    rows, cols = _agree(a.rows, b.rows), _agree(a.cols, b.cols)
    if rows is False or cols is False:
        return None
    return Band(a.lo + b.lo, a.hi + b.hi, rows, cols)


def _agree(x, y):
    if x is None or y is None:
        return y if x is None else x
    return x if _known(x == y) else False


class _Reader:
    """Reads a node as a scalar (int / SymInt / float), a Ramp, a Band or an Additive; NotARamp otherwise."""

    def __init__(self, masking: float):
        self.memo: dict = {}
        self.masking = masking

    def read(self, node: Any):
        if not isinstance(node, fx.Node):
            if isinstance(node, (int, float, torch.SymInt)) and not isinstance(node, bool):
                return float(node) if isinstance(node, float) else node
            raise NotARamp
        if node not in self.memo:
            self.memo[node] = self._read(node)
        return self.memo[node]

    def _read(self, node: fx.Node):
        meta = meta_value(node)
        if isinstance(meta, (int, torch.SymInt)) and not isinstance(meta, bool):
            return meta                                     # a size, or arithmetic on sizes
        if node.op not in ("call_function", "call_method"):
            raise NotARamp
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        args = node.args
        if name == "arange":
            return self._arange(node)
        if name in ("new_ones", "ones") and _scalar_shape(args[1:] if name == "new_ones" else args) \
                and node.kwargs.get("dtype") is torch.bool:
            return Band()                                   # a True scalar: `result = q_idx.new_ones(())`
        if name in ("zeros", "new_zeros") and _scalar_shape(args[1:] if name == "new_zeros" else args):
            return 0.0
        if name == "tensor" and isinstance(args[0], (int, float)):
            return float(args[0])
        first = self.read(args[0]) if args else None
        if name in _KEEP and isinstance(first, (Band, Additive)):
            return first                                    # a dtype, a device, a broadcast: same pattern
        if name in ("to", "contiguous", "clone", "detach") and isinstance(first, Ramp) and \
                all(not isinstance(a, fx.Node) for a in args[1:]) and node.kwargs.get("dtype") in (None, torch.int64):
            return first
        if name in _ARITH and isinstance(first, Ramp) != isinstance(self.read(args[1]), Ramp):
            return self._shift(name, first, self.read(args[1]))
        if name in ("getitem", "__getitem__") and isinstance(first, Ramp):
            return _index(first, args[1])
        if name in ("getitem", "__getitem__") and isinstance(first, (Band, Additive)) and _keeps_last_two(args[1]):
            return first
        if name == "unsqueeze" and isinstance(first, Ramp):
            return _unsqueeze(first, args[1] if len(args) > 1 else node.kwargs["dim"])
        if name in _COMPARE:
            return _compare(_COMPARE[name], first, self.read(args[1]))
        if name in _AND:
            second = self.read(args[1])
            if isinstance(first, Band) and isinstance(second, Band):
                combined = _and(first, second)
                if combined is not None:
                    return combined
        if name in _NOT and isinstance(first, Band):
            return _negate(first)
        if name == "where" and isinstance(first, Band) and len(args) == 3:
            keep, fill = self.read(args[1]), self.read(args[2])
            if isinstance(keep, float) and keep == 0 and isinstance(fill, float) and fill <= -self.masking:
                return Additive(first)
        raise NotARamp

    def _arange(self, node: fx.Node) -> Ramp:
        bounds = [self.read(a) for a in node.args]
        if not 1 <= len(bounds) <= 3 or any(isinstance(b, (Ramp, Band, Additive, float)) for b in bounds) or \
                (len(bounds) == 3 and bounds[2] != 1) or "step" in node.kwargs or "start" in node.kwargs or \
                node.kwargs.get("dtype") not in (None, torch.int64, torch.int32):
            raise NotARamp
        start, end = (0, bounds[0]) if len(bounds) == 1 else (bounds[0], bounds[1])
        return Ramp(start, end - start, -1, 1)

    def _shift(self, name: str, a, b):
        if isinstance(a, Ramp) and isinstance(b, (int, torch.SymInt)) and not isinstance(b, bool):
            return Ramp(_ARITH[name](a.offset, b), a.length, a.dim, a.ndim)
        if isinstance(b, Ramp) and isinstance(a, (int, torch.SymInt)) and name in ("add", "__add__", "__radd__"):
            return Ramp(a + b.offset, b.length, b.dim, b.ndim)
        raise NotARamp


def _keeps_last_two(index) -> bool:
    """An index of None / `:` / `...` that leaves a pattern's last two dims (rows, columns) the last two."""
    items = index if isinstance(index, tuple) else (index,)
    ndim = max(2, sum(i is not None and i is not Ellipsis for i in items))
    try:
        return _index(Ramp(0, 1, -1, ndim), index).dim == -1 and _index(Ramp(0, 1, -2, ndim), index).dim == -2
    except NotARamp:
        return False


def _scalar_shape(args) -> bool:
    return len(args) == 1 and args[0] in ((), [], torch.Size([]))


def _index(ramp: Ramp, index) -> Ramp:
    """`ramp[None, :, None]`-style reshapes: None adds a dim, `:` keeps one, `...` keeps the rest."""
    items = index if isinstance(index, tuple) else (index,)
    if not all(i is None or i is Ellipsis or i == slice(None) for i in items) or \
            sum(i is Ellipsis for i in items) > 1:
        raise NotARamp
    consumed = sum(i is not None and i is not Ellipsis for i in items)
    if consumed > ramp.ndim:
        raise NotARamp
    out, in_dim, ramp_at = 0, 0, ramp.ndim + ramp.dim            # the ramp's dim, counted from the left
    position = None
    for item in items:
        if item is None:
            out += 1
            continue
        span = ramp.ndim - consumed if item is Ellipsis else 1
        if in_dim <= ramp_at < in_dim + span:
            position = out + ramp_at - in_dim
        in_dim, out = in_dim + span, out + span
    if ramp_at >= in_dim:                                     # trailing dims the index leaves alone
        position = out + ramp_at - in_dim
    ndim = out + ramp.ndim - in_dim
    return Ramp(ramp.offset, ramp.length, position - ndim, ndim)


def _unsqueeze(ramp: Ramp, dim: int) -> Ramp:
    ndim = ramp.ndim + 1
    dim = dim if dim >= 0 else dim + ndim
    at = ramp.ndim + ramp.dim
    return Ramp(ramp.offset, ramp.length, (at + 1 if dim <= at else at) - ndim, ndim)


def _compare(op: str, a, b) -> Band:
    """`a op b` for a key ramp and a query ramp (either order): a bound on j - i."""
    if not (isinstance(a, Ramp) and isinstance(b, Ramp)) or {a.dim, b.dim} != {-1, -2}:
        raise NotARamp
    if a.dim == -2:                                         # put the key ramp first
        a, b, op = b, a, _FLIP[op]
    # j + a.offset (op) i + b.offset  <=>  j - i (op) b.offset - a.offset
    c = b.offset - a.offset
    if op == "le":
        return Band(hi=(c,), rows=b.length, cols=a.length)
    if op == "lt":
        return Band(hi=(c - 1,), rows=b.length, cols=a.length)
    if op == "ge":
        return Band(lo=(c,), rows=b.length, cols=a.length)
    return Band(lo=(c + 1,), rows=b.length, cols=a.length)
