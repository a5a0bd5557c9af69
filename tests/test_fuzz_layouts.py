"""Property tests over the layouts third-party attention takes (the rules behind patterns/libraries.py):

- einsum spellings with any letter order, k and v without the heads letter (multi-query), several contracted
  letters (a feature dim split in two, ESM's tied rows), several value letters, the output in any order;
- scores viewed to another shape of as many elements, a bias or a fill applied there, viewed back (SAM's
  decomposed relative position).

Every program is rewritten to one SDPA call, with eager's numbers and gradients (fp32, CPU). Examples:
`SDPA_FUZZ_EXAMPLES` as in test_fuzz.py.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sdpa_rewrite
from support import RecordSDPA

LONG = int(os.environ.get("SDPA_FUZZ_EXAMPLES", "0"))
COMMON = dict(deadline=None, derandomize=not LONG, print_blob=True, max_examples=LONG // 5 or 60,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class EinsumAttention(nn.Module):
    def __init__(self, qk: str, pv: str, scale: float, scale_on_q: bool):
        super().__init__()
        self.qk, self.pv, self.scale, self.scale_on_q = qk, pv, scale, scale_on_q

    def forward(self, q, k, v, bias):
        s = torch.einsum(self.qk, q * self.scale, k) if self.scale_on_q else torch.einsum(self.qk, q, k) * self.scale
        return torch.einsum(self.pv, (s + bias).softmax(-1), v)


def _shuffled(draw, letters: str) -> str:
    return "".join(draw(st.permutations(list(letters))))


@st.composite
def einsum_programs(draw):
    sizes = {"b": draw(st.integers(1, 2)), "h": draw(st.integers(1, 3)), "i": draw(st.integers(1, 5)),
             "j": draw(st.integers(1, 5)), "d": draw(st.integers(2, 4)), "e": draw(st.integers(1, 3)),
             "f": draw(st.integers(2, 4)), "g": draw(st.integers(1, 3))}
    contracted = "de" if draw(st.booleans()) else "d"
    features = "fg" if draw(st.booleans()) else "f"
    multi_query = draw(st.booleans())
    kv_batch = "b" if multi_query else "bh"
    q = _shuffled(draw, "bhi" + contracted)
    k = _shuffled(draw, kv_batch + "j" + contracted)
    v = _shuffled(draw, kv_batch + "j" + features)
    p = _shuffled(draw, "bh") + "ij"        # the softmax runs over the last letter, the key; heads last: GQA
    out = _shuffled(draw, "bhi" + features)
    model = EinsumAttention(f"{q},{k}->{p}", f"{p},{v}->{out}", draw(st.sampled_from([0.125, 0.5, 1.0])),
                            draw(st.booleans()))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 16)))
    shape = lambda letters: tuple(sizes[c] for c in letters)       # noqa: E731
    bias = torch.randn(shape(p), generator=g) if draw(st.booleans()) else torch.zeros(())
    return model, (torch.randn(shape(q), generator=g), torch.randn(shape(k), generator=g),
                   torch.randn(shape(v), generator=g), bias), multi_query and sizes["h"] > 1 and p.startswith("bh")


class ViewedScores(nn.Module):
    """Scores (N, L, S) viewed as (N, l1, l2, s1, s2), terms and a fill broadcast there, viewed back."""

    def __init__(self, split: tuple, fill: float):
        super().__init__()
        self.split, self.fill = split, fill

    def forward(self, q, k, v, t1, t2, drop):
        n, l, _ = q.shape
        s = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        s = s.view(n, *self.split) + t1 + t2
        s = s.masked_fill(drop, self.fill).view(n, l, -1)
        return s.softmax(-1) @ v


@st.composite
def viewed_programs(draw):
    n, l1, l2, s1, s2 = (draw(st.integers(1, 3)) for _ in range(5))
    e = draw(st.integers(1, 4))
    full = (n, l1, l2, s1, s2)
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 16)))

    def broadcast_shape():
        return tuple(d if draw(st.booleans()) else 1 for d in full)

    drop = torch.rand(broadcast_shape(), generator=g) > 0.7
    model = ViewedScores((l1, l2, s1, s2), draw(st.sampled_from([-1e4, -math.inf, float(torch.finfo(torch.float32).min)])))
    return model, (torch.randn(n, l1 * l2, 8, generator=g), torch.randn(n, s1 * s2, 8, generator=g),
                   torch.randn(n, s1 * s2, e, generator=g), torch.randn(broadcast_shape(), generator=g),
                   torch.randn(broadcast_shape(), generator=g), drop)


def _check(model, args, gqa=None):
    gm = torch.fx.symbolic_trace(model)
    x = [a.clone().requires_grad_(a.is_floating_point() and i < 3) for i, a in enumerate(args)]
    x_ref = [a.clone().requires_grad_(a.is_floating_point() and i < 3) for i, a in enumerate(args)]
    report = sdpa_rewrite.rewrite(gm, example_inputs=x)
    assert len(report.rewritten) == 1, str(report)
    with RecordSDPA() as rec:
        out = gm(*x)
    assert len(rec.calls) == 1, rec.calls
    if gqa is not None:
        assert rec.calls[0]["enable_gqa"] == gqa, rec.calls
    ref = model(*x_ref)
    torch.testing.assert_close(torch.nan_to_num(out), torch.nan_to_num(ref), rtol=1e-5, atol=1e-5)
    if torch.isnan(ref).any():
        return                                   # rows masked alone: SDPA gives zeros where eager gives NaN
    out.sum().backward()
    ref.sum().backward()
    for a, b in zip(x, x_ref):
        if a.requires_grad:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)


@settings(**COMMON)
@given(einsum_programs())
def test_einsum_layouts_rewritten_with_eager_numbers(program):
    model, args, gqa = program
    _check(model, args, gqa if gqa else None)


@settings(**COMMON)
@given(viewed_programs())
def test_scores_viewed_and_back_rewritten_with_eager_numbers(program):
    model, args = program
    _check(model, args)
