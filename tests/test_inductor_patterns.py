"""Inductor's own attention spellings, read from the installed torch: every `_sfdp_pattern_*` function of
torch/_inductor/fx_passes/fuse_attention.py, with the example inputs Inductor traces it with (fp32; the one
1024 x 128 x 128 batch made smaller), is rewritten to one SDPA call through Dynamo and through make_fx, with eager's
numbers and gradients, and with the pattern's own dropout p."""
from __future__ import annotations

import inspect
import textwrap

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import sdpa_rewrite
from support import RecordSDPA

fuse_attention = pytest.importorskip("torch._inductor.fx_passes.fuse_attention")
SMALLER = {1024: 4, 128: 16}       # pattern 13's (1024, 128, 128) bmm operands


def _traceable() -> dict:
    """The pattern functions compiled again from their source under another file name: Dynamo skips every function
    whose file lies in torch/_inductor."""
    namespace = dict(vars(fuse_attention))
    for name, fn in vars(fuse_attention).items():
        if name.startswith("_sfdp_pattern_"):
            source = textwrap.dedent(inspect.getsource(fn))
            exec(compile(source, f"<fuse_attention {name}>", "exec"), namespace)
    return namespace


def _patterns() -> dict:
    """{id: (pattern function, example input shapes and dtypes, scalar keyword arguments)}, fp32, one per spelling."""
    found, traceable = {}, _traceable()
    for name, spec in fuse_attention._get_sfdp_patterns(torch.device("cpu")):
        if "_half" in name:
            continue
        fn, inputs = traceable[spec["search_fn"].__name__], spec["example_inputs"]
        shapes = tuple((tuple(SMALLER.get(d, d) for d in x.shape), x.dtype) for x in inputs)
        key = fn.__name__ + ("_bs1" if inputs[0].shape[0] == 1 else "")
        found.setdefault(key, (fn, shapes, dict(spec["scalar_workaround"])))
    return found


PATTERNS = _patterns()


def test_every_inductor_pattern_is_listed():
    names = {fn.__name__ for fn, _, _ in PATTERNS.values()}
    declared = {n for n in dir(fuse_attention) if n.startswith("_sfdp_pattern_")}
    assert names == declared and len(declared) >= 30, sorted(declared - names)


def _inputs(shapes, g: torch.Generator) -> list:
    """q, k, v random; a bool mask keeps key 0 and a random half of the rest (no row sees no key); a (B, S) float
    mask, read as `mask == 0 -> masked`, likewise; a 4-d float mask is a random bias; a 0-d tensor is a scale."""
    out = []
    for i, (shape, dtype) in enumerate(shapes):
        if dtype == torch.bool:
            keep = torch.rand(shape, generator=g) > 0.5
            if shape[-2] == shape[-1]:
                keep = torch.ones(shape, dtype=torch.bool).tril()        # pattern 19: the causal mask
            keep[..., 0] = True
            out.append(keep)
        elif i >= 3 and len(shape) == 2:
            m = (torch.rand(shape, generator=g) > 0.5).float()
            m[..., 0] = 1.0
            out.append(m)
        elif len(shape) == 0:
            out.append(torch.tensor(2.0))
        else:
            out.append(torch.randn(shape, generator=g))
    return out


def _without_dropout(fn, scalars: dict) -> dict:
    """The scalar keywords with p = 0 (an inference-only pattern's p is not in its example's keywords)."""
    takes_p = "dropout_p" in inspect.signature(fn).parameters
    return {**scalars, "dropout_p": 0.0} if takes_p else scalars


def _first(out):
    """Pattern 18 returns the output beside the permuted k and v (its cache): compare them all, sum the first."""
    return out if isinstance(out, torch.Tensor) else out[0]


def _close(got, want) -> None:
    """fp32 outputs to rounding; patterns 7-10 cast the fp32 weights and V to fp16 before the ·V product: eager
    rounds the weights to fp16 there, SDPA keeps them in fp32, so those agree to fp16's rounding."""
    tol = 1e-5 if _first(want).dtype == torch.float32 else 2e-3
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def _compiled(fn, kwargs, reports):
    def call(*args):
        return fn(*args, **kwargs)

    return torch.compile(call, backend="sdpa_rewrite", fullgraph=True,
                         options={"downstream": "eager", "report": reports.append, "strict": True})


@pytest.mark.parametrize("key", sorted(PATTERNS, key=lambda k: (int(k.split("_")[3]), k)))
def test_inductor_pattern_is_rewritten_with_eager_numbers(key):
    fn, shapes, scalars = PATTERNS[key]
    g = torch.Generator().manual_seed(0)
    args = _inputs(shapes, g)
    kwargs = _without_dropout(fn, scalars)
    reports = []
    grads = [a.clone().requires_grad_() if a.is_floating_point() and a.dim() == len(shapes[0][0]) and i < 3 else a
             for i, a in enumerate(args)]
    got = _compiled(fn, kwargs, reports)(*grads)
    want_in = [a.detach().clone().requires_grad_() if a.requires_grad else a for a in grads]
    want = fn(*want_in, **kwargs)
    assert sum(len(r.rewritten) for r in reports) == 1 and sum(len(r.sites) for r in reports) == 1, reports
    _close(got, want)
    _first(got).sum().backward()
    _first(want).sum().backward()
    half = _first(want).dtype != torch.float32
    for a, b in zip(grads, want_in):
        if a.requires_grad:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-2 if half else 1e-4, atol=1e-2 if half else 1e-5)


@pytest.mark.parametrize("key", sorted(k for k in PATTERNS if "dropout_p" in PATTERNS[k][2]))
def test_inductor_pattern_keeps_its_dropout(key):
    """With the pattern's own p (0.113377) in training, SDPA is called with that p."""
    fn, shapes, scalars = PATTERNS[key]
    args = _inputs(shapes, torch.Generator().manual_seed(0))
    reports = []
    with RecordSDPA() as rec:
        _compiled(fn, scalars, reports)(*args)
    (call,) = rec.calls
    assert call["dropout_p"] == pytest.approx(scalars["dropout_p"]) and call["scale"] is not None


@pytest.mark.parametrize("key", sorted(PATTERNS, key=lambda k: (int(k.split("_")[3]), k)))
def test_inductor_pattern_through_make_fx(key):
    """The same spellings as ATen ops (make_fx), where pattern 29's `aten._safe_softmax` is called as its packet."""
    fn, shapes, scalars = PATTERNS[key]
    args = _inputs(shapes, torch.Generator().manual_seed(1))
    kwargs = _without_dropout(fn, scalars)

    def call(*a):
        return fn(*a, **kwargs)

    gm = make_fx(call)(*args)
    want = call(*args)
    report = sdpa_rewrite.rewrite(gm)
    assert len(report.sites) == 1 and len(report.rewritten) == 1, str(report)
    _close(gm(*args), want)
