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
a second batch size) still folds to `is_causal`. Two more uses keep a reduced value exact: an op along a
dimension whose size is static (`cumsum`, `diff`), which runs on each slice of the reduced dimension
alike; and `arange(batch)` used only as a tensor index into a dimension with one entry in the folded
value, where every index picks that entry. transformers indexes its expanded position ids this way
when it checks for packed sequences (`use_cache=False`).
"""
from __future__ import annotations

import operator
import re
from typing import Any, Optional, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F

from .view import _fetch_attr, is_inplace, meta_value, target_name

# Ops whose value is not a function of their inputs: never folded.
_RANDOM = ("rand", "randn", "randint", "randperm", "bernoulli", "multinomial", "normal", "dropout",
           "empty", "uniform_", "normal_", "exponential_", "random_", "bernoulli_")
# Calls that return a view of their first argument: an in-place op on the view mutates the base.
_VIEWS = {"view", "reshape", "expand", "expand_as", "unsqueeze", "squeeze", "transpose", "permute", "t",
          "narrow", "select", "contiguous", "flatten", "unflatten", "as_strided", "view_as", "to", "type",
          "float", "half", "bfloat16", "bool", "int", "long", "__getitem__", "getitem", "swapaxes",
          "diagonal", "movedim", "split", "chunk", "unbind",
          "slice", "alias", "_unsafe_view", "_reshape_alias", "split_with_sizes", "unsafe_split"}   # aten spellings
_MAX_NUMEL = 1 << 28
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
        self.batch_index: set = set()     # `arange(symbolic size)` and its reshapes, kept as a single 0
        self.verdicts: dict = {}          # masks.judge's cache
        self.assumed: dict = {}           # masks.runtime_key -> Verdict: what a graph-input mask was at run time
        self.input_masks: dict = {}       # masks.runtime_key -> (Scores, top shape, reader, Verdict) of input masks
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
            value = self._eval(node) if closure is None else self._eval_in_order(node, closure)
            if node in self.batch_index:          # its stand-in 0 is not its value: only an index may use it
                raise NotConstant(_SYMBOLIC)
            return value
        except NotConstant as e:
            self.reasons[node] = str(e)
            return None

    def exact_value(self, node: Any, before: Optional[fx.Node] = None) -> Optional[torch.Tensor]:
        """`value`, but None for a reduced value too: the tensor itself, not a stand-in broadcast to it."""
        value = self.value(node, before)
        return None if isinstance(node, fx.Node) and node in self.reduced else value

    def why_not(self, node: fx.Node) -> str:
        return self.reasons.get(node, "")

    def input_read(self, node: fx.Node) -> str:
        """The name of a forward input (not a buffer or parameter) the node's value depends on, or ""."""
        for n in _cone(node):
            if n.op == "placeholder" and isinstance(meta_value(n), torch.Tensor) \
                    and not _source_has(n, "._buffers[") and not _source_has(n, "._parameters["):
                return _input_name(n)
        return ""

    def mutated(self, node: fx.Node, before: Optional[fx.Node] = None) -> bool:
        """Whether an in-place op writes into `node`'s cone before `before` reads it."""
        return self._with_mutations(node, before) is not None

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
                        and target_name(n) in _VIEWS:
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
        name = target_name(node)
        if any(r in name for r in _RANDOM):
            raise NotConstant(f"`{node.name}` is random")
        if _reads_metadata(node):
            return _metadata(node)
        unread = _unread_args(node)
        args = fx.node.map_arg(node.args, lambda n: env[n] if n in env else unread[n] if n in unread else _like(n))
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n] if n in env else unread[n])
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
        """Let a symbolic size through only as an `expand` size or as `arange(size)` used as an index, and a
        reduced value only into ops that keep it exact (see the module docstring); anything else is not folded."""
        name = target_name(node)
        if any(n in self.batch_index for n in node.all_input_nodes):
            return self._batch_index_use(node, name, args, kwargs)
        if any(n in self.reduced for n in node.all_input_nodes):
            if name in ("getitem", "__getitem__"):
                if not self._indexes_single_entries(node, args):
                    raise NotConstant(_SYMBOLIC)
            elif name in _ALONG_DIM:
                if _symbolic_dim(node.args[0], _dim_arg(name, args, kwargs)):
                    raise NotConstant(_SYMBOLIC)
            elif name not in _ELEMENTWISE:
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
        if name == "arange" and len(args) == 1 and args[0] is SYMBOLIC:
            self.batch_index.add(node)
            return (1,), kwargs
        raise NotConstant(_SYMBOLIC)

    def _batch_index_use(self, node: fx.Node, name: str, args: tuple, kwargs: dict) -> tuple:
        """`arange(batch)` may be reshaped (None, full slices, unsqueeze, a dtype) and then index a dimension
        that has one entry in the folded value: whatever the batch, each index picks that one entry."""
        source = node.args[0] if node.args else None
        others = [n for n in node.all_input_nodes if n is not source]
        if source in self.batch_index and name in _INDEX_KEEPING and not any(n in self.batch_index for n in others) \
                and _integer_or_no_dtype(args[1:], kwargs):
            if name not in ("getitem", "__getitem__") or _only_reshapes(args[1]):
                self.batch_index.add(node)
                return args, kwargs
        elif name in ("getitem", "__getitem__") and source not in self.batch_index \
                and self._indexes_single_entries(node, args):
            self.reduced.add(node)
            return args, kwargs
        raise NotConstant(_SYMBOLIC)

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
    if isinstance(x, slice):                  # `buffer[:, :, :t, :t]` with t symbolic
        return any(_has_symbolic(v) for v in (x.start, x.stop, x.step))
    return False


def _sized_container_item(node: fx.Node, args: tuple) -> bool:
    """`shape[0]` on a size tuple that may hold symbolic sizes: plain indexing, no torch op."""
    return node.op == "call_function" and node.target is operator.getitem and len(args) == 2 \
        and isinstance(args[0], (tuple, list, torch.Size)) and isinstance(args[1], (int, slice))


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


def _integer_or_no_dtype(args: tuple, kwargs: dict) -> bool:
    """A `.to(...)` that keeps the index an integer index (a bool one would mask, a float one fail)."""
    dtypes = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.dtype)]
    return all(not d.is_floating_point and not d.is_complex and d != torch.bool for d in dtypes)


def _only_reshapes(index) -> bool:
    """None, `...` and whole slices: an index that adds or keeps dims without changing values."""
    items = index if isinstance(index, tuple) else (index,)
    return all(i is None or i is Ellipsis or i == slice(None) for i in items)


def _dim_arg(name: str, args: tuple, kwargs: dict) -> Optional[int]:
    position, default = _ALONG_DIM[name]
    return args[position] if len(args) > position else kwargs.get("dim", default)


def _value_inputs(node: fx.Node) -> list:
    """Inputs whose *values* a node reads: none for `x.size()`, all but `self` for `x.new_ones(...)`."""
    if _reads_metadata(node):
        return []
    if _is_new_factory(node):
        return [n for n in node.args[1:] if isinstance(n, fx.Node)] + \
            [n for n in node.kwargs.values() if isinstance(n, fx.Node)]
    unread = _unread_args(node)
    return [n for n in node.all_input_nodes if n not in unread]


def _unread_args(node: fx.Node) -> dict:
    """Argument nodes a call never reads, with a stand-in: `F.embedding` reads `norm_type` only with a
    `max_norm` (dynamic=True makes that module float a graph input, which would look like data)."""
    if node.target is F.embedding and _arg(node, 3, "max_norm") is None:
        norm_type = _arg(node, 4, "norm_type")
        if isinstance(norm_type, fx.Node):
            return {norm_type: 2.0}
    return {}


def _arg(node: fx.Node, i: int, name: str):
    return node.args[i] if len(node.args) > i else node.kwargs.get(name)


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
