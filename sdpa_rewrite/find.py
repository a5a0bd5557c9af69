"""Stage 2, find: anchor on every softmax, walk down to the ·V matmul and up to Q·Kᵀ, and return one
record per softmax: `Attention` (everything emit needs to call SDPA) or `Miss(reason)`.

It reads the graph and never mutates it; it knows nothing about how SDPA is called.
"""
from __future__ import annotations

import dataclasses
import math
import operator
import re
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
import torch.fx as fx

from .bounds import never_minus_inf
from .fold import Folder
from .key_rows import KeyRows, bias_along_keys, key_rows
from .masks import MASKING, Verdict, judge, mask_nodes
from .scores import NoMatch, Operand, Scores, _regroups_batch, read_scores, read_value_einsum, scale_note
from .scores import _single as single_use
from .view import (data_users, dtype, is_symbolic_scalar, meta_value, named_readers, norm_dim, scalar, shape, target_name,
                   view)

# A finite fill this large swallows any score it is added to (ulp/2 > 1e6 in fp32), so
# `where(R, f, s)` and `s + where(R, f, 0)` give the same logits: the additive form is exact.
ABSORBING_FILL = 2.0 ** 44


@dataclass(frozen=True)
class Dropout:
    p: Any                         # a float, or the graph's own symbolic p (a node) under dynamic=True
    training: bool
    module: Optional[str] = None   # nn.Dropout target: p is read from the module's training flag at run time

    @property
    def may_drop(self) -> bool:
        """Dropout can be active at run time (a symbolic p counts as possibly non-zero)."""
        return (self.training or self.module is not None) and (isinstance(self.p, fx.Node) or self.p > 0)

    @property
    def p_hint(self) -> float:
        """p as a number: the value Dynamo traced with, for a symbolic p (the kernel question only)."""
        if not isinstance(self.p, fx.Node):
            return float(self.p)
        hint = getattr(getattr(meta_value(self.p), "node", None), "hint", None)
        return float(hint) if hint is not None else 0.1


@dataclass(frozen=True)
class Attention:
    location: str
    softmax: fx.Node
    output: fx.Node               # the ·V node SDPA replaces
    q: Operand
    k: Operand
    v: Operand
    scale: float
    scale_notes: tuple
    tensor_scale: tuple
    terms: tuple                  # additive Terms, summed into a float attn_mask
    keep: tuple                   # (cond, masked_when, at) : a boolean keep-mask, True = attend
    absorbing: tuple              # (cond, masked_when, value, at): finite fills emitted as additive terms
    uniform_rows: bool            # fully masked rows get eager's uniform weights (mean of V)
    empty_rows: bool              # rows may be fully masked: give them eager's answer (kernels differ there)
    dropout: Optional[Dropout]
    out_permute: Optional[tuple]  # SDPA's output permuted back to eager's layout (einsum)
    batch: tuple                  # broadcast batch shape of the output
    gqa: int                      # query heads per key/value head (1: none)
    compute_dtype: torch.dtype
    out_dtype: torch.dtype
    qk_shape: tuple               # Q·Kᵀ as computed ...
    top_shape: tuple              # ... and as the softmax sees it (batch dims regrouped by a view)
    q_shape: tuple
    k_shape: tuple
    v_shape: tuple
    mask_kind: str                # how the mask reaches SDPA (bool keep-mask, additive, none)
    consumed: tuple               # nodes that die with the rewrite
    verdict: Optional[Verdict] = None  # what the mask is (masks.py); None: no mask
    causal: str = ""              # "top-left": is_causal=True; "lower-right": causal_lower_right(L, S)
    folded: frozenset = frozenset()    # folded mask nodes, erased once unused
    clamp: Optional[float] = None      # the additive mask is clamped to this (max(S, finfo.min) in eager)
    mask_finite: bool = False          # the float mask provably holds no -inf (bounds.py): no row is -inf alone
    cap: Optional[float] = None        # soft-capping: scores are cap·tanh(scale·Q·Kᵀ) + mask (flex's score_mod)
    cap_factors: tuple = ()            # (('mul' | 'div', symbolic scalar node), ...) the cap also takes (dynamic=True)
    sink: Optional[fx.Node] = None     # sink logits (..., L, n): a column block per row that takes weight, no value
    lse_readers: tuple = ()            # logsumexp(S, -1) nodes beside the softmax: served by the kernel's log-sum-exp
    key_rows: Optional[KeyRows] = None # a bias mask split into rows along the keys and a band (key_rows.py)
    key_bias: bool = False             # the mask holds a visible bias along the keys (ALiBi's rows), split or not
    out_unflatten: Optional[tuple] = None  # sizes the output's feature dim splits into before out_permute (einsum)

    @property
    def zeroes_rows(self) -> bool:
        """Rows that see no key get zeros by a select on SDPA's output (emit): the mask may hold -inf there. In
        training that select keeps a second copy of the output for the backward."""
        return self.empty_rows and not self.uniform_rows and not self.mask_finite


@dataclass(frozen=True)
class Miss:
    location: str
    softmax: fx.Node
    reason: str


Finding = Union[Attention, Miss]


class SiteError(RuntimeError):
    """An internal error while matching or emitting one site, naming the site (the backend warns with it)."""

    def __init__(self, site: str, error: BaseException):
        super().__init__(f"at site {site}: {type(error).__name__}: {error}")
        self.site = site


def location(node: fx.Node, gm: Optional[fx.GraphModule] = None) -> str:
    """Module path of the node: Dynamo's nn_module_stack, the call_module target, else the node name."""
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1][0]
        path = re.sub(r"^L\['[^']*'\](\[\d+\])?\.?", "", path)
        path = re.sub(r"\[['\"]?([^'\"\]]+)['\"]?\]", r".\1", path)
        path = path.replace("__dict__.", "").replace("_modules.", "")     # module containers, not module names
        return f"{path.strip('.') or '<root>'}:{node.name}"
    if node.op == "call_module":
        return str(node.target)
    return node.name


def find(gm: fx.GraphModule, folder: Optional[Folder] = None) -> list:
    """One Finding per softmax in the graph, in graph order; `folder` proves constant masks."""
    modules = dict(gm.named_modules())
    findings = []
    for node in gm.graph.nodes:
        op = view(node, modules)
        if op is not None and op.kind == "softmax":
            try:
                findings.append(_match(gm, op, modules, folder))
            except NoMatch as miss:
                findings.append(Miss(location(node, gm), node, miss.reason))
            except Exception as e:
                raise SiteError(location(node, gm), e) from e
        elif op is None and _unread_softmax(node):
            findings.append(Miss(location(node, gm), node,
                                 f"`{target_name(node)}` is a softmax spelling the matcher does not read"))
    return findings


def _unread_softmax(node: fx.Node) -> bool:
    """A call named like a softmax that the vocabulary does not know (aten._masked_softmax, a library's own):
    a row in the report rather than a site nobody sees. Log-softmax (losses) and backward ops are not attention."""
    if node.op not in ("call_function", "call_method"):
        return False
    name = target_name(node).lower()
    return name.endswith("softmax") and "log_softmax" not in name and "backward" not in name


def _match(gm, sm, modules, folder=None) -> Attention:
    node = sm.node
    top = sm["input"]
    if not isinstance(top, fx.Node) or shape(top) is None:
        raise NoMatch("no shape metadata on the graph: pass example_inputs= to rewrite()")
    r = len(shape(top))
    dim = sm["dim"]
    if isinstance(dim, fx.Node):
        dim = scalar(dim)
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise NoMatch("softmax without an explicit dim")
    if norm_dim(dim, r) != r - 1:
        raise NoMatch(f"softmax over dim {dim}, not the key (last) dim")
    lse_users = _log_sum_exp_readers(top, node, r)
    if not _matmul_above(top, modules):
        raise NoMatch("not attention: no Q·Kᵀ matmul feeds this softmax")
    # the weights' way to a ·V product first: a softmax of logits (an entropy, a router) is refused as what it
    # is, not for the other reads of its input
    pv, p_node, drop, down, sliced = _walk_to_value(node, modules)
    top = single_use(top, node, 0, lse_users)  # resolves `s.masked_fill_(c, f); softmax(s)` to the in-place op
    scores = read_scores(top, modules, gm, folder)
    width = shape(scores.sink)[-1] if scores.sink is not None else 0
    if sliced != width:
        raise NoMatch(f"the softmax covers {width} logit column(s) after the keys and {sliced} are sliced off "
                      "its weights: not attention sinks" if width else
                      f"{sliced} trailing column(s) are sliced off the attention weights")
    att = _assemble(gm, node, top, scores, pv, p_node, drop, down, modules, folder, sliced)
    if lse_users and scores.sink is not None:
        raise NoMatch("the scores' log-sum-exp is read beside attention sinks")
    return dataclasses.replace(att, lse_readers=lse_users) if lse_users else att


def _log_sum_exp_readers(top: fx.Node, softmax: fx.Node, r: int) -> tuple:
    """`logsumexp(S, -1)` read beside `softmax(S)` (granite_swa's sinks, applied after the ·V product as
    sigmoid(lse − sink)): a kernel that returns the log-sum-exp of the scores (flex) serves both."""
    readers = []
    for u in data_users(top):
        if u is softmax:
            continue
        name = u.target if u.op == "call_method" else getattr(u.target, "__name__", "")
        if name not in ("logsumexp", "logsumexp.default") or u.args[:1] != (top,):
            return ()
        dim = u.kwargs.get("dim", u.args[1] if len(u.args) > 1 else None)
        dim = dim[0] if isinstance(dim, (list, tuple)) and len(dim) == 1 else dim
        if not isinstance(dim, int) or norm_dim(dim, r) != r - 1:
            return ()
        readers.append(u)
    return tuple(readers)


def _matmul_above(top: fx.Node, modules, budget: int = 64) -> bool:
    """Is there a matmul among the nearest ancestors of the softmax input? (breadth-first, bounded)"""
    seen, frontier = set(), deque([top])
    while frontier and len(seen) < budget:
        node = frontier.popleft()
        if node in seen:
            continue
        seen.add(node)
        op = view(node, modules)
        if op is not None and op.kind in ("matmul", "baddbmm", "einsum"):
            return True
        frontier.extend(n for n in node.all_input_nodes if n.op != "placeholder")
    return False


def _walk_to_value(node: fx.Node, modules):
    """softmax -> casts / dropout / the sink columns sliced off -> the matmul with V; the weights may go nowhere
    else. Returns (·V op, the node feeding it, dropout, the nodes on the way, how many trailing columns were
    sliced off)."""
    drop, chain, sliced = None, (), 0
    while True:
        users = data_users(node)
        if len(users) != 1:
            if not users:
                raise NoMatch("the attention weights are never used")
            raise NoMatch(f"the attention weights `{node.name}` are used outside the ·V product, read by "
                          f"{named_readers(users, 4)} "
                          "(returned, output_attentions, or computed on)")
        user = users[0]
        dropped = _trailing_columns_dropped(user, node) if not chain and not sliced else 0
        if dropped:                                    # sink columns sliced off the weights
            sliced, chain, node = dropped, chain + (user,), user
            continue
        op = view(user, modules)
        if op is None:
            raise NoMatch(f"the softmax output feeds `{user.name}`, not a ·V matmul")
        if op.kind in ("cast", "layout") or op.kind == "reshape" and _regroups_batch(op):
            chain, node = chain + (user,), user
            continue
        if op.kind == "dropout":
            if drop is not None:
                raise NoMatch("two dropouts on the attention weights")
            p = scalar(op["p"] if op["p"] is not None else 0.5)
            training = op["training"] if op["training"] is not None else True
            if p is None and training is False and op["module"] is None:
                p = 0.0        # eval dropout is the identity whatever p is; dynamic=True makes a module's p an input
            if p is None and training is True and op["module"] is None and is_symbolic_scalar(op["p"]):
                p = op["p"]    # dynamic=True made the module's p a graph input: SDPA takes the same value per call
            if p is None or not isinstance(training, bool):
                raise NoMatch("dropout with a p or training flag that is not a constant")
            drop = Dropout(p if isinstance(p, fx.Node) else float(p), training, op["module"])
            chain, node = chain + (user,), user
            continue
        if op.kind == "matmul" and op["input"] is node and op["other"] is not node:
            return op, node, drop, chain, sliced
        if op.kind == "einsum" and len(op["operands"] or ()) == 2 and node in op["operands"]:
            return op, node, drop, chain, sliced
        hint = " (sliced after the softmax: an attention-sink column?)" if op.kind == "getitem" else ""
        raise NoMatch(f"the attention weights feed `{user.name}` ({op.kind}), not a ·V matmul{hint}")


def _trailing_columns_dropped(user: fx.Node, node: fx.Node) -> int:
    """How many trailing key columns `user` slices off `node` (`p[..., :-1]`, `p[..., :S]`, aten.slice on the
    last dim from 0), else 0."""
    before, after = shape(node), shape(user)
    if before is None or after is None or len(before) != len(after) or tuple(before[:-1]) != tuple(after[:-1]):
        return 0
    if not all(isinstance(d, int) for d in (before[-1], after[-1])) or after[-1] >= before[-1]:
        return 0
    if user.op == "call_function" and user.target is operator.getitem and user.args[0] is node:
        index = user.args[1] if isinstance(user.args[1], tuple) else (user.args[1],)
        last = index[-1] if index else None
        full = slice(None, None, None)
        leading_ok = (index[:-1] == (Ellipsis,) or all(i == full for i in index[:-1]) and len(index) == len(before))
        if leading_ok and isinstance(last, slice) and last.start in (None, 0) and last.step in (None, 1):
            return before[-1] - after[-1]
        return 0
    if user.op == "call_function" and user.target is torch.ops.aten.slice.Tensor and user.args[0] is node:
        dim = user.args[1] if len(user.args) > 1 else 0
        start = user.args[2] if len(user.args) > 2 else None
        step = user.args[4] if len(user.args) > 4 else 1
        if norm_dim(dim, len(before)) == len(before) - 1 and start in (None, 0) and step == 1:
            return before[-1] - after[-1]
    return 0


def _assemble(gm, node, top, sc: Scores, pv, p_node, drop, down, modules, folder=None, sliced: int = 0) -> Attention:
    q, k = sc.q, sc.k
    out_permute, out_unflatten = None, None
    if pv.kind == "einsum":
        operands = pv["operands"]
        p_index = operands.index(p_node)
        vnode = operands[1 - p_index]
        shapes = [shape(x) for x in operands]
        if None in shapes:
            raise NoMatch("the graph has no shape for V")
        read = read_value_einsum(pv["equation"], p_index, shapes)
        if read is None:
            raise NoMatch(f"einsum '{pv['equation']}' is not P·V")
        (permute, unsqueeze, flatten), out_unflatten, out_permute = read
        v = Operand(vnode, permute=permute, unsqueeze=unsqueeze, flatten=flatten)
    else:
        v = Operand(pv["other"])
    qs, ks, vs = (_laid_out(x) for x in (q, k, v))
    if None in (qs, ks, vs):
        raise NoMatch("the graph has no shapes for Q, K or V")
    if not (len(qs) == len(ks) == len(sc.qk_shape) and len(vs) == len(shape(p_node))):
        raise NoMatch("Q, K and V have different ranks (broadcast across ranks)")
    if qs[-1] != ks[-1] or ks[-2] != vs[-2]:
        raise NoMatch(f"shapes do not line up: q {qs}, k {ks}, v {vs}")
    L, S = qs[-2], ks[-2]
    top_shape = tuple(shape(p_node))      # the weights as they enter ·V: SDPA's layout
    if math.prod(sc.qk_shape) != math.prod(top_shape) or top_shape[-2:] != (L, S):
        raise NoMatch("a mask or bias broadcasts the scores to a larger shape")
    if sc.qk_shape[:-2] != top_shape[:-2] and (q.relaid or k.relaid or len(sc.qk_shape) != len(qs)):
        raise NoMatch("the scores are regrouped (view) in a layout Q and K cannot follow")
    batch = tuple(shape(pv.node)[:-2]) if out_permute is None and out_unflatten is None else tuple(shape(top)[:-2])
    k, v, ks, vs, gqa = _unrepeat(q, k, v, qs, ks, vs) if sc.qk_shape[:-2] == top_shape[:-2] else (k, v, ks, vs, 1)
    if gqa == 1 and len(batch) >= 2 and ks[-3] != batch[-1] and ks[-3] == vs[-3] and batch[-1] % ks[-3] == 0:
        gqa = batch[-1] // ks[-3]            # k/v heads broadcast inside the matmul (MQA): SDPA's GQA
    kv_batch = batch[:-1] + (ks[-3],) if gqa > 1 else batch
    regrouped = sc.qk_shape[:-2] != top_shape[:-2]
    for name, s, target in (("q", qs, batch), ("k", ks, kv_batch), ("v", vs, kv_batch)):
        if regrouped and name != "v":
            target = sc.qk_shape[:-2]            # q and k are broadcast to Q·Kᵀ's batch, then regrouped
        if not _broadcasts(s[:-2], target):
            raise NoMatch(f"{name} batch dims {s[:-2]} do not broadcast to {target}")
    cdt = dtype(q.node)
    if dtype(k.node) != cdt:
        raise NoMatch("Q and K have different dtypes")
    verdict = judge(sc, top_shape, folder, top)
    causal, folded = "", frozenset()
    if verdict is not None and verdict.drops_mask and not any(f.factors_after for f in sc.fills):
        causal = verdict.alignment
        folded = frozenset().union(*(folder.cone(n) for n in mask_nodes(sc)))
        sc = dataclasses.replace(sc, terms=(), fills=())
    elif verdict is not None and verdict.window is not None:     # flex may say it as a BlockMask instead
        folded = frozenset().union(*(folder.cone(n) for n in mask_nodes(sc)))
    rows = key_rows(sc, top_shape, folder, top, verdict) if verdict is not None and \
        verdict.kind in ("bias", "input mask") else None
    if rows is not None:                                         # flex may read the rows and say the rest as a band
        folded = frozenset().union(*(folder.cone(n) for n in rows.rest))
    key_bias = rows is not None or verdict is not None and verdict.kind == "input mask" and \
        bias_along_keys(sc, top_shape, folder, top)
    if sc.clamp is not None and sc.fills:
        raise NoMatch("a masked fill under a max(S, finfo.min) clamp: fully masked rows would differ from eager")
    keep, absorbing, uniform = _classify_fills(sc, drop, cdt)
    if sc.sink is not None and math.prod(shape(sc.sink)[:-2]) != math.prod(batch):
        raise NoMatch("sink logits laid out in a batch the attention output does not follow")
    if sc.sink is not None and uniform:
        raise NoMatch("a finite masked fill with attention sinks: the filled logits would share weight with the sink")
    out_dtype = dtype(pv.node)
    empty_rows = bool(keep or absorbing or sc.terms) and not uniform and verdict is not None \
        and verdict.empty_rows is not False and verdict.kind != "bias" and sc.sink is None   # a sink sees every row
    return Attention(
        location=location(node, gm), softmax=node, output=pv.node, q=q, k=k, v=v,
        scale=float(sc.alpha), scale_notes=tuple(scale_note(n, qs[-1]) for n in sc.scale_notes) or ("none → 1.0",), tensor_scale=sc.tensor_scale,
        terms=sc.terms, keep=keep, absorbing=absorbing, uniform_rows=uniform, dropout=drop,
        empty_rows=empty_rows,
        out_permute=out_permute, out_unflatten=out_unflatten, batch=batch, gqa=gqa, compute_dtype=cdt, out_dtype=out_dtype,
        qk_shape=tuple(sc.qk_shape), top_shape=top_shape, q_shape=qs, k_shape=ks, v_shape=vs, mask_kind=_mask_kind(sc, keep, absorbing, uniform),
        consumed=(node,) + down + sc.consumed, verdict=verdict, causal=causal, folded=folded, clamp=sc.clamp,
        mask_finite=not keep and (sc.clamp is not None or _finite_mask(sc.terms, absorbing, cdt, modules, gm)),
        cap=sc.cap, cap_factors=sc.cap_factors, sink=sc.sink, key_rows=rows, key_bias=key_bias)



def _laid_out(x: Operand) -> Optional[tuple]:
    s = shape(x.node)
    if s is None:
        return None
    if x.permute is not None:
        s = tuple(s[i] for i in x.permute)
    for d in x.unsqueeze:
        s = s[:d] + (1,) + s[d:]
    if x.flatten > 1:
        s = s[:-x.flatten] + (math.prod(s[-x.flatten:]),)
    if x.transpose:
        s = s[:-2] + (s[-1], s[-2])
    return tuple(s)


def _broadcasts(small: tuple, big: tuple) -> bool:
    return len(small) == len(big) and all(a == b or a == 1 for a, b in zip(small, big))


def _unrepeat(q, k, v, qs, ks, vs):
    """k/v repeated along heads (`repeat_kv`: unsqueeze+expand+reshape, or repeat_interleave) -> their
    sources with enable_gqa: SDPA's GQA maps query head h to key head h // groups, as the repeat does."""
    if len(qs) != 4 or k.relaid or v.relaid or k.transpose or v.transpose:
        return k, v, ks, vs, 1
    rk, rv = repeated_source(k.node), repeated_source(v.node)
    if rk is None or rv is None or rk[1] != rv[1]:
        return k, v, ks, vs, 1
    (sk, n), (sv, _) = rk, rv
    return Operand(sk), Operand(sv), tuple(shape(sk)), tuple(shape(sv)), n


def repeated_source(node: fx.Node):
    """(source, n) when `node` is its source repeated n times along dim 1 of (B, H, S, E), else None."""
    op = view(node)
    out = shape(node)
    if op is None or out is None or len(out) != 4:
        return None
    if op.kind == "repeat_interleave":
        src, n, dim = op["input"], op["repeats"], op["dim"]
        if isinstance(n, int) and isinstance(dim, int) and norm_dim(dim, 4) == 1 and shape(src) is not None:
            s = shape(src)
            if (s[0], s[1] * n, s[2], s[3]) == out:
                return src, n
        return None
    if op.kind != "reshape":
        return None
    expanded = op["input"]
    eop = view(expanded) if isinstance(expanded, fx.Node) else None
    es = shape(expanded)
    if eop is None or eop.kind != "expand" or es is None or len(es) != 5:
        return None
    b, h, n, s_, e = es
    if (b, h * n, s_, e) != out:
        return None
    unsq = eop["input"]
    us = shape(unsq)
    if us is None or tuple(us) != (b, h, 1, s_, e):
        return None
    uop = view(unsq)
    if uop is None:
        return None
    if uop.kind == "unsqueeze" and norm_dim(uop["dim"], 5) == 2:
        src = uop["input"]
    elif uop.kind == "getitem" and isinstance(uop["index"], tuple) and _only_new_axis_at(uop["index"], 2):
        src = uop["input"]
    else:
        return None
    return (src, n) if shape(src) is not None and tuple(shape(src)) == (b, h, s_, e) else None


def _only_new_axis_at(index: tuple, pos: int) -> bool:
    full = slice(None, None, None)
    if index.count(None) != 1 or any(i not in (None, full, Ellipsis) for i in index):
        return False
    return index.index(None) == pos and Ellipsis not in index[:pos]


def _classify_fills(sc: Scores, drop: Optional[Dropout], cdt: Optional[torch.dtype]):
    """Split the fills into a boolean keep-mask and exact additive terms; decide fully-masked rows."""
    keep, absorbing, finite = [], [], []
    n_terms = len(sc.terms)
    for f in sc.fills:
        if f.factors_after:
            raise NoMatch("a tensor-valued scale is applied after a masked fill")
        if f.value == -math.inf:
            keep.append((f.cond, f.masked_when, f.at))     # where(c, s, -inf) -> bool keep-mask c
        elif f.value > 0 or math.isnan(f.value):
            raise NoMatch(f"a masked fill with {f.value:g} raises the masked logits")
        elif f.value > -MASKING:
            raise NoMatch(f"a masked fill of {f.value:g} does not mask: eager keeps those weights non-zero")
        elif abs(f.value) >= ABSORBING_FILL and n_terms - f.terms_after == 0 and _finite_in(f.value, cdt):
            absorbing.append((f.cond, f.masked_when, f.value, f.at))  # where(R, f, s) = s + where(R, f, 0) when f swallows s
        else:
            finite.append(f)
    if not finite:
        return tuple(keep), tuple(absorbing), False
    if len(finite) > 1 or keep or absorbing or finite[0].terms_after:
        raise NoMatch("a finite masked fill combined with other masks: fully masked rows would differ from eager")
    if drop is not None and drop.may_drop:
        raise NoMatch("a finite masked fill with dropout: fully masked rows would lose eager's dropout")
    f = finite[0]
    # finite fill: masked logits all equal -> eager gives uniform weights on a fully masked row; SDPA gets a
    # bool mask and those rows are patched to mean(V)
    return ((f.cond, f.masked_when, f.at),), (), True


def _finite_mask(terms: tuple, absorbing: tuple, cdt, modules, gm) -> bool:
    """The additive mask Σ terms + absorbing fills never holds -inf (a tensor factor after a term: unknown)."""
    if cdt is None or not (terms or absorbing) or any(t.factors for t in terms):
        return False
    parts = [(t.coeff, t.node) for t in terms] + [(value, cond) for cond, _, value, _ in absorbing]  # v·[cond]
    return never_minus_inf(parts, cdt, modules, gm)


def _finite_in(value: float, dt: Optional[torch.dtype]) -> bool:
    """The fill survives as a finite number in the dtype SDPA's mask is built in."""
    return dt is not None and math.isfinite(torch.tensor(value, dtype=torch.float64).to(dt).item())


def _mask_kind(sc: Scores, keep, absorbing, uniform) -> str:
    parts = []
    if keep:
        parts.append("bool keep-mask" + (" (finite fill: uniform rows kept)" if uniform else ""))
    if sc.terms or absorbing:
        parts.append("additive")
    return " + ".join(parts) or "none"
