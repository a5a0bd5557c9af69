"""The torch.compile entry: rewrite the Dynamo graph, then hand it to the downstream compiler.

The rewrite runs before AOTAutograd, so training differentiates through SDPA. An internal error
leaves the graph untouched, warns once, and compiles it anyway; `strict=True` raises instead. A graph whose
masks arrive as inputs is returned wrapped in a `dispatch.VerdictDispatch`, which runs the variant compiled
for what those masks are at run time.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any, Callable, Iterator, Optional

import torch.fx as fx

from .dispatch import VerdictDispatch
from .plan import Conditions
from .rewrite import may_train, rewrite, snapshot
from .runtime import probes_for

OPTIONS = ("downstream", "report", "strict", "fold_buffers", "empty_rows", "runtime_verdicts", "mode", "flex")
_warned: set = set()
_collectors: list = []


@contextlib.contextmanager
def collect_reports() -> Iterator[list]:
    """Every Report the backend makes while the block runs, in a list: the route for callers who cannot pass
    `options` (transformers' `CompileConfig(backend="sdpa_rewrite")` with its default `mode`, `torch.compile(...,
    mode="reduce-overhead")`). Compiles happen on the first calls, so run the model inside the block."""
    reports: list = []
    _collectors.append(reports)
    try:
        yield reports
    finally:
        _collectors.remove(reports)


def sdpa_rewrite_backend(gm: fx.GraphModule, example_inputs: list, options: Optional[dict] = None,
                         mode: Optional[str] = None) -> Callable:
    """`torch.compile(model, backend="sdpa_rewrite", options={...})`.

    downstream: "inductor" (default), "eager", "aot_eager", any registered backend name or a callable;
    report: True prints each graph's table, a callable receives each Report (default: env
    SDPA_REWRITE_REPORT=1); strict: raise on an internal error instead of compiling the graph untouched;
    fold_buffers: read mask buffers at compile time to prove them causal (default True; pass False if
    the model rewrites a mask buffer between calls); empty_rows: "eager" (default) or "kernel" — see rewrite();
    runtime_verdicts: a mask that arrives as a graph input is classified at run time and a causal or empty one
    reaches SDPA's fast paths (default True; off under CUDA graphs, see dispatch.py).
    mode: Inductor's mode ("reduce-overhead", "max-autotune", ...), as an option: torch.compile takes either
    `mode=` or `options=`, not both, so this is how a report and CUDA graphs go together.
    flex: False keeps every site on SDPA (plan.py: soft-capped sites then stay eager; default True).
    Any other option is an Inductor config patch when downstream is Inductor.
    """
    options = dict(options or {})
    downstream = options.pop("downstream", "inductor")
    mode = options.pop("mode", None) or mode
    if mode is not None and downstream != "inductor":
        raise ValueError(f"sdpa_rewrite: mode={mode!r} is an Inductor mode; downstream is {downstream!r}")
    show = options.pop("report", os.environ.get("SDPA_REWRITE_REPORT", "0") not in ("", "0"))
    strict = options.pop("strict", False)
    fold_buffers = options.pop("fold_buffers", True)
    empty_rows = options.pop("empty_rows", "eager")
    runtime_verdicts = options.pop("runtime_verdicts", True) and not _cuda_graphs(downstream, mode, options)
    flex = options.pop("flex", True)
    if empty_rows not in ("eager", "kernel"):
        raise ValueError(f"sdpa_rewrite: empty_rows must be 'eager' or 'kernel', not {empty_rows!r}")
    if options and downstream != "inductor":
        raise ValueError(f"sdpa_rewrite: unknown options {sorted(options)}; known: {OPTIONS}")
    rewrite_options = {"fold_buffers": fold_buffers, "empty_rows": empty_rows,
                       "conditions": Conditions(flex=bool(flex), cpu_inductor=downstream == "inductor",
                                                may_train=may_train(gm, example_inputs))}
    pristine = snapshot(gm.graph) if runtime_verdicts else None
    found = []
    try:
        report = rewrite(gm, example_inputs, **rewrite_options)
        if pristine is not None:
            found = probes_for(report, gm, pristine, example_inputs, fold_buffers, flex=bool(flex))
    except Exception as e:
        if strict:
            raise
        key = f"{type(e).__name__}: {e}"
        if key not in _warned:
            _warned.add(key)
            warnings.warn(f"sdpa_rewrite left a graph untouched after an internal error ({key}); "
                          "it is compiled as it was. Pass options={'strict': True} to raise.", stacklevel=2)
        report, found = None, []
    if report is not None and report.sites:
        _warn_at_recompile_limit(report)
    if report is not None:
        for reports in _collectors:
            reports.append(report)
        if callable(show):
            show(report)                   # report=callable: hand each graph's Report to the caller
        elif show:
            print(report)
    compiled = compile_downstream(downstream, gm, example_inputs, mode=mode, config=options)
    if not found:
        return compiled
    return VerdictDispatch(gm, pristine, found, compiled,
                           lambda g, inputs: compile_downstream(downstream, g, inputs, mode=mode, config=options),
                           rewrite_options, rewritten=len(report.rewritten), strict=strict)


def _cuda_graphs(downstream, mode, options: dict) -> bool:
    """CUDA graphs replay without running Python, and a capture may not sync: no run-time verdicts there."""
    if downstream == "cudagraphs":
        return True
    if downstream != "inductor":
        return False
    from torch._inductor import config, list_mode_options

    patches = {**(list_mode_options(mode) if mode else {}), **options}
    return bool(patches.get("triton.cudagraphs", config.triton.cudagraphs))


def _warn_at_recompile_limit(report) -> None:
    """Dynamo compiles a frame at most `recompile_limit` times, then runs it uncompiled: with the model's own
    eager attention, never seen here. When this compile is the last one Dynamo allows the frame, say so
    (a graph break in a layer loop plus per-layer state does this: each layer recompiles its own frame)."""
    try:
        from torch._dynamo import config
        from torch._guards import CompileContext

        compile_id = CompileContext.current_compile_id()
        limit = getattr(config, "recompile_limit", None) or getattr(config, "cache_size_limit")
    except Exception:                                     # outside Dynamo, or a torch without these
        return
    if compile_id is None or compile_id.frame_compile_id is None or compile_id.frame_compile_id + 1 != limit:
        return
    key = f"recompile_limit:{compile_id.frame_id}"
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(f"sdpa_rewrite: this is the last compile Dynamo allows the frame holding the attention "
                  f"site `{report.sites[0].location}` "
                  f"(torch._dynamo.config.recompile_limit = {limit}). If it recompiles again, its later calls run "
                  "uncompiled and their attention is not rewritten. TORCH_LOGS=recompiles or "
                  "sdpa_rewrite.explain(model, *args) shows what changes between calls.", stacklevel=2)


def compile_downstream(downstream: Any, gm: fx.GraphModule, example_inputs: list, mode=None, config=None):
    if callable(downstream):
        return downstream(gm, example_inputs)
    if downstream == "eager":
        return gm.forward
    if downstream == "inductor":
        from torch._inductor import list_mode_options
        from torch._inductor.compile_fx import compile_fx

        patches = dict(list_mode_options(mode) if mode else {})
        patches.update(config or {})
        return compile_fx(gm, example_inputs, config_patches=patches or None)
    from torch._dynamo.backends.registry import lookup_backend

    return lookup_backend(downstream)(gm, example_inputs)


def register() -> None:
    """Make `backend="sdpa_rewrite"` resolve; defer to the entry point when Dynamo has discovered it."""
    from torch._dynamo.backends import registry

    if "sdpa_rewrite" not in registry._BACKENDS and "sdpa_rewrite" not in registry._COMPILER_FNS:
        registry.register_backend(sdpa_rewrite_backend, name="sdpa_rewrite")
