"""Stage 4a, fold: evaluate a mask at rewrite time when no input *data* reaches it.

A causal mask built from `arange`, `tril`, comparisons, a registered buffer and the (static) sizes of
the inputs is the same tensor on every call; evaluating it once with real tensors lets the rewrite prove
what it is (see `masks.py`). Anything that reads an input's values, a parameter, a random op or a
symbolic size is not folded, and `Folder.why_not` says which, for the report.

This module evaluates; two others decide what it may evaluate. `cone.py` says which nodes a value reads
and which in-place ops write into them before the mask is read. `reduced.py` lets a symbolic size through
where the value stays exact: a batch that a causal mask is only `expand`ed to still folds to `is_causal`.
"""
from __future__ import annotations

import operator
from typing import Any, Optional, Sequence

import torch
import torch.fx as fx

from .cone import Writes, cone, input_name, input_read, reads_metadata, source_has, unread_args, value_inputs
from .reduced import SYMBOLIC, Reduced
from .view import _fetch_attr, is_inplace, meta_value, target_name

# Ops whose value is not a function of their inputs: never folded.
_RANDOM = ("rand", "randn", "randint", "randperm", "bernoulli", "multinomial", "normal", "dropout",
           "empty", "uniform_", "normal_", "exponential_", "random_", "bernoulli_")
_MAX_NUMEL = 1 << 28
_SYMBOLIC = "symbolic shapes (dynamic=True): the mask is computed at run time"


class NotConstant(Exception):
    pass


class Folder:
    """Evaluates graph nodes that are constant at rewrite time (memoised; never mutates a model tensor).

    `inputs`: real values of the graph's placeholders where known (the backend's example inputs). Only
    placeholders that hold a module *buffer* are read; `fold_buffers=False` treats buffers as data.
    """

    def __init__(self, gm: fx.GraphModule, inputs: Optional[Sequence] = None, fold_buffers: bool = True):
        self.gm = gm
        self.fold_buffers = fold_buffers
        self.values: dict = {}
        self.reasons: dict = {}
        self.reduced = Reduced()          # symbolic sizes let through (reduced.py)
        self.writes = Writes(gm.graph)    # in-place ops that may write into a cone (cone.py)
        self.inplace = self.writes.inplace
        self.verdicts: dict = {}          # masks.judge's cache
        self.assumed: dict = {}           # masks.runtime_key -> Verdict: what a graph-input mask was at run time
        self.input_masks: dict = {}       # masks.runtime_key -> (Scores, top shape, reader, Verdict) of input masks
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        self.inputs = {}
        for node, value in zip(placeholders, inputs or ()):
            if isinstance(value, torch.Tensor) and not _is_fake(value):
                self.inputs[node] = value

    # ---- public --------------------------------------------------------------------------------

    def value(self, node: Any, before: Optional[fx.Node] = None) -> Optional[torch.Tensor]:
        """The value `node` has when `before` reads it, or None (see `why_not`)."""
        if not isinstance(node, fx.Node):
            return node
        try:
            closure = self.writes.closure(node, before)
            value = self._eval(node) if closure is None else self._eval_in_order(node, closure)
            if node in self.reduced.batch_index:  # its stand-in 0 is not its value: only an index may use it
                raise NotConstant(_SYMBOLIC)
            return value
        except NotConstant as e:
            self.reasons[node] = str(e)
            return None

    def exact_value(self, node: Any, before: Optional[fx.Node] = None) -> Optional[torch.Tensor]:
        """`value`, but None for a reduced value too: the tensor itself, not a stand-in broadcast to it."""
        value = self.value(node, before)
        return None if isinstance(node, fx.Node) and node in self.reduced.nodes else value

    def why_not(self, node: fx.Node) -> str:
        return self.reasons.get(node, "")

    def input_read(self, node: fx.Node) -> str:
        """The name of a forward input (not a buffer or parameter) the node's value depends on, or ""."""
        return input_read(node)

    def mutated(self, node: fx.Node, before: Optional[fx.Node] = None) -> bool:
        """Whether an in-place op writes into `node`'s cone before `before` reads it."""
        return self.writes.closure(node, before) is not None

    def cone(self, node: fx.Node) -> frozenset:
        """The nodes a folded value was computed from: safe to erase once nothing reads them."""
        return frozenset(n for n in cone(node) if n.op in ("call_function", "call_method", "get_attr")
                         and not is_inplace(n))

    # ---- evaluation ----------------------------------------------------------------------------

    def _eval(self, root: fx.Node):
        """Memoised evaluation of a cone without in-place ops."""
        stack = [root]
        while stack:
            node = stack[-1]
            if node in self.values:
                stack.pop()
                continue
            failed = self.reasons.get(node)
            if failed is not None:
                raise NotConstant(failed)
            pending = [n for n in value_inputs(node) if n not in self.values]
            if pending:
                bad = next((n for n in pending if n in self.reasons), None)
                if bad is not None:
                    self.reasons[node] = self.reasons[bad]
                    raise NotConstant(self.reasons[bad])
                stack.extend(pending)
                continue
            stack.pop()
            try:
                self.values[node] = self._run(node, self.values)
            except NotConstant as e:
                self.reasons[node] = str(e)
                raise
        return self.values[root]

    def _eval_in_order(self, root: fx.Node, closure: set):
        """Run the closure in graph order on fresh values, so each in-place op lands where it did."""
        env: dict = {}
        for n in self.gm.graph.nodes:      # every node of the closure runs before the reader
            if n in closure:
                env[n] = self._run(n, env)
        return env[root]

    def _run(self, node: fx.Node, env: dict):
        if node.op == "placeholder":
            return self._placeholder(node)
        if node.op == "get_attr":
            obj = _fetch_attr(self.gm, node.target)
            if isinstance(obj, torch.nn.Parameter):
                raise NotConstant(f"reads the parameter `{node.target}`")
            if isinstance(obj, torch.Tensor) and not node.target.split(".")[-1].startswith("_tensor_constant") \
                    and not self.fold_buffers:
                raise NotConstant(f"reads the buffer `{node.target}` (fold_buffers=False)")
            return obj.clone() if isinstance(obj, torch.Tensor) else obj
        if node.op not in ("call_function", "call_method"):
            raise NotConstant(f"`{node.name}` is a {node.op}")
        name = target_name(node)
        if any(r in name for r in _RANDOM):
            raise NotConstant(f"`{node.name}` is random")
        if reads_metadata(node):
            return _metadata(node)
        unread = unread_args(node)
        args = fx.node.map_arg(node.args, lambda n: env[n] if n in env else unread[n] if n in unread else _like(n))
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n] if n in env else unread[n])
        if _sized_container_item(node, args):
            return args[0][args[1]]
        admitted = self.reduced.admit(node, args, kwargs)
        if admitted is None:
            raise NotConstant(_SYMBOLIC)
        args, kwargs = admitted
        try:
            with torch.no_grad():
                if node.op == "call_method":
                    out = getattr(args[0], node.target)(*args[1:], **kwargs)
                else:
                    out = node.target(*args, **kwargs)
        except Exception as e:
            raise NotConstant(f"`{node.name}` could not be evaluated ({type(e).__name__})") from e
        if isinstance(out, torch.Tensor) and out.numel() > _MAX_NUMEL:
            raise NotConstant(f"`{node.name}` is too large to fold")
        if isinstance(out, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            raise NotConstant("symbolic shapes")
        return out

    def _placeholder(self, node: fx.Node):
        value = meta_value(node)
        if isinstance(value, torch.SymInt):
            return SYMBOLIC
        if isinstance(value, (torch.SymFloat, torch.SymBool)):
            raise NotConstant(_SYMBOLIC)
        if source_has(node, "._parameters["):
            raise NotConstant(f"reads the parameter `{input_name(node)}`")
        if not source_has(node, "._buffers["):
            raise NotConstant(f"depends on the input `{input_name(node)}`")
        if not self.fold_buffers:
            raise NotConstant(f"reads the buffer `{input_name(node)}` (fold_buffers=False)")
        value = self.inputs.get(node)
        if value is None:
            raise NotConstant(f"the value of buffer `{input_name(node)}` is not known at rewrite time")
        return value.detach().clone()


def _sized_container_item(node: fx.Node, args: tuple) -> bool:
    """`shape[0]` on a size tuple that may hold symbolic sizes: plain indexing, no torch op."""
    return node.op == "call_function" and node.target is operator.getitem and len(args) == 2 \
        and isinstance(args[0], (tuple, list, torch.Size)) and isinstance(args[1], (int, slice))


def _like(node: fx.Node) -> torch.Tensor:
    """Stand-in for `x` in `x.new_ones(...)`: only its dtype and device are read."""
    value = meta_value(node)
    if not isinstance(value, torch.Tensor):
        raise NotConstant(f"`{node.name}`: no metadata")
    return torch.empty(0, dtype=value.dtype, device=value.device)


def _metadata(node: fx.Node):
    value = meta_value(node.args[0])
    if not isinstance(value, torch.Tensor):
        raise NotConstant(f"`{node.name}`: no shape metadata")
    shape = torch.Size(value.shape) if all(isinstance(d, int) for d in value.shape) else \
        tuple(d if isinstance(d, int) else SYMBOLIC for d in value.shape)          # see reduced.py
    if node.op == "call_method" and node.target == "dim":
        return value.dim()
    if node.op == "call_method" or node.target is torch.ops.aten.sym_size.int:     # x.size(d), sym_size(x, d)
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return shape if dim is None else shape[dim]
    attr = node.args[1]
    return {"shape": shape, "dtype": value.dtype, "device": value.device,
            "ndim": value.dim(), "is_cuda": value.device.type == "cuda"}[attr]


def _is_fake(value: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(value, FakeTensor) or value.device.type == "meta"
