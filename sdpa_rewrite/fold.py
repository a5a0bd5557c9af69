"""Stage 4a, fold: evaluate a mask at rewrite time when no input *data* reaches it.

A causal mask built from `arange`, `tril`, comparisons, a registered buffer and the (static) sizes of
the inputs is the same tensor on every call; evaluating it once with real tensors lets the rewrite prove
what it is (see `masks.py`). Anything that reads an input's values, a parameter, a random op or a
symbolic size is not folded, and `Folder.why_not` says which, for the report.

One use of a symbolic size is exact to fold: as the size an `expand` grows a dimension to. `expand`
copies, so the mask is the same along that dimension whatever the size is at run time: the folder keeps
that dimension at the input's size (a "reduced" value) and lets it flow only through elementwise ops,
which broadcast it as the real one would. This is how transformers builds its causal mask
(`causal.expand(batch, -1, L, S)`), so a symbolic *batch* alone (Dynamo's automatic dynamic shapes after
a second batch size) still folds to `is_causal`.
"""
from __future__ import annotations

import operator
import re
from typing import Any, Optional, Sequence

import torch
import torch.fx as fx

from .view import _fetch_attr, is_inplace, meta_value

# Ops whose value is not a function of their inputs: never folded.
_RANDOM = ("rand", "randn", "randint", "randperm", "bernoulli", "multinomial", "normal", "dropout",
           "empty", "uniform_", "normal_", "exponential_", "random_", "bernoulli_")
# Calls that return a view of their first argument: an in-place op on the view mutates the base.
_VIEWS = {"view", "reshape", "expand", "expand_as", "unsqueeze", "squeeze", "transpose", "permute", "t",
          "narrow", "select", "contiguous", "flatten", "unflatten", "as_strided", "view_as", "to", "type",
          "float", "half", "bfloat16", "bool", "int", "long", "__getitem__", "getitem", "swapaxes",
          "diagonal", "movedim", "split", "chunk", "unbind"}
_MAX_NUMEL = 1 << 28
# Ops through which a reduced value (a symbolic `expand` kept at size 1) stays exact: they broadcast.
_ELEMENTWISE = {"where", "masked_fill", "logical_and", "logical_or", "logical_not", "logical_xor", "and_", "or_",
                "xor", "invert", "__and__", "__or__", "__xor__", "__invert__", "__rand__", "__ror__", "eq", "ne",
                "lt", "le", "gt", "ge", "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "add", "sub",
                "mul", "truediv", "div", "neg", "__add__", "__sub__", "__mul__", "__truediv__", "__radd__",
                "__rsub__", "__rmul__", "__neg__", "to", "type", "float", "bool", "half", "bfloat16", "int", "long",
                "clone", "contiguous", "detach", "expand", "broadcast_to", "getitem", "__getitem__"}
_SYMBOLIC = "symbolic shapes (dynamic=True): the mask is computed at run time"


class _Symbolic:
    """A size only known at run time, carried through the fold until something other than `expand` reads it."""

    def __repr__(self) -> str:
        return "<symbolic size>"


SYMBOLIC = _Symbolic()


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
        self.reduced: set = set()         # nodes whose value keeps a symbolically expanded dim at its input size
        self.verdicts: dict = {}          # masks.judge's cache
        self.order = {n: i for i, n in enumerate(gm.graph.nodes)}
        self.inplace = [n for n in gm.graph.nodes if is_inplace(n) and n.args]
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
            closure = self._with_mutations(node, before)
            return self._eval(node) if closure is None else self._eval_in_order(node, closure)
        except NotConstant as e:
            self.reasons[node] = str(e)
            return None

    def why_not(self, node: fx.Node) -> str:
        return self.reasons.get(node, "")

    def input_read(self, node: fx.Node) -> str:
        """The name of a forward input (not a buffer or parameter) the node's value depends on, or ""."""
        for n in _cone(node):
            if n.op == "placeholder" and isinstance(meta_value(n), torch.Tensor) \
                    and not _source_has(n, "._buffers[") and not _source_has(n, "._parameters["):
                return _input_name(n)
        return ""

    def cone(self, node: fx.Node) -> frozenset:
        """The nodes a folded value was computed from: safe to erase once nothing reads them."""
        return frozenset(n for n in _cone(node) if n.op in ("call_function", "call_method", "get_attr")
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
            pending = [n for n in _value_inputs(node) if n not in self.values]
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

    def _with_mutations(self, node: fx.Node, before: Optional[fx.Node]) -> Optional[set]:
        """The cone plus every in-place op that writes into it before `before` reads it (and their
        cones), when there is one: `_make_causal_mask` builds `full(...)` then `masked_fill_`s it."""
        if not self.inplace:
            return None
        limit = self.order.get(before, len(self.order))
        nodes = _cone(node)
        while True:
            aliases = set(nodes)
            for n in self.gm.graph.nodes:          # graph order: a view's base is seen before the view
                if n.op in ("call_method", "call_function") and n.args and n.args[0] in aliases \
                        and _name(n) in _VIEWS:
                    aliases.add(n)
            writers = [n for n in self.inplace if n.args[0] in aliases and n not in nodes
                       and self.order[n] < limit]
            if not writers:
                break
            for w in writers:
                nodes |= _cone(w)
        return nodes if any(is_inplace(n) for n in nodes) else None

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
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        if any(r in name for r in _RANDOM):
            raise NotConstant(f"`{node.name}` is random")
        if _reads_metadata(node):
            return _metadata(node)
        args = fx.node.map_arg(node.args, lambda n: env[n] if n in env else _like(n))
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
        if _sized_container_item(node, args):
            return args[0][args[1]]
        args, kwargs = self._through_symbolic(node, args, kwargs)
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

    def _through_symbolic(self, node: fx.Node, args: tuple, kwargs: dict) -> tuple:
        """Let a symbolic size through only as an `expand` size, and a reduced value only into ops that
        broadcast; anything else is not folded."""
        name = _name(node)
        if any(n in self.reduced for n in node.all_input_nodes):
            if name not in _ELEMENTWISE or (name in ("getitem", "__getitem__") and not _basic_index(args[1])):
                raise NotConstant(_SYMBOLIC)
            self.reduced.add(node)
        if not _has_symbolic((args, kwargs)):
            return args, kwargs
        if name in ("expand", "broadcast_to") and isinstance(args[0], torch.Tensor) and not kwargs \
                and not _has_symbolic(args[0]):
            sizes = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list, torch.Size)) else args[1:]
            new = len(sizes) - args[0].dim()
            sizes = tuple((1 if i < new else -1) if d is SYMBOLIC else d for i, d in enumerate(sizes))
            self.reduced.add(node)
            return (args[0], sizes), kwargs
        raise NotConstant(_SYMBOLIC)

    def _placeholder(self, node: fx.Node):
        value = meta_value(node)
        if isinstance(value, torch.SymInt):
            return SYMBOLIC
        if isinstance(value, (torch.SymFloat, torch.SymBool)):
            raise NotConstant(_SYMBOLIC)
        if _source_has(node, "._parameters["):
            raise NotConstant(f"reads the parameter `{_input_name(node)}`")
        if not _source_has(node, "._buffers["):
            raise NotConstant(f"depends on the input `{_input_name(node)}`")
        if not self.fold_buffers:
            raise NotConstant(f"reads the buffer `{_input_name(node)}` (fold_buffers=False)")
        value = self.inputs.get(node)
        if value is None:
            raise NotConstant(f"the value of buffer `{_input_name(node)}` is not known at rewrite time")
        return value.detach().clone()


def _has_symbolic(x) -> bool:
    if x is SYMBOLIC:
        return True
    if isinstance(x, (tuple, list, torch.Size)):
        return any(_has_symbolic(v) for v in x)
    if isinstance(x, dict):
        return any(_has_symbolic(v) for v in x.values())
    return False


def _sized_container_item(node: fx.Node, args: tuple) -> bool:
    """`shape[0]` on a size tuple that may hold symbolic sizes: plain indexing, no torch op."""
    return node.op == "call_function" and node.target is operator.getitem and len(args) == 2 \
        and isinstance(args[0], (tuple, list, torch.Size)) and isinstance(args[1], (int, slice))


def _basic_index(index) -> bool:
    """Integers, slices, None and `...`: along a dim whose entries are all equal these pick equal entries
    (or fail), so a reduced value stays exact. Tensor indices, which can gather or flatten, are refused."""
    items = index if isinstance(index, tuple) else (index,)
    return all(i is None or i is Ellipsis or isinstance(i, int) or
               (isinstance(i, slice) and all(b is None or isinstance(b, int) for b in (i.start, i.stop, i.step)))
               for i in items)


def _value_inputs(node: fx.Node) -> list:
    """Inputs whose *values* a node reads: none for `x.size()`, all but `self` for `x.new_ones(...)`."""
    if _reads_metadata(node):
        return []
    if _is_new_factory(node):
        return [n for n in node.args[1:] if isinstance(n, fx.Node)] + \
            [n for n in node.kwargs.values() if isinstance(n, fx.Node)]
    return list(node.all_input_nodes)


def _is_new_factory(node: fx.Node) -> bool:
    return node.op == "call_method" and node.target in ("new_ones", "new_zeros", "new_full", "new_tensor")


def _like(node: fx.Node) -> torch.Tensor:
    """Stand-in for `x` in `x.new_ones(...)`: only its dtype and device are read."""
    value = meta_value(node)
    if not isinstance(value, torch.Tensor):
        raise NotConstant(f"`{node.name}`: no metadata")
    return torch.empty(0, dtype=value.dtype, device=value.device)


def _cone(node: fx.Node) -> set:
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        stack.extend(_value_inputs(n))
    return seen


def _name(n: fx.Node) -> str:
    if n.op == "call_method":
        return n.target
    if n.target is operator.getitem:
        return "getitem"
    return getattr(n.target, "__name__", "")


def _reads_metadata(node: fx.Node) -> bool:
    if node.op == "call_method" and node.target in ("size", "dim"):
        return True
    return node.op == "call_function" and node.target is getattr and \
        node.args[1] in ("shape", "dtype", "device", "ndim", "is_cuda")


def _metadata(node: fx.Node):
    value = meta_value(node.args[0])
    if not isinstance(value, torch.Tensor):
        raise NotConstant(f"`{node.name}`: no shape metadata")
    shape = torch.Size(value.shape) if all(isinstance(d, int) for d in value.shape) else \
        tuple(d if isinstance(d, int) else SYMBOLIC for d in value.shape)          # see _Symbolic
    if node.op == "call_method" and node.target == "dim":
        return value.dim()
    if node.op == "call_method":
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return shape if dim is None else shape[dim]
    attr = node.args[1]
    return {"shape": shape, "dtype": value.dtype, "device": value.device,
            "ndim": value.dim(), "is_cuda": value.device.type == "cuda"}[attr]


def _source_name(node: fx.Node) -> str:
    """Dynamo's source of a lifted placeholder (`L['self']._modules['attn']._buffers['bias']`), or ""."""
    source = getattr(node.meta.get("grapharg"), "source", None)
    if source is None:
        return ""
    name = source.name
    return str(name() if callable(name) else name)


def _source_has(node: fx.Node, part: str) -> bool:
    """The source names the module dict the placeholder came from (`._buffers[`, `._parameters[`)."""
    return part in _source_name(node)


def _input_name(node: fx.Node) -> str:
    """`attention_mask` for Dynamo's `L['kwargs']['attention_mask']`, else the placeholder's name."""
    name = _source_name(node)
    keys = re.findall(r"\[['\"]([^'\"]+)['\"]\]", name)
    return keys[-1] if keys else (name or node.name)


def _is_fake(value: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(value, FakeTensor) or value.device.type == "meta"
