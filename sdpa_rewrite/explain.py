"""`explain(model, *args)`: capture the model's graphs with Dynamo, rewrite copies of them, and report
every site of every graph — the model itself is run once and left untouched.

Two things can keep attention away from the rewrite without any site saying so, and the report's notes
name both: graph breaks, and frames Dynamo stopped compiling at its recompile limit (their later calls run
uncompiled, so their attention is neither rewritten nor reported: a model whose layers each recompile
shows fewer sites than it has layers).
"""
from __future__ import annotations

import contextlib
import logging
import re
from collections import Counter

import torch.fx as fx

from .report import Report
from .rewrite import rewrite, snapshot
from .runtime import probes_for


def explain(model, *args, **kwargs) -> Report:
    import torch._dynamo
    from torch._dynamo.utils import counters

    breaks_before = _break_counts(counters)
    with _recompile_limit_warnings() as limits:
        out = torch._dynamo.explain(model)(*args, **kwargs)
    report = Report()
    for i, gm in enumerate(out.graphs):
        copy = fx.GraphModule(gm, snapshot(gm.graph))
        part = rewrite(copy, graph=i)
        probes_for(part, gm, gm.graph)                 # marks the sites whose verdict is taken at run time
        report.extend(part)
    reasons = [str(getattr(br, "reason", br)) for br in out.break_reasons]
    if not reasons:       # some breaks (data-dependent branching, a skipped frame) reach only Dynamo's counters
        new = _break_counts(counters) - breaks_before
        reasons = [_summary(reason) + (f" (×{n})" if n > 1 else "") for reason, n in new.items()
                   if not reason.startswith("Dynamo recompile limit")]      # that one is a note of its own below
    report.notes.extend(f"graph break: {r}" for r in reasons)
    report.notes.extend(limits)
    return report


@contextlib.contextmanager
def _recompile_limit_warnings():
    """Collect Dynamo's "hit config.recompile_limit" warnings as report notes, saying what they cost here."""
    notes: list = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            text = record.getMessage()
            if "torch._dynamo hit config." in text:
                lines = [ln.strip() for ln in text.splitlines()]
                what = lines[0].replace("torch._dynamo hit config.", "")
                where = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("function:")), "a frame")
                why = next((" ".join(ln.split(":", 1)[1].split()) for ln in lines if ln.startswith("last reason:")), "")
                notes.append(f"Dynamo stopped compiling {where} at {what}: its later calls ran uncompiled, so the "
                             f"attention in them was not rewritten and is not in this report"
                             + (f" (last failed guard: {why})" if why else "")
                             + ". Remove what changes between the calls, or raise torch._dynamo.config.recompile_limit.")

    handler, logger = Catch(level=logging.WARNING), logging.getLogger("torch._dynamo")
    logger.addHandler(handler)
    try:
        yield notes
    finally:
        logger.removeHandler(handler)


def _break_counts(counters) -> Counter:
    return Counter(counters["graph_break"]) + Counter(counters["unimplemented"])


def _summary(reason: str) -> str:
    """Dynamo's graph-break text on one line: each break's headline, explanation and first user line."""
    parts = []
    for part in str(reason).split("*** While handling this graph break, another graph break occurred: ***"):
        lines = [ln.strip() for ln in part.splitlines() if ln.strip()]
        if not lines:
            continue
        explanation = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Explanation:")), "")
        where = re.search(r'File "([^"]+)", line (\d+), in (\w+)', part)
        parts.append(lines[0] + (f": {explanation}" if explanation else "")
                     + (f" (at {where[1].rsplit('/', 1)[-1]}:{where[2]} in {where[3]})" if where else ""))
    return "; then ".join(parts) or str(reason)
