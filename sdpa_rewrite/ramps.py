"""Stage 4a', ramps: prove a mask causal or all-visible when its sizes are symbolic.

With dynamic shapes the fold (fold.py) cannot evaluate a mask whose query or key length is symbolic: the
cache length of a decode step, or the sequence length under `dynamic=True`. Yet the masks transformers
builds are a few index comparisons over aranges (`kv_idx <= q_idx`, the query positions offset by the
cache length). This module reads that small language symbolically:

    ramp      arange(start, end) + c, laid along one dim: its value at index x is x[dim] + offset
    band      a comparison of a query ramp (dim -2, row i) with a key ramp (dim -1, column j):
              True where lo <= j - i <= hi; `&` of bands keeps every bound
    additive  where(band, 0, fill) with a masking fill
    triangle  tril / triu of a tensor of ones: the band j - i <= k (or >= k); also a folded 0/1 buffer
              equal to tril(ones, k), sliced to symbolic lengths provably inside it (nanoGPT's `bias`)
    const     a tensor with one value everywhere: what transformers' packed-sequence check makes of
              ramps (diff of a ramp is 1, `!= 1` is False, its cumsum 0), a True scalar

and asks torch's shape environment whether the band is provably all-visible, the top-left causal one, or the
lower-right one (j - i <= S - L with S >= L known: queries after a KV cache, keys `cat`-ed onto it) for every size
the graph's guards allow (`statically_known_true` adds no guard). Anything outside the
language, or not provable, returns None and the mask stays a mask.

A ramp may also be indexed by other index tensors (gathered): `positions[batch_idx, q_idx]` is the query
ramp again, the same for every batch row; ATen spells it `aten.index.Tensor(positions, [batch_idx, q_idx])`
(torch.export), read the same way.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.fx as fx

from .reduced import integer_or_no_dtype
from .view import meta_value, same_batch, target_name

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
class Const:
    value: Any           # a bool, int or float: the tensor's every element


@dataclass(frozen=True)
class Additive:
    band: Band           # where(band, 0, fill): 0 where the band holds, a masking fill elsewhere


def symbolic_verdict(sc, top_shape: tuple, masking: float, mutated, value_of=None) -> Optional[tuple]:
    """(kind, detail) — ("none", …) or ("causal", …) — when the site's mask is provably that for every size;
    else None. `mutated(node)` says whether an in-place op writes into a mask node's cone; `value_of(node)`
    is a node's folded value or None (a registered causal buffer, sliced to symbolic lengths)."""
    L, S = top_shape[-2], top_shape[-1]
    reader = _Reader(masking, value_of)
    visible = []
    try:
        for term in sc.terms:
            if term.coeff != 1 or term.factors or not same_batch(term.at, top_shape) or mutated(term.node):
                return None
            if _factory_of(term.node, ("zeros", "new_zeros", "zeros_like")):
                visible.append(Band())                      # a zero bias of symbolic size (T5 without relative bias)
                continue
            value = reader.read(term.node)
            if not isinstance(value, Additive):
                return None
            visible.append(value.band)
        for f in sc.fills:
            if not (f.value <= -masking) or f.terms_after or not same_batch(f.at, top_shape) or mutated(f.cond):
                return None
            cond = _as_band(reader.read(f.cond))
            if cond is None:
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
    past = S - L                                                    # the keys before the first query
    if every_row and _known(S >= L) and any(_known(hi == past) and all(_known(h >= past) for h in band.hi)
                                            for hi in band.hi):
        return ("causal lower-right", "queries are the last L of S keys, proven for every size")
    return None


def _known(cond) -> bool:
    if isinstance(cond, bool):
        return cond
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    return bool(statically_known_true(cond))


def _as_band(x) -> Optional[Band]:
    """A band, or a constant True seen as the band that bounds nothing; else None."""
    if isinstance(x, Const) and x.value is True:
        return Band()
    return x if isinstance(x, Band) else None


def _negate(band: Band) -> Band:
    """~band: one bound flips to the other side (not j - i >= k is j - i <= k - 1); else marked negated."""
    if not band.negated and len(band.lo) + len(band.hi) == 1:
        if band.lo:
            return Band(hi=(band.lo[0] - 1,), rows=band.rows, cols=band.cols)
        return Band(lo=(band.hi[0] + 1,), rows=band.rows, cols=band.cols)
    if band.negated and len(band.lo) + len(band.hi) <= 1:
        return Band(band.lo, band.hi, band.rows, band.cols)
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

    def __init__(self, masking: float, value_of=None):
        self.memo: dict = {}
        self.masking = masking
        self.value_of = value_of

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
        name = target_name(node)
        args = node.args
        if name == "arange":
            return self._arange(node)
        if name in ("new_ones", "ones") and _scalar_shape(args[1:] if name == "new_ones" else args) \
                and node.kwargs.get("dtype") is torch.bool:
            return Const(True)                              # `result = q_idx.new_ones((), dtype=torch.bool)`
        if name in ("zeros", "new_zeros") and _scalar_shape(args[1:] if name == "new_zeros" else args):
            return 0.0
        if name == "tensor" and isinstance(args[0], (int, float)):
            return float(args[0])
        if name in ("tril", "triu"):
            return self._triangle(node, name)
        if name in ("getitem", "__getitem__") and self.value_of is not None and isinstance(args[0], fx.Node):
            base = self.value_of(args[0])
            if isinstance(base, torch.Tensor):
                try:
                    return _sliced_triangle(base, self._bounds(args[1]))
                except NotARamp:
                    pass                                    # a folded tensor that is not a triangle: read on
        first = self.read(args[0]) if args else None
        if name in _AND:
            second = self.read(args[1])
            if isinstance(first, Band) or isinstance(second, Band):
                a, b = _as_band(first), _as_band(second)
                combined = _and(a, b) if a is not None and b is not None else None
                if combined is None:
                    raise NotARamp
                return combined
        if isinstance(first, Const):
            return self._const(node, name, first)
        if name in ("eq", "ne", "__eq__", "__ne__") and isinstance(first, Band) and len(args) == 2 \
                and type(args[1]) in (int, bool) and args[1] in (0, 1):
            keeps = (args[1] == 1) == (name.strip("_") == "eq")     # tril == 1, tril != 0: the band itself
            return first if keeps else _negate(first)
        if name in _KEEP and isinstance(first, (Band, Additive)):
            return first                                    # a dtype, a device, a broadcast: same pattern
        if name in ("expand", "broadcast_to") and isinstance(first, Ramp):
            return _expand(first, self._sizes(args[1:]), node.kwargs)
        if name == "diff" and isinstance(first, Ramp):
            return self._diff(node, first)
        if name in ("to", "contiguous", "clone", "detach") and isinstance(first, Ramp) and \
                all(not isinstance(a, fx.Node) for a in args[1:]) and integer_or_no_dtype(args[1:], node.kwargs):
            return first                                    # a bool or float ramp would compare differently
        if name in _ARITH and isinstance(first, Ramp) != isinstance(self.read(args[1]), Ramp):
            return self._shift(name, first, self.read(args[1]))
        if name in ("getitem", "__getitem__") and isinstance(first, Ramp):
            if isinstance(args[1], tuple) and any(isinstance(i, fx.Node) for i in args[1]):
                return self._gather(first, args[1])
            return _index(first, self._bounds(args[1]))
        if name == "slice" and isinstance(first, Ramp):
            return _index(first, self._bounds(_aten_slice(args, node.kwargs, first.ndim)))
        if name == "index" and isinstance(first, Ramp) and all(isinstance(i, fx.Node) for i in args[1]):
            return self._gather(first, tuple(args[1]))      # ATen's x[i_0, …, i_n] (None entries: refused)
        if name in ("getitem", "__getitem__") and isinstance(first, (Band, Additive)) and _keeps_last_two(args[1]):
            return first
        if name == "unsqueeze" and isinstance(first, (Band, Additive)) and _before_last_two(node):
            return first                                    # a new batch or head dim: the same (i, j) pattern
        if name == "unsqueeze" and isinstance(first, Ramp):
            return _unsqueeze(first, args[1] if len(args) > 1 else node.kwargs["dim"])
        if name in _COMPARE:
            return _compare(_COMPARE[name], first, self.read(args[1]))
        if name in _NOT and isinstance(first, Band):
            return _negate(first)
        if name == "where" and isinstance(first, Band) and len(args) == 3:
            keep, fill = self.read(args[1]), self.read(args[2])
            if isinstance(keep, float) and keep == 0 and isinstance(fill, float) and fill <= -self.masking:
                return Additive(first)
        raise NotARamp

    def _triangle(self, node: fx.Node, name: str) -> Band:
        """tril(ones(L, S), k): keep j - i <= k; triu: j - i >= k. Only of a tensor of ones, so every kept
        entry is 1 (True) and every other 0."""
        source = node.args[0]
        k = node.args[1] if len(node.args) > 1 else node.kwargs.get("diagonal", 0)
        k = self.read(k) if isinstance(k, fx.Node) else k
        if not isinstance(source, fx.Node) or not _all_ones(source) or \
                not isinstance(k, (int, torch.SymInt)) or isinstance(k, bool):
            raise NotARamp
        value = meta_value(source)
        if not isinstance(value, torch.Tensor) or value.dim() < 2 or any(d != 1 for d in value.shape[:-2]):
            raise NotARamp
        rows, cols = value.shape[-2], value.shape[-1]
        return Band(hi=(k,), rows=rows, cols=cols) if name == "tril" else Band(lo=(k,), rows=rows, cols=cols)

    def _sizes(self, sizes: tuple) -> tuple:
        sizes = tuple(sizes[0]) if len(sizes) == 1 and isinstance(sizes[0], (tuple, list, torch.Size)) else tuple(sizes)
        return tuple(self.read(d) for d in sizes)

    def _bounds(self, index):
        """An index with the bounds of its slices read (sizes as SymInts)."""
        def bound(b):
            return self.read(b) if isinstance(b, fx.Node) else b

        items = index if isinstance(index, tuple) else (index,)
        out = tuple(slice(bound(i.start), bound(i.stop), bound(i.step)) if isinstance(i, slice) else i for i in items)
        return out if isinstance(index, tuple) else out[0]

    def _const(self, node: fx.Node, name: str, c: Const):
        """Ops on a one-valued tensor that keep it one-valued."""
        args = node.args
        if name in _KEEP or name in ("getitem", "__getitem__", "unsqueeze", "index", "slice"):
            dtypes = [a for a in list(args[1:]) + list(node.kwargs.values()) if isinstance(a, torch.dtype)]
            if name in ("to", "type") and dtypes:           # the value as that dtype holds it
                if dtypes[0] == torch.bool:
                    return Const(bool(c.value))
                if dtypes[0].is_floating_point:
                    return Const(float(c.value))
                return c if isinstance(c.value, bool) else Const(int(c.value))
            return c
        if name in _AND or name in _COMPARE or name in ("eq", "ne", "__eq__", "__ne__"):
            other = self.read(args[1])
            other = other.value if isinstance(other, Const) else other
            if isinstance(other, (bool, int, float)) and not isinstance(other, torch.SymInt):
                op = {"le": operator.le, "lt": operator.lt, "ge": operator.ge, "gt": operator.gt,
                      "eq": operator.eq, "ne": operator.ne}
                key = _COMPARE.get(name) or name.strip("_")
                if key in op:
                    return Const(bool(op[key](c.value, other)))
                if isinstance(c.value, bool) and isinstance(other, bool):      # `&` is logical only on bools
                    return Const(c.value and other)
            raise NotARamp
        if name in _NOT and isinstance(c.value, bool):
            return Const(not c.value)
        if name == "cumsum" and c.value in (0, False):
            return Const(0)                                 # a running sum of zeros
        raise NotARamp

    def _diff(self, node: fx.Node, ramp: Ramp) -> Const:
        """diff along the ramp's own dim is 1 everywhere, the first entry too when the prepended value is the
        ramp's first minus 1 (transformers' `first_dummy_value`)."""
        kwargs = dict(node.kwargs)
        n = node.args[1] if len(node.args) > 1 else kwargs.pop("n", 1)
        dim = node.args[2] if len(node.args) > 2 else kwargs.pop("dim", -1)
        prepend = node.args[3] if len(node.args) > 3 else kwargs.pop("prepend", None)
        if n != 1 or kwargs.pop("append", None) is not None or kwargs or not isinstance(dim, int) or \
                (dim if dim < 0 else dim - ramp.ndim) != ramp.dim:
            raise NotARamp
        if prepend is not None:
            first = self.read(prepend)
            if not (isinstance(first, Ramp) and first.dim == ramp.dim and _known(first.length == 1)
                    and _known(first.offset == ramp.offset - 1)):
                raise NotARamp
        return Const(1)

    def _gather(self, ramp: Ramp, index: tuple) -> Any:
        """`ramp[i_0, …, i_n]` with an index tensor for every dim: the ramp's value is the index along its own
        dim (plus its offset); the other indices pick among equal entries (or fail at run time)."""
        if len(index) != ramp.ndim:
            raise NotARamp
        items = [self.read(i) for i in index]
        if not all(isinstance(i, Ramp) or (isinstance(i, Const) and type(i.value) is int) for i in items):
            raise NotARamp                                  # a bool index would mask, a float one fail
        ndim = max(i.ndim if isinstance(i, Ramp) else 0 for i in items)
        own = items[ramp.ndim + ramp.dim]
        lowest = own.value if isinstance(own, Const) else own.offset
        if not _known(lowest >= 0):
            raise NotARamp                                  # a negative index would wrap to the other end
        if isinstance(own, Const):
            if not isinstance(ramp.offset, int):
                raise NotARamp                              # a Const holds plain values only: no guard from bool()
            return Const(own.value + ramp.offset)
        return Ramp(own.offset + ramp.offset, own.length, own.dim, ndim)

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


def _sliced_triangle(base: torch.Tensor, index) -> Band:
    """A folded 0/1 tensor equal to tril(ones(N, M), k) (nanoGPT's `bias` buffer), sliced [r0:r1, c0:c1] on
    its last two dims: keep (c0 + j) - (r0 + i) <= k, for slice bounds provably inside the buffer."""
    items = index if isinstance(index, tuple) else (index,)
    if len(items) != base.dim() or base.dim() < 2 or any(d != 1 for d in base.shape[:-2]) or \
            not all(i == slice(None) for i in items[:-2]) or not all(isinstance(i, slice) for i in items[-2:]):
        raise NotARamp
    grid = base.reshape(base.shape[-2], base.shape[-1])
    if grid.dtype != torch.bool and not bool(((grid == 0) | (grid == 1)).all()):
        raise NotARamp
    keep = grid != 0
    n, m = keep.shape
    k = int(keep[0].sum()) - 1 if bool(keep[0].any()) else None
    if k is None or not torch.equal(keep, torch.ones(n, m, dtype=torch.bool, device=keep.device).tril(k)):
        raise NotARamp
    (r0, r1), (c0, c1) = (_slice_bounds(items[-2], n), _slice_bounds(items[-1], m))
    return Band(hi=(k + r0 - c0,), rows=r1 - r0, cols=c1 - c0)


def _slice_bounds(item: slice, size: int) -> tuple:
    start = 0 if item.start is None else item.start
    stop = size if item.stop is None else item.stop
    if item.step not in (None, 1) or not all(isinstance(b, (int, torch.SymInt)) and not isinstance(b, bool)
                                             for b in (start, stop)) \
            or not (_known(start >= 0) and _known(start <= stop) and _known(stop <= size)):
        raise NotARamp                                     # a slice past the end would clamp: refused
    return start, stop


def _all_ones(node: fx.Node) -> bool:
    """`torch.ones(...)`, `x.new_ones(...)` or `torch.ones_like(x)` with no other fill: every entry is 1."""
    return _factory_of(node, ("ones", "new_ones", "ones_like"))


def _factory_of(node: Any, names: tuple) -> bool:
    """A call of one of these factories (its every entry is their one value, whatever its size)."""
    if not isinstance(node, fx.Node) or node.op not in ("call_function", "call_method"):
        return False
    return target_name(node) in names


def _expand(ramp: Ramp, sizes: tuple, kwargs: dict) -> Ramp:
    """A ramp broadcast to more or larger dims: the same values, unless its own dim were grown."""
    if kwargs or len(sizes) < ramp.ndim:
        raise NotARamp
    own = sizes[len(sizes) + ramp.dim]
    if not (isinstance(own, int) and own == -1) and not _known(own == ramp.length):
        raise NotARamp
    return Ramp(ramp.offset, ramp.length, ramp.dim, len(sizes))


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


def _before_last_two(node: fx.Node) -> bool:
    """unsqueeze(x, d) inserts its dim before x's last two: they stay the output's last two."""
    value = meta_value(node.args[0])
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if not isinstance(value, torch.Tensor) or not isinstance(dim, int) or value.dim() < 2:
        return False
    out = value.dim() + 1
    return 0 <= (dim if dim >= 0 else dim + out) <= out - 3


def _aten_slice(args: tuple, kwargs: dict, ndim: int) -> tuple:
    """ATen's slice(x, dim, start, end, step) as the Python index it spells: x[:, …, start:end:step]."""
    dim, start, end, step = (list(args[1:]) + [0, None, None, 1][len(args) - 1:])[:4]
    dim, start, end, step = (kwargs.get("dim", dim), kwargs.get("start", start), kwargs.get("end", end),
                             kwargs.get("step", step))
    if not isinstance(dim, int):
        raise NotARamp
    return (slice(None),) * (dim if dim >= 0 else dim + ndim) + (slice(start, end, step),)


def _index(ramp: Ramp, index) -> Ramp:
    """Basic indexing of a ramp: None adds a dim, `...` keeps the rest, a slice keeps a dim. On the ramp's own
    dim a slice `a:b` (a, b >= 0, step 1) starts the ramp at a and keeps b - a entries, when b is provably
    within it; on any other dim any slice (the values do not depend on it). Integers drop a dim: refused."""
    items = index if isinstance(index, tuple) else (index,)
    if not all(i is None or i is Ellipsis or isinstance(i, slice) for i in items) or \
            sum(i is Ellipsis for i in items) > 1:
        raise NotARamp
    consumed = sum(i is not None and i is not Ellipsis for i in items)
    if consumed > ramp.ndim:
        raise NotARamp
    out, in_dim, ramp_at = 0, 0, ramp.ndim + ramp.dim            # the ramp's dim, counted from the left
    position, offset, length = None, ramp.offset, ramp.length
    for item in items:
        if item is None:
            out += 1
            continue
        span = ramp.ndim - consumed if item is Ellipsis else 1
        if in_dim <= ramp_at < in_dim + span:
            position = out + ramp_at - in_dim
            if isinstance(item, slice) and item != slice(None):
                offset, length = _sliced(item, offset, length)
        in_dim, out = in_dim + span, out + span
    if ramp_at >= in_dim:                                     # trailing dims the index leaves alone
        position = out + ramp_at - in_dim
    ndim = out + ramp.ndim - in_dim
    return Ramp(offset, length, position - ndim, ndim)


def _sliced(item: slice, offset, length) -> tuple:
    start, stop = _slice_bounds(item, length)
    return offset + start, stop - start


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
