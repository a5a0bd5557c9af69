"""Value bounds of a mask's terms: can an additive mask hold `-inf` at all?

A query row of an additive mask that is `-inf` alone has no answer from softmax (eager: NaN); the rewrite gives
zeros there with a select on the attention output (emit). In training that select costs a second copy of each
attention output kept for the backward. A mask built in the graph from finite constants — transformers'
`where(keep, 0, finfo.min)` — can never be `-inf`, so it needs no such select.

Interval arithmetic over the canonical vocabulary (`view`): data movement keeps the bounds, `where` and
`masked_fill` take the hull, `+ - ×` combine them, and every floating result is rounded into its own dtype
(`finfo(fp32).min` cast to fp16 is `-inf`; `finfo.min + finfo.min` overflows to `-inf`). Anything else — a
graph input, a buffer, an op outside the vocabulary — is unbounded. Reads the graph, never changes it.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.fx as fx

from .view import dtype, scalar, view

aten = torch.ops.aten
Interval = tuple                                    # (lo, hi), floats, ±inf allowed

_MOVES = {"layout", "transpose", "permute", "reshape", "expand", "unsqueeze", "repeat_interleave", "getitem"}
_FACTORIES = {   # target -> index of the fill value (None: the value is fixed)
    torch.zeros: 0.0, torch.ones: 1.0, torch.zeros_like: 0.0, torch.ones_like: 1.0, "new_zeros": 0.0,
    "new_ones": 1.0, aten.zeros.default: 0.0, aten.ones.default: 1.0, aten.zeros_like.default: 0.0,
    aten.ones_like.default: 1.0,
}
_FULL = {torch.full: 1, torch.full_like: 1, "new_full": 1, aten.full.default: 1, aten.full_like.default: 1}


def never_minus_inf(terms: list, dt: torch.dtype, modules: Optional[dict] = None, root=None) -> bool:
    """Σ coeffᵢ·nodeᵢ, summed in order, is never -inf (nor NaN) in `dt` or in any term's own dtype (the sum
    may run in a narrower one before it is cast to `dt`)."""
    held = {dt} | {dtype(node) for _, node in terms}
    total: Optional[Interval] = (0.0, 0.0)
    for coeff, node in terms:
        total = _add(total, _scale(value_bounds(node, modules, root), coeff))
        for d in held:
            total = _round(total, d)
    return total is not None and total[0] > -math.inf and total[1] < math.inf


def value_bounds(node: fx.Node, modules: Optional[dict] = None, root=None, _depth: int = 0) -> Optional[Interval]:
    """Every value of `node` lies in [lo, hi] (in its own dtype), or None when that is not known."""
    if _depth > 64:
        return None
    c = scalar(node, modules, root)
    if c is not None:
        return _point(c)
    dt = dtype(node)
    if dt == torch.bool:
        return (0.0, 1.0)
    if dt is None or not dt.is_floating_point:
        return None                                  # an integer input can hold anything
    return _round(_bounds(node, modules, root, _depth), dt)


def _bounds(node: fx.Node, modules, root, depth) -> Optional[Interval]:
    def of(x):
        if isinstance(x, fx.Node):
            return value_bounds(x, modules, root, depth + 1)
        return _point(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None

    if node.op in ("call_function", "call_method"):
        if node.target in _FACTORIES:
            return _point(_FACTORIES[node.target])
        if node.target in _FULL:
            index = _FULL[node.target] + (node.op == "call_method")
            return of(node.args[index]) if len(node.args) > index else of(node.kwargs.get("fill_value"))
    op = view(node, modules)
    if op is None:
        return None
    if op.kind in _MOVES or op.kind == "cast":
        return of(op["input"])                      # the cast's rounding is applied by the caller
    if op.kind == "where":                          # where(c, a, b) ∈ hull(a, b)
        return _hull(of(op["input"]), of(op["other"]))
    if op.kind == "masked_fill":                    # masked_fill(x, c, v) ∈ hull(x, v)
        return _hull(of(op["input"]), of(op["value"]))
    if op.kind in ("add", "sub"):
        alpha = scalar(op["alpha"]) if op["alpha"] is not None else 1
        if alpha is None:
            return None
        return _add(of(op["input"]), _scale(of(op["other"]), alpha if op.kind == "add" else -alpha))  # x - α·y
    if op.kind == "mul":
        return _mul(of(op["input"]), of(op["other"]))
    if op.kind == "maximum":
        return _max(of(op["input"]), of(op["other"]))
    return None


def _point(c) -> Optional[Interval]:
    c = float(c)
    return None if math.isnan(c) else (c, c)


# Interval arithmetic; an unknown operand (None), or a NaN endpoint (-inf + inf, 0 · inf), gives None.

def _hull(a: Optional[Interval], b: Optional[Interval]) -> Optional[Interval]:
    return None if a is None or b is None else (min(a[0], b[0]), max(a[1], b[1]))


def _max(a: Optional[Interval], b: Optional[Interval]) -> Optional[Interval]:   # max(x, y) ∈ [max(lo), max(hi)]
    return None if a is None or b is None else (max(a[0], b[0]), max(a[1], b[1]))


def _add(a: Optional[Interval], b: Optional[Interval]) -> Optional[Interval]:
    if a is None or b is None:
        return None
    lo, hi = a[0] + b[0], a[1] + b[1]
    return None if math.isnan(lo) or math.isnan(hi) else (lo, hi)


def _scale(a: Optional[Interval], c: float) -> Optional[Interval]:
    return _mul(a, (float(c), float(c)))


def _mul(a: Optional[Interval], b: Optional[Interval]) -> Optional[Interval]:
    if a is None or b is None:
        return None
    products = [x * y for x in a for y in b]
    return None if any(math.isnan(p) for p in products) else (min(products), max(products))


def _round(a: Optional[Interval], dt: Optional[torch.dtype]) -> Optional[Interval]:
    """The interval as `dt` holds it: an endpoint past finfo.max rounds to ±inf."""
    if a is None or dt is None or not dt.is_floating_point:
        return a
    lo, hi = (torch.tensor(x, dtype=torch.float64).to(dt).item() for x in a)
    return (lo, hi)
