"""Every catalog entry, through both front ends: SDPA arguments, site count, numbers and gradients."""
import pytest
import torch

import sdpa_rewrite
from patterns import all_entries
from support import (RecordSDPA, assert_same_grads, calls_of, check_calls, clone_model, compile_and_record,
                     sdpa_calls_of, with_grads, assert_close_outputs)

ENTRIES = all_entries()
ids = [e.name for e in ENTRIES]
FLEX = [e for e in ENTRIES if e.expect and any(x.target == "flex" for x in e.expect)]
CPU_GRAD_MISS = "no backward on the CPU"      # flex sites with gradients on the CPU stay eager, with this reason


def _expects_here(entry):
    """With gradients on the CPU a flex site stays eager (plan.py): the entry is then a near-miss."""
    return None if entry in FLEX else entry.expect


def _near_miss_reported(report, entry):
    assert not report.rewritten, f"a near-miss was rewritten:\n{report}"
    reasons = " | ".join(s.reason for s in report.skipped)
    assert entry.reason.lower() in reasons.lower(), f"expected reason containing {entry.reason!r}, got: {reasons}"


def check_verdicts(report, expects):
    """The report names the mask each site was proven to have (masks.py's verdict kinds), and agrees with
    the call: is_causal only from a causal verdict, a dropped mask only from a causal or empty one."""
    for site, exp in zip(report.rewritten, expects):
        kind = site.mask.split(" (")[0].split(" ->")[0]
        if exp.verdict is not None:
            assert kind == exp.verdict, (site.mask, exp)
        if exp.sink:          # the causal verdict reaches SDPA spelled out beside the sink columns
            continue
        if exp.is_causal:
            assert kind == "causal" and site.causal == "top-left", site
        elif site.causal:
            assert kind == "causal lower-right" and site.causal == "lower-right", site


def test_catalog_is_large_enough():
    assert len([e for e in ENTRIES if not e.near_miss]) >= 30
    assert len({e.name.split("/")[0] for e in ENTRIES}) >= 10
    assert any(e.near_miss for e in ENTRIES)


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.traceable], ids=[e.name for e in ENTRIES if e.traceable])
def test_symbolic_trace(entry):
    model = entry.module()
    reference = clone_model(model)
    inputs = entry.inputs()
    gm = torch.fx.symbolic_trace(model)
    report = sdpa_rewrite.rewrite(gm, example_inputs=with_grads(inputs))
    if _expects_here(entry) is None:
        if entry.near_miss:
            _near_miss_reported(report, entry)
        else:
            assert not report.rewritten and CPU_GRAD_MISS in report.sites[0].reason, str(report)
        with torch.no_grad():
            assert calls_of(gm, inputs) == []
        x, x_ref = with_grads(inputs), with_grads(inputs)
        assert_close_outputs(gm(*x), reference(*x_ref))
        return
    assert len(report.rewritten) == len(entry.expect), str(report)
    x = with_grads(inputs)
    rec = RecordSDPA()
    with rec:
        out = gm(*x)
    check_calls(calls_of(gm, inputs), entry.expect)
    check_verdicts(report, entry.expect)
    if entry.training:
        return
    x_ref = with_grads(inputs)
    ref = reference(*x_ref)
    assert_close_outputs(out, ref)
    assert_same_grads(gm, x, out, reference, x_ref, ref)


@pytest.mark.parametrize("entry", ENTRIES, ids=ids)
def test_compile_backend(entry):
    model = entry.module()
    reference = clone_model(model)
    inputs = entry.inputs()
    x = with_grads(inputs)
    out, reports, graphs = compile_and_record(model, x)
    report = sdpa_rewrite.Report()
    for r in reports:
        report.extend(r)
    if _expects_here(entry) is None:
        if entry.near_miss:
            _near_miss_reported(report, entry)
        else:
            assert not report.rewritten and CPU_GRAD_MISS in report.sites[0].reason, str(report)
        assert sdpa_calls_of(graphs) == []
        return
    assert len(report.rewritten) == len(entry.expect), str(report)
    assert len(report.sites) == len(entry.expect), str(report)
    check_calls(sdpa_calls_of(graphs), entry.expect)
    check_verdicts(report, entry.expect)
    if entry.training:
        return
    x_ref = with_grads(inputs)
    ref = reference(*x_ref)
    assert_close_outputs(out, ref)
    assert_same_grads(model, x, out, reference, x_ref, ref)


@pytest.mark.parametrize("entry", FLEX, ids=[e.name for e in FLEX])
def test_flex_inference(entry):
    """Without gradients the soft-capped sites run on FlexAttention (forward on the CPU), through both front ends:
    the flex arguments (scale inside the cap, the cap, the mask's form, the BlockMask for a causal band) and the
    numbers match eager."""
    model = entry.module()
    inputs = entry.inputs()
    with torch.no_grad():
        ref = model(*inputs)
        out, reports, graphs = compile_and_record(model, inputs)
        report = sdpa_rewrite.Report()
        for r in reports:
            report.extend(r)
        assert [s.target for s in report.rewritten] == [x.target for x in entry.expect], str(report)
        check_calls(sdpa_calls_of(graphs), entry.expect)
        assert_close_outputs(out, ref)
        if entry.traceable:
            gm = torch.fx.symbolic_trace(entry.module())
            gm.load_state_dict(model.state_dict())
            rewritten = sdpa_rewrite.rewrite(gm, example_inputs=inputs)
            assert len(rewritten.rewritten) == len(entry.expect), str(rewritten)
            check_calls(calls_of(gm, inputs), entry.expect)
            assert_close_outputs(gm(*inputs), ref)
