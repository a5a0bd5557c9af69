"""Run-time dispatch: call the compiled variant of a graph that fits what its input masks are at run time.

The backend compiles the graph as always (input masks kept as masks: exact for any mask). When runtime.py
finds input masks whose verdict can be taken at run time, the compiled graph is wrapped in a `VerdictDispatch`:
each call takes the masks' verdicts (cached per mask tensor: one host sync per distinct mask) and, where a mask
turned out to be causal, lower-right causal or all-visible, calls a variant rewritten with that verdict
(is_causal / no mask: the fused kernels' fast paths). A variant is rewritten and compiled the first time its
verdicts are met, with the real inputs of that call. Dynamo's guards fix the shapes, dtypes and strides of a
static graph; a graph with symbolic sizes gets one variant per input signature (a variant is compiled for the
sizes it first saw), at most `MAX_VARIANTS`, then the general graph. A variant that fails to compile warns once and
the general graph runs instead.
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch
import torch.fx as fx

from .masks import Verdict
from .rewrite import rewrite, snapshot
from .runtime import MaskProbe
from .view import meta_value

MAX_VARIANTS = 8
_VERDICT_TEXT = {"none": "all positions visible", "causal": "top-left", "causal lower-right": "lower-right"}


class VerdictDispatch:
    def __init__(self, gm: fx.GraphModule, pristine: fx.Graph, probes: Sequence[MaskProbe], general: Callable,
                 compile_variant: Callable, rewrite_options: dict, rewritten: int, strict: bool = False):
        self.gm, self.pristine, self.probes, self.rewritten = gm, pristine, tuple(probes), rewritten
        self.general, self.compile_variant = general, compile_variant
        self.rewrite_options, self.strict = rewrite_options, strict
        self.symbolic = _has_symbolic_sizes(gm)
        self.variants: dict = {}

    def __call__(self, *args):
        verdicts = tuple(p.kind(args) for p in self.probes)
        if all(v == "mask" for v in verdicts):
            return self.general(*args)
        key = (verdicts, _signature(args)) if self.symbolic else verdicts
        fn = self.variants.get(key)
        if fn is None:
            if len(self.variants) >= MAX_VARIANTS:
                return self.general(*args)
            fn = self.variants[key] = self._variant(verdicts, args)
        return fn(*args)

    def _variant(self, verdicts: tuple, args: Sequence) -> Callable:
        assumed = {p.key: Verdict(v, f"{_VERDICT_TEXT[v]}, taken at run time", empty_rows=False)
                   for p, v in zip(self.probes, verdicts) if v != "mask"}
        try:
            gm = fx.GraphModule(self.gm, snapshot(self.pristine))
            report = rewrite(gm, list(args), assumed=assumed, **self.rewrite_options)
            if len(report.rewritten) < self.rewritten:
                raise RuntimeError(f"{len(report.rewritten)} sites rewritten in the variant, {self.rewritten} in the "
                                   "general graph")
            return self.compile_variant(gm, list(args))
        except Exception as e:
            if self.strict:
                raise
            warnings.warn(f"sdpa_rewrite: the variant for masks found {verdicts} at run time failed "
                          f"({type(e).__name__}: {e}); the general graph (masks kept) runs instead", stacklevel=3)
            return self.general


def _has_symbolic_sizes(gm: fx.GraphModule) -> bool:
    """Dynamo made some size symbolic: one compiled graph serves inputs of several sizes."""
    for n in gm.graph.nodes:
        if n.op != "placeholder":
            continue
        value = meta_value(n)
        if isinstance(value, torch.SymInt) or isinstance(value, torch.Tensor) and \
                not all(isinstance(d, int) for d in tuple(value.shape) + tuple(value.stride())):
            return True
    return False


def _signature(args: Sequence) -> tuple:
    return tuple((tuple(a.shape), a.stride()) if isinstance(a, torch.Tensor) else a for a in args)
