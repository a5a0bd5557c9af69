"""Property tests over random attention programs (tests/programs.py).

Properties: every rewritable program is rewritten (or skipped for one of the documented reasons), and
the rewritten graph computes eager's outputs and gradients (fp32; fully masked rows included: zeros where
eager gives NaN); a near-miss is never rewritten; the report agrees with the graph (one SDPA call per
rewritten site, causal verdict iff is_causal).

CI runs a bounded, derandomised number of examples. `SDPA_FUZZ_EXAMPLES=10000` runs that many through
symbolic_trace (and a tenth of them through torch.compile) with a fresh random seed.
"""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sdpa_rewrite
from programs import Attention, Program, capped_programs, inputs, programs, swamps_scores
from support import RecordSDPA

LONG = int(os.environ.get("SDPA_FUZZ_EXAMPLES", "0"))
TRACE_EXAMPLES = LONG or 120
COMPILE_EXAMPLES = max(LONG // 10, 20)
COMMON = dict(deadline=None, derandomize=not LONG, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Documented skips (docs/limits.md): a finite fill whose eager fully-masked rows cannot be reproduced with
# module dropout, and a tensor-valued scale applied after a masked fill.
ALLOWED_SKIPS = ("finite masked fill with dropout", "tensor-valued scale is applied after a masked fill")


def allowed_skip(p: Program, reason: str, symbolic_lengths: bool = False) -> bool:
    if symbolic_lengths and p.mask == "causal_arith" and ("also used outside the softmax" in reason
                                                          or "tensor-valued scale" in reason):
        return True               # `s·b + c·(1 − b)` is read only with b folded to 0/1: not with symbolic sizes
    if "finite masked fill with dropout" in reason:
        return p.mask == "finite_fill_input" and p.dropout == "module_eval"
    if "tensor-valued scale is applied after a masked fill" in reason:
        return p.scale_at == "tensor" and p.mask_before_scale and p.mask not in ("none", "additive_input")
    return False


def run_eager(model, args, symbolic_batch: bool = False):
    x = [a.clone().requires_grad_(a.is_floating_point() and i < 3) for i, a in enumerate(args)]
    for a in x if symbolic_batch else ():
        if a.dim() and a.shape[0] > 1:
            torch._dynamo.maybe_mark_dynamic(a, 0)
    out = model(*x)
    return out, x


def first(out):
    return out[0] if isinstance(out, tuple) else out


def check_numbers(p: Program, out, ref, x, x_ref, rewritten: bool) -> None:
    out, ref = first(out), first(ref)
    nan_rows = torch.isnan(ref)
    if rewritten:
        assert torch.equal(out[nan_rows], torch.zeros_like(out[nan_rows])), "eager's NaN rows must be zeros"
    else:
        assert torch.isnan(out[nan_rows]).all(), "a graph left eager must keep eager's NaN rows"
    keep = ~nan_rows
    if not keep.any():
        return
    scale = ref[keep].abs().max().clamp_min(1e-6)
    noisy = p.mask == "additive_input" and p.empty_rows and not swamps_scores(p)
    tol = 5e-3 if noisy else 1e-5          # s - 1e4 in fp32 rounds the scores to ~1e-3, in eager and kernel alike
    err = ((out[keep] - ref[keep]).abs().max() / scale).item() if keep.any() else 0.0
    assert err <= tol, f"relative error {err:.2e}\n{p}"
    if nan_rows.any() or x is None:
        return                                             # eager's gradients are NaN there; or a forward-only check
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((out * w).sum(), x[:3])
    ref_grads = torch.autograd.grad((ref * w).sum(), x_ref[:3])
    floor = 0.1 * max(g.abs().max().item() for g in ref_grads)   # dq is 0 when S == 1: judged on the gradient scale
    compared = "qkv"
    if p.empty_rows and p.mask == "additive_input" and swamps_scores(p):
        # eager's s + finfo.min on an empty row does not depend on s, yet autograd returns a uniform softmax's
        # gradient to q and k there; the rewrite returns 0 (docs/limits.md). V's gradient must still match,
        # unless a second site's q (the first's output) carries the q difference back into V.
        compared = "v" if p.sites == 1 else ""
    for name, a, b in zip("qkv", grads, ref_grads):
        if name not in compared:
            continue
        gerr = ((a - b).abs().max() / b.abs().max().clamp_min(max(floor, 1e-6))).item()
        assert gerr <= (5e-3 if noisy else 1e-4), f"d{name} relative error {gerr:.2e}\n{p}"


RAMP_MASKS = ("causal_indexed", "causal_ramp")       # index comparisons over aranges: proven with symbolic sizes


def check_report(p: Program, report, n_calls: int, symbolic_lengths: bool = False) -> None:
    if p.near_miss:
        assert not report.rewritten, f"near-miss rewritten:\n{report}\n{p}"
        assert n_calls == 0
        return
    assert len(report.sites) == p.sites, f"{report}\n{p}"
    for site in report.skipped:
        assert allowed_skip(p, site.reason, symbolic_lengths), f"missed site: {site.reason}\n{p}"
    assert n_calls == len(report.rewritten), (n_calls, str(report))
    for site in report.rewritten:
        causal_mask = p.mask in ("causal_const", "causal_finite", "causal_arith") + RAMP_MASKS
        if symbolic_lengths and causal_mask and p.mask not in RAMP_MASKS:
            continue                      # a tril of ones(L, S) with symbolic sizes: kept, or folded where static
        if causal_mask and p.s == 1:                        # one key: the causal mask hides nothing
            assert not site.causal and site.mask.startswith("none"), f"{site}\n{p}"
        elif causal_mask and not (p.scale_at == "tensor" and p.mask_before_scale):
            assert site.causal == "top-left" and site.mask.startswith("causal"), f"{site}\n{p}"
        else:
            assert not site.causal, f"{site}\n{p}"
        if p.mask == "none":
            assert site.mask == "none", site
        elif p.mask != "none" and not causal_mask:
            assert site.mask.startswith("input mask"), site


@settings(max_examples=TRACE_EXAMPLES, **COMMON)
@given(programs())
def test_random_programs_symbolic_trace(p: Program):
    rewritten_and_exact(p, compile_path=False)


@settings(max_examples=COMPILE_EXAMPLES, **COMMON)
@given(programs())
def test_random_programs_torch_compile(p: Program):
    rewritten_and_exact(p, compile_path=True)


@settings(max_examples=COMPILE_EXAMPLES, **COMMON)
@given(programs())
def test_random_programs_torch_compile_symbolic_batch(p: Program):
    """The same with the batch symbolic (Dynamo after a second batch size): a mask folds only where the
    batch reaches it as an `expand` size, and every number still equals eager."""
    rewritten_and_exact(p, compile_path=True, symbolic_batch=True)


@settings(max_examples=COMPILE_EXAMPLES, **COMMON)
@given(programs())
def test_random_programs_torch_compile_dynamic(p: Program):
    """The same under `dynamic=True`, every size symbolic: the masks made of index comparisons over aranges
    are proven causal for every size (ramps.py), the others are kept, and every number still equals eager.
    Floats stay static (`specialize_float`): the program keeps its scale and fill in module attributes, which
    dynamic=True would otherwise turn into graph inputs (tests/test_backend.py covers that case)."""
    with torch._dynamo.config.patch(specialize_float=True):
        rewritten_and_exact(p, compile_path=True, symbolic_lengths=True)


@settings(max_examples=max(TRACE_EXAMPLES // 3, 30), **COMMON)
@given(programs(near_miss=True))
def test_near_misses_are_never_rewritten(p: Program):
    model = Attention(p).eval()
    args = inputs(p)
    gm = torch.fx.symbolic_trace(model)
    report = sdpa_rewrite.rewrite(gm, example_inputs=args)
    rec = RecordSDPA()
    with torch.no_grad(), rec:
        gm(*args)
    check_report(p, report, len(rec.calls))


def rewritten_and_exact(p: Program, compile_path: bool, symbolic_batch: bool = False,
                        symbolic_lengths: bool = False) -> None:
    model = Attention(p).eval()
    args = inputs(p)
    ref, x_ref = run_eager(model, args)
    if compile_path:
        torch._dynamo.reset()
        reports, rec = [], RecordSDPA()

        def downstream(gm, example_inputs):        # the graph as compiled, its SDPA calls recorded when it runs
            def run(*inputs):                       # (a run-time variant is compiled beside the general graph:
                with rec:                           # counting graph nodes would count both)
                    return gm.forward(*inputs)
            return run

        compiled = torch.compile(model, backend="sdpa_rewrite", dynamic=True if symbolic_lengths else None,
                                 options={"downstream": downstream, "report": reports.append, "strict": True})
        out, x = run_eager(compiled, args, symbolic_batch)
        report = sdpa_rewrite.Report()
        for r in reports:
            report.extend(r)
        n_calls = len(rec.calls)
    else:
        gm = torch.fx.symbolic_trace(model)
        report = sdpa_rewrite.rewrite(gm, example_inputs=args)
        rec = RecordSDPA()
        with rec:
            out, x = run_eager(gm, args)
        n_calls = len(rec.calls)
        again = sdpa_rewrite.rewrite(gm, example_inputs=args)       # idempotent: nothing new to find
        assert not again.rewritten and all("not a ·V" not in s.reason for s in again.sites)
    check_report(p, report, n_calls, symbolic_lengths)
    check_numbers(p, out, ref, x, x_ref, bool(report.rewritten))


@settings(max_examples=COMPILE_EXAMPLES, **COMMON)
@given(capped_programs())
def test_soft_capped_programs_on_flex(p: Program):
    """Soft-capped scores, through both front ends without gradients (flex has no CPU backward): every site goes to
    FlexAttention, and the outputs equal eager's (fp32; eager's NaN rows are zeros). An nn.Dropout called as a
    module (symbolic_trace keeps the call) decides at run time whether it drops, and flex has no dropout: those
    sites stay eager with that reason."""
    from sdpa_rewrite.flex import flex_attention_site

    model = Attention(p).eval()
    args = inputs(p)
    with torch.no_grad():
        ref = model(*args)
        gm = torch.fx.symbolic_trace(model)
        report = sdpa_rewrite.rewrite(gm, example_inputs=args)
        if p.dropout == "module_eval":
            assert not report.rewritten and all("no dropout" in s.reason or allowed_skip(p, s.reason)
                                                for s in report.sites), f"{report}\n{p}"
            check_numbers(p, gm(*args), ref, None, None, False)
        else:
            assert len(report.rewritten) == p.sites and all(s.target == "flex" for s in report.rewritten), \
                f"{report}\n{p}"
            assert sum(n.target is flex_attention_site for n in gm.graph.nodes) == p.sites
            check_numbers(p, gm(*args), ref, None, None, True)
        torch._dynamo.reset()
        reports = []
        compiled = torch.compile(model, backend="sdpa_rewrite",
                                 options={"downstream": "eager", "report": reports.append, "strict": True})
        out = compiled(*args)
        assert sum(len(r.rewritten) for r in reports) == p.sites, reports
        check_numbers(p, out, ref, None, None, True)


def test_found_bmm_regroup_under_a_symbolic_batch():
    """Found by the symbolic-batch property: a (B·H, L, E) bmm site regrouped to (B, H, L, S) was emitted with
    the trace-time SymInt objects as reshape sizes, and the compiled graph failed when it ran. Sizes are now
    graph nodes computed from the graph's own symbols."""
    p = Program(b=2, h=2, groups=1, repeat="none", l=5, s=2, e=8, ev=8, scores="bmm", scale=8 ** -0.5,
                scale_at="scores_div", mask="causal_finite", mask_shape="b1ls", mask_before_scale=True, fill=-1e9,
                empty_rows=True, upcast="float_scores", softmax="method", dropout="module_eval", sites=1, near_miss="")
    rewritten_and_exact(p, compile_path=True, symbolic_batch=True)


@pytest.mark.parametrize("scores", ["matmul", "bmm"])
def test_indexed_causal_mask_under_a_symbolic_batch(scores):
    """transformers' no-cache spelling (positions expanded to the batch, indexed per row by `arange(batch)`)
    folds to is_causal with the batch symbolic, on a plain and on a bmm-regrouped site, and stays exact."""
    p = Program(b=3, h=2, groups=1, repeat="none", l=5, s=5, e=8, ev=8, scores=scores, scale=8 ** -0.5,
                scale_at="scores_div", mask="causal_indexed", mask_shape="b1ls", mask_before_scale=False, fill=-1e9,
                empty_rows=False, upcast="none", softmax="functional", dropout="none", sites=1, near_miss="")
    rewritten_and_exact(p, compile_path=True, symbolic_batch=True)


def test_found_duck_sized_regroup_under_dynamic():
    """Found by the dynamic=True property: with B == H, Dynamo gives both one symbol, and the bmm site's
    regrouped size is (s**2)//s. Emitted sizes now cover powers and floor division."""
    p = Program(b=2, h=2, groups=1, repeat="none", l=1, s=1, e=4, ev=4, scores="bmm", scale=0.5,
                scale_at="scores_mul", mask="none", mask_shape="b1ls", mask_before_scale=False, fill=-1e4,
                empty_rows=False, upcast="none", softmax="functional", dropout="none", sites=1, near_miss="")
    with torch._dynamo.config.patch(specialize_float=True):
        rewritten_and_exact(p, compile_path=True, symbolic_lengths=True)


def planned_as_on_cuda(p: Program, length_bar: str) -> tuple:
    """(eager's output, the rewritten graph's, the report) of `p` through symbolic_trace, planned as on CUDA without
    gradients, with the length bar `length_bar` (plan's or key_rows') at 1 so that every length counts as long."""
    from unittest import mock

    import sdpa_rewrite.key_rows as key_rows
    import sdpa_rewrite.plan as plan

    model = Attention(p).eval()
    args = inputs(p)
    when = plan.Conditions(fast_on=("cuda", "cpu"), may_train=False)
    with torch.no_grad(), mock.patch.object(key_rows if hasattr(key_rows, length_bar) else plan, length_bar, 1):
        ref = model(*args)
        gm = torch.fx.symbolic_trace(model)
        report = sdpa_rewrite.rewrite(gm, example_inputs=args, conditions=when)
        out = gm(*args)
    return ref, out, report


@settings(max_examples=COMPILE_EXAMPLES, **COMMON)
@given(programs(), st.sampled_from([0.5, -0.25, 60.0]))
def test_key_rows_on_flex_equal_eager(p: Program, slope: float):
    """Every random program with ALiBi-like rows added to its scores (slope·(h + 1)·j, built in the graph), planned
    as on CUDA without gradients and no length bar: where the rest of the mask folds to a band, the site reads the
    rows on flex; wherever it does or not, the outputs equal eager's (fp32; eager's NaN rows are zeros)."""
    from dataclasses import replace

    p = replace(p, row=slope)
    ref, out, report = planned_as_on_cuda(p, "KEY_ROW_FLEX_MIN")
    if p.near_miss:
        assert not report.rewritten, f"near-miss rewritten:\n{report}\n{p}"
        return
    for site in report.skipped:       # openai-gpt's s·b + c·(1 − b) then multiplies the rows by b; a finite fill
        assert allowed_skip(p, site.reason) or p.mask == "causal_arith" or (   # beside a bias: its reasons
            "finite masked fill" in site.reason), f"missed site: {site.reason}\n{p}"
    for site in report.rewritten:
        if "rows along the keys" in site.mask:
            assert site.target == "flex", site
    check_numbers(p, out, ref, None, None, bool(report.rewritten))


@settings(max_examples=COMPILE_EXAMPLES, **COMMON)
@given(programs())
def test_dense_masks_on_flex_equal_eager(p: Program):
    """Every random program, planned as on CUDA without gradients with no length threshold: each site whose mask is a
    dense mask calls flex with a BlockMask built from it, and the outputs still equal eager's (fp32; eager's NaN rows
    are zeros) — tiles skipped only where no row sees a position, finite fills, BERT's -1e4 and fully masked rows."""
    ref, out, report = planned_as_on_cuda(p, "DENSE_FLEX_MIN")
    check_report(p, report, len(report.rewritten))
    for site in report.rewritten:
        # flex has no dropout (a module call may drop) and takes (B, H, L, E) at most
        if site.mask.startswith("input mask") and p.dropout != "module_eval" and len(site.q) <= 4:
            assert site.target == "flex" and "BlockMask" in site.mask, f"{site}\n{p}"
    check_numbers(p, out, ref, None, None, bool(report.rewritten))


@settings(max_examples=COMPILE_EXAMPLES, **COMMON)
@given(programs(), st.sampled_from([0.5, -0.25]))
def test_dense_masks_beside_rows_stay_on_sdpa(p: Program, slope: float):
    """Every random program with ALiBi-like rows added to its scores, planned as on CUDA without gradients with no
    dense-mask length bar: a mask read at run time beside those rows is a bias (over more than one key), so its site
    stays on SDPA and says why (the rows fold to constants), and the outputs still equal eager's (fp32; eager's NaN
    rows are zeros)."""
    from dataclasses import replace

    p = replace(p, row=slope)
    ref, out, report = planned_as_on_cuda(p, "DENSE_FLEX_MIN")
    if p.near_miss:
        assert not report.rewritten, f"near-miss rewritten:\n{report}\n{p}"
        return
    for site in report.skipped:
        assert allowed_skip(p, site.reason) or p.mask == "causal_arith" or (
            "finite masked fill" in site.reason), f"missed site: {site.reason}\n{p}"
    for site in report.rewritten:
        if site.mask.startswith("input mask") and p.s > 1:        # over one key the rows are 0: no bias
            assert site.target == "sdpa", f"{site}\n{p}"
            if p.dropout != "module_eval" and len(site.q) <= 4:   # where flex could run, the report says why not
                assert "bias along the keys" in site.target_reason, f"{site}\n{p}"
    check_numbers(p, out, ref, None, None, bool(report.rewritten))
