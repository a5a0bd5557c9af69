"""The pass: find every site, emit the rewritable ones, and report all of them — all or nothing.

A failure anywhere puts the graph back exactly as it was before the exception propagates, so a caller
never sees a half-rewritten graph.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Optional, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F

from .emit import causal_lower_right_attention, dropout_p_of, emit
from .exported import rewrite_program
from .find import Attention, Miss, SiteError, find
from .flex import flex_attention_site
from .fold import Folder
from .plan import Conditions, plan
from .report import Report, Site
from .view import meta_value

_NEVER_SHARED = {F.scaled_dot_product_attention, causal_lower_right_attention, dropout_p_of, flex_attention_site}


def rewrite(gm: "fx.GraphModule | torch.export.ExportedProgram", example_inputs: Optional[Sequence] = None, *,
            graph: int = 0, fold_buffers: bool = True, empty_rows: str = "eager", assumed: Optional[dict] = None,
            flex: bool = True, conditions: Optional[Conditions] = None) -> "Report | torch.export.ExportedProgram":
    """Rewrite every eager attention site of `gm` to SDPA in place (lint + recompile); return the report.
    An `ExportedProgram` is not changed in place: the rewritten program is returned (exported.py; its report is
    `sdpa_rewrite.report_of(program)`, and `example_inputs` may be the (args, kwargs) it was exported with).

    Graphs from Dynamo carry their shapes; for a `symbolic_trace` graph pass `example_inputs` (real or
    fake tensors) so shapes can be propagated — without them sites are skipped with that reason.
    Masks that no input data reaches are evaluated once here (fold.py) to prove them causal or empty;
    a module buffer in such a mask is read now, so `fold_buffers=False` if you rewrite a mask buffer later.
    `empty_rows`: "eager" (default) gives query rows that see no key eager's answer on every kernel;
    "kernel" leaves them as the SDPA kernel computes them (as transformers' own sdpa path does): faster
    on padded batches, and those rows (padding queries) then differ from eager.
    `assumed`: verdicts of graph-input masks taken at run time (dispatch.py), by masks.runtime_key.
    `flex`: False keeps every site on SDPA (soft-capped sites then stay eager); `conditions`: what the graph
    will run under (plan.py; the backend says when Inductor compiles it for the CPU).
    """
    if empty_rows not in ("eager", "kernel"):
        raise ValueError(f"empty_rows must be 'eager' or 'kernel', not {empty_rows!r}")
    if isinstance(gm, torch.export.ExportedProgram):
        return rewrite_program(gm, rewrite, example_inputs, graph=graph, fold_buffers=fold_buffers,
                               empty_rows=empty_rows, assumed=assumed, flex=flex, conditions=conditions)
    if not isinstance(gm, fx.GraphModule):
        raise TypeError(
            "sdpa_rewrite.rewrite() takes a torch.fx.GraphModule (from torch.fx.symbolic_trace or a "
            "torch.compile backend) or a torch.export.ExportedProgram, "
            f"not {type(gm).__name__}; for an nn.Module use "
            "torch.compile(model, backend='sdpa_rewrite') or sdpa_rewrite.explain(model, *args)")
    started = time.perf_counter()
    report = Report()
    if example_inputs is not None and not _has_shapes(gm):
        note = propagate_shapes(gm, example_inputs)
        if note:
            report.notes.append(note)
    saved = snapshot(gm.graph)
    try:
        folder = Folder(gm, example_inputs, fold_buffers=fold_buffers)
        folder.assumed.update(assumed or {})
        when = conditions or Conditions(flex=flex, may_train=may_train(gm, example_inputs))
        findings = [_planned(f, when) for f in find(gm, folder)]
        before = set(gm.graph.nodes)
        replaced: dict = {}
        for f, chosen in findings:
            if isinstance(f, Attention):
                f = _remap(f, replaced)
                if empty_rows == "kernel" and (f.empty_rows or f.uniform_rows):
                    f = dataclasses.replace(f, empty_rows=False, uniform_rows=False)
                    if not report.notes or "empty_rows='kernel'" not in report.notes[-1]:
                        report.notes.append("empty_rows='kernel': query rows that see no key are left as the "
                                            "SDPA kernel computes them (they differ from eager)")
                try:
                    replaced[f.output] = emit(gm, f, chosen)
                except Exception as e:
                    raise SiteError(f.location, e) from e
            report.sites.append(Site.from_finding(f, graph, plan=chosen))
        findings = [f for f, _ in findings]
        checked = [f for f in findings if isinstance(f, Attention) and (f.empty_rows or f.uniform_rows)]
        if checked and empty_rows == "eager":
            selecting = sum(f.zeroes_rows for f in checked)
            report.notes.append(
                f"{len(checked)} of {len(report.rewritten)} rewritten sites check for query rows that see no key "
                "(`+ empty-row check`), to give eager's answer there: a few launches per layer. "
                f"{selecting} of them also select on the attention output (their mask may hold -inf), which in "
                "training keeps a second copy of each such output for the backward. If no query row of your "
                "inputs is all padding, options={'empty_rows': 'kernel'} drops the check")
        if any(isinstance(f, Attention) for f in findings):
            share_common_nodes(gm.graph, before)
            gm.graph.lint()
            gm.recompile()
    except BaseException:
        restore(gm, saved)
        raise
    report.seconds = time.perf_counter() - started
    return report


def may_train(gm: fx.GraphModule, example_inputs: Optional[Sequence]) -> bool:
    """Grad mode is on and a parameter or an input requires grad: the graph may be differentiated."""
    if not torch.is_grad_enabled():
        return False
    return any(p.requires_grad for p in gm.parameters()) or \
        any(isinstance(x, torch.Tensor) and x.requires_grad for x in example_inputs or ())


def _planned(finding, when: Conditions) -> tuple:
    """(the finding, its Plan); a site no target can compute here becomes a Miss with plan's reason."""
    if not isinstance(finding, Attention):
        return finding, None
    chosen = plan(finding, when)
    return (chosen, None) if isinstance(chosen, Miss) else (finding, chosen)


def share_common_nodes(graph: fx.Graph, before: set) -> None:
    """Sites that read one mask build the same helper nodes (row checks, casts): keep the first of each.
    Only nodes the rewrite added are merged, and never an attention call (dropout draws per call)."""
    seen: dict = {}
    for node in list(graph.nodes):
        if node in before or node.op not in ("call_function", "call_method") or node.target in _NEVER_SHARED:
            continue
        key = (node.op, node.target, _key(node.args), _key(node.kwargs))
        first = seen.setdefault(key, node)
        if first is not node:
            node.replace_all_uses_with(first)
            graph.erase_node(node)


def _key(value):
    if isinstance(value, (tuple, list)):
        return (type(value).__name__,) + tuple(_key(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _key(v)) for k, v in value.items()))
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    if isinstance(value, float) and value != value:
        return "nan"
    return value if isinstance(value, (fx.Node, int, float, str, bool, type(None))) else id(value)


def _has_shapes(gm: fx.GraphModule) -> bool:
    """Dynamo and make_fx graphs already carry a value per node; symbolic_trace graphs do not."""
    return all(meta_value(n) is not None for n in gm.graph.nodes if n.op == "placeholder")


def propagate_shapes(gm: fx.GraphModule, example_inputs: Sequence) -> str:
    """Record fake-tensor shapes on every node (meta['val']); returns a note when it cannot."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    fakes = [x for x in example_inputs if isinstance(x, FakeTensor)]
    mode = fakes[0].fake_mode if fakes else FakeTensorMode(allow_non_fake_inputs=True)
    try:
        with mode:
            FakeTensorProp(gm, mode).propagate_dont_convert_inputs(
                *[mode.from_tensor(x) if isinstance(x, torch.Tensor) and not isinstance(x, FakeTensor) else x
                  for x in example_inputs])
    except Exception as e:  # a graph that fake tensors cannot run: sites are skipped for lack of shapes
        return f"could not propagate shapes from example_inputs: {type(e).__name__}: {e}"
    return ""


def snapshot(graph: fx.Graph) -> fx.Graph:
    """A copy of `graph` (nodes and meta, not tensors) that `restore` can put back. Attributes other passes
    set on nodes are carried over too: AOTAutograd reads Dynamo's `_dynamo_source` off every placeholder."""
    copy = fx.Graph(owning_module=graph.owning_module, tracer_cls=graph._tracer_cls)
    copy._codegen = graph._codegen
    copies: dict = {}
    out = copy.graph_copy(graph, copies)
    copy.output(out)
    for old, new in copies.items():
        extra = {k: v for k, v in vars(old).items() if k not in vars(new)}
        vars(new).update(extra)
    return copy


def restore(gm: fx.GraphModule, saved: fx.Graph) -> None:
    gm.graph = saved
    gm.recompile()


def _remap(value, mapping: dict):
    """Point a record at the outputs of sites already rewritten (stacked attention: q from a previous site)."""
    if not mapping:
        return value
    if isinstance(value, fx.Node):
        return mapping.get(value, value)
    if isinstance(value, tuple):
        return tuple(_remap(v, mapping) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: _remap(getattr(value, f.name), mapping) for f in dataclasses.fields(value)}
        return dataclasses.replace(value, **changes)
    return value
