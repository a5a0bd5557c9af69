"""Deployment to ONNX: export a rewritten program so that every rewritten site is one ONNX `Attention` node.

torch.onnx's exporter (dynamo=True, opset 23 and later) turns `aten.scaled_dot_product_attention` into one
`Attention` node, with its scale, `is_causal`, mask and grouped key/value heads. An eager model exports as
MatMul / Softmax / MatMul instead, which a runtime fuses only for the model families its optimiser knows. This
module exports through the pass and then checks the result: which rewritten site became an `Attention` node
(matched by the module path the exporter records on each node), which did not and why, and, where ONNX Runtime is
installed, the ONNX model's outputs against the eager program's on the example inputs.

FlexAttention has no ONNX form, so the export rewrites with `flex=False`: a soft-capped site stays eager, with the
plan's reason in the report (opset 23's Attention has a softcap attribute, but torch's exporter reaches it from
no torch op).
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Optional

import torch
import torch.utils._pytree as pytree
from tabulate import tabulate
from torch.export.graph_signature import InputKind

from .exported import report_of
from .report import Report
from .rewrite import rewrite

ATTENTION_OPSET = 23          # the first opset with an Attention operator
ROUNDING = 1e-4               # fp32 rounding of a few layers' outputs: past it, a check's note says so


@dataclasses.dataclass
class OnnxSite:
    location: str
    attention_node: str       # the node's name, or "" when the site did not become one
    reason: str = ""


@dataclasses.dataclass
class OnnxExport:
    """What `export_onnx` made: the ONNX program, the rewrite's report, each site's node, and the check."""
    program: Any                              # torch.onnx.ONNXProgram
    report: Report
    sites: list
    op_counts: dict
    max_abs_error: Optional[float] = None     # ONNX Runtime against the eager program; None: not checked
    notes: list = dataclasses.field(default_factory=list)

    @property
    def attention_sites(self) -> int:
        return sum(bool(s.attention_node) for s in self.sites)

    def __str__(self) -> str:
        head = (f"sdpa_rewrite export-onnx: {self.attention_sites} of {len(self.sites)} sites are one Attention node "
                f"({self.op_counts.get('Attention', 0)} Attention, {self.op_counts.get('Softmax', 0)} Softmax nodes "
                "in the model)")
        rows = [(s.location, s.attention_node or "-", s.reason) for s in self.sites]
        lines = [head, tabulate(rows, headers=["site", "Attention node", "reason"])]
        if self.max_abs_error is not None:
            lines.append(f"ONNX Runtime (CPU) against eager: max abs error {self.max_abs_error:.1e}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def export_onnx(model, args: tuple = (), kwargs: Optional[dict] = None, path: Optional[str] = None, *,
                dynamic_shapes=None, opset: int = ATTENTION_OPSET, check: bool = True, optimize: bool = True,
                **options) -> OnnxExport:
    """Export `model` (an nn.Module or an ExportedProgram) through the pass to ONNX; save it at `path` if given.

    `dynamic_shapes` as torch.export takes them (for a module; a program keeps its own). `check`: run the example
    inputs through ONNX Runtime, when it is installed, and compare with the program before the rewrite (eager's
    numbers); a difference past fp32 rounding is named in the notes. `options` go to rewrite()."""
    kwargs = dict(kwargs or {})
    if opset < ATTENTION_OPSET:
        raise ValueError(f"ONNX has an Attention operator from opset {ATTENTION_OPSET}; at opset {opset} every "
                         "site would export as MatMul / Softmax / MatMul again")
    if isinstance(model, torch.export.ExportedProgram):
        ep = model
        if not args and not kwargs and model.example_inputs is not None:
            args, kwargs = model.example_inputs
    else:
        ep = torch.export.export(model, tuple(args), kwargs, dynamic_shapes=dynamic_shapes, strict=False)
    options.setdefault("flex", False)
    program = rewrite(ep, (tuple(args), kwargs), **options)
    report = report_of(program)
    notes: list = []
    onnx_program = _export(program, args, kwargs, opset, optimize)
    error = None
    expected = _expected(ep, args, kwargs) if check else None   # eager runs once, however many exports are checked
    if check and expected is None:
        notes.append("not checked: onnxruntime is not installed")
    elif check:
        error, failure = _check(onnx_program, ep, args, kwargs, expected)
        if failure and optimize:                 # the exporter's own optimiser made a graph the runtime refuses
            notes.append(f"ONNX Runtime refused the optimised graph ({failure}); exported again with optimize=False")
            onnx_program = _export(program, args, kwargs, opset, optimize=False)
            error, failure = _check(onnx_program, ep, args, kwargs, expected)
        if failure:
            raise RuntimeError(f"ONNX Runtime could not run the exported model: {failure}")
        if error > ROUNDING:
            notes.append(f"ONNX Runtime's outputs differ from eager's by {error:.1e}, past fp32 rounding: check the "
                         "export before deploying it")
    if path is not None:
        onnx_program.save(path)
    nodes = list(onnx_program.model_proto.graph.node)
    return OnnxExport(onnx_program, report, attention_nodes(report, nodes),
                      dict(collections.Counter(n.op_type for n in nodes)), error, notes)


def attention_nodes(report: Report, nodes: list) -> list:
    """Each site of the report beside the Attention node made from it (by the module path on the node)."""
    by_module: dict = collections.defaultdict(list)
    for n in nodes:
        if n.op_type == "Attention":
            by_module[_module_of(n)].append(n.name)
    out = []
    for site in report.sites:
        module = site.location.split(":")[0]
        if not site.rewritten:
            out.append(OnnxSite(site.location, "", f"left eager by the rewrite: {site.reason}"))
        elif by_module.get(module):
            out.append(OnnxSite(site.location, by_module[module].pop(0)))
        else:
            out.append(OnnxSite(site.location, "", "rewritten, but the exporter lowered the attention call to other "
                                                   "ONNX ops (a form its Attention translation does not take)"))
    return out


def _module_of(node) -> str:
    """The module path torch.onnx records on a node: the last but one of its name scopes."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = [s.strip(" '\"") for s in prop.value.strip("[]").split(",")]
            return scopes[-2] if len(scopes) >= 2 else ""
    return ""


def _export(program, args, kwargs, opset: int, optimize: bool):
    return torch.onnx.export(program, tuple(args), kwargs=kwargs, dynamo=True, opset_version=opset,
                             optimize=optimize, verbose=False)


def _expected(eager, args, kwargs) -> Optional[list]:
    """The eager program's output tensors for the example inputs; None when ONNX Runtime is not there to compare."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    with torch.no_grad():
        return [t for t in pytree.tree_leaves(eager.module()(*args, **kwargs)) if isinstance(t, torch.Tensor)]


def _check(onnx_program, eager, args, kwargs, expected: list) -> tuple:
    """(max abs error over the outputs, failure text): ONNX Runtime against the program before the rewrite."""
    try:
        got = [torch.as_tensor(g) for g in run_onnxruntime(onnx_program, eager, args, kwargs)]
    except Exception as e:
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    if len(got) != len(expected):
        return None, f"{len(got)} outputs, the program has {len(expected)}"
    return max(((g.float() - e.float()).abs().max().item() for g, e in zip(got, expected)), default=0.0), ""


def run_onnxruntime(onnx_program, ep, args, kwargs) -> list:
    """The ONNX model's outputs on the CPU for the program's (args, kwargs): each ONNX input is fed the tensor the
    program's input of that name takes (inputs the export made constants, such as `use_cache`, are not fed)."""
    import onnxruntime

    in_spec = ep.call_spec.in_spec
    if in_spec.num_children == 2:                    # (args, kwargs): the kwargs in the order the program took them
        order = (in_spec.child(1) if hasattr(in_spec, "child") else in_spec.children_specs[1]).context
    else:
        order = list(kwargs)
    leaves = pytree.tree_leaves((tuple(args), {k: kwargs[k] for k in order if k in kwargs}))
    names = [spec.arg.name for spec in ep.graph_signature.input_specs if spec.kind == InputKind.USER_INPUT]
    given = dict(zip(names, leaves))
    session = onnxruntime.InferenceSession(onnx_program.model_proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    feed = {i.name: given[i.name].detach().cpu().numpy() for i in session.get_inputs()}
    return session.run(None, feed)
