"""Stage 3, the score algebra: read the path from Q·Kᵀ up to the softmax as

    S = where(R, Fill, α·(Q·Kᵀ) + Σ cᵢ·Tᵢ)

where α gathers every scalar factor (on the scores, on q, on k, baddbmm's alpha), Tᵢ are additive
terms (masks, position biases) with the factors met after them, and R / Fill are the positions
replaced by `masked_fill` / `where`, or by the arithmetic select `S·b + c·(1 − b)` when b folds to a 0/1
constant (openai-gpt). It reads the graph and never mutates it.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, replace
from typing import Any, Optional

import torch
import torch.fx as fx

from .view import (Op, data_users, dtype, is_inplace, is_symbolic_scalar, meta_value, named_readers, norm_dim, rank, scalar,
                   shape, target_name, view)


class NoMatch(Exception):
    """The path is not `α·Q·Kᵀ + masks`; `reason` says why in words a user can act on."""

    def __init__(self, reason: str, depth: int = 0):
        super().__init__(reason)
        self.reason = reason
        self.depth = depth


@dataclass(frozen=True)
class Operand:
    """A tensor for SDPA: `node`, then `permute` (einsum layouts) or a swap of the last two dims."""

    node: fx.Node
    transpose: bool = False
    permute: Optional[tuple] = None
    unsqueeze: tuple = ()    # size-1 dims inserted after the permute: an einsum operand without a batch letter
    flatten: int = 1         # trailing dims merged into one feature dim: an einsum contracting several letters

    @property
    def relaid(self) -> bool:
        """Laid out by more than a swap of the last two dims."""
        return self.permute is not None or bool(self.unsqueeze) or self.flatten > 1


@dataclass(frozen=True)
class Term:
    """An additive term: `coeff · node`, then the tensor factors met after it."""

    node: fx.Node
    coeff: float
    factors: tuple = ()
    at: Optional[tuple] = None    # the scores' shape where it is added (differs from the softmax's after a batch reshape)


@dataclass(frozen=True)
class Fill:
    """Positions where `cond == masked_when` are replaced by `value` (after later scalar factors)."""

    cond: fx.Node
    masked_when: bool
    value: float
    terms_after: int        # how many additive terms are applied after this fill
    factors_after: bool     # a tensor factor is applied after this fill
    at: Optional[tuple] = None


@dataclass(frozen=True)
class Scores:
    qk: fx.Node
    q: Operand
    k: Operand
    alpha: float
    scale_notes: tuple
    tensor_scale: tuple  # (('mul' | 'div', node), ...) folded into q
    terms: tuple
    fills: tuple
    consumed: tuple
    qk_shape: tuple = ()     # Q·Kᵀ's shape; its batch dims may be regrouped (view) before the softmax
    clamp: Optional[float] = None   # max(S, finfo.min) right before the softmax: -inf in the mask becomes finite
    cap: Optional[float] = None     # soft-capping: the scores are cap·tanh(alpha·Q·Kᵀ) (+ masks)
    cap_factors: tuple = ()         # symbolic scalars (dynamic=True) the cap is also multiplied ('mul') or divided by
    sink: Optional[fx.Node] = None  # logit columns concatenated after the keys (attention sinks), (..., L, n)


@dataclass
class _State:
    post: float = 1.0          # product of the scalar factors met so far (they apply after this point)
    post_t: tuple = ()         # tensor factors met so far
    terms: tuple = ()
    fills: tuple = ()
    notes: tuple = ()
    folder: Any = None         # fold.Folder: a fill read from a buffer (`masked_bias`) is a constant too
    clamp: Optional[float] = None
    cap: Optional[float] = None
    cap_factors: tuple = ()
    in_cap: bool = False       # below a tanh: only scalar factors and casts may follow, down to Q·Kᵀ
    sink: Optional[fx.Node] = None


def read_scores(top: fx.Node, modules: dict, root, folder=None) -> Scores:
    """Parse the softmax input `top` down to its Q·Kᵀ; raise NoMatch with a reason otherwise."""
    return _parse(top, _State(folder=folder), (), modules, root, depth=0)


def _fill_constant(x, st: _State, modules, root) -> Optional[float]:
    """A fill value: a Python number at rewrite time, or a one-element tensor that folds (a buffer)."""
    value = scalar(x, modules, root)
    if value is None and st.folder is not None and isinstance(x, fx.Node):
        folded = st.folder.value(x)
        if isinstance(folded, torch.Tensor) and folded.numel() == 1 and folded.is_floating_point():
            value = folded.item()
    return value


def _describe(node: fx.Node) -> str:
    target = target_name(node) or str(node.target)
    hints = {"tanh": "soft-capping (tanh) ", "cat": "a concatenated logit column (attention sink?) ",
             "clamp": "a clamp ", "abs": "an abs "}
    return f"{hints.get(target, '')}`{target}` ({node.name})"


# learned maps over a dim of the scores: x-transformers' talking heads (a 1x1 conv over the heads), timm's CaiT (a
# linear over the heads, permuted last)
_MIXING = {"linear", "conv1d", "conv2d", "conv3d"}
_MIXING_MODULES = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def _mixes_scores(node: fx.Node, modules) -> bool:
    if node.op == "call_module":
        return isinstance((modules or {}).get(node.target), _MIXING_MODULES)
    return target_name(node) in _MIXING


def _parse(node, st: _State, consumed: tuple, modules, root, depth: int) -> Scores:
    if not isinstance(node, fx.Node):
        raise NoMatch("the softmax input is a constant, not Q·Kᵀ", depth)
    op = view(node, modules)
    consumed = consumed + (node,)
    if op is None and _mixes_scores(node, modules):
        raise NoMatch(f"{_describe(node)} mixes the scores across heads between Q·Kᵀ and the softmax (talking "
                      "heads): attention computes each head's scores alone", depth)
    if op is None:
        raise NoMatch(f"{_describe(node)} lies between Q·Kᵀ and the softmax", depth)
    kind = op.kind
    if kind in ("cast", "layout"):
        return _parse(_single(op["input"], node, depth), st, consumed, modules, root, depth + 1)
    if kind == "reshape" and _reshapes_scores(op):
        if any(not is_symbolic_scalar(t) and (shape(t) is None or any(d != 1 for d in shape(t))) for _, t in st.post_t):
            raise NoMatch("a tensor-valued scale after a reshape of the scores", depth)   # a scalar tensor regroups as itself
        return _parse(_single(op["input"], node, depth), st, consumed, modules, root, depth + 1)
    if kind in ("mul", "div"):
        return _parse_factor(op, st, consumed, modules, root, depth)
    if kind in ("add", "sub"):
        return _parse_term(op, st, consumed, modules, root, depth)
    if kind in ("masked_fill", "where"):
        return _parse_fill(op, st, consumed, modules, root, depth)
    if kind in ("matmul", "baddbmm", "einsum"):
        return _read_qk(op, st, consumed, modules, root, depth)
    if kind == "maximum":
        return _parse_clamp(op, st, consumed, modules, root, depth)
    if kind == "tanh":
        return _parse_cap(op, st, consumed, modules, root, depth)
    if kind == "cat":
        return _parse_sink(op, st, consumed, modules, root, depth)
    raise NoMatch(f"{_describe(node)} lies between Q·Kᵀ and the softmax", depth)


def _parse_cap(op: Op, st, consumed, modules, root, depth):
    """Soft-capping, β·tanh(x) with x = α·Q·Kᵀ (Gemma 2's `tanh(s / c) · c`, Grok's `30 · tanh(s / 30)`): β is
    every scalar factor met above the tanh, α every one below it. Masks may be added or filled above the tanh
    (they are added to the capped score), not below it."""
    if st.in_cap:
        raise NoMatch(f"a second tanh (`{op.node.name}`) inside a soft-cap", depth)
    if not all(is_symbolic_scalar(t) for _, t in st.post_t):     # dynamic=True makes a module's float symbolic
        raise NoMatch("a tensor-valued factor after a soft-cap (tanh)", depth)
    if st.post <= 0 and st.fills:
        raise NoMatch("a non-positive soft-cap after a masked fill flips its sign", depth)
    if st.clamp is not None:
        raise NoMatch("a clamp of soft-capped scores", depth)
    st2 = replace(st, cap=st.post, cap_factors=st.post_t, post=1.0, post_t=(), notes=(), in_cap=True)
    return _parse(_single(op["input"], op.node, depth), st2, consumed, modules, root, depth + 1)


def _parse_sink(op: Op, st, consumed, modules, root, depth):
    """`cat([S, sinks], dim=-1)`: logit columns with no value (attention sinks, gpt-oss) appended after the keys.
    Read only as the last step before the softmax (a row shift aside): then the sliced-off weights are what SDPA
    or flex compute with one more key, or corrected from the log-sum-exp."""
    tensors, dim = op["tensors"], op["dim"] if op["dim"] is not None else 0
    r = rank(op.node)
    if not isinstance(tensors, (list, tuple)) or len(tensors) != 2 or r is None or norm_dim(dim, r) != r - 1:
        raise NoMatch(f"a concatenation `{op.node.name}` of the scores other than one sink column block", depth)
    if st.post != 1.0 or st.post_t or st.terms or st.fills or st.clamp is not None or st.sink is not None:
        raise NoMatch("operations on concatenated sink logits (only a row shift may follow the cat)", depth)
    chain, sink = tensors
    if not isinstance(sink, fx.Node) or shape(sink) is None or _matmul_free(sink) is False:
        raise NoMatch(f"a concatenation `{op.node.name}` whose second part is not a sink logit block", depth)
    return _parse(_single(chain, op.node, depth), replace(st, sink=sink), consumed, modules, root, depth + 1)


def _matmul_free(node: fx.Node, budget: int = 16) -> bool:
    """The sink logits are parameters reshaped and expanded, not scores of another matmul."""
    seen, frontier = set(), [node]
    while frontier and len(seen) < budget:
        n = frontier.pop()
        if n in seen:
            continue
        seen.add(n)
        op = view(n)
        if op is not None and op.kind in ("matmul", "baddbmm", "einsum"):
            return False
        frontier.extend(n.all_input_nodes)
    return True


def _row_max_of(term, chain) -> Optional[fx.Node]:
    """The max node when `term` is max(chain, dim=-1, keepdim=True) (its `.values` or `[0]`) or amax over the last
    dim: subtracting it shifts each row by a constant the softmax does not see (the softmax subtracts it itself;
    gpt-oss writes it out). None otherwise."""
    if not isinstance(term, fx.Node):
        return None
    node = term
    if target_name(node) == "detach":      # max(S).detach() (CoCa's stable softmax): still a row shift, with or without a gradient
        node = node.args[0] if isinstance(node.args[0], fx.Node) else node
    if node.op == "call_function" and (node.target is getattr and node.args[1:] == ("values",)
                                       or node.target is operator.getitem and node.args[1:] == (0,)):
        node = node.args[0]
    op = view(node) if isinstance(node, fx.Node) else None
    if op is None or op.kind not in ("max_dim", "amax") or op["input"] is not chain:
        return None
    dims = op["dim"]
    dims = tuple(dims) if isinstance(dims, (list, tuple)) else (dims,)
    r = rank(chain)
    if not (op["keepdim"] is True and r is not None and len(dims) == 1 and isinstance(dims[0], int)
            and norm_dim(dims[0], r) == r - 1):
        return None
    return node


def _parse_clamp(op: Op, st, consumed, modules, root, depth):
    """`max(S, finfo.min)` (xglm): finite scores are unchanged; a -inf in the mask becomes finfo.min. Read only
    as the last step before the softmax, where it is exactly a clamp of the mask. The floor counts as it rounds
    into the scores' dtype: a wider dtype's finfo.min is -inf in fp16 / bf16, and max(S, -inf) = S."""
    if st.in_cap:
        raise NoMatch(f"a clamp (`{op.node.name}`) inside a soft-cap (tanh)", depth)
    dt = dtype(op.node)
    floor = _fill_constant(op["other"], st, modules, root) if op["other"] is not None else None
    if dt is not None and dt.is_floating_point and floor is not None:
        floor = torch.tensor(float(floor), dtype=torch.float64).to(dt).item()
    if dt is None or not dt.is_floating_point or floor is None or floor not in (torch.finfo(dt).min, -math.inf):
        raise NoMatch(f"{_describe(op.node)} lies between Q·Kᵀ and the softmax", depth)
    if st.post != 1.0 or st.post_t or st.terms or st.fills or st.clamp is not None:
        raise NoMatch(f"a clamp of the scores (`{op.node.name}`) followed by other operations", depth)
    st2 = replace(st, clamp=floor if floor > -math.inf else None)          # max(S, -inf) -> S
    return _parse(_single(op["input"], op.node, depth), st2, consumed, modules, root, depth + 1)


def _reshapes_scores(op: Op) -> bool:
    """A view of the scores as another shape of as many elements (SAM's `s.view(B, qh, qw, kh, kw) + rel_h + rel_w`,
    then `.view(B, qh·qw, kh·kw)`): a view keeps the row-major order, so whatever is added or filled at the other
    shape is the same added at the softmax's shape after `expand(at).reshape(final)`. Whether Q·Kᵀ itself lines up
    with the softmax's rows and keys is checked once the walk reaches it."""
    a, b = shape(op["input"]), shape(op.node)
    return a is not None and b is not None and len(b) >= 2 and math.prod(a) == math.prod(b)


def _regroups_batch(op: Op) -> bool:
    """view/reshape that only regroups batch dims: (B·H, L, S) <-> (B, H, L, S), last two dims kept."""
    a, b = shape(op["input"]), shape(op.node)
    return (a is not None and b is not None and len(a) >= 3 and len(b) >= 3 and tuple(a[-2:]) == tuple(b[-2:])
            and math.prod(a[:-2]) == math.prod(b[:-2]))


def _single(x, user: fx.Node, depth: int, beside: tuple = ()) -> fx.Node:
    """`x` feeds only `user` (and the readers in `beside`, which the kernel serves too): otherwise the scores are
    needed elsewhere and cannot vanish into SDPA."""
    if not isinstance(x, fx.Node):
        raise NoMatch("the softmax input is a constant, not Q·Kᵀ", depth)
    users = [u for u in data_users(x) if u not in beside]
    if len(users) == 2 and user in users:
        # `x.masked_fill_(c, f); softmax(x)`: one logical chain — the later read sees the in-place op's result
        first, later = users if _before(users[0], users[1]) else users[::-1]
        if is_inplace(first) and first.args[0] is x and set(first.users) <= {later}:
            return first if user is later else x
    if len(users) != 1:
        others = [u for u in users if u is not user]
        raise NoMatch(f"the scores `{x.name}` are also used outside the softmax, read by {named_readers(others, 3)} "
                      "(returned, carried to the next layer, or a mask built from them: SDPA does not hand them out)",
                      depth)
    return x


def _before(a: fx.Node, b: fx.Node) -> bool:
    n = a.next
    while n.op != "root":
        if n is b:
            return True
        n = n.next
    return False


def _either(op: Op, a, b, parse_with, depth: int):
    """Try each operand as the scores side; keep the reason from the attempt that got deeper."""
    best: Optional[NoMatch] = None
    for chain, other in ((a, b), (b, a)):
        if not isinstance(chain, fx.Node):
            continue
        try:
            return parse_with(chain, other)
        except NoMatch as miss:
            if best is None or miss.depth > best.depth:
                best = miss
    raise best or NoMatch(f"{_describe(op.node)} has no Q·Kᵀ operand", depth)


def _tensor_factor_ok(t: fx.Node, top: fx.Node) -> bool:
    # s[..., i, j] · t[..., i, 0] = (q[..., i, :] · t[..., i, 0]) · k[..., j, :]: foldable into q iff t is constant along keys
    if isinstance(meta_value(t), (float, int, torch.SymFloat, torch.SymInt)) and not isinstance(meta_value(t), bool):
        return True        # a symbolic scalar (dynamic=True turns a module's float scale into `.item()`)
    ts, ss = shape(t), shape(top)
    return ts is not None and ss is not None and len(ts) <= len(ss) and (len(ts) == 0 or ts[-1] == 1)


def _scaled_in(fill: float, notes: tuple, dt) -> float:
    """The fill after the scalar factors that follow it, each applied in the scores' dtype as eager does:
    finfo(fp32).min * 2 overflows to -inf (fully masked rows then give NaN, not uniform weights)."""
    value = fill
    for note in notes:                         # nearest factor first: program order after the fill
        if not isinstance(note, tuple) or note[2] != "scores" or not isinstance(note[1], (int, float)):
            continue
        sign, factor, _ = note
        value = _round_to(value * factor if sign == "*" else value / factor, dt)
    return value


def _round_to(value: float, dt) -> float:
    if dt is None or not dt.is_floating_point:
        return value
    return torch.tensor(value, dtype=torch.float64).to(dt).item()


def _parse_factor(op: Op, st, consumed, modules, root, depth):
    a, b = op["input"], op["other"]
    if op.kind == "div" and op["rounding_mode"] is not None:
        raise NoMatch(f"a rounding division `{op.node.name}` lies between Q·Kᵀ and the softmax", depth)
    sb = scalar(b, modules, root)
    sa = scalar(a, modules, root) if op.kind == "mul" else None
    if sb is not None or sa is not None:
        value, chain = (sb, a) if sb is not None else (sa, b)
        if value == 0:
            raise NoMatch("the scores are multiplied by zero", depth)
        factor = value if op.kind == "mul" else 1.0 / value
        sign = "*" if op.kind == "mul" else "/"
        st2 = replace(st, post=st.post * factor, notes=((sign, value, "scores"),) + st.notes)
        return _parse(_single(chain, op.node, depth), st2, consumed, modules, root, depth + 1)

    def with_tensor(chain, t):
        if op.kind == "div" and chain is not a:
            raise NoMatch("the scores divide a tensor", depth)
        if not _tensor_factor_ok(t, op.node):
            raise NoMatch(f"the scores are multiplied by `{getattr(t, 'name', t)}`, which varies along the key dim", depth)
        note = f"{'×' if op.kind == 'mul' else '÷'} tensor `{t.name}` (folded into q)"
        st2 = replace(st, post_t=((op.kind, t),) + st.post_t, notes=(note,) + st.notes)
        return _parse(_single(chain, op.node, depth), st2, consumed, modules, root, depth + 1)

    return _either(op, a, b, with_tensor, depth)


def scale_note(note: tuple, e) -> str:
    """('/', 8.0, 'scores') with head dim 64 -> '1/sqrt(64) on scores'."""
    if isinstance(note, str):
        return note
    sign, value, where = note
    if isinstance(e, int) and e > 0:
        for power, text in ((0.5, "sqrt({})"), (0.25, "{}^(1/4)")):
            r = e ** power
            if math.isclose(value, r, rel_tol=1e-6) and sign == "/" or math.isclose(value, 1 / r, rel_tol=1e-6) and sign == "*":
                return f"1/{text.format(e)} on {where}"
    return f"{'×' if sign == '*' else '÷'}{value:.6g} on {where}"


def _parse_term(op: Op, st, consumed, modules, root, depth):
    a, b = op["input"], op["other"]
    row_max = _row_max_of(b, a) if op.kind == "sub" and isinstance(a, fx.Node) and not st.in_cap else None
    if row_max is not None and set(data_users(a)) <= {op.node, row_max} and set(data_users(b)) == {op.node}:
        return _parse(a, st, consumed + tuple(dict.fromkeys((b, row_max))), modules, root, depth + 1)
    if st.in_cap:
        raise NoMatch(f"`{op.node.name}` adds to the scores inside a soft-cap (tanh)", depth)
    alpha = op["alpha"] if op["alpha"] is not None else 1
    alpha_value = scalar(alpha, modules, root)
    if alpha_value is None:
        raise NoMatch(f"`{op.node.name}` adds with a non-constant alpha", depth)

    def with_term(chain, term):
        if scalar(term, modules, root) is not None:
            # adding a constant to every logit leaves the softmax unchanged: softmax(s + c) = softmax(s)
            return _parse(_single(chain, op.node, depth), st, consumed, modules, root, depth + 1)
        sign = (-1 if op.kind == "sub" else alpha_value) if term is b else 1
        plain = chain is a or (op.kind == "add" and alpha_value == 1)      # + S·b, not − or α·
        select = _select_01(chain, term, sign, st, modules) if plain else None
        if select is not None:
            return _parse_select(op, select, st, consumed, modules, root, depth)
        coeff = st.post * (alpha if term is b else 1)
        if op.kind == "sub":
            if chain is not a:
                raise NoMatch("the scores are subtracted from a tensor (negated logits)", depth)
            coeff = -coeff
        elif chain is not a and alpha != 1:
            raise NoMatch("the scores are scaled by add's alpha", depth)
        ts, ss = shape(term), shape(op.node)
        if ts is None or ss is None or len(ts) > len(ss):
            raise NoMatch(f"the additive term `{term.name}` does not broadcast to the scores", depth)
        st2 = replace(st, terms=(Term(term, coeff, st.post_t, shape(op.node)),) + st.terms)
        return _parse(_single(chain, op.node, depth), st2, consumed, modules, root, depth + 1)

    return _either(op, a, b, with_term, depth)


def _select_01(chain, term, sign: float, st: _State, modules) -> Optional[tuple]:
    """`S·b + c·(1 − b)` with b a 0/1 constant is `where(b, S, c)`: openai-gpt's arithmetic causal mask.
    Both b and the term must fold (fold.py), b must hold only 0 and 1, and the term must be 0 where b is 1
    and one constant c where b is 0. Returns (S, b, c, the mul node), (S, None, None, the mul node) when b is
    all ones, or None."""
    if st.folder is None or not isinstance(term, fx.Node) or not isinstance(chain, fx.Node):
        return None
    mul = view(chain, modules)
    if mul is None or mul.kind != "mul":
        return None
    for s_side, b in ((mul["input"], mul["other"]), (mul["other"], mul["input"])):
        if not isinstance(b, fx.Node) or not isinstance(s_side, fx.Node):
            continue
        bv = st.folder.value(b)
        tv = st.folder.value(term) if isinstance(bv, torch.Tensor) else None
        if not isinstance(tv, torch.Tensor) or not bv.is_floating_point() or not tv.is_floating_point():
            continue
        try:
            bv, tv = torch.broadcast_tensors(bv, tv * sign)
        except RuntimeError:
            continue
        keep = bv == 1
        if not bool((keep | (bv == 0)).all()) or not bool((tv[keep] == 0).all()):
            continue
        if bool(keep.all()):
            return s_side, None, None, chain             # b is all ones (one key, say): S·1 + 0 is S
        filled = tv[~keep]
        c = filled.reshape(-1)[0].item()
        if bool((filled == c).all()):
            return s_side, b, c, chain
    return None


def _parse_select(op: Op, select: tuple, st, consumed, modules, root, depth):
    """Read `S·b + c·(1 − b)` as the fill `where(b, S, c)`. Exact only where S is finite (−inf·0 is NaN in
    eager), so nothing may mask S before it."""
    s_side, cond, c, mul = select
    _single(mul, op.node, depth)
    if cond is None:
        return _parse(_single(s_side, mul, depth), st, consumed + (mul,), modules, root, depth + 2)
    st2 = _with_fill(st, op, cond, False, c)
    out = _parse(_single(s_side, mul, depth), st2, consumed + (mul,), modules, root, depth + 2)
    if len(out.terms) != len(st2.terms) or len(out.fills) != len(st2.fills):
        raise NoMatch("a 0/1 mask multiplies scores that are already masked (−inf·0 is NaN in eager)", depth)
    return out


def _parse_fill(op: Op, st, consumed, modules, root, depth):
    if st.in_cap:
        raise NoMatch(f"`{op.node.name}` masks the scores inside a soft-cap (tanh)", depth)
    if op.kind == "masked_fill":
        chain, cond, value, masked_when = op["input"], op["mask"], op["value"], True
    else:
        cond, x, y = op["condition"], op["input"], op["other"]
        if _fill_constant(y, st, modules, root) is not None:    # where(c, s, f): keep where c
            chain, value, masked_when = x, y, False
        elif _fill_constant(x, st, modules, root) is not None:  # where(c, f, s): keep where ~c
            chain, value, masked_when = y, x, True
        else:
            raise NoMatch(f"`{op.node.name}` selects between the scores and a tensor, not a constant fill", depth)
    fill = _fill_constant(value, st, modules, root)
    if fill is None:
        raise NoMatch(f"`{op.node.name}` fills with a tensor, not a constant", depth)
    if not isinstance(cond, fx.Node):
        raise NoMatch(f"`{op.node.name}` has a constant condition", depth)
    st2 = _with_fill(st, op, cond, masked_when, fill)
    return _parse(_single(chain, op.node, depth), st2, consumed, modules, root, depth + 1)


def _with_fill(st: _State, op: Op, cond: fx.Node, masked_when: bool, fill: float) -> _State:
    """The state with one more fill at `op`, its value as eager writes it and then scales it."""
    fill = _round_to(fill, dtype(op.node))      # masked_fill(fp16, -3.4e38) writes -inf: classify what is written
    value = -math.inf if fill == -math.inf else _scaled_in(fill, st.notes, dtype(op.node))
    entry = Fill(cond, masked_when, value, len(st.terms), bool(st.post_t), shape(op.node))
    return replace(st, fills=(entry,) + st.fills)


def _read_qk(op: Op, st, consumed, modules, root, depth):
    alpha, terms, notes = st.post, st.terms, st.notes
    if op.kind == "baddbmm":
        beta = scalar(op["beta"] if op["beta"] is not None else 1, modules, root)
        a = scalar(op["alpha"] if op["alpha"] is not None else 1, modules, root)
        if beta is None or a is None:
            raise NoMatch("baddbmm with a non-constant alpha or beta", depth)
        if beta != 0 and st.in_cap:
            raise NoMatch("baddbmm adds its input inside a soft-cap (tanh)", depth)
        if beta != 0:   # beta·input + alpha·(b1 @ b2); beta = 0 ignores the input entirely
            terms = (Term(op["input"], st.post * beta, st.post_t, shape(op.node)),) + terms
        if a != 1:
            notes = (("*", a, "scores (baddbmm alpha)"),) + notes
        alpha *= a
        left, right = op["batch1"], op["batch2"]
    elif op.kind == "einsum":
        return _read_einsum_qk(op, st, consumed, modules, root, depth)
    else:
        left, right = op["input"], op["other"]
    if rank(left) is None or rank(right) is None:
        raise NoMatch("the graph has no shapes for Q and K", depth)
    if rank(left) < 2 or rank(right) < 2:
        raise NoMatch("Q·Kᵀ on 1-D tensors (a vector product, not attention)", depth)
    q, qf, qnotes, qc = _peel(left, "q", modules, root)
    kt, kf, knotes, kc = _peel(right, "k", modules, root)
    k = Operand(kt.node, transpose=not kt.transpose)   # kᵀ as stored -> k in (..., S, E)
    for fact in (qf, kf):
        alpha *= fact
    notes = notes + qnotes + knotes
    _check_fills(st, depth)
    return Scores(op.node, q, k, alpha, notes, st.post_t, terms, st.fills, consumed + qc + kc, shape(op.node),
                  clamp=st.clamp, cap=st.cap, cap_factors=st.cap_factors,
                  sink=st.sink)


def _check_fills(st: _State, depth: int) -> None:
    if st.post <= 0 and st.fills:
        raise NoMatch("a non-positive scale after a masked fill flips its sign", depth)


def _peel(node: fx.Node, side: str, modules, root, allow_transpose: bool = True):
    """Walk up from a matmul operand through scalar factors and last-two-dim transposes."""
    factor, transposed, notes, consumed = 1.0, False, (), ()
    while isinstance(node, fx.Node) and len(node.users) == 1:
        op = view(node, modules)
        if op is None:
            break
        if op.kind in ("mul", "div") and op["rounding_mode"] is None:
            a, b = op["input"], op["other"]
            sb, sa = scalar(b, modules, root), scalar(a, modules, root) if op.kind == "mul" else None
            if sb is not None and sb != 0 and isinstance(a, fx.Node):
                value, node_next = sb, a
            elif sa is not None and sa != 0 and isinstance(b, fx.Node):
                value, node_next = sa, b
            else:
                break
            factor *= value if op.kind == "mul" else 1.0 / value
            notes += (("*" if op.kind == "mul" else "/", value, side),)
            consumed += (node,)
            node = node_next
            continue
        if allow_transpose and op.kind == "transpose" and _swaps_last_two(op):
            transposed = not transposed
            consumed += (node,)
            node = op["input"]
            continue
        if allow_transpose and op.kind == "permute" and _permute_swaps_last_two(op):
            transposed = not transposed
            consumed += (node,)
            node = op["input"]
            continue
        break
    return Operand(node, transposed), factor, notes, consumed


def _swaps_last_two(op: Op) -> bool:
    r = rank(op["input"])
    if r is None:
        return False
    dims = {norm_dim(op["dim0"], r), norm_dim(op["dim1"], r)}
    return dims == {r - 2, r - 1}


def _permute_swaps_last_two(op: Op) -> bool:
    r = rank(op["input"])
    dims = tuple(op["dims"] or ())
    if r is None or len(dims) != r:
        return False
    dims = tuple(norm_dim(d, r) for d in dims)
    return dims == tuple(range(r - 2)) + (r - 1, r - 2)


# ---- einsum -------------------------------------------------------------------------------------

def parse_equation(equation: str, ranks: list) -> Optional[tuple]:
    """'bhid,bhjd->bhij' -> (['bhid', 'bhjd'], 'bhij') with any '...' spelled out as capitals."""
    equation = equation.replace(" ", "")
    if "->" not in equation:
        return None
    lhs, out = equation.split("->")
    inputs = lhs.split(",")
    if len(inputs) != len(ranks):
        return None
    ell = max((r - (len(t) - 3) for t, r in zip(inputs, ranks) if "..." in t), default=0)
    fill = "".join(chr(ord("A") + i) for i in range(ell))
    spelled = []
    for t, r in zip(inputs, ranks):
        if "..." in t:
            n = r - (len(t) - 3)
            t = t.replace("...", fill[ell - n:])
        if len(t) != r:
            return None
        spelled.append(t)
    return spelled, out.replace("...", fill)


def _unless_identity(p: tuple) -> Optional[tuple]:
    """A permutation, or None when it leaves the dims in place (no permute node to emit)."""
    return None if p == tuple(range(len(p))) else p


def _order(letters: str, wanted: str) -> Optional[tuple]:
    if sorted(letters) != sorted(wanted) or len(set(letters)) != len(letters):
        return None
    return tuple(letters.index(c) for c in wanted)


def einsum_layout(letters: str, wanted: str) -> Optional[tuple]:
    """(permute, unsqueeze) that lay an operand spelled `letters` out as `wanted`: its dims permuted into wanted's
    order, a size-1 dim inserted for each wanted letter it lacks (einsum broadcasts it). None when it has a letter
    wanted does not, or one twice."""
    if len(set(letters)) != len(letters) or any(c not in wanted for c in letters):
        return None
    present = [c for c in wanted if c in letters]
    return (_unless_identity(tuple(letters.index(c) for c in present)),
            tuple(n for n, c in enumerate(wanted) if c not in letters))


def _read_einsum_qk(op: Op, st, consumed, modules, root, depth):
    """einsum(q, k) -> (batch, i, j): every letter of q and k is a batch letter of the output, the query letter i
    (q's alone), the key letter j (k's alone), or contracted (in both). A batch letter one operand lacks broadcasts
    (multi-query: 'bhid,bjd->bhij'); several contracted letters are one feature dim of their product
    (ESM's tied row attention, 'rinhd,rjnhd->hnij': q·k summed over rows and features)."""
    operands = op["operands"]
    if len(operands) != 2 or not isinstance(op["equation"], str):
        raise NoMatch("einsum scores with other than two operands", depth)
    a, b = operands
    parsed = parse_equation(op["equation"], [rank(a), rank(b)]) if rank(a) and rank(b) else None
    if parsed is None:
        raise NoMatch(f"einsum '{op['equation']}' is not read (no shapes or no '->')", depth)
    (la, lb), out = parsed
    if len(out) < 3:
        raise NoMatch("einsum scores with no batch dim", depth)
    batch, i, j = out[:-2], out[-2], out[-1]
    contracted = "".join(c for c in la if c in lb and c not in out)
    if not contracted:
        raise NoMatch(f"einsum '{op['equation']}' contracts no feature dim", depth)
    if any(c not in out and c not in contracted for c in la + lb):
        raise NoMatch(f"einsum '{op['equation']}' sums a dim of one operand alone", depth)
    if i not in la or i in lb or j not in lb or j in la:
        raise NoMatch(f"einsum '{op['equation']}' is not Q·Kᵀ", depth)
    lq, lk = einsum_layout(la, batch + i + contracted), einsum_layout(lb, batch + j + contracted)
    if lq is None or lk is None:
        raise NoMatch(f"einsum '{op['equation']}' is not Q·Kᵀ", depth)
    sa, sb = shape(a), shape(b)
    if any(sa[la.index(c)] != sb[lb.index(c)] for c in contracted):
        raise NoMatch(f"einsum '{op['equation']}' broadcasts a contracted dim", depth)
    q, qf, qn, qc = _peel(a, "q", modules, root, allow_transpose=False)
    k, kf, kn, kc = _peel(b, "k", modules, root, allow_transpose=False)
    _check_fills(st, depth)
    return Scores(op.node, Operand(q.node, permute=lq[0], unsqueeze=lq[1], flatten=len(contracted)),
                  Operand(k.node, permute=lk[0], unsqueeze=lk[1], flatten=len(contracted)),
                  st.post * qf * kf, st.notes + qn + kn, st.post_t, st.terms, st.fills, consumed + qc + kc,
                  shape(op.node), clamp=st.clamp, cap=st.cap, cap_factors=st.cap_factors,
                  sink=st.sink)


def read_value_einsum(equation: str, p_index: int, shapes: list) -> Optional[tuple]:
    """For `P·V` written as einsum, P spelled (batch, i, j): (V as an Operand layout (permute, unsqueeze, flatten)
    to (batch, j, E), the sizes to unflatten E back into, the permutation of SDPA's output to eager's). E is every
    letter of V that P lacks: several are one value feature dim of their product ('hnij,rjnhd->rinhd')."""
    parsed = parse_equation(equation, [len(s) for s in shapes])
    if parsed is None:
        return None
    letters, out = parsed
    lp, lv = letters[p_index], letters[1 - p_index]
    batch, i, j = lp[:-2], lp[-2], lp[-1]
    e = "".join(c for c in lv if c not in lp)
    if not e or j in out or i not in out or i in lv or j not in lv or sorted(out) != sorted(batch + i + e):
        return None
    layout = einsum_layout(lv, batch + j + e)
    if layout is None:
        return None
    sizes = None
    if len(e) > 1:
        sizes = tuple(shapes[1 - p_index][lv.index(c)] for c in e)
        if not all(isinstance(n, int) for n in sizes):
            return None
    po = _order(batch + i + e, out)
    if po is None:
        return None
    return (layout[0], layout[1], len(e)), sizes, _unless_identity(po)