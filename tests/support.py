"""What the tests share: record the SDPA calls a graph makes, compare numbers and gradients."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.bias import CausalBias
from torch.overrides import TorchFunctionMode



class RecordSDPA(TorchFunctionMode):
    """Records the arguments of every scaled_dot_product_attention call made while active."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is F.scaled_dot_product_attention:
            names = ["query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa"]
            bound = dict(zip(names, args))
            bound.update(kwargs)
            mask = bound.get("attn_mask")
            self.calls.append({
                "target": "sdpa",
                "scale": bound.get("scale"),
                "mask": "none" if mask is None else "causal_lower_right" if isinstance(mask, CausalBias)
                        else "bool" if mask.dtype == torch.bool else "float",
                "dropout_p": float(bound.get("dropout_p", 0.0)),
                "is_causal": bool(bound.get("is_causal", False)),
                "enable_gqa": bool(bound.get("enable_gqa", False)),
            })
        return func(*args, **kwargs)


class RecordCalls(torch.fx.Interpreter):
    """Runs a GraphModule and records, in order, every SDPA call (RecordSDPA) and every FlexAttention site with
    its evaluated arguments: the soft-cap, the dense mask's kind, whether a BlockMask states the causal band,
    and the sink logits."""

    def __init__(self, gm):
        super().__init__(gm)
        self.sdpa = RecordSDPA()
        self.calls = []

    def call_function(self, target, args, kwargs):
        from sdpa_rewrite.flex import flex_attention_site

        if target is flex_attention_site:
            mask = kwargs.get("mask")
            self.calls.append({
                "target": "flex", "scale": kwargs["scale"], "cap": kwargs.get("cap"),
                "mask": "none" if mask is None else "bool" if mask.dtype == torch.bool else "float",
                "dropout_p": 0.0, "is_causal": kwargs.get("block_mask") is not None,
                "block_mask": kwargs.get("block_mask") is not None, "sink": kwargs.get("sink") is not None,
                "enable_gqa": bool(kwargs.get("enable_gqa"))})
            return target(*args, **kwargs)
        before = len(self.sdpa.calls)
        with self.sdpa:
            out = target(*args, **kwargs)
        self.calls.extend(self.sdpa.calls[before:])
        return out


def calls_of(gm, inputs) -> list:
    rec = RecordCalls(gm)
    rec.run(*inputs)
    return rec.calls


def check_calls(calls: list, expects: tuple) -> None:
    assert len(calls) == len(expects), f"{len(calls)} SDPA calls, expected {len(expects)}: {calls}"
    for call, exp in zip(calls, expects):
        assert call["scale"] is not None, "scale must always be explicit"
        assert call["target"] == exp.target, (call, exp)
        assert math.isclose(call["scale"], exp.scale, rel_tol=1e-6), (call, exp)
        assert call["mask"] == exp.mask, (call, exp)
        assert math.isclose(call["dropout_p"], exp.dropout_p), (call, exp)
        assert call["enable_gqa"] == exp.enable_gqa, (call, exp)
        if call["target"] == "flex":
            assert call["cap"] == exp.cap and call["sink"] == exp.sink, (call, exp)
            assert call["block_mask"] == (exp.is_causal or exp.verdict == "sliding window"), (call, exp)
        else:
            assert call["is_causal"] == exp.is_causal, (call, exp)


def flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in flat(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in flat(o)]
    if hasattr(out, "to_tuple"):
        return flat(out.to_tuple())
    return []


def rel_err(a: torch.Tensor, b: torch.Tensor, floor: float = 1e-30) -> float:
    """max |a - b| / max |b|, with NaNs required to sit in the same places."""
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    fin = torch.isfinite(b)
    if not fin.all():
        assert torch.equal(torch.isfinite(a), fin)
    a, b = a[fin].double(), b[fin].double()
    if b.numel() == 0:
        return 0.0
    return ((a - b).abs().max() / b.abs().max().clamp_min(floor)).item()


def assert_close_outputs(got, ref, tol: float = 1e-5, floor: float = 1e-30) -> None:
    """Relative error ≤ tol; `floor` bounds the denominator for values that are zero in exact arithmetic."""
    g, r = flat(got), flat(ref)
    assert len(g) == len(r)
    for a, b in zip(g, r):
        if a.is_floating_point():
            err = rel_err(a.detach(), b.detach(), floor)
            assert err <= tol, err
        else:
            assert torch.equal(a, b)


def with_grads(inputs: tuple) -> tuple:
    return tuple(x.detach().clone().requires_grad_(True) if isinstance(x, torch.Tensor) and x.is_floating_point()
                 else x for x in inputs)


def grads(module: torch.nn.Module, inputs: tuple, out) -> dict:
    """Gradients of sum(outputs · fixed weights) w.r.t. float inputs and parameters, by name."""
    g = torch.Generator().manual_seed(1)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum() for t in flat(out) if t.is_floating_point())
    leaves = {f"input{i}": x for i, x in enumerate(inputs) if isinstance(x, torch.Tensor) and x.requires_grad}
    leaves.update((n, p) for n, p in module.named_parameters() if p.requires_grad)
    got = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return dict(zip(leaves, got))


def assert_same_grads(module, inputs, out, reference, ref_inputs, ref) -> None:
    got, want = grads(module, inputs, out), grads(reference, ref_inputs, ref)
    assert set(got) <= set(want), (sorted(got), sorted(want))
    scale = max((b.abs().max().item() for b in want.values() if b is not None), default=1.0)
    for name, b in want.items():
        a = got.get(name)
        if b is None or a is None:
            assert (a is None) == (b is None) or name not in got, name
            continue
        # a key bias has a zero gradient in exact arithmetic (softmax ignores a per-row constant):
        # judge near-zero gradients against a tenth of the largest gradient, not their own rounding noise
        assert_close_outputs(a, b, floor=0.1 * scale)


def compile_and_record(model, inputs, kwargs=None, **options):
    """Compile with the backend (downstream eager); return the output, the Reports and the rewritten graphs."""
    reports, graphs = [], []

    def downstream(gm, example_inputs):
        graphs.append((gm, example_inputs))
        return gm.forward

    opts = {"downstream": downstream, "report": reports.append, "strict": True}
    opts.update(options)
    compiled = torch.compile(model, backend="sdpa_rewrite", options=opts)
    out = compiled(*inputs, **(kwargs or {}))
    return out, reports, graphs


def sdpa_calls_of(graphs) -> list:
    """The SDPA and FlexAttention calls the rewritten graphs make, in order (the sites' arguments)."""
    calls = []
    with torch.no_grad():
        for gm, example_inputs in graphs:
            calls.extend(calls_of(gm, example_inputs))
    return calls


def clone_model(model):
    return copy.deepcopy(model)


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


def masked_attention(q, k, v, m):
    """Attention with a bool keep-mask `m` (False: masked with -inf), as a plain function any tracer can take."""
    s = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    return torch.softmax(s.masked_fill(~m, float("-inf")), dim=-1) @ v


def keep_mask():
    """A (2, 1, 8, 8) random keep-mask with the diagonal kept, so no row is fully masked."""
    return (torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(3)) > 0.3) | torch.eye(8, dtype=torch.bool)
