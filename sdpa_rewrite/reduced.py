"""Symbolic sizes in the fold: the few uses of one that still fold exactly.

The fold (fold.py) evaluates with real tensors, so a size only known at run time (a `SymInt` under dynamic
shapes) has no value to run with; it travels as `SYMBOLIC` until this module admits or refuses the call
that reads it. One use is exact: as the size an `expand` grows a dimension to. `expand` copies, so the mask
is the same along that dimension whatever the size is at run time: the fold keeps that dimension at the
input's size (a "reduced" value) and lets it flow only through elementwise ops, which broadcast it as the
real one would. This is how transformers builds its causal mask (`causal.expand(batch, -1, L, S)`), so a
symbolic *batch* alone (Dynamo's automatic dynamic shapes after a second batch size) still folds to
`is_causal`. Two more uses keep a reduced value exact: an op along a dimension whose size is static
(`cumsum`, `diff`), which runs on each slice of the reduced dimension alike; and `arange(batch)` used only
as a tensor index into a dimension with one entry in the folded value, where every index picks that entry.
transformers indexes its expanded position ids this way when it checks for packed sequences
(`use_cache=False`). Any other use is refused, and the fold says "symbolic shapes".
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.fx as fx

from .view import meta_value, target_name

# Ops through which a reduced value (a symbolic `expand` kept at size 1) stays exact: they broadcast.
_ELEMENTWISE = {"where", "masked_fill", "logical_and", "logical_or", "logical_not", "logical_xor", "and_", "or_",
                "xor", "invert", "__and__", "__or__", "__xor__", "__invert__", "__rand__", "__ror__", "eq", "ne",
                "lt", "le", "gt", "ge", "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "add", "sub",
                "mul", "truediv", "div", "neg", "__add__", "__sub__", "__mul__", "__truediv__", "__radd__",
                "__rsub__", "__rmul__", "__neg__", "to", "type", "float", "bool", "half", "bfloat16", "int", "long",
                "clone", "contiguous", "detach", "expand", "broadcast_to"}
# Ops along one dimension (the position of their `dim` argument, its default): exact on a reduced value when
# that dimension's size is static, so it is not the reduced one.
_ALONG_DIM = {"cumsum": (1, None), "cumprod": (1, None), "diff": (2, -1)}
# What the index `arange(batch)` may go through before it indexes: its values stay the batch positions.
_INDEX_KEEPING = {"unsqueeze", "to", "long", "int", "contiguous", "getitem", "__getitem__"}


class _Symbolic:
    """A size only known at run time, carried through the fold until something other than `expand` reads it."""

    def __repr__(self) -> str:
        return "<symbolic size>"


SYMBOLIC = _Symbolic()


class Reduced:
    """The nodes whose folded value is reduced, and the `arange(batch)` index nodes, as the fold meets them."""

    def __init__(self):
        self.nodes: set = set()           # values that keep a symbolically expanded dim at its input's size
        self.batch_index: set = set()     # `arange(symbolic size)` and its reshapes, kept as a single 0

    def admit(self, node: fx.Node, args: tuple, kwargs: dict) -> Optional[tuple]:
        """The call's (args, kwargs) to run, with symbolic sizes replaced, when a symbolic size reaches it only
        as an `expand` size or as `arange(size)` used as an index, and a reduced value only into ops that keep
        it exact; None when the value would depend on the size."""
        name = target_name(node)
        if any(n in self.batch_index for n in node.all_input_nodes):
            return self._batch_index_use(node, name, args, kwargs)
        if any(n in self.nodes for n in node.all_input_nodes):
            if name in ("getitem", "__getitem__"):
                if not self._indexes_single_entries(node, args):
                    return None
            elif name in _ALONG_DIM:
                if _symbolic_dim(node.args[0], _dim_arg(name, args, kwargs)):
                    return None
            elif name not in _ELEMENTWISE:
                return None
            self.nodes.add(node)
        if not _has_symbolic((args, kwargs)):
            return args, kwargs
        if name in ("expand", "broadcast_to") and isinstance(args[0], torch.Tensor) and not kwargs \
                and not _has_symbolic(args[0]):
            sizes = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list, torch.Size)) else args[1:]
            new = len(sizes) - args[0].dim()
            # a symbolic size  ->  the input's (-1), or 1 for a new leading dim: the value is equal along it
            sizes = tuple((1 if i < new else -1) if d is SYMBOLIC else d for i, d in enumerate(sizes))
            self.nodes.add(node)
            return (args[0], sizes), kwargs
        if name == "arange" and len(args) == 1 and args[0] is SYMBOLIC:
            self.batch_index.add(node)
            return (1,), kwargs                   # arange(B)  ->  arange(1): the single index 0
        return None

    def _batch_index_use(self, node: fx.Node, name: str, args: tuple, kwargs: dict) -> Optional[tuple]:
        """`arange(batch)` may be reshaped (None, full slices, unsqueeze, a dtype) and then index a dimension
        that has one entry in the folded value: whatever the batch, each index picks that one entry."""
        source = node.args[0] if node.args else None
        others = [n for n in node.all_input_nodes if n is not source]
        if source in self.batch_index and name in _INDEX_KEEPING and not any(n in self.batch_index for n in others) \
                and integer_or_no_dtype(args[1:], kwargs):
            if name not in ("getitem", "__getitem__") or _only_reshapes(args[1]):
                self.batch_index.add(node)
                return args, kwargs
        elif name in ("getitem", "__getitem__") and source not in self.batch_index \
                and self._indexes_single_entries(node, args):
            self.nodes.add(node)
            return args, kwargs
        return None

    def _indexes_single_entries(self, node: fx.Node, args: tuple) -> bool:
        """Indexing keeps a reduced value exact when, along each symbolic (reduced) dim, it picks by an integer
        (the one entry, or an error), the whole slice or the batch index; a partial slice would change that
        dim's length and a tensor index could gather differently per batch. Boolean indices are refused."""
        value, index = args[0], args[1]
        items = index if isinstance(index, tuple) else (index,)
        item_nodes = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        if not isinstance(value, torch.Tensor) or len(items) != len(item_nodes):
            return False
        for (item, dim), item_node in zip(_indexed_dims(items, value.dim()), item_nodes):
            if dim is None:
                continue
            if isinstance(item_node, fx.Node) and item_node in self.batch_index:
                if value.shape[dim] != 1:
                    return False
            elif isinstance(item, torch.Tensor) and (item.dtype == torch.bool or _symbolic_dim(node.args[0], dim)):
                return False
            elif _symbolic_dim(node.args[0], dim) and not isinstance(item, int) and item != slice(None):
                return False
        return True


def integer_or_no_dtype(args: tuple, kwargs: dict) -> bool:
    """A `.to(...)` that keeps the index an integer index (a bool one would mask, a float one fail)."""
    dtypes = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.dtype)]
    return all(not d.is_floating_point and not d.is_complex and d != torch.bool for d in dtypes)


def _has_symbolic(x) -> bool:
    if x is SYMBOLIC:
        return True
    if isinstance(x, (tuple, list, torch.Size)):
        return any(_has_symbolic(v) for v in x)
    if isinstance(x, dict):
        return any(_has_symbolic(v) for v in x.values())
    if isinstance(x, slice):                  # `buffer[:, :, :t, :t]` with t symbolic
        return any(_has_symbolic(v) for v in (x.start, x.stop, x.step))
    return False


def _indexed_dims(items: tuple, ndim: int) -> list:
    """(item, the input dim it indexes) for each item of an index tuple; None for `None` and `...`."""
    consuming = sum(1 for i in items if i is not None and i is not Ellipsis)
    out, dim = [], 0
    for item in items:
        if item is Ellipsis:
            out.append((item, None))
            dim += ndim - consuming
        elif item is None:
            out.append((item, None))
        else:
            out.append((item, dim))
            dim += 1
    return out


def _symbolic_dim(node: Any, dim: Optional[int]) -> bool:
    """Whether `node`'s size along `dim` is symbolic (or unknown): the dimensions a reduced value keeps at
    its input's size are exactly its symbolic ones."""
    value = meta_value(node) if isinstance(node, fx.Node) else node
    if not isinstance(value, torch.Tensor) or not isinstance(dim, int) or not -value.dim() <= dim < max(value.dim(), 1):
        return True
    return not isinstance(value.shape[dim], int)


def _only_reshapes(index) -> bool:
    """None, `...` and whole slices: an index that adds or keeps dims without changing values."""
    items = index if isinstance(index, tuple) else (index,)
    return all(i is None or i is Ellipsis or i == slice(None) for i in items)


def _dim_arg(name: str, args: tuple, kwargs: dict) -> Optional[int]:
    position, default = _ALONG_DIM[name]
    return args[position] if len(args) > position else kwargs.get("dim", default)
