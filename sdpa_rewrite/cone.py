"""The fold's cones: which nodes a value is computed from, and what reaches them.

The fold (fold.py) may evaluate a node only from what its value reads: not the tensor behind `x.size()`,
nor `self` in `x.new_ones(...)` (their metadata is read, not their values). This module walks that cone,
adds the in-place ops that write into it before a reader reads it (`full(...)` then `masked_fill_`, as
`_make_causal_mask` does), and names the forward input a cone reaches, for the report. It reads the graph
and evaluates nothing.
"""
from __future__ import annotations

import re
from typing import Optional

import torch
import torch.fx as fx
import torch.nn.functional as F

from .view import is_inplace, meta_value, target_name

# Calls that return a view of their first argument: an in-place op on the view mutates the base.
_VIEWS = {"view", "reshape", "expand", "expand_as", "unsqueeze", "squeeze", "transpose", "permute", "t",
          "narrow", "select", "contiguous", "flatten", "unflatten", "as_strided", "view_as", "to", "type",
          "float", "half", "bfloat16", "bool", "int", "long", "__getitem__", "getitem", "swapaxes",
          "diagonal", "movedim", "split", "chunk", "unbind",
          "slice", "alias", "_unsafe_view", "_reshape_alias", "split_with_sizes", "unsafe_split"}   # aten spellings


def cone(node: fx.Node) -> set:
    """`node` and every node whose value it reads, transitively."""
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        stack.extend(value_inputs(n))
    return seen


def value_inputs(node: fx.Node) -> list:
    """Inputs whose *values* a node reads: none for `x.size()`, all but `self` for `x.new_ones(...)`."""
    if reads_metadata(node):
        return []
    if _is_new_factory(node):
        return [n for n in node.args[1:] if isinstance(n, fx.Node)] + \
            [n for n in node.kwargs.values() if isinstance(n, fx.Node)]
    unread = unread_args(node)
    return [n for n in node.all_input_nodes if n not in unread]


def unread_args(node: fx.Node) -> dict:
    """Argument nodes a call never reads, with a stand-in: `F.embedding` reads `norm_type` only with a
    `max_norm` (dynamic=True makes that module float a graph input, which would look like data)."""
    if node.target is F.embedding and _arg(node, 3, "max_norm") is None:
        norm_type = _arg(node, 4, "norm_type")
        if isinstance(norm_type, fx.Node):
            return {norm_type: 2.0}
    return {}


def reads_metadata(node: fx.Node) -> bool:
    """`x.size()`, `x.dim()`, `x.shape`, `x.dtype`, ATen's `sym_size(x, d)`…: reads what the tensor is, not what it
    holds."""
    if node.op == "call_method" and node.target in ("size", "dim"):
        return True
    if node.op == "call_function" and node.target is torch.ops.aten.sym_size.int:   # export's and make_fx's sizes
        return True
    return node.op == "call_function" and node.target is getattr and \
        node.args[1] in ("shape", "dtype", "device", "ndim", "is_cuda")


class Writes:
    """The graph's in-place ops, and which of them write into a cone before a given node reads it."""

    def __init__(self, graph: fx.Graph):
        self.graph = graph
        self.order = {n: i for i, n in enumerate(graph.nodes)}
        self.inplace = [n for n in graph.nodes if is_inplace(n) and n.args]

    def closure(self, node: fx.Node, before: Optional[fx.Node]) -> Optional[set]:
        """The cone plus every in-place op that writes into it before `before` reads it (and their
        cones), when there is one; None when nothing writes into the cone."""
        if not self.inplace:
            return None
        limit = self.order.get(before, len(self.order))
        nodes = cone(node)
        while True:
            aliases = set(nodes)
            for n in self.graph.nodes:             # graph order: a view's base is seen before the view
                if n.op in ("call_method", "call_function") and n.args and n.args[0] in aliases \
                        and target_name(n) in _VIEWS:
                    aliases.add(n)
            writers = [n for n in self.inplace if n.args[0] in aliases and n not in nodes
                       and self.order[n] < limit]
            if not writers:
                break
            for w in writers:
                nodes |= cone(w)
        return nodes if any(is_inplace(n) for n in nodes) else None


def input_read(node: fx.Node) -> str:
    """The name of a forward input (not a buffer or parameter) the node's value depends on, or ""."""
    for n in cone(node):
        if n.op == "placeholder" and isinstance(meta_value(n), torch.Tensor) \
                and not source_has(n, "._buffers[") and not source_has(n, "._parameters["):
            return input_name(n)
    return ""


def source_has(node: fx.Node, part: str) -> bool:
    """The source names the module dict the placeholder came from (`._buffers[`, `._parameters[`)."""
    return part in _source_name(node)


def input_name(node: fx.Node) -> str:
    """`attention_mask` for Dynamo's `L['kwargs']['attention_mask']`, else the placeholder's name."""
    name = _source_name(node)
    keys = re.findall(r"\[['\"]([^'\"]+)['\"]\]", name)
    return keys[-1] if keys else (name or node.name)


def _source_name(node: fx.Node) -> str:
    """Dynamo's source of a lifted placeholder (`L['self']._modules['attn']._buffers['bias']`), or ""."""
    source = getattr(node.meta.get("grapharg"), "source", None)
    if source is None:
        return ""
    name = source.name
    return str(name() if callable(name) else name)


def _arg(node: fx.Node, i: int, name: str):
    return node.args[i] if len(node.args) > i else node.kwargs.get(name)


def _is_new_factory(node: fx.Node) -> bool:
    return node.op == "call_method" and node.target in ("new_ones", "new_zeros", "new_full", "new_tensor")
