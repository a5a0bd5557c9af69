"""explain() names what keeps attention away from the rewrite without a site saying so: graph breaks, and
frames Dynamo stopped compiling at its recompile limit (their attention runs uncompiled and unreported)."""
import logging
import math

import torch
import torch._dynamo
import torch.nn as nn

import sdpa_rewrite


class Layer(nn.Module):
    def __init__(self, i):
        super().__init__()
        self.i = i
        self.qkv = nn.Linear(16, 48)

    def forward(self, x, seen):
        seen[self.i] = True                  # differs per layer, as a per-layer KV cache's state does
        q, k, v = self.qkv(x).view(2, 8, 3, 2, 8).permute(2, 0, 3, 1, 4)
        w = (q @ k.transpose(-1, -2) / math.sqrt(8)).softmax(-1)
        return x + (w @ v).transpose(1, 2).reshape(2, 8, 16)


class LayerDropNet(nn.Module):
    """transformers 5.17's OPT decoder in training: a data-dependent branch in the layer loop (its layerdrop
    draw) breaks the graph, so each layer becomes a frame of its own, recompiled per layer."""

    def __init__(self, layers=4):
        super().__init__()
        self.layers = nn.ModuleList(Layer(i) for i in range(layers))

    def forward(self, x):
        seen = {}
        for layer in self.layers:
            if torch.rand([]) < 0.0:
                continue
            x = layer(x, seen)
        return x


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
