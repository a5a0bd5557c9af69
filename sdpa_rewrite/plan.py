"""Stage 4c, plan: decide what a found site calls — SDPA, or FlexAttention where SDPA cannot say it (soft-capping)
or says it slowly (a sliding window, attention sinks, a long padded batch's mask or ALiBi's rows on CUDA) — and why,
in words the report shows.

It reads an `Attention` record (what the site *is*) and the conditions the graph will run under; it neither
matches nor mutates. FlexAttention has no dropout and no backward on the CPU, and Inductor's CPU flex kernel
returns no log-sum-exp and takes no epilogue (the empty-row select): where one of these bites, a site SDPA can
still compute exactly stays on SDPA, and one it cannot (soft-capping) stays eager with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch

from . import key_rows
from .find import Attention, Miss
from .view import meta_value


@dataclass(frozen=True)
class Plan:
    target: str                    # "sdpa" | "flex"
    reason: str = ""               # why this target, for the report
    band: bool = False             # flex: the mask is a causal band (causal, lower-right, sliding window): a BlockMask
    sink_key: bool = False         # sdpa: sinks as extra all-zero keys whose mask columns hold the sink logits
    dense: bool = False            # flex: a BlockMask built from the dense mask at run time skips the tiles it hides
    per_row: bool = False          # dense: one BlockMask entry per batch row (each row's own padding skipped too)
    key_rows: bool = False         # flex: a bias constant along the queries read as rows by the score_mod, the
                                   # rest of the mask (a band, or nothing) as a BlockMask (key_rows.py)


@dataclass(frozen=True)
class Conditions:
    """What the rewritten graph runs under, as far as the caller knows."""
    flex: bool = True              # options={"flex": False} turns the FlexAttention target off
    cpu_inductor: bool = False     # Inductor compiles it for the CPU: flex forward only, without log-sum-exp
    may_train: bool = True         # for graphs that do not record requires_grad per value (not Dynamo's)
    fast_on: tuple = ("cuda",)     # devices where flex is chosen for speed alone (windows, sinks, dense masks):
                                   # where it was measured faster than SDPA (bench/RESULTS.md)


# A dense mask goes to flex, in a forward without gradients, when L and S are both at least this: its BlockMask
# then skips the tiles of a padded batch's causal triangle. Measured on CUDA against SDPA with the same mask
# (bench/RESULTS.md): attention alone 1.24x at 2048, 1.89x at 4096; a regional training step was slower (the
# BlockMask and the mask's copy per layer), so with gradients the mask stays on SDPA.
DENSE_FLEX_MIN = 2048

# The dense mask's BlockMask with an entry per batch row, so each row skips its own padding too, not only what the
# rows share: on the H200 (bench/RESULTS.md), against one BlockMask for the batch, attention alone ran 1.34-1.44x
# faster and a left-padded Llama-style forward 1.06-1.12x (whole model, B2 and B4 S4096; 1.17-1.20x native sdpa)
# and 1.06x (each layer alone), with no fault since the tile lists come from an opaque op. False keeps one
# BlockMask for the whole batch (bench/'s `_flex_union` forms).
DENSE_FLEX_PER_ROW = True


def plan(att: Attention, when: Conditions = Conditions()) -> Union[Plan, Miss]:
    window = att.verdict is not None and att.verdict.window is not None
    fast = _device(att) in when.fast_on
    if att.lse_readers:
        return _with_log_sum_exp(att, when)
    if att.cap is None and att.sink is None and not window:
        if _long_key_rows(att, when) and fast and not _flex_blocked(att, when):
            rows = att.key_rows
            return Plan("flex", "a bias constant along the queries (ALiBi): the score_mod reads one row per head" +
                        (f", the {rows.band.kind} band is a BlockMask" if rows.has_band else ""),
                        band=rows.has_band, key_rows=True)
        if _long_dense_mask(att) and fast and not _requires_grad(att, when) and not _flex_blocked(att, when):
            if att.key_bias:
                return Plan("sdpa", "a dense mask holding a bias along the keys (ALiBi): SDPA reads it faster")
            return Plan("flex", "a dense mask: a BlockMask built from it at run time skips the tiles it hides",
                        dense=True, per_row=DENSE_FLEX_PER_ROW)
        return Plan("sdpa")
    blocked = _flex_blocked(att, when)
    if att.cap is not None:
        if blocked:
            return Miss(att.location, att.softmax, f"soft-capping (tanh) needs FlexAttention, and {blocked}")
        if att.key_rows is not None and _rows_need_no_grad(att, when):     # rows, not the dense bias, on any length
            return Plan("flex", "soft-capping: score_mod, with a bias constant along the queries read as rows",
                        band=att.key_rows.has_band, key_rows=True)
        return Plan("flex", "soft-capping: score_mod", band=_band(att))
    if att.sink is not None:
        if not blocked and fast:
            return Plan("flex", "attention sinks: corrected from flex's log-sum-exp", band=_band(att))
        why = blocked or "on the CPU: exact and differentiable; flex is used on CUDA"
        return Plan("sdpa", f"attention sinks as extra zero keys ({why})", sink_key=True)
    if not blocked and fast:
        return Plan("flex", "sliding window: a BlockMask skips the blocks outside it", band=True)
    return Plan("sdpa", "sliding window as a dense mask" + (f" ({blocked})" if blocked else
                                                             " (FlexAttention is used for windows on CUDA)"))


def _with_log_sum_exp(att: Attention, when: Conditions) -> Union[Plan, Miss]:
    """The scores' log-sum-exp is read beside the softmax: flex returns it (SDPA does not). A row that may see no
    key is refused: there the kernel's log-sum-exp (of the row as the empty-row treatment hands it over) is not
    eager's."""
    if att.empty_rows or att.uniform_rows:
        blocked = "a row may see no key, where the kernel's log-sum-exp is not eager's"
    else:
        blocked = _flex_blocked(att, when)
    if blocked:
        return Miss(att.location, att.softmax, f"the scores' logsumexp is read: it needs FlexAttention's, and {blocked}")
    return Plan("flex", "the scores' log-sum-exp is read: flex returns it", band=_band(att))


def _band(att: Attention) -> bool:
    """The mask is a causal band a BlockMask states exactly (the dense mask is then not read at all)."""
    return bool(att.causal) or att.verdict is not None and att.verdict.window is not None


def _long_dense_mask(att: Attention) -> bool:
    """A mask SDPA would read whole (no causal flag drops it, it is no bias), over static L, S both long enough for
    skipped tiles to pay for the BlockMask's build (DENSE_FLEX_MIN).

    An input mask beside a row along the keys that holds a visible bias (ALiBi beside a padded batch's mask, where no
    band splits the rest off) is a bias too, and plan() keeps it on SDPA with that reason: on the H200
    (bench/RESULTS.md) a left-padded Bloom-like forward ran 7.63 / 20.37 ms on the dense-mask flex path against
    7.19 / 19.22 ms on SDPA (S4096 / 8192). Rows known only as the graph runs (Bloom's, from a cumsum of
    attention_mask) are not known to be a bias, and keep the dense-mask path (key_rows.bias_along_keys)."""
    if att.verdict is None or att.verdict.kind not in ("input mask", "constant mask", "mask") or att.causal:
        return False
    L, S = att.q_shape[-2], att.k_shape[-2]
    return isinstance(L, int) and isinstance(S, int) and min(L, S) >= DENSE_FLEX_MIN


def _long_key_rows(att: Attention, when: Conditions) -> bool:
    """Rows along the keys (key_rows.py) that need no gradient of their own, over static L, S long enough for flex
    to beat SDPA's dense float mask (key_rows.flex_min_length)."""
    if att.key_rows is None or not _rows_need_no_grad(att, when):
        return False
    L, S = att.q_shape[-2], att.k_shape[-2]
    least = key_rows.flex_min_length(train=_requires_grad(att, when))
    return isinstance(L, int) and isinstance(S, int) and min(L, S) >= least


def _rows_need_no_grad(att: Attention, when: Conditions) -> bool:
    """The rows fold to constants, or Dynamo traced them without requires_grad: flex reads them as plain buffers."""
    if att.key_rows.constant:
        return True
    values = [t.node.meta.get("example_value") for t in att.key_rows.terms]
    if all(isinstance(v, torch.Tensor) for v in values):
        return not any(v.requires_grad for v in values)
    return not when.may_train


def _flex_blocked(att: Attention, when: Conditions) -> str:
    """Why flex cannot run this site here, or ""."""
    if not when.flex:
        return "options={'flex': False}"
    if not flex_available():
        return f"this torch ({torch.__version__}) has no FlexAttention with the BlockMask API it needs (torch >= 2.6)"
    if att.dropout is not None and att.dropout.may_drop:
        return "FlexAttention has no dropout"
    if _device(att) == "cpu" and _requires_grad(att, when):
        return "FlexAttention has no backward on the CPU"
    if when.cpu_inductor and _device(att) == "cpu":
        if att.sink is not None or att.lse_readers:
            return "Inductor's CPU FlexAttention returns no log-sum-exp"
        if att.zeroes_rows:
            return ("Inductor's CPU FlexAttention takes no epilogue, and rows that may see no key need one "
                    "(the select that gives them eager's answer)")
    if len(att.batch) > 2:
        return "FlexAttention takes 4-D (batch, heads, L, E) inputs"
    compiled_kernel = _device(att) == "cuda" or when.cpu_inductor
    if compiled_kernel and not all(_kernel_dim(d) for d in (att.q_shape[-1], att.v_shape[-1])):
        return (f"head dims {att.q_shape[-1]}/{att.v_shape[-1]}: FlexAttention's compiled kernels are sure only for "
                "powers of two from 16 to 256 (others have failed to compile or read out of bounds)")
    return ""


def _kernel_dim(d) -> bool:
    return isinstance(d, int) and 16 <= d <= 256 and d & (d - 1) == 0


def _device(att: Attention) -> str:
    value = meta_value(att.q.node)
    return value.device.type if isinstance(value, torch.Tensor) else "cpu"


def _requires_grad(att: Attention, when: Conditions) -> bool:
    """Dynamo records requires_grad as traced (training or not); other front ends' values do not say it."""
    nodes = (att.q.node, att.k.node, att.v.node)
    if all("example_value" in n.meta for n in nodes):
        return any(isinstance(n.meta["example_value"], torch.Tensor) and n.meta["example_value"].requires_grad
                   for n in nodes)
    return when.may_train


def flex_available() -> bool:
    """FlexAttention with the BlockMask API flex.py builds on (`from_kv_blocks(..., seq_lengths=)`, torch ≥ 2.6)."""
    import inspect

    try:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention  # noqa: F401
    except ImportError:
        return False
    return "seq_lengths" in inspect.signature(BlockMask.from_kv_blocks).parameters
