"""Scan one model: run it eagerly, compile it with the sdpa_rewrite backend, and say what became SDPA
and whether the numbers still agree with eager. One `ScanResult` per model; nothing is printed here."""
from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..report import Report
from .configs import build
from .inputs import dummy_inputs

STATUSES = ("ok", "wrong result", "could not build", "graph break", "no attention", "error")
TOLERANCE = 1e-4            # fp32 on CPU: a correct rewrite differs from eager by rounding only (~1e-7)
FLOOR = 1e-6                # denominator floor: outputs that are ~0 everywhere are judged absolutely
SEED = 0


@dataclass
class ScanResult:
    name: str
    status: str
    sites: int = 0                  # attention softmaxes eager ran (CountAttention)
    rewritten: int = 0              # sites the backend rewrote to SDPA
    skipped: list = field(default_factory=list)     # the reason of every site left eager
    max_rel_err: Optional[float] = None
    seconds: float = 0.0
    note: str = ""
    graphs: int = 0                 # graphs Dynamo handed the backend: more than one is a graph break
    report: Optional[Report] = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("name", "status", "sites", "rewritten", "skipped", "max_rel_err",
                                           "seconds", "note", "graphs")}
        d["report"] = self.report.to_dict() if self.report is not None else None
        return d


class CountAttention(TorchFunctionMode):
    """Counts the softmaxes eager runs that look like attention: rank ≥ 3 (batch, [heads,] queries, keys)
    and a last dim > 1. A heuristic, not a proof — a router or classifier softmax over (tokens, classes)
    is rank 2 and not counted; a rank-3+ softmax that is not attention is counted (the report then says
    the backend's reason for leaving it)."""

    SOFTMAX = frozenset({F.softmax, torch.softmax, torch.Tensor.softmax, torch.special.softmax})

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.SOFTMAX and args and isinstance(args[0], torch.Tensor):
            x = args[0]
            if x.dim() >= 3 and x.shape[-1] > 1:
                self.count += 1
        return func(*args, **(kwargs or {}))


def resolve(target: Union[str, Callable]) -> tuple:
    """(name, factory) for a model_type, a `module:function` string, or a callable."""
    if callable(target):
        return getattr(target, "__name__", repr(target)), target
    from .corpus import BY_NAME, factory

    if target in BY_NAME:
        return target, factory(BY_NAME[target])
    if ":" in target:
        module, _, fn = target.partition(":")
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())          # a console script does not put cwd on the path
        return target, getattr(importlib.import_module(module), fn)
    return target, lambda: build(target)


def scan_model(target: Union[str, Callable], padded: Optional[str] = None,
               timeout: Optional[float] = None) -> ScanResult:
    """Build, run eagerly, compile with backend="sdpa_rewrite" (downstream eager), compare.

    `target`: a transformers model_type (built tiny by configs.py), or a factory (callable or
    "module:function") returning a model — inputs then come from inputs.py, so it needs a transformers
    config — or `(model, inputs)` with inputs a dict of keyword arguments or a tuple of positional ones.
    `timeout` (seconds, main thread only) turns a model that runs too long into an "error".
    """
    start = time.perf_counter()
    torch._dynamo.reset()
    try:
        with warnings.catch_warnings(), _deadline(timeout):
            warnings.simplefilter("ignore")
            return _scan(target, padded, start)
    except ScanTimeout as e:
        return ScanResult(_name(target), "error", seconds=round(time.perf_counter() - start, 2), note=str(e))
    finally:
        torch._dynamo.reset()


class ScanTimeout(Exception):
    pass


@contextlib.contextmanager
def _deadline(seconds: Optional[float]):
    """Raise ScanTimeout after `seconds`, from the next Python bytecode (a long C op finishes first)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(signum, frame):
        raise ScanTimeout(f"timed out after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _name(target) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", repr(target))


def _scan(target, padded, start) -> ScanResult:
    name = _name(target)

    def result(status, **kw) -> ScanResult:
        return ScanResult(name, status, seconds=round(time.perf_counter() - start, 2), **kw)

    try:
        name, factory = resolve(target)
        model, args, kwargs = _model_and_inputs(factory(), padded)
    except ScanTimeout:
        raise
    except Exception as e:  # noqa: BLE001 - whatever a model under scan raises is its status
        return result("could not build", note=_oneline(e))
    counter = CountAttention()
    try:
        torch.manual_seed(SEED)      # both runs draw the same random numbers (ViT-MAE masking, VITS noise)
        with torch.no_grad(), counter:
            ref = model(*args, **kwargs)
    except ScanTimeout:
        raise
    except Exception as e:  # noqa: BLE001
        return result("could not build", note=f"eager forward: {_oneline(e)}")
    if counter.count == 0:
        return result("no attention", note="eager ran no softmax of rank >= 3")
    reports = []
    try:
        compiled = torch.compile(model, backend="sdpa_rewrite",
                                 options={"downstream": "eager", "report": reports.append, "strict": True})
        torch.manual_seed(SEED)
        with torch.no_grad():
            out = compiled(*args, **kwargs)
    except Exception as e:
        if _caused_by(e, ScanTimeout):
            raise ScanTimeout("timed out while compiling") from e
        where = "sdpa_rewrite" if _from_backend(e) else "torch.compile"
        return result("error", sites=counter.count, note=f"{where}: {_oneline(e)}")
    report = Report()
    for r in reports:
        report.extend(r)
    err, why = compare(out, ref, kwargs.get("attention_mask") if padded else None)
    notes = [why] if why else []
    softmaxes = len(report.sites)
    if softmaxes != counter.count:
        notes.append(f"the graphs hold {softmaxes} softmaxes, eager ran {counter.count} attention-like ones")
    if err is None or err > TOLERANCE:
        status = "wrong result"
    elif len(reports) > 1:
        status = "graph break"
        notes.insert(0, f"{len(reports)} graphs")
    else:
        status = "ok"
    return result(status, sites=counter.count, rewritten=len(report.rewritten),
                  skipped=[s.reason for s in report.skipped], max_rel_err=err, note="; ".join(notes),
                  graphs=len(reports), report=report)


def _model_and_inputs(built, padded) -> tuple:
    """(model, positional args, keyword args) from what a factory returned."""
    if isinstance(built, (tuple, list)) and len(built) == 2 and isinstance(built[0], torch.nn.Module):
        model, inputs = built
        if isinstance(inputs, dict):
            return model, (), inputs
        return model, tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,), {}
    if not isinstance(built, torch.nn.Module):
        raise TypeError(f"a factory returns a model or (model, inputs), not {type(built).__name__}")
    if getattr(built, "config", None) is None:
        raise TypeError("the factory returned a model without a transformers config: return (model, inputs)")
    return built, (), dummy_inputs(built, padded)


def primary_output(out) -> Optional[torch.Tensor]:
    """The tensor compared with eager: logits, else last_hidden_state, else the first float tensor."""
    for key in ("logits", "last_hidden_state"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    for value in _tensors(out):
        if value.is_floating_point():
            return value
    return None


def _tensors(out):
    if isinstance(out, torch.Tensor):
        yield out
    elif hasattr(out, "to_tuple"):
        yield from _tensors(out.to_tuple())
    elif isinstance(out, dict):
        for v in out.values():
            yield from _tensors(v)
    elif isinstance(out, (list, tuple)):
        for v in out:
            yield from _tensors(v)


def compare(got, want, mask: Optional[torch.Tensor] = None) -> tuple:
    """(max |got - want| / max(max |want|, FLOOR), problem); the error is None when NaNs differ or the
    outputs do not line up. With a padding `mask`, only the (batch, position) rows it keeps are compared."""
    a, b = primary_output(got), primary_output(want)
    if a is None or b is None:
        return None, "no floating-point output to compare"
    if a.shape != b.shape:
        return None, f"output shape {list(a.shape)} vs eager {list(b.shape)}"
    if mask is not None and a.dim() >= 2 and tuple(a.shape[:2]) == tuple(mask.shape):
        a, b = a[mask.bool()], b[mask.bool()]
    a, b = a.detach().double(), b.detach().double()
    if not torch.equal(torch.isnan(a), torch.isnan(b)):
        return None, f"NaN mismatch: {int(torch.isnan(a).sum())} NaNs rewritten, {int(torch.isnan(b).sum())} in eager"
    nans = int(torch.isnan(b).sum())
    note = f"{nans} NaNs in both outputs" if nans else ""
    inf = torch.isinf(b)
    if not torch.equal(torch.isinf(a), inf) or not torch.equal(a[inf], b[inf]):
        return None, "infinities differ from eager"
    fin = torch.isfinite(b)
    if not fin.any():
        return 0.0, note or "no finite output"
    a, b = a[fin], b[fin]
    return ((a - b).abs().max() / b.abs().max().clamp_min(FLOOR)).item(), note


def _from_backend(e: BaseException) -> bool:
    """An exception raised inside the sdpa_rewrite backend (Dynamo wraps it in BackendCompilerFailed)."""
    from torch._dynamo.exc import BackendCompilerFailed

    return _caused_by(e, BackendCompilerFailed)


def _caused_by(e: Optional[BaseException], kind) -> bool:
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, kind):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _oneline(e: BaseException, limit: int = 300) -> str:
    text = f"{type(e).__name__}: {e}".strip().splitlines()
    line = " ".join(t.strip() for t in text[:3])
    return line if len(line) <= limit else line[: limit - 3] + "..."
