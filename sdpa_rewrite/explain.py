"""`explain(model, *args)`: capture the model's graphs with Dynamo, rewrite copies of them, and report
every site of every graph — the model itself is run once and left untouched."""
from __future__ import annotations

import torch.fx as fx

from .report import Report
from .rewrite import rewrite, snapshot


def explain(model, *args, **kwargs) -> Report:
    import torch._dynamo

    out = torch._dynamo.explain(model)(*args, **kwargs)
    report = Report()
    for i, gm in enumerate(out.graphs):
        copy = fx.GraphModule(gm, snapshot(gm.graph))
        report.extend(rewrite(copy, graph=i))
    for br in out.break_reasons:
        report.notes.append(f"graph break: {getattr(br, 'reason', br)}")
    return report
