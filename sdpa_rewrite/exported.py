"""Front end for `torch.export`: rewrite an `ExportedProgram` and hand back an `ExportedProgram`.

A program's graph is functional ATen with its parameters lifted to inputs, and the pass emits calls
(`scaled_dot_product_attention`, flex) that only a trace turns into ATen. So the program is unlifted
(`ep.module()`, parameters back as attributes under their own names), rewritten in place like any GraphModule,
and exported again with the program's own example inputs and the dynamic shapes read off its input
placeholders: the same signature, the same state dict and constants, the same range for every dynamic
dimension. The result is in export's training IR, where SDPA is one op (`aten.scaled_dot_product_attention`);
`ExportedProgram.run_decompositions()` with the default table would decompose it into its math again
(`keep_attention_decompositions()` gives a table that keeps it).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Optional

import torch
import torch.utils._pytree as pytree
from torch.export import Dim, ExportedProgram
from torch.export.graph_signature import InputKind

from .report import Report

REPORT_KEY = "sdpa_rewrite_report"


def rewrite_program(ep: ExportedProgram, rewrite_graph: Callable[..., Report], example_inputs: Optional[tuple] = None,
                    **options) -> ExportedProgram:
    """The program rewritten by `rewrite_graph` (rewrite.rewrite, which calls this: the stages stay below this
    module); its report is `report_of(program)`. `example_inputs` ((args, kwargs)) stands in for
    `ep.example_inputs` where a program carries none (some loaded ones). `options` go to `rewrite_graph`."""
    args, kwargs = _example_inputs(ep, example_inputs)
    shapes = dynamic_shapes_of(ep)
    gm = ep.module()
    report = rewrite_graph(gm, **options)
    if not report.rewritten:
        program = ep                                  # nothing changed: no second export
    else:
        try:
            program = torch.export.export(gm, args, kwargs, dynamic_shapes=_by_name(gm, shapes), strict=False)
        except Exception as e:
            raise RuntimeError(
                f"the rewritten program did not export again ({type(e).__name__}: {e}); the original program is "
                "untouched. Rewrite `ep.module()` instead to keep a GraphModule, and please report the model") from e
    program.graph_module.meta[REPORT_KEY] = report
    return program


def report_of(program: ExportedProgram) -> Optional[Report]:
    """The report `rewrite()` made for this program, or None for a program it did not make."""
    return program.graph_module.meta.get(REPORT_KEY)


def keep_attention_decompositions() -> Any:
    """Export's default decomposition table without SDPA's entries: `ep.run_decompositions(table)` then lowers
    the program to core ATen and keeps each rewritten site as one attention op."""
    table = torch.export.default_decompositions()
    table.pop(torch.ops.aten.scaled_dot_product_attention.default, None)
    return table


def dynamic_shapes_of(ep: ExportedProgram) -> tuple:
    """(args, kwargs) shaped like the program's inputs: for each tensor, {dim: Dim} of its dynamic dimensions,
    with the range the program holds for it; one Dim per symbol, so dimensions the program ties stay tied."""
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    dims: dict = {}
    leaves = []
    for spec in ep.graph_signature.input_specs:
        if spec.kind != InputKind.USER_INPUT:
            continue
        node = placeholders.get(getattr(spec.arg, "name", None))
        value = node.meta.get("val") if node is not None else None
        leaves.append(_tensor_dims(value, ep.range_constraints, dims) if isinstance(value, torch.Tensor) else None)
    return pytree.tree_unflatten(leaves, ep.call_spec.in_spec)


def _tensor_dims(value: torch.Tensor, ranges: dict, dims: dict) -> Optional[dict]:
    out = {}
    for d, size in enumerate(value.shape):
        if isinstance(size, torch.SymInt):
            out[d] = _dim_of(size.node.expr, ranges, dims)
    return out or None


def _dim_of(expr, ranges: dict, dims: dict):
    """A Dim for `a·s + b` over one symbol s of the program (a derived Dim when a ≠ 1 or b ≠ 0)."""
    symbols = list(expr.free_symbols)
    if len(symbols) == 1:
        s = symbols[0]
        poly = expr.as_poly(s) if expr.is_polynomial(s) else None
        a, b = poly.all_coeffs() if poly is not None and poly.degree() == 1 else (None, None)
        if a is not None and a.is_Integer and b.is_Integer:
            if s not in dims:
                bound = ranges.get(s)
                dims[s] = Dim(str(s), min=_finite(bound.lower) if bound is not None else None,
                              max=_finite(bound.upper) if bound is not None else None)
            base = dims[s]
            return base if (int(a), int(b)) == (1, 0) else base * int(a) + int(b)
    raise ValueError(f"a dynamic dimension of size `{expr}` is not a·s + b over one symbol; export the model "
                     "again with its dynamic_shapes, rewrite `ep.module()` and export that")


def _finite(bound) -> Optional[int]:
    try:
        value = int(bound)
    except (TypeError, ValueError, OverflowError):
        return None
    return value if abs(value) < 2 ** 62 else None


def _by_name(gm: torch.nn.Module, shapes: tuple) -> Any:
    """export takes dynamic_shapes keyed by the forward's parameter names when there are keyword inputs."""
    args, kwargs = shapes
    if all(v is None for v in pytree.tree_leaves((args, kwargs))):
        return None
    if not kwargs:
        return tuple(args)
    return dict(inspect.signature(gm.forward).bind(*args, **kwargs).arguments)


def _example_inputs(ep: ExportedProgram, given: Optional[tuple]) -> tuple:
    inputs = given if given is not None else getattr(ep, "example_inputs", None)
    if inputs is None:
        raise ValueError("this ExportedProgram carries no example inputs: pass "
                         "rewrite(ep, example_inputs=(args, kwargs)) with inputs it accepts")
    args, kwargs = inputs
    return tuple(args), dict(kwargs or {})
