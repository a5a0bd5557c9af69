"""bounds.py: which additive masks can hold -inf. A mask built in the graph from finite constants needs no select
on the attention output for rows of -inf alone (in training that select keeps a second copy of each attention
output for the backward); any mask that might hold -inf keeps it, and both give eager's numbers."""
import pytest
import torch
import torch.nn as nn

from patterns import Expect
from sdpa_rewrite.bounds import never_minus_inf, value_bounds
from support import check_calls, compile_and_record, sdpa_calls_of

MIN32 = torch.finfo(torch.float32).min


def _traced(fn, args):
    """Dynamo's graph of `fn`, with example values on its nodes (what bounds.py reads)."""
    graphs = []

    def keep(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(fn, backend=keep, fullgraph=True)(*args)
    return graphs[0]


def _out(gm):
    return [n for n in gm.graph.nodes if n.op == "output"][0].args[0][0]


@pytest.mark.parametrize("build, lo, hi", [
    (lambda keep: torch.where(keep, 0.0, MIN32), MIN32, 0.0),                       # transformers 5.x eager mask
    (lambda keep: torch.zeros(keep.shape).masked_fill(~keep, MIN32), MIN32, 0.0),
    (lambda keep: (1.0 - keep.float()) * MIN32, MIN32, 0.0),                          # BERT's extended mask
    (lambda keep: torch.where(keep, 0.0, -1e4)[:, None, None, :].expand(2, 1, 4, 8), -1e4, 0.0),
    (lambda keep: torch.where(keep, 0.0, MIN32) + torch.where(keep, 0.0, MIN32), float("-inf"), 0.0),  # overflow
    (lambda keep: torch.where(keep, 0.0, MIN32).half(), float("-inf"), 0.0),       # finfo(fp32).min in fp16
    (lambda keep: torch.where(keep, 0.0, float("-inf")), float("-inf"), 0.0),
])
def test_bounds_of_masks_built_from_constants(build, lo, hi):
    keep = torch.ones(2, 8, dtype=torch.bool)
    assert value_bounds(_out(_traced(build, (keep,)))) == (lo, hi)


def test_inputs_and_unknown_ops_are_unbounded():
    gm = _traced(lambda m, i: (m * 2, (1.0 - i.float()) * MIN32, torch.exp(m), i.bool().float()),
                 (torch.zeros(2, 8), torch.ones(2, 8, dtype=torch.long)))
    outs = [n for n in gm.graph.nodes if n.op == "output"][0].args[0]
    # a float input; BERT's (1 - m)·finfo.min from an integer m (m = -1 gives -inf); exp; an integer made boolean
    assert [value_bounds(n) for n in outs] == [None, None, None, (0.0, 1.0)]


def test_a_sum_that_overflows_in_a_narrow_dtype_can_be_minus_inf():
    gm = _traced(lambda keep: torch.where(keep, 0.0, -6e4).half(), (torch.ones(2, 8, dtype=torch.bool),))
    term = _out(gm)
    assert value_bounds(term) == (-6e4, 0.0)
    assert never_minus_inf([(1.0, term)], torch.float32)              # one fp16 term: finite
    assert not never_minus_inf([(1.0, term), (1.0, term)], torch.float32)   # -1.2e5 overflows fp16 before the cast


def test_a_zero_times_minus_inf_term_is_unknown():
    """0 · [-inf, 0] has a NaN endpoint: unknown, so not proven finite (this once raised a TypeError)."""
    term = _out(_traced(lambda keep: torch.where(keep, 0.0, float("-inf")), (torch.ones(2, 8, dtype=torch.bool),)))
    assert not never_minus_inf([(0.0, term)], torch.float32)


class PaddedAttention(nn.Module):
    """A padding mask built in the graph from the input keep-mask, added to the scores."""

    def __init__(self, fill):
        super().__init__()
        self.fill = fill

    def forward(self, q, k, v, keep):
        mask = torch.where(keep[:, None, None, :], 0.0, self.fill)
        return torch.softmax(q @ k.transpose(-1, -2) * 0.25 + mask, dim=-1) @ v


@pytest.mark.parametrize("fill, selects_output", [(MIN32, False), (-1e4, False), (float("-inf"), True)],
                         ids=["finfo.min", "-1e4", "-inf"])
def test_output_select_only_where_the_mask_can_be_minus_inf(fill, selects_output):
    """Batch row 1 is all padding: every query row there sees no key. eager gives uniform weights over the keys
    (finfo.min), the plain softmax of the scores (-1e4) or NaN (-inf, where the rewrite gives zeros); the graph
    selects on SDPA's output only in the -inf case. Outputs and gradients match eager (on the all-padding row,
    eager's dq and dk differentiate a forward its rounding made constant, so only dv is compared there;
    README, Limits)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 8, 16, generator=g).requires_grad_() for _ in range(3))
    keep = torch.ones(2, 8, dtype=torch.bool)
    keep[0, 5:] = False
    keep[1] = False
    model = PaddedAttention(fill)
    out, reports, graphs = compile_and_record(model, (q, k, v, keep))
    ref = model(q, k, v, keep)
    assert len(reports[0].rewritten) == 1 and reports[0].sites[0].mask.endswith("+ empty-row check")
    check_calls(sdpa_calls_of(graphs), (Expect(scale=0.25, mask="float"),))
    (note,) = [n for n in reports[0].notes if "empty-row check" in n]   # the report says which cost the site pays
    assert f"{int(selects_output)} of them also select on the attention output" in note, note
    sdpa = [n for n in graphs[0][0].graph.nodes if n.target is torch.nn.functional.scaled_dot_product_attention]
    users = {u.target for u in sdpa[0].users}
    assert (torch.where in users) == selects_output, users
    tol = 2e-3 if fill == -1e4 else 1e-5      # s - 1e4 rounds the scores to ~1e-3 in fp32, in eager and kernel alike
    if selects_output:
        assert torch.isnan(ref[1]).all() and (out[1] == 0).all()
        out, ref = out[:1], ref[:1]
    torch.testing.assert_close(out, ref, rtol=0, atol=tol)
    w = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * w).sum(), (q, k, v))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a[0], b[0], rtol=0, atol=tol)
    if not selects_output:
        torch.testing.assert_close(grads[2][1], ref_grads[2][1], rtol=0, atol=tol)
