"""Stage 5, emit: turn an `Attention` record into one SDPA call spliced into the graph.

All new nodes go right before the ·V node (every input of the site is defined by then), the ·V node's
users move to the new output, and only the nodes the site consumed are erased. It does no matching.
"""
from __future__ import annotations

import functools
import math
import operator
from typing import Optional

import torch
import torch.fx as fx
import torch.nn.functional as F

from .find import Attention
from .flex import band, band_block_mask, dense_block_mask, flex_attention_site
from .kernel import dtype_at_call
from .masks import MASKING
from .plan import Plan
from .sinks import with_sink_keys
from .scores import Operand
from .view import (_SCALAR_FUNCTIONS, dead_readers, dtype, is_inplace, meta_value, rank, reads_only_metadata, same_batch,
                   shape, view)


def dropout_p_of(module: torch.nn.Module) -> float:
    """nn.Dropout decides at run time: p while training, 0 in eval — SDPA must follow the module's flag."""
    return module.p if module.training else 0.0


def causal_lower_right_attention(q, k, v, dropout_p: float = 0.0, scale: float = None, enable_gqa: bool = False):
    """SDPA with the queries aligned to the *end* of the keys (key j visible to query i iff j <= i + S - L).

    Flash attention's own causal flag is lower-right, so on CUDA this calls it directly (what
    `torch.nn.attention.bias.causal_lower_right` does, in a form AOTAutograd can trace); elsewhere, or
    when flash cannot run, it is SDPA with the explicit boolean mask."""
    L, S = q.size(-2), k.size(-2)
    if q.is_cuda and not enable_gqa and q.dim() == 4 and q.size(-1) % 8 == 0:
        from torch.backends.cuda import SDPAParams, can_use_flash_attention

        if can_use_flash_attention(SDPAParams(q, k, v, None, dropout_p, False, False)):
            return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, dropout_p, True, False, scale=scale)[0]
    keep = torch.ones(L, S, dtype=torch.bool, device=q.device).tril(S - L)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout_p, scale=scale,
                                          enable_gqa=enable_gqa)


def heads_dim(mask: torch.Tensor) -> torch.Tensor:
    """A mask of a 3-D or 2-D site ((S,), (L, S) or (N, L, S)), given the heads dim of the (N, 1, L, E) or
    (1, 1, L, E) call (SDPA's mask needs at least 2 dims)."""
    return torch.atleast_2d(mask).unsqueeze(-3)


def _autocast_casts_to(att: Attention, dt: torch.dtype) -> bool:
    """Autocast runs the call in `dt` (an fp32 q under bf16 autocast: Llama's and Gemma's RoPE upcast it): V in `dt`
    then needs no upcast: autocast would only cast it back, and a training step would pay for its fp32 copy and
    its fp32 gradient."""
    value = meta_value(att.q.node)
    return isinstance(value, torch.Tensor) and dtype_at_call(att, value.device) == dt


def emit(gm: fx.GraphModule, att: Attention, plan: Plan = Plan("sdpa")) -> fx.Node:
    """Splice the call `plan` chose for `att` (SDPA, SDPA with sink keys, or FlexAttention) into the graph."""
    g = gm.graph
    with g.inserting_before(att.output):
        b = _Builder(g)
        q = b.operand(att.q, att.batch, 1, att)
        for kind, t in att.tensor_scale:                   # (t·q)·kᵀ = t·(q·kᵀ) when t is constant along keys
            q = b.factor(q, kind, t)
            if dtype(t) != att.compute_dtype:
                q = b.method("to", q, att.compute_dtype)
        k = b.operand(att.k, att.batch, att.gqa, att)
        v = b.operand(att.v, att.batch, att.gqa)
        if dtype(att.v.node) != att.compute_dtype and not _autocast_casts_to(att, dtype(att.v.node)):
            v = b.method("to", v, att.compute_dtype)
        if plan.key_rows:                              # flex: the rows for the score_mod, the rest a BlockMask
            mask = _key_rows(b, att)
        else:                                          # a band goes to flex as a BlockMask, the dense mask unread
            mask = None if plan.band else _mask(b, att)
        seen_rows = None                   # query rows to keep; the others see no key and get zeros (eager: NaN)
        if plan.band or plan.key_rows:
            pass                                       # a causal band has no row without a key; rows hide none
        elif att.uniform_rows:
            q, mask = _uniform_rows(b, att, q, mask)
        elif att.empty_rows and _float_mask(att):
            q, mask, seen_rows = _absorbed_rows(b, att, q, mask)
        elif att.empty_rows:
            seen_rows = b.method("any", mask, -1, True)                # bool keep-mask: a row with a key
        assert plan.band or plan.key_rows or (seen_rows is not None) == att.zeroes_rows
        kwargs = {"attn_mask": mask, "dropout_p": _dropout_p(b, att),
                  "is_causal": att.causal == "top-left", "scale": att.scale}
        if att.gqa > 1:
            kwargs["enable_gqa"] = True
        qkv = (q, k, v)
        lead = max(0, 2 - len(att.batch))  # SDPA's fused kernels take (N, H, L, E) only, else math
        if lead == 1:                      # (N, L, E) -> (N, 1, L, E)
            qkv = tuple(b.method("unsqueeze", t, 1) for t in qkv)
        elif lead == 2:                    # (L, E) -> (1, 1, L, E)
            qkv = tuple(b.method("unsqueeze", b.method("unsqueeze", t, 0), 0) for t in qkv)
        if lead and mask is not None:
            kwargs["attn_mask"] = b.call(heads_dim, mask)
        served = ()
        if plan.target == "flex":
            out = _flex_call(b, att, plan, qkv, kwargs, lead)
            if att.lse_readers:                        # (out, lse): lse for each logsumexp(S, -1) read beside
                call, out = out, b.call(operator.getitem, out, 0)
                lse = b.call(operator.getitem, call, 1)
                served = tuple(b.method("to", b.method("reshape", lse, *shape(r)), dtype(r)) for r in att.lse_readers)
        elif plan.sink_key:
            keys = b.call(with_sink_keys, qkv[1], qkv[2], kwargs["attn_mask"], _sink(b, att, lead), att.causal,
                          att.compute_dtype)
            qkv = (qkv[0], b.call(operator.getitem, keys, 0), b.call(operator.getitem, keys, 1))
            kwargs.update(attn_mask=b.call(operator.getitem, keys, 2), is_causal=False)
            out = g.call_function(F.scaled_dot_product_attention, qkv, kwargs)
        elif att.causal == "lower-right":
            del kwargs["attn_mask"], kwargs["is_causal"]
            out = g.call_function(causal_lower_right_attention, qkv, kwargs)
        else:
            out = g.call_function(F.scaled_dot_product_attention, qkv, kwargs)
        for key in ("nn_module_stack", "stack_trace", "source_fn_stack"):
            if key in att.softmax.meta:
                out.meta[key] = att.softmax.meta[key]
        for _ in range(lead):
            out = b.method("squeeze", out, 0 if lead == 2 else 1)
        if seen_rows is not None:
            out = b.call(torch.where, seen_rows, out, 0.0)
        if att.out_unflatten is not None:
            out = b.method("unflatten", out, -1, att.out_unflatten)
        if att.out_permute is not None:
            out = b.method("permute", out, *att.out_permute)
        if att.out_dtype != att.compute_dtype:
            out = b.method("to", out, att.out_dtype)
    for key in ("example_value", "val", "tensor_meta"):   # same shape and dtype as the node it replaces
        if key in att.output.meta:
            out.meta[key] = att.output.meta[key]
    att.output.replace_all_uses_with(out)
    for reader, value in zip(att.lse_readers, served):
        reader.replace_all_uses_with(value)
        _move_readers_after(g, reader, value)
        g.erase_node(reader)
    for n in att.consumed:
        _detach_metadata(g, n)
    _erase_dead(g, (att.output,) + att.consumed, att.folded)
    return out


def _move_readers_after(g: fx.Graph, start: fx.Node, value: fx.Node) -> None:
    """The nodes between `start` and `value` that read `value` (or read a node that does) move after it, in their
    order: a logsumexp the graph read before its ·V product is served by a kernel call placed at that product."""
    tainted, anchor, n = {value}, value, start.next
    while n is not value and n.op != "root":
        following = n.next
        if any(a in tainted for a in n.all_input_nodes):
            anchor.append(n)
            anchor, tainted = n, tainted | {n}
        n = following


def _flex_call(b: "_Builder", att: Attention, plan: Plan, qkv: tuple, kwargs: dict, lead: int) -> fx.Node:
    """flex_attention_site(q, k, v, ...): the dense mask (if any) for the score_mod, the band as a BlockMask, or a
    BlockMask of the dense mask's visible tiles (a bool mask is then said by the BlockMask alone)."""
    block, mask = None, kwargs["attn_mask"]
    L, S = att.q_shape[-2], att.k_shape[-2]
    if plan.band:
        lo, hi = band(L, S, *_band_of(att, plan))
        block = b.call(band_block_mask, L, S, lo, hi, meta_value(att.q.node).device)
    if mask is not None:                               # the mod functions read a copy Inductor can lower (flex.py)
        mask = b.call(torch.ops.sdpa_rewrite.laid_out.default, mask)
    if plan.dense:
        block = b.call(dense_block_mask, mask, L, S, plan.per_row)
        mask = mask if _float_mask(att) else None
    sink = _sink(b, att, lead) if att.sink is not None else None
    cap = att.cap
    for kind, t in att.cap_factors:                  # a symbolic cap (dynamic=True): computed in the graph
        cap = b.factor(cap, kind, t)
    flex_kwargs = {"mask": mask, "sink": sink, "block_mask": block, "scale": att.scale,
                   "cap": cap, "enable_gqa": att.gqa > 1}
    if att.lse_readers:
        flex_kwargs["lse"] = True
    return b.g.call_function(flex_attention_site, qkv, flex_kwargs)


def _band_of(att: Attention, plan: Plan) -> tuple:
    """(causal, window) of the band a BlockMask says: the site's, or the rest of a mask split into rows."""
    if plan.key_rows:
        return att.key_rows.band.alignment, att.key_rows.band.window
    return att.causal, att.verdict.window if att.verdict is not None else None


def _key_rows(b: "_Builder", att: Attention) -> fx.Node:
    """Σ cᵢ·Rᵢ over the terms constant along the queries, laid out (..., 1, S) like the scores: what the score_mod
    adds (key_rows.py)."""
    final = tuple(att.top_shape[:-2]) + (1, att.top_shape[-1])
    row = None
    for term in att.key_rows.terms:
        at = term.at or att.top_shape
        x = term.node
        if tuple(at[:-2]) != tuple(final[:-2]):        # regrouped like the scores (B·H <-> B, H)
            x = b.method("reshape", b.method("expand", x, *at[:-2], 1, at[-1]), *final)
        if term.coeff != 1:
            x = b.call(operator.mul, x, term.coeff)
        row = x if row is None else b.call(operator.add, row, x)
    if any(dtype(t.node) != att.compute_dtype for t in att.key_rows.terms):
        row = b.method("to", row, att.compute_dtype)
    return row


def _sink(b: "_Builder", att: Attention, lead: int) -> fx.Node:
    """The sink logits (..., L, n) with the heads dim a 3-D or 2-D site was given."""
    sink, s = att.sink, tuple(shape(att.sink))
    if s[:-2] != tuple(att.batch):               # the scores regrouped, (B, H) <-> (B·H): the sinks with them
        sink = b.method("reshape", sink, *att.batch, *s[-2:])       # full-size: it was concatenated to them
    for _ in range(lead):
        sink = b.method("unsqueeze", sink, 0 if lead == 2 else 1)
    return sink


class _Builder:
    def __init__(self, g: fx.Graph):
        self.g = g
        self._symbols: Optional[dict] = None

    def call(self, fn, *args, **kwargs) -> fx.Node:
        return self.g.call_function(fn, self._sizes(args), self._sizes(kwargs))

    def method(self, name: str, *args) -> fx.Node:
        return self.g.call_method(name, self._sizes(args))

    def _sizes(self, args):
        """Symbolic sizes (Dynamo's dynamic shapes) as graph nodes: a SymInt object in a graph's args is
        only valid while tracing, not when the graph runs."""
        return fx.node.map_aggregate(args, lambda a: self._symint(a) if isinstance(a, torch.SymInt) else a)

    def _symint(self, value: torch.SymInt):
        constant = value.node.maybe_as_int() if hasattr(value.node, "maybe_as_int") else None
        return constant if constant is not None else self._expr(value.node.expr)

    def _expr(self, expr):
        """A node computing a sympy size expression from the graph's own symbols: sums, products, integer
        powers and floor division (a regrouped size such as (B·H)//H when B and H share a symbol)."""
        import sympy
        from torch.utils._sympy.functions import FloorDiv

        if self._symbols is None:
            self._symbols = _symbol_sources(self.g)
        if expr.is_Integer:
            return int(expr)
        if expr.is_Symbol:
            if expr not in self._symbols:
                raise NotImplementedError(f"symbolic size {expr} has no source in the graph")
            return self._symbols[expr]()
        if isinstance(expr, (sympy.Mul, sympy.Add)) or \
                (isinstance(expr, sympy.Pow) and expr.exp.is_Integer and int(expr.exp) >= 1):
            op = operator.add if isinstance(expr, sympy.Add) else operator.mul
            parts = [self._expr(expr.base)] * int(expr.exp) if isinstance(expr, sympy.Pow) else \
                [self._expr(a) for a in expr.args]
            return functools.reduce(lambda x, y: self.g.call_function(op, (x, y)), parts)
        if isinstance(expr, FloorDiv):
            return self.g.call_function(operator.floordiv, tuple(self._expr(a) for a in expr.args))
        raise NotImplementedError(f"symbolic size {expr} is not a sum, product, power or floor division")

    def factor(self, x, kind: str, t) -> fx.Node:
        """x·t or x/t: a tensor factor met on the scores, re-applied to q or to a mask term."""
        return self.call(operator.mul if kind == "mul" else operator.truediv, x, t)

    def relayout(self, node, at, final: tuple):
        """A tensor broadcast against the scores at shape `at`, regrouped like the scores to `final`."""
        if at is None or tuple(at[:-2]) == tuple(final[:-2]):
            return node
        return self.method("reshape", self.method("expand", node, *at), *final)

    def operand(self, x: Operand, batch: tuple, gqa: int, att: Attention = None) -> fx.Node:
        node = x.node
        s = list(shape(node))
        if x.permute is not None:
            node = self.method("permute", node, *x.permute)
            s = [s[i] for i in x.permute]
        for d in x.unsqueeze:
            node = self.method("unsqueeze", node, d)
            s.insert(d, 1)
        if x.flatten > 1:
            node = self.method("flatten", node, -x.flatten)
            s = s[:-x.flatten] + [math.prod(s[-x.flatten:])]
        if x.transpose:
            node = self.method("transpose", node, -2, -1)
            s[-2], s[-1] = s[-1], s[-2]
        if att is not None and att.qk_shape[:-2] != att.top_shape[:-2]:
            # scores regrouped (B·H, L, S) -> (B, H, L, S): regroup q and k the same way, row-major as view does
            if tuple(s[:-2]) != tuple(att.qk_shape[:-2]):
                node = self.method("expand", node, *att.qk_shape[:-2], -1, -1)
            node = self.method("reshape", node, *att.top_shape[:-2], *s[-2:])
            s = list(att.top_shape[:-2]) + s[-2:]
        target = list(batch)
        if gqa > 1:
            target[-1] = s[-3]                               # keep k/v's own head count: enable_gqa repeats them
        if tuple(s[:-2]) != tuple(target):
            node = self.method("expand", node, *target, -1, -1)  # a view: broadcast batch dims as the matmul did
        return node


def _symbol_sources(g: fx.Graph) -> dict:
    """For each free size symbol, a way to read it at run time: Dynamo's SymInt placeholder, else the
    size of the first placeholder tensor that has it as a dim (inserted where the builder is)."""
    sources = {}
    for n in g.nodes:
        if n.op != "placeholder":
            continue
        value = meta_value(n)
        if isinstance(value, torch.SymInt) and value.node.expr.is_Symbol:
            sources.setdefault(value.node.expr, lambda n=n: n)
    for n in g.nodes:
        value = meta_value(n) if n.op == "placeholder" else None
        if isinstance(value, torch.Tensor):
            for i, d in enumerate(value.shape):
                if isinstance(d, torch.SymInt) and d.node.expr.is_Symbol:
                    sources.setdefault(d.node.expr, lambda n=n, i=i: g.call_method("size", (n, i)))
    return sources


def _float_mask(att: Attention) -> bool:
    """Whether `_mask` builds a float mask (it has additive parts) rather than a bool keep-mask or none."""
    return bool(att.terms or att.absorbing)


def _mask(b: _Builder, att: Attention):
    """The mask SDPA takes (`_dense_mask`), at least 2-D: a 0-d or 1-d term (a scalar tensor added to the scores,
    a bias over the keys alone) broadcasts as the scores do, but the kernels and the empty-row check read its
    last two dims."""
    mask = _dense_mask(b, att)
    parts = [(t.node, t.at) for t in att.terms] + [(c, at) for c, _, at in att.keep] + \
        [(c, at) for c, _, _, at in att.absorbing]
    ranks = [len(at) if not same_batch(at, att.top_shape) else rank(x) for x, at in parts]
    if mask is not None and all(r is not None and r < 2 for r in ranks):
        mask = b.call(torch.atleast_2d, mask)
    return mask


def _dense_mask(b: _Builder, att: Attention):
    """Σ cᵢ·Tᵢ (+ absorbing fills) as a float mask; -inf fills as a bool keep-mask; both -> masked float."""
    if not _float_mask(att):
        return _keep(b, att)
    parts = []
    for term in att.terms:
        x = b.relayout(term.node, term.at, att.top_shape)
        if term.coeff != 1:
            x = b.call(operator.mul, x, term.coeff)
        for kind, t in term.factors:
            x = b.factor(x, kind, t)
        parts.append(x)
    for cond, masked_when, value, at in att.absorbing:
        cond = b.relayout(cond, at, att.top_shape)
        masked = cond if masked_when else b.call(torch.logical_not, cond)
        parts.append(b.call(operator.mul, b.method("to", masked, att.compute_dtype), value))  # where(R, f, 0)
    additive = parts[0]
    for x in parts[1:]:
        additive = b.call(operator.add, additive, x)
    if any(dtype(t.node) != att.compute_dtype for t in att.terms):
        additive = b.method("to", additive, att.compute_dtype)
    if att.clamp is not None:
        additive = b.call(torch.clamp_min, additive, att.clamp)      # eager's max(S, finfo.min): -inf -> finite
    if att.keep:
        return b.call(torch.masked_fill, additive, _masked(b, att), -math.inf)  # where(keep, m, -inf)
    return additive


def _conds(b: _Builder, att: Attention):
    for cond, masked_when, at in att.keep:
        cond = b.relayout(cond if dtype(cond) == torch.bool else b.method("to", cond, torch.bool), at, att.top_shape)
        yield cond, masked_when


def _keep(b: _Builder, att: Attention):
    """AND of the keep conditions, True = attend: masked_fill(c, -inf) keeps ~c, where(c, s, -inf) keeps c."""
    keep = None
    for cond, masked_when in _conds(b, att):
        k = b.call(torch.logical_not, cond) if masked_when else cond
        keep = k if keep is None else b.call(torch.logical_and, keep, k)
    return keep


def _masked(b: _Builder, att: Attention):
    """OR of the masked positions (the complement of `_keep`)."""
    masked = None
    for cond, masked_when in _conds(b, att):
        m = cond if masked_when else b.call(torch.logical_not, cond)
        masked = m if masked is None else b.call(torch.logical_or, masked, m)
    return masked


def _dropout_p(b: _Builder, att: Attention):
    d = att.dropout
    if d is None:
        return 0.0
    if d.module is not None:
        return b.call(dropout_p_of, b.g.get_attr(d.module))
    return d.p if d.training else 0.0


def _uniform_rows(b: _Builder, att: Attention, q: fx.Node, mask: fx.Node):
    """Eager gives a fully masked row (finite fill) uniform weights, mean(V): the fill replaced every score there,
    and any term added before it. The kernel gets that row with no mask value (every key visible, or 0) and a
    zero query, so equal scores: the same weights, with no select on the output (which in training would keep
    a second copy of it for the backward) and no fully masked row reaching the kernel."""
    float_mask = _float_mask(att)
    any_visible = b.method("any", _keep(b, att) if float_mask else mask, -1, True)
    mask = b.call(torch.where, any_visible, mask, 0.0 if float_mask else True)   # no key visible -> every key
    return b.call(torch.where, any_visible, q, 0.0), mask                          # ... seen by q = 0


def _absorbed_rows(b: _Builder, att: Attention, q: fx.Node, mask: fx.Node):
    """Rows of an additive mask with no visible key (every value at or below -MASKING). Eager's answer there is
    softmax(s + m) as its arithmetic rounds it, and kernels get such rows wrong: cuDNN near finfo.min, and a
    backward that recomputes the weights from the log-sum-exp, which cancels at large |m| (the CPU kernel's
    does). Two cases, both handed to the kernel with no large value left in the row:
    - m swamps the scores (|m| >= 2**(mantissa bits + 1): eager's s + m no longer depends on s): eager's
      weights are softmax(m), uniform over the keys at the row's maximum; the kernel gets a zero query and a
      0 / -inf mask;
    - otherwise (BERT's -1e4): eager's weights are softmax(s + m); the row is shifted by its maximum, which
      changes nothing but the rounding.
    Returns the query, the mask, and which rows hold a finite value (rows of -inf alone get zeros), or None for
    a mask that bounds.py proves never -inf: then no select on the output, which in training would keep a
    second copy of the attention output for the backward.

    Which keys sit at a swamped row's maximum is read from the mask as eager rounds it, in its dtype: a sum of
    terms that Inductor fuses is computed in fp32 and rounded only where it is stored (fp16: finfo.min + ALiBi's
    10 stays -65494 in fp32, and rounds to -65504 in eager), so the decisions read a copy stored in the dtype
    (`laid_out`), and a swamped row hands the kernel exactly 0 at its maximum and -inf elsewhere."""
    info = torch.finfo(att.compute_dtype)
    swamping = -min(2 / info.eps, info.max / 4)      # 2**(mantissa bits + 1); scaled by log2(e), still finite
    stored = mask
    if info.bits < 32 and _computed_mask(att):
        stored = b.call(torch.ops.sdpa_rewrite.laid_out.default, b.method("detach", mask))
    top = b.method("amax", stored, -1, True)
    finite = None if att.mask_finite else b.call(operator.gt, top, -math.inf)
    hidden = b.call(operator.le, top, -MASKING)
    if finite is not None:
        hidden = b.call(torch.logical_and, hidden, finite)
    mask = b.call(operator.sub, mask, b.call(torch.where, hidden, top, 0.0))         # -inf stays -inf
    swamped = b.call(torch.logical_and, hidden, b.call(operator.le, top, swamping))
    if finite is not None:
        mask = b.call(torch.where, finite, mask, 0.0)  # -inf alone: attend evenly, zeroed after (finite gradients)
        swamped = b.call(torch.logical_or, swamped, b.call(torch.logical_not, finite))
    below_top = b.call(torch.logical_and, swamped, b.call(operator.lt, stored, top))
    mask = b.call(torch.masked_fill, b.call(torch.where, swamped, 0.0, mask), below_top, -math.inf)
    q = b.call(torch.where, swamped, 0.0, q)
    return q, mask, finite


def _computed_mask(att: Attention) -> bool:
    """`_mask` computes the float mask from more than one stored tensor, or scales or casts one: a compiler may keep
    the result in higher precision than eager's stored values."""
    return len(att.terms) + len(att.absorbing) > 1 or any(
        t.coeff != 1 or t.factors or dtype(t.node) != att.compute_dtype for t in att.terms)


def _pure(n: fx.Node) -> bool:
    """Erasable once unused: a call in our vocabulary (or scalar arithmetic) that mutates nothing."""
    if n.op not in ("call_function", "call_method") or is_inplace(n):
        return False
    if n.op == "call_method":
        return not n.target.endswith("_")
    return view(n) is not None or n.target in _SCALAR_FUNCTIONS or n.target in _FACTORIES


_FACTORIES = {torch.full, torch.tensor, torch.scalar_tensor, torch.zeros, torch.ones, torch.empty, getattr}


def _detach_metadata(g: fx.Graph, node: fx.Node) -> None:
    """Users that read only a dying node's dtype/device/shape get those as constants, so the node can go."""
    for user in list(node.users):
        if user.op == "call_function" and user.target is torch.ops.aten._assert_tensor_metadata.default:
            g.erase_node(user)                   # export's check of a value that is no longer computed
    value = meta_value(node)
    if not isinstance(value, torch.Tensor) or not all(isinstance(d, int) for d in value.shape):
        return
    size = torch.Size(value.shape)
    for user in list(node.users):
        if not reads_only_metadata(user, node):
            continue
        if user.op == "call_method" and user.target in ("type_as", "expand_as", "view_as", "reshape_as"):
            other = user.args[0]
            user.target = {"type_as": "to", "expand_as": "expand", "view_as": "view", "reshape_as": "reshape"}[user.target]
            user.args = (other, value.dtype) if user.target == "to" else (other, *size)
            continue
        if user.op == "call_function" and user.target is torch.ops.aten.type_as.default:
            user.target, user.args = torch.ops.aten.to.dtype, (user.args[0], value.dtype)
            continue
        if user.op == "call_function" and user.target is torch.ops.aten.expand_as.default:
            user.target, user.args = torch.ops.aten.expand.default, (user.args[0], list(size))
            continue
        if user.op == "call_function" and user.target is getattr:
            const = {"dtype": value.dtype, "device": value.device, "shape": size, "ndim": len(size),
                     "is_cuda": value.device.type == "cuda"}[user.args[1]]
        elif user.op == "call_method" and user.target == "size":
            dim = user.args[1] if len(user.args) > 1 else user.kwargs.get("dim")
            const = size if dim is None else size[dim]
        elif user.op == "call_method" and user.target == "dim":
            const = len(size)
        else:
            continue
        for consumer in list(user.users):
            consumer.args = fx.node.map_arg(consumer.args, lambda n: const if n is user else n)
            consumer.kwargs = fx.node.map_arg(consumer.kwargs, lambda n: const if n is user else n)
        if not user.users:
            g.erase_node(user)


def _erase_dead(g: fx.Graph, candidates: tuple, folded: frozenset = frozenset()) -> None:
    """Erase the site's own nodes once nothing uses them, then any pure input they leave unused
    (a folded mask's nodes are pure: fold.py proved it)."""
    pending, erased = list(dict.fromkeys(candidates)), set()

    def erase(node):
        inputs = node.all_input_nodes
        g.erase_node(node)
        erased.add(node)
        pending.extend(i for i in inputs if _pure(i) or i in candidates or i in folded)

    while pending:
        n = pending.pop()
        if n in erased or n.op in ("placeholder", "output", "get_attr"):
            continue
        for user in dead_readers(n):             # a clone nobody reads keeps nothing alive
            erase(user)
        if not n.users:
            erase(n)
