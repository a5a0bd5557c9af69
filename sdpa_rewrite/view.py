"""Stage 1, the canonical view: read any FX node as one small vocabulary of ops.

A node may be a call_function (`torch.matmul`, `operator.matmul`, `F.softmax`), a call_method
(`.transpose`, `.masked_fill`, `.float()`), a call_module (`nn.Softmax`, `nn.Dropout`), an ATen
overload or its packet (`aten._safe_softmax(x, -1)`); `view(node)` answers the same `Op` for all of them, with
dims normalised against the rank and scalars as Python numbers. It also says which calls nobody reads
(`is_dead`): a clone a library keeps and never returns is not a use. This module knows nothing about attention.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.fx as fx
import torch.nn.functional as F

aten = torch.ops.aten


@dataclass(frozen=True)
class Op:
    """One node in the canonical vocabulary: `kind`, the tensor-or-scalar `args` by name."""

    kind: str
    node: fx.Node
    args: dict = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.args.get(name)


# Rules as data: target -> (kind, parameter names in call order). A leading '*' marks a
# keyword-only tail; `dims...` collects varargs (Tensor.permute(*dims)).
_FUNCTIONS: dict[Any, tuple[str, str]] = {
    torch.matmul: ("matmul", "input other"),
    operator.matmul: ("matmul", "input other"),
    torch.bmm: ("matmul", "input other"),
    torch.mm: ("matmul", "input other"),
    torch.t: ("t", "input"),
    torch.baddbmm: ("baddbmm", "input batch1 batch2 *beta alpha"),
    torch.einsum: ("einsum", "equation operands..."),
    torch.transpose: ("transpose", "input dim0 dim1"),
    torch.swapaxes: ("transpose", "input dim0 dim1"),
    torch.permute: ("permute", "input dims"),
    torch.mul: ("mul", "input other"),
    torch.multiply: ("mul", "input other"),
    operator.mul: ("mul", "input other"),
    operator.imul: ("mul", "input other"),
    torch.div: ("div", "input other *rounding_mode"),
    torch.true_divide: ("div", "input other"),
    operator.truediv: ("div", "input other"),
    operator.itruediv: ("div", "input other"),
    torch.add: ("add", "input other *alpha"),
    operator.add: ("add", "input other"),
    operator.iadd: ("add", "input other"),
    torch.sub: ("sub", "input other *alpha"),
    operator.sub: ("sub", "input other"),
    operator.isub: ("sub", "input other"),
    torch.where: ("where", "condition input other"),
    torch.masked_fill: ("masked_fill", "input mask value"),
    F.softmax: ("softmax", "input dim _stacklevel dtype"),
    torch.softmax: ("softmax", "input dim dtype"),
    torch.special.softmax: ("softmax", "input dim dtype"),
    F.dropout: ("dropout", "input p training inplace"),
    torch.dropout: ("dropout", "input p training"),
    torch.repeat_interleave: ("repeat_interleave", "input repeats dim"),
    torch.maximum: ("maximum", "input other"),
    torch.max: ("maximum", "input other"),
    torch.clamp_min: ("maximum", "input other"),
    torch.tanh: ("tanh", "input"),
    F.tanh: ("tanh", "input"),
    torch.cat: ("cat", "tensors dim"),
    torch.concat: ("cat", "tensors dim"),
    torch.concatenate: ("cat", "tensors dim"),
    torch.amax: ("amax", "input dim keepdim"),
    torch.unsqueeze: ("unsqueeze", "input dim"),
    torch.reshape: ("reshape", "input shape..."),
    torch.clone: ("layout", "input"),
    F.pad: ("pad", "input pad mode value"),
    torch._C._nn.pad: ("pad", "input pad mode value"),
    aten.constant_pad_nd.default: ("pad", "input pad value"),
    operator.getitem: ("getitem", "input index"),
    getattr: ("getattr", "input name"),
    aten.bmm.default: ("matmul", "input other"),
    aten.mm.default: ("matmul", "input other"),
    aten.t.default: ("t", "input"),
    aten.transpose.int: ("transpose", "input dim0 dim1"),
    aten.permute.default: ("permute", "input dims"),
    aten.mul.Tensor: ("mul", "input other"),
    aten.div.Tensor: ("div", "input other"),
    aten.add.Tensor: ("add", "input other *alpha"),
    aten.sub.Tensor: ("sub", "input other *alpha"),
    aten.where.self: ("where", "condition input other"),
    aten.masked_fill.Scalar: ("masked_fill", "input mask value"),
    aten._softmax.default: ("softmax", "input dim half_to_float"),
    aten.clone.default: ("layout", "input"),
    aten.expand.default: ("expand", "input shape..."),
    aten.view.default: ("reshape", "input shape..."),
    aten._unsafe_view.default: ("reshape", "input shape..."),
    aten.reshape.default: ("reshape", "input shape..."),
    aten.unsqueeze.default: ("unsqueeze", "input dim"),
    aten.matmul.default: ("matmul", "input other"),
    aten.softmax.int: ("softmax", "input dim dtype"),
    aten._safe_softmax.default: ("softmax", "input dim dtype"),  # softmax with 0 on rows of -inf alone, as SDPA
    aten.mul.Scalar: ("mul", "input other"),
    aten.div.Scalar: ("div", "input other"),
    aten.mul_.Tensor: ("mul", "input other"),
    aten.div_.Tensor: ("div", "input other"),
    aten.add_.Tensor: ("add", "input other *alpha"),
    aten.sub_.Tensor: ("sub", "input other *alpha"),
    aten.masked_fill_.Scalar: ("masked_fill", "input mask value"),
    aten.masked_fill.Tensor: ("masked_fill", "input mask value"),
    aten.where.ScalarOther: ("where", "condition input other"),
    aten.where.ScalarSelf: ("where", "condition input other"),
    aten.where.Scalar: ("where", "condition input other"),
    aten.maximum.default: ("maximum", "input other"),
    aten.max.other: ("maximum", "input other"),
    aten.clamp_min.default: ("maximum", "input other"),
    aten.tanh.default: ("tanh", "input"),
    aten.cat.default: ("cat", "tensors dim"),
    aten.amax.default: ("amax", "input dim keepdim"),
    aten.max.dim: ("amax", "input dim keepdim"),
    aten.baddbmm.default: ("baddbmm", "input batch1 batch2 *beta alpha"),
    aten.einsum.default: ("einsum", "equation operands..."),
    aten.repeat_interleave.self_int: ("repeat_interleave", "input repeats dim"),
    aten.dropout.default: ("dropout", "input p training"),
    aten.alias.default: ("layout", "input"),
    aten.contiguous.default: ("layout", "input"),
    aten.to.dtype: ("cast", "input dtype"),
    aten.type_as.default: ("cast", "input other"),
    aten._to_copy.default: ("cast", "input"),
}

def _packets(table: dict) -> dict:
    """An ATen op called as its packet (`torch.ops.aten._safe_softmax(x, -1)`, as Inductor's fuse_attention patterns
    write it) reads like its overload: each packet whose overloads in the table share one rule gets that rule.
    `aten.max` (max.other or max.dim) reads like `torch.max`, which view() already tells apart by its arguments."""
    rules: dict = {}
    for target, rule in table.items():
        if isinstance(target, torch._ops.OpOverload):
            rules.setdefault(target.overloadpacket, set()).add(rule)
    packets = {packet: next(iter(found)) for packet, found in rules.items() if len(found) == 1}
    packets[aten.max] = ("maximum", "input other")
    return packets


_FUNCTIONS.update(_packets(_FUNCTIONS))

_METHODS: dict[str, tuple[str, str]] = {
    "matmul": ("matmul", "input other"),
    "bmm": ("matmul", "input other"),
    "mm": ("matmul", "input other"),
    "t": ("t", "input"),
    "baddbmm": ("baddbmm", "input batch1 batch2 *beta alpha"),
    "transpose": ("transpose", "input dim0 dim1"),
    "swapaxes": ("transpose", "input dim0 dim1"),
    "permute": ("permute", "input dims..."),
    "mul": ("mul", "input other"),
    "mul_": ("mul", "input other"),
    "div": ("div", "input other *rounding_mode"),
    "div_": ("div", "input other *rounding_mode"),
    "add": ("add", "input other *alpha"),
    "add_": ("add", "input other *alpha"),
    "sub": ("sub", "input other *alpha"),
    "sub_": ("sub", "input other *alpha"),
    "masked_fill": ("masked_fill", "input mask value"),
    "masked_fill_": ("masked_fill", "input mask value"),
    "softmax": ("softmax", "input dim dtype"),
    "float": ("cast", "input"),
    "half": ("cast", "input"),
    "bfloat16": ("cast", "input"),
    "double": ("cast", "input"),
    "to": ("cast", "input"),
    "type": ("cast", "input"),
    "type_as": ("cast", "input other"),
    "contiguous": ("layout", "input"),
    "clone": ("layout", "input"),
    "repeat_interleave": ("repeat_interleave", "input repeats dim"),
    "maximum": ("maximum", "input other"),
    "clamp_min": ("maximum", "input other"),
    "tanh": ("tanh", "input"),
    "max": ("maximum", "input other"),
    "amax": ("amax", "input dim keepdim"),
    "unsqueeze": ("unsqueeze", "input dim"),
    "expand": ("expand", "input shape..."),
    "reshape": ("reshape", "input shape..."),
    "view": ("reshape", "input shape..."),
    "size": ("size", "input dim"),
}

_MODULES: dict[type, str] = {
    torch.nn.Softmax: "softmax",
    torch.nn.Dropout: "dropout",
    torch.nn.Identity: "layout",
}


def _bind(spec: str, args: tuple, kwargs: dict) -> dict:
    names = spec.split()
    bound: dict = {}
    positional = [n for n in names if not n.startswith("*")]
    star = names.index(next(n for n in names if n.startswith("*"))) if any(n.startswith("*") for n in names) else None
    if star is not None:
        positional = names[:star]
    for i, name in enumerate(positional):
        if name.endswith("..."):
            rest = args[i:]
            if len(rest) == 1 and isinstance(rest[0], (list, tuple)):
                rest = tuple(rest[0])
            bound[name[:-3]] = tuple(rest)
            break
        if i < len(args):
            bound[name] = args[i]
    for key, value in kwargs.items():
        bound[key] = value
    if "dims" in bound and isinstance(bound["dims"], list):
        bound["dims"] = tuple(bound["dims"])
    return bound


def view(node: fx.Node, modules: Optional[dict] = None) -> Optional[Op]:
    """The canonical `Op` for `node`, or None when it is outside the vocabulary."""
    if node.op == "call_function":
        rule = _FUNCTIONS.get(node.target)
    elif node.op == "call_method":
        rule = _METHODS.get(node.target)
    elif node.op == "call_module" and modules is not None:
        module = modules.get(node.target)
        kind = _MODULES.get(type(module))
        if kind is None:
            return None
        args = {"input": node.args[0] if node.args else node.kwargs.get("input")}
        if kind == "softmax":
            args["dim"] = module.dim
        elif kind == "dropout":
            args.update(p=module.p, training=module.training, module=node.target)
        return Op(kind, node, args)
    else:
        return None
    if rule is None:
        return None
    kind, spec = rule
    args = _bind(spec, node.args, dict(node.kwargs))
    if kind == "cast" and node.op == "call_method" and node.target in ("to", "type"):
        if not _is_dtype_cast(node):
            return None
    if kind == "t":          # `.t()` is `.T` of a matrix (of a vector, a no-op)
        kind, args = "getattr", {"input": args["input"], "name": "T"}
    if kind == "getattr":    # `.mT`, and `.T` of a matrix, are the key transpose; `.T` of more dims reverses them all
        name = args.get("name")
        if name == "mT" or name == "T" and rank(args["input"]) == 2:
            return Op("transpose", node, {"input": args["input"], "dim0": -2, "dim1": -1})
        return None
    if kind == "cast" and node.target in (aten._to_copy.default, aten._to_copy) and set(node.kwargs) - {"dtype"}:
        return None                                      # a device or layout change, not only a dtype cast
    if kind == "maximum" and node.target in (torch.max, "max", aten.max) and \
            ("dim" in args or isinstance(args.get("other"), int) and not isinstance(args.get("other"), bool)):
        dim = args.get("dim", args.get("other"))      # max(x, dim, keepdim): (values, indices), not max(x, y)
        keepdim = args.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        return Op("max_dim", node, {"input": args["input"], "dim": dim, "keepdim": keepdim})
    if kind == "softmax" and node.target in (aten._softmax.default, aten._softmax):
        args.pop("half_to_float", None)
    if kind == "pad":        # a zero-width pad (x-transformers pads its bias by the memory tokens, 0 without them)
        pad = args.get("pad")
        if isinstance(pad, (list, tuple)) and all(isinstance(p, int) and p == 0 for p in pad):
            return Op("layout", node, {"input": args["input"]})
        return None
    if kind == "expand" and shape(node) is not None and shape(node) == shape(args.get("input")):
        return Op("layout", node, {"input": args["input"]})   # make_fx spells every matmul operand expand(x, x.shape)
    return Op(kind, node, args)


def _is_dtype_cast(node: fx.Node) -> bool:
    """`.to(...)` / `.type(...)` change only the dtype: `.to(torch.half)`, `.to(x.dtype)`, `.to(other)`."""
    rest = list(node.args[1:]) + [v for k, v in node.kwargs.items() if k == "dtype"]
    others = {k for k in node.kwargs if k not in ("dtype", "non_blocking", "copy")}
    if others or len(rest) > 1:
        return False
    return all(isinstance(a, torch.dtype) or _is_dtype_node(a) for a in rest)


def _is_dtype_node(a: Any) -> bool:
    if not isinstance(a, fx.Node):
        return False
    if a.op == "call_function" and a.target is getattr and a.args[1:] == ("dtype",):
        return True
    return isinstance(meta_value(a), (torch.dtype, torch.Tensor))


_META_METHODS = {"size", "dim", "type_as", "to", "type", "expand_as", "view_as", "reshape_as", "new_zeros",
                 "new_ones", "new_full", "new_empty", "new_tensor"}


# export's check of a dtype and device, and make_fx's symbolic sizes
_ATEN_METADATA = {aten._assert_tensor_metadata.default, aten.sym_size.int, aten.sym_stride.int, aten.sym_numel.default,
                  aten._assert_tensor_metadata, aten.sym_size, aten.sym_stride, aten.sym_numel}


def reads_only_metadata(user: fx.Node, node: fx.Node) -> bool:
    """`user` reads only `node`'s dtype, device or shape (`x.dtype`, `x.size(-1)`, `m.expand_as(x)`)."""
    if user.op == "call_function" and user.target is getattr:
        return user.args[1] in ("dtype", "device", "shape", "ndim", "is_cuda")
    if user.op == "call_function" and user.target in _ATEN_METADATA:
        return True
    if user.op == "call_function" and user.target in (aten.type_as.default, aten.expand_as.default, aten.type_as,
                                                       aten.expand_as):
        return user.args[0] is not node                  # x.type_as(node), x.expand_as(node): node's dtype, shape
    if user.op == "call_method" and user.target in _META_METHODS:
        first_is_data = user.args and user.args[0] is node and user.target not in ("size", "dim") \
            and not user.target.startswith("new_")
        return not first_is_data and node not in user.kwargs.values()
    return False


def data_users(node: fx.Node) -> list:
    """Users that read `node`'s values, not only its metadata. A pure call whose result nobody reads is not one:
    Dynamo keeps `s.clone()` or `s.detach()` that a library stores and never returns (x-transformers' saved
    similarities, Whisper's returned `qk` its caller drops)."""
    return [u for u in node.users if not reads_only_metadata(u, node) and not is_dead(u)]


def named_readers(nodes: list, most: int) -> str:
    """"`abs`, `permute`, `matmul`, ...": what reads a value, for a reason a person can act on."""
    return ", ".join(f"`{target_name(u) or u.op}`" for u in nodes[:most]) + (", ..." if len(nodes) > most else "")


def is_dead(node: fx.Node, depth: int = 8, strict: bool = False) -> bool:
    """A call that writes nothing, has no side effect, and whose readers are all dead too, or read only its dtype or
    shape (ESM's head-averaged weights, `w.view(...).transpose(1, 0).mean(0)`, and its `w.type_as(s)` read only by
    another `type_as`): no result depends on its values. `strict`: no reader at all once the dead ones are erased.
    Chains longer than `depth` count as live."""
    if node.op not in ("call_function", "call_method") or is_inplace(node) or node.is_impure() or depth == 0:
        return False
    return all(is_dead(u, depth - 1, strict) or not strict and reads_only_metadata(u, node) for u in node.users)


def dead_readers(node: fx.Node) -> list:
    """The dead calls reading `node`, each after the calls that read it (an order to erase them in)."""
    order: list = []

    def visit(n):
        for u in n.users:
            if u not in order:
                visit(u)
                order.append(u)

    for u in node.users:
        if is_dead(u, strict=True) and u not in order:
            visit(u)
            order.append(u)
    return order


def is_inplace(node: fx.Node) -> bool:
    """Writes into its first argument: `x.masked_fill_(...)`, `x += y`, `x[i] = v` (Dynamo records that as
    `operator.setitem`; a mask built with it is not the zeros it started as), and an aten op whose schema
    mutates an argument (make_fx and export: `aten.masked_fill_`, `aten.index_put_`, `aten.copy_`)."""
    return (node.op == "call_method" and (node.target.endswith("_") and not node.target.startswith("_")
                                          or node.target == "__setitem__")) or \
        (node.op == "call_function" and (node.target in _INPLACE_OPERATORS or _mutates(node.target)
                                         or "out" in node.kwargs))


def _mutates(target) -> bool:
    """An aten op (make_fx, export) whose schema writes an argument: `aten.masked_fill_`, `aten.copy_`, out=."""
    if isinstance(target, torch._ops.OpOverloadPacket):    # called as its packet: ATen names in-place ops `op_`
        return target.__name__.endswith("_") and not target.__name__.startswith("_")
    schema = getattr(target, "_schema", None)
    return bool(schema is not None and schema.is_mutable)


_INPLACE_OPERATORS = (operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv, operator.ipow,
                      operator.iand, operator.ior, operator.ixor, operator.setitem)


# ---- shapes and scalars -------------------------------------------------------------------------

def target_name(node: fx.Node) -> str:
    """What a call is called: a method's name, a function's `__name__`, an aten op's name without its overload
    (`aten.masked_fill_.Scalar` is "masked_fill_"), "" when it has none; the passes match ops by name because
    one op has several targets (torch.add, operator.add, Tensor.add, aten.add.Tensor)."""
    if isinstance(node.target, str):
        return node.target
    return getattr(node.target, "_opname", None) or getattr(node.target, "__name__", "")


def meta_value(node: Any) -> Any:
    """The example value FX front ends leave on a node: Dynamo's fake tensor, make_fx's val, or ShapeProp's metadata."""
    if not isinstance(node, fx.Node):
        return node
    for key in ("example_value", "val"):
        if key in node.meta:
            return node.meta[key]
    return node.meta.get("tensor_meta")


def shape(node: Any) -> Optional[tuple]:
    """The node's shape as a tuple, or None where the graph carries none."""
    value = meta_value(node)
    if value is None or not hasattr(value, "shape"):
        return None
    return tuple(value.shape)


def hashable(x):
    """Hashable form of shapes and factor tuples: symbolic sizes (dynamic=True) by their names, so comparing
    them never turns a symbolic size into a guard."""
    if isinstance(x, (tuple, list)):
        return tuple(hashable(v) for v in x)
    return str(x) if isinstance(x, (torch.SymInt, torch.SymFloat, torch.SymBool)) else x


def same_batch(at: Optional[tuple], final: tuple) -> bool:
    """A mask broadcast against the scores at shape `at` needs no regrouping to the scores' final shape."""
    return at is None or hashable(tuple(at)) == hashable(tuple(final))


def is_symbolic_scalar(node: Any) -> bool:
    """A graph node holding a symbolic Python number (dynamic=True makes a module's float attribute one)."""
    return isinstance(node, fx.Node) and isinstance(meta_value(node), (torch.SymFloat, torch.SymInt))


def dtype(node: Any) -> Optional[torch.dtype]:
    value = meta_value(node)
    return getattr(value, "dtype", None)


def rank(node: Any) -> Optional[int]:
    s = shape(node)
    return None if s is None else len(s)


def norm_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


_SCALAR_FUNCTIONS = {
    operator.mul: operator.mul, operator.truediv: operator.truediv, operator.add: operator.add,
    operator.sub: operator.sub, operator.pow: operator.pow, operator.floordiv: operator.floordiv,
    operator.neg: operator.neg, math.sqrt: math.sqrt, math.pow: math.pow, float: float, int: int,
    torch.sym_float: float, torch.sym_int: int,
}


def scalar(arg: Any, modules: Optional[dict] = None, root: Any = None) -> Optional[float]:
    """`arg` as a Python number when it is one at rewrite time (a literal, `q.size(-1) ** -0.5`,
    `torch.tensor(c)`, a 0-dim constant buffer), else None."""
    if isinstance(arg, bool):
        return None
    if isinstance(arg, (int, float)):
        return arg
    if isinstance(arg, torch.SymInt) or isinstance(arg, torch.SymFloat):
        return None
    if not isinstance(arg, fx.Node):
        return None
    value = meta_value(arg)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if arg.op == "call_function" and arg.target in _SCALAR_FUNCTIONS:
        values = [scalar(a, modules, root) for a in arg.args]
        if arg.kwargs or any(v is None for v in values):
            return None
        try:
            return _SCALAR_FUNCTIONS[arg.target](*values)
        except (ArithmeticError, ValueError, TypeError):
            return None
    if arg.op == "call_function" and arg.target in (torch.tensor, torch.scalar_tensor, torch.as_tensor,
                                                    aten.scalar_tensor.default):
        return _as_dtype(scalar(arg.args[0], modules, root) if arg.args else None, value)
    if arg.op == "call_function" and arg.target in (torch.full, aten.full.default) and len(arg.args) >= 2:
        size = arg.args[0]
        if isinstance(size, (list, tuple)) and len(size) == 0:
            return _as_dtype(scalar(arg.args[1], modules, root), value)
        return None
    if arg.op == "call_method" and arg.target in ("to", "type", "float", "half", "bfloat16") and arg.args:
        # a 0-dim constant moved or cast: the value as the target dtype holds it (finfo.min -> -inf in fp16)
        if isinstance(value, torch.Tensor) and value.dim() == 0:
            return _as_dtype(scalar(arg.args[0], modules, root), value)
        return None
    if arg.op == "call_method" and arg.target == "dim" or arg.op == "call_function" and arg.target is getattr \
            and arg.args[1:] == ("ndim",):
        s = shape(arg.args[0])                 # `x.dim() - 1` as a softmax dim in a symbolic_trace graph
        return None if s is None else len(s)
    if arg.op == "call_method" and arg.target == "size":
        s = shape(arg.args[0])
        dim = arg.args[1] if len(arg.args) > 1 else arg.kwargs.get("dim")
        if s is None or not isinstance(dim, int):
            return None
        d = s[dim]
        return d if isinstance(d, int) else None
    if arg.op == "call_function" and arg.target is operator.getitem:
        base, index = arg.args
        if isinstance(index, int) and isinstance(base, fx.Node):
            inner = base
            if inner.op == "call_method" and inner.target == "size" and len(inner.args) == 1:
                s = shape(inner.args[0])
            elif inner.op == "call_function" and inner.target is getattr and inner.args[1] == "shape":
                s = shape(inner.args[0])
            else:
                return None
            if s is None:
                return None
            d = s[index]
            return d if isinstance(d, int) else None
        return None
    if arg.op == "get_attr" and root is not None and arg.target.split(".")[-1].startswith("_tensor_constant"):
        # only trace-time constants: a buffer may change after the rewrite, so it is never baked in
        try:
            obj = _fetch_attr(root, arg.target)
        except AttributeError:
            return None
        if isinstance(obj, torch.Tensor) and obj.dim() == 0 and obj.device.type != "meta":
            return obj.item()
    return None


def _as_dtype(x: Optional[float], like: Any) -> Optional[float]:
    """`x` rounded to the dtype of the node's example value, when it has one."""
    if x is None or not isinstance(getattr(like, "dtype", None), torch.dtype):
        return x
    return torch.tensor(x, dtype=torch.float64).to(like.dtype).item()


def _fetch_attr(root: Any, target: str) -> Any:
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
