"""explain() names what keeps attention away from the rewrite without a site saying so: graph breaks, and
frames Dynamo stopped compiling at its recompile limit (their attention runs uncompiled and unreported)."""
import logging

import torch
import torch._dynamo

import sdpa_rewrite
from support import LayerDropNet


def explain_with_limit(limit):
    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=limit):
        return sdpa_rewrite.explain(LayerDropNet(), torch.randn(2, 8, 16))


def test_explain_names_layers_dynamo_stopped_compiling():
    report = explain_with_limit(2)
    assert len(report.sites) == 2 and all(s.rewritten for s in report.sites)     # 2 of the 4 layers
    limit = [n for n in report.notes if n.startswith("Dynamo stopped compiling")]
    assert len(limit) == 1 and "recompile_limit (2)" in limit[0] and "'forward'" in limit[0], report.notes
    assert "len(seen)" in limit[0]                      # the guard that kept failing
    assert any(n.startswith("graph break: Data-dependent branching") and "in forward" in n for n in report.notes)
    assert not any(isinstance(h, logging.Handler) and type(h).__name__ == "Catch"
                   for h in logging.getLogger("torch._dynamo").handlers)


def test_explain_without_the_limit_reports_every_layer():
    report = explain_with_limit(8)
    assert len(report.sites) == 4 and all(s.rewritten for s in report.sites)
    assert not any(n.startswith("Dynamo stopped compiling") for n in report.notes)
    assert any(n.startswith("graph break:") for n in report.notes)
