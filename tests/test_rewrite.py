"""rewrite() on its own: bad input, missing shapes, all-or-nothing, idempotence, fully masked rows."""
import importlib
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import sdpa_rewrite
from support import RecordSDPA, keep_mask, masked_attention
from patterns.masks import V5PackedSequenceCheck

REWRITE_MODULE = importlib.import_module("sdpa_rewrite.rewrite")


class Attn(nn.Module):
    def forward(self, q, k, v):
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)), dim=-1) @ v


class Stacked(nn.Module):
    """The second attention's query is the first attention's output."""

    def forward(self, q, k, v):
        x = torch.softmax(q @ k.transpose(-2, -1) * 0.25, dim=-1) @ v
        return torch.softmax(x @ k.transpose(-2, -1) * 0.5, dim=-1) @ v


class Filled(nn.Module):
    def __init__(self, fill):
        super().__init__()
        self.fill = fill

    def forward(self, q, k, v, masked):
        s = (q @ k.transpose(-2, -1)).masked_fill(masked, self.fill)
        return torch.softmax(s, dim=-1) @ v


def qkv(l=8):
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(2, 4, l, 16, generator=g) for _ in range(3))


def test_not_a_graph_module_is_a_type_error():
    with pytest.raises(TypeError, match="torch.fx.GraphModule"):
        sdpa_rewrite.rewrite(Attn())


def test_no_shapes_is_a_clean_skip():
    gm = torch.fx.symbolic_trace(Attn())
    before = gm.code
    report = sdpa_rewrite.rewrite(gm)
    assert len(report.sites) == 1 and not report.rewritten
    assert "example_inputs" in report.sites[0].reason
    assert gm.code == before


def test_meta_device_inputs_give_shapes():
    gm = torch.fx.symbolic_trace(Attn())
    report = sdpa_rewrite.rewrite(gm, example_inputs=[torch.empty(2, 4, 8, 16, device="meta")] * 3)
    assert len(report.rewritten) == 1
    q, k, v = qkv()
    torch.testing.assert_close(gm(q, k, v), Attn()(q, k, v), rtol=1e-5, atol=1e-5)


def test_graph_without_attention_is_a_no_op():
    gm = torch.fx.symbolic_trace(nn.Sequential(nn.Linear(4, 4), nn.Softmax(dim=-1)))
    before = gm.code
    report = sdpa_rewrite.rewrite(gm, example_inputs=[torch.randn(2, 4)])
    assert not report.rewritten and "not attention" in report.sites[0].reason
    assert gm.code == before


def test_failure_mid_rewrite_restores_the_graph(monkeypatch):
    gm = torch.fx.symbolic_trace(Stacked())
    inputs = qkv()
    before = gm.code
    real_emit = REWRITE_MODULE.emit
    calls = []

    def emit_then_fail(gm_, att, plan):
        calls.append(att)
        if len(calls) == 2:
            raise RuntimeError("forced failure on the second site")
        return real_emit(gm_, att, plan)

    monkeypatch.setattr(REWRITE_MODULE, "emit", emit_then_fail)
    with pytest.raises(RuntimeError, match="second site"):
        sdpa_rewrite.rewrite(gm, example_inputs=inputs)
    assert gm.code == before
    gm.graph.lint()
    torch.testing.assert_close(gm(*inputs), Stacked()(*inputs))


def test_stacked_sites_and_idempotence():
    gm = torch.fx.symbolic_trace(Stacked())
    inputs = qkv()
    report = sdpa_rewrite.rewrite(gm, example_inputs=inputs)
    assert len(report.rewritten) == 2
    torch.testing.assert_close(gm(*inputs), Stacked()(*inputs), rtol=1e-5, atol=1e-5)
    code = gm.code
    again = sdpa_rewrite.rewrite(gm, example_inputs=inputs)
    assert again.sites == [] and gm.code == code


def _rows(l=8, s=8):
    masked = torch.zeros(2, 1, l, s, dtype=torch.bool)
    masked[0, :, 2] = True           # a fully masked row
    masked[1, :, :, 5:] = True       # padding
    return masked


@pytest.mark.parametrize("fill", [-1e4, -1e9, torch.finfo(torch.float32).min], ids=["-1e4", "-1e9", "finfo.min"])
def test_finite_fill_keeps_uniform_rows(fill):
    """A fully masked row under a finite fill gets eager's uniform weights, mean(V), with its gradients: the
    kernel sees that row with every key visible and a zero query, and nothing selects on SDPA's output (in
    training a select there keeps a second copy of the output for the backward)."""
    q, k, v = (x.requires_grad_() for x in qkv())
    inputs = (q, k, v, _rows())
    model = Filled(fill)
    gm = torch.fx.symbolic_trace(model)
    report = sdpa_rewrite.rewrite(gm, example_inputs=inputs)
    assert len(report.rewritten) == 1
    (sdpa,) = [n for n in gm.graph.nodes if n.target is F.scaled_dot_product_attention]
    assert [u.op for u in sdpa.users] == ["output"]
    rec = RecordSDPA()
    with rec:
        out = gm(*inputs)
    assert len(rec.calls) == 1
    ref = model(*inputs)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[0, :, 2], v[0].mean(-2), rtol=1e-5, atol=1e-5)  # uniform weights
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    for a, b in zip(torch.autograd.grad((out * w).sum(), (q, k, v)), torch.autograd.grad((ref * w).sum(), (q, k, v))):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_minus_inf_fill_gives_zeros_where_eager_gives_nan():
    """The one accepted difference (DESIGN.md contract 3): SDPA (torch >= 2.5) returns 0 on fully masked rows."""
    inputs = qkv() + (_rows(),)
    model = Filled(float("-inf"))
    gm = torch.fx.symbolic_trace(model)
    sdpa_rewrite.rewrite(gm, example_inputs=inputs)
    out, ref = gm(*inputs), model(*inputs)
    assert torch.isnan(ref[0, :, 2]).all()
    assert torch.equal(out[0, :, 2], torch.zeros_like(out[0, :, 2]))
    keep = ~torch.isnan(ref)
    torch.testing.assert_close(out[keep], ref[keep], rtol=1e-5, atol=1e-5)


def test_report_to_dict_is_json():
    import json

    gm = torch.fx.symbolic_trace(Attn())
    report = sdpa_rewrite.rewrite(gm, example_inputs=qkv())
    data = json.loads(json.dumps(report.to_dict()))
    assert data["rewritten"] == 1 and data["sites"][0]["scale"] == 0.25
    assert data["sites"][0]["q"] == [2, 4, 8, 16]
    assert "1/sqrt(16)" in str(report)


class WhereFilled(nn.Module):
    def forward(self, q, k, v, masked):
        s = torch.where(masked, torch.finfo(torch.float32).min, q @ k.transpose(-2, -1))
        return torch.softmax(s, dim=-1) @ v


def test_fp32_min_fill_on_fp16_scores_is_minus_inf():
    """where(c, finfo(fp32).min, fp16 scores) writes -inf: classified as the -inf fill it is, not a finite one."""
    q, k, v = (x.half() for x in qkv())
    masked = _rows()
    model = WhereFilled()
    gm = torch.fx.symbolic_trace(model)
    report = sdpa_rewrite.rewrite(gm, example_inputs=(q, k, v, masked))
    assert report.sites[0].mask == "input mask (depends on the input `masked`) -> bool keep-mask + empty-row check"
    out, ref = gm(q, k, v, masked), model(q, k, v, masked)
    keep = ~torch.isnan(ref)
    assert torch.isnan(ref[0, :, 2]).all() and torch.equal(out[0, :, 2], torch.zeros_like(out[0, :, 2]))
    torch.testing.assert_close(out[keep], ref[keep], rtol=2e-3, atol=2e-3)


class AddedMask(nn.Module):
    """transformers' eager spelling: an additive float mask input (0 / fill), possibly with empty rows."""

    def forward(self, q, k, v, mask):
        return torch.softmax(q @ k.transpose(-1, -2) * 0.25 + mask, dim=-1) @ v


@pytest.mark.parametrize("fill", [torch.finfo(torch.float32).min, float("-inf")], ids=["finfo.min", "-inf"])
def test_additive_input_mask_fully_masked_rows(fill):
    """Empty rows of an additive mask get eager's answer whatever the kernel: mean(V) for a finite fill
    (uniform weights), zeros for -inf (eager: NaN). Other rows are untouched."""
    q, k, v = qkv()
    mask = torch.zeros(2, 1, 8, 8).masked_fill(_rows(), fill)
    model = AddedMask()
    gm = torch.fx.symbolic_trace(model)
    report = sdpa_rewrite.rewrite(gm, example_inputs=(q, k, v, mask))
    assert report.sites[0].mask.startswith("input mask")
    out, ref = gm(q, k, v, mask), model(q, k, v, mask)
    if fill == float("-inf"):
        assert torch.isnan(ref[0, :, 2]).all() and torch.equal(out[0, :, 2], torch.zeros_like(out[0, :, 2]))
    else:
        torch.testing.assert_close(out[0, :, 2], v[0].mean(-2), rtol=1e-5, atol=1e-5)
    keep = ~torch.isnan(ref)
    torch.testing.assert_close(out[keep], ref[keep], rtol=1e-5, atol=1e-5)
    x = [t.clone().requires_grad_() for t in (q, k, v)]
    grads = torch.autograd.grad(gm(*x, mask).sum(), x)
    assert all(torch.isfinite(g).all() for g in grads)      # no NaN leaks from a row the output drops


def test_additive_mask_rows_with_no_visible_key_follow_eager_arithmetic():
    """Eager's answer on a row with every key masked depends on the values: where they swamp the scores
    (finfo.min) its weights are softmax(m), uniform over the keys at the row's maximum only (causal -inf over
    padding finfo.min: the first 3 keys); where they do not (BERT's -1e4), eager's softmax(s + m) is the plain
    softmax of the scores. The first two once came out as mean(V) over all keys; the kernel's own backward
    is wrong on rows of large values (its log-sum-exp cancels), so no such value may reach it."""
    q, k, v = (x.requires_grad_() for x in qkv())
    MIN = torch.finfo(torch.float32).min
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, :, 0] = float("-inf")
    mask[0, :, 0, :3] = MIN                                  # causal -inf over padding finfo.min
    mask[0, :, 1] = MIN
    mask[0, :, 1, 6] = MIN / 8                               # one key far above the rest: it takes all the weight
    mask[1, :, 2] = -1e4                                     # an all-padding row, BERT's fill
    mask[1, :, 3, ::2], mask[1, :, 3, 1::2] = -1e4, float("-inf")
    mask[1, :, 4] = -1e9        # swamps fp32 scores: uniform in eager; the CPU kernel's backward got dv wrong here
    model = AddedMask()
    gm = torch.fx.symbolic_trace(model)
    report = sdpa_rewrite.rewrite(gm, example_inputs=(q, k, v, mask))
    assert report.sites[0].mask.endswith("-> additive + empty-row check")
    out, ref = gm(q, k, v, mask), model(q, k, v, mask)
    torch.testing.assert_close(out[0, :, 0], v[0, :, :3].mean(-2), rtol=1e-5, atol=1e-5)
    bert = torch.zeros(out.shape, dtype=torch.bool)
    bert[1, :, 2:4] = True                    # s - 1e4 in fp32 rounds the scores to ~1e-3, in eager and kernel alike
    torch.testing.assert_close(out[~bert], ref[~bert], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[bert], ref[bert], rtol=0, atol=2e-3)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    dv, = torch.autograd.grad((out * w).sum(), v)
    ref_dv, = torch.autograd.grad((ref * w).sum(), v)
    torch.testing.assert_close(dv, ref_dv, rtol=0, atol=2e-3)


class BiasAndPadding(nn.Module):
    """Bloom's fp16 spelling: scores + a bias row per key + an additive padding mask, softmax in fp32."""

    def forward(self, q, k, v, bias, mask):
        return torch.softmax((q @ k.transpose(-1, -2) * 0.25 + bias + mask).float(), dim=-1).to(v.dtype) @ v


def test_swamped_rows_read_the_mask_as_its_dtype_rounds_it():
    """fp16: a padding row of finfo.min plus a bias of 0..10 rounds to -65504 at every key, so eager spreads the
    row's weight over all keys. Inductor fuses the sum and keeps it in fp32 (-65504 + 10 = -65494), where the key with
    the largest bias alone looked like the row's maximum and took all the weight; the decision now reads the mask as
    stored in fp16."""
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, 2, 8, 16, generator=g).half() * 0.1 for _ in range(3))
    bias = torch.linspace(0, 10, 8).half().expand(1, 2, 1, 8)
    mask = torch.zeros(2, 1, 8, 8, dtype=torch.float16)
    mask[0, :, :3] = torch.finfo(torch.float16).min           # three padding queries: no key visible
    mask[1, :, :, 6:] = torch.finfo(torch.float16).min
    model = BiasAndPadding()
    ref = model(q, k, v, bias, mask)
    torch._dynamo.reset()
    out = torch.compile(model, backend="sdpa_rewrite")(q, k, v, bias, mask)
    torch.testing.assert_close(out[0, :, :3].float(), v[0].float().mean(-2, keepdim=True).expand(2, 3, 16),
                               rtol=0, atol=2e-3)
    torch.testing.assert_close(out.float(), ref.float(), rtol=0, atol=2e-3)


def test_causal_folded_mask_adds_no_row_fix():
    """A mask proven causal has no empty rows: the graph is the bare SDPA call, nothing after it."""
    gm = torch.fx.symbolic_trace(CausalTril())
    sdpa_rewrite.rewrite(gm, example_inputs=qkv())
    targets = [n.target for n in gm.graph.nodes if n.op != "placeholder" and n.op != "output"]
    assert targets == [torch.nn.functional.scaled_dot_product_attention], targets


class CausalTril(nn.Module):
    def forward(self, q, k, v):
        keep = torch.ones((q.size(-2), k.size(-2))).tril().bool()
        return torch.softmax((q @ k.transpose(-1, -2) * 0.25).masked_fill(~keep, float("-inf")), dim=-1) @ v


def test_empty_rows_kernel_policy_adds_no_row_fix():
    """empty_rows='kernel' leaves rows with no visible key to the kernel: no row checks in the graph."""
    q, k, v = qkv()
    mask = torch.zeros(2, 1, 8, 8).masked_fill(_rows(), torch.finfo(torch.float32).min)
    model = AddedMask()
    gm = torch.fx.symbolic_trace(model)
    report = sdpa_rewrite.rewrite(gm, example_inputs=(q, k, v, mask), empty_rows="kernel")
    assert len(report.rewritten) == 1 and "empty_rows='kernel'" in report.notes[0]
    assert not [n for n in gm.graph.nodes if n.target in ("any", torch.where)]
    assert not report.sites[0].mask.endswith("empty-row check")
    default = sdpa_rewrite.rewrite(torch.fx.symbolic_trace(model), example_inputs=(q, k, v, mask))
    assert default.sites[0].mask.endswith("-> additive + empty-row check"), default.sites[0].mask   # the cost is shown
    (note,) = default.notes                                                  # and how to remove it
    assert note.startswith("1 of 1 rewritten sites check") and "options={'empty_rows': 'kernel'}" in note, note
    out, ref = gm(q, k, v, mask), model(q, k, v, mask)
    torch.testing.assert_close(out[1], ref[1], rtol=1e-5, atol=1e-5)      # batch 1 has no empty row
    with pytest.raises(ValueError, match="empty_rows"):
        sdpa_rewrite.rewrite(torch.fx.symbolic_trace(model), example_inputs=(q, k, v, mask), empty_rows="fast")


class SlicedBuffer(nn.Module):
    """nanoGPT: a mask buffer sliced to the live length. The fold cannot evaluate the slice with that length
    symbolic; ramps.py reads a buffer equal to tril(ones) (Dynamo's slice guards the length inside it)."""
    def __init__(self, window=None):
        super().__init__()
        bias = torch.ones(16, 16).tril()
        if window is not None:                      # a sliding window: the first row alone looks causal
            bias = bias * torch.ones(16, 16).triu(-window + 1)
        self.register_buffer("bias", bias.view(1, 1, 16, 16))

    def forward(self, q, k, v):
        t = q.size(-2)
        s = (q @ k.transpose(-1, -2) * 0.25).masked_fill(self.bias[:, :, :t, :t] == 0, float("-inf"))
        return torch.softmax(s, dim=-1) @ v


@pytest.mark.parametrize("model, proven", [(CausalTril(), True), (SlicedBuffer(), True), (SlicedBuffer(3), False)],
                         ids=["tril-of-ones", "sliced-causal-buffer", "sliced-window-buffer"])
def test_dynamic_shapes_prove_the_mask_or_keep_it_and_say_so(model, proven):
    """With symbolic sizes the fold stops. A tril of ones, and a causal buffer sliced to the length, are proven
    causal for every size (ramps.py); a sliding-window buffer stays a mask and the report says why. Numbers
    hold either way."""
    reports = []
    compiled = torch.compile(model, backend="sdpa_rewrite", dynamic=True,
                             options={"downstream": "eager", "report": reports.append, "strict": True})
    for length in (8, 12):
        q, k, v = qkv(l=length)
        torch.testing.assert_close(compiled(q, k, v), model(q, k, v), rtol=1e-5, atol=1e-5)
    sites = [s for r in reports for s in r.sites]
    assert sites and all(s.rewritten for s in sites)
    if proven:
        assert all(s.causal == "top-left" and "proven" in s.mask for s in sites), [s.mask for s in sites]
    else:
        assert all(not s.causal and "symbolic shapes" in s.mask for s in sites), [s.mask for s in sites]


class ExpandedCausal(nn.Module):
    """transformers' way: a (1, 1, L, S) causal pattern expanded to the batch."""
    def forward(self, q, k, v):
        keep = torch.ones((q.size(-2), k.size(-2))).tril().bool()[None, None].expand(q.size(0), -1, -1, -1)
        return torch.softmax((q @ k.transpose(-1, -2) * 0.25).masked_fill(~keep, float("-inf")), dim=-1) @ v


class BatchInMaskValues(nn.Module):
    """The batch size reaches the mask's values, not only its shape: it must not fold."""
    def forward(self, q, k, v):
        keep = torch.ones((q.size(-2), k.size(-2))).tril().bool() | (torch.arange(k.size(-2)) < q.size(0) - 2)
        return torch.softmax((q @ k.transpose(-1, -2) * 0.25).masked_fill(~keep, float("-inf")), dim=-1) @ v


class BatchRegroupedMask(nn.Module):
    """Expanded to the batch, then reshaped with it: the reshape reads the symbolic size, no fold."""
    def forward(self, q, k, v):
        b, h, l, e = q.shape
        keep = torch.ones((l, k.size(-2))).tril().bool()[None, None].expand(b, h, -1, -1).reshape(b * h, l, -1)
        s = torch.bmm(q.reshape(b * h, l, e), k.reshape(b * h, -1, e).transpose(1, 2)) * 0.25
        p = torch.softmax(s.masked_fill(~keep, float("-inf")), dim=-1)
        return torch.bmm(p, v.reshape(b * h, -1, e)).view(b, h, l, e)


def _causal_softmax(q, k, v, keep):
    return torch.softmax((q @ k.transpose(-1, -2) * 0.25).masked_fill(~keep, float("-inf")), dim=-1) @ v


class BatchIndexInValues(nn.Module):
    """`arange(batch)` compared, not only used as an index: the batch positions reach the mask's values."""
    def forward(self, q, k, v):
        n = q.size(-2)
        keep = torch.ones(n, n).tril().bool()[None, None] | (torch.arange(q.size(0))[:, None, None, None] > 2)
        return _causal_softmax(q, k, v, keep)


class BatchIndexIntoRows(nn.Module):
    """`arange(batch)` picks rows of a table whose rows differ (causal, all visible, …): batch-dependent."""
    def forward(self, q, k, v):
        n = q.size(-2)
        causal = torch.ones(n, n).tril().bool()
        table = torch.stack([causal, torch.ones(n, n, dtype=torch.bool)]).repeat(4, 1, 1)
        return _causal_softmax(q, k, v, table[torch.arange(q.size(0))][:, None])


class BatchIndexAsMask(nn.Module):
    """`arange(batch)` cast to bool and used as the mask itself: rows b >= 1 are masked. Its stand-in
    value in the fold (a single 0) must never be read as the mask's value."""
    def forward(self, q, k, v):
        cond = torch.arange(q.size(0))[:, None, None, None].to(torch.bool)
        return torch.softmax((q @ k.transpose(-1, -2) * 0.25).masked_fill(cond, -1e9), dim=-1) @ v


class CumsumAlongBatch(nn.Module):
    """A reduced value summed along the batch itself: row b's values grow with b."""
    def forward(self, q, k, v):
        n = q.size(-2)
        c = torch.arange(n)[None].expand(q.size(0), -1).cumsum(0)
        keep = torch.ones(n, n).tril().bool()[None, None] | (c[:, None, :, None] > 2 * n)
        return _causal_softmax(q, k, v, keep)


@pytest.mark.parametrize("model, folds", [
    (ExpandedCausal(), True), (V5PackedSequenceCheck(), True), (BatchInMaskValues(), False),
    (BatchRegroupedMask(), False), (BatchIndexInValues(), False), (BatchIndexIntoRows(), False),
    (CumsumAlongBatch(), False), (BatchIndexAsMask(), False)],
    ids=["expand", "batch-indexed", "values", "regrouped", "index-values", "index-rows", "cumsum-batch",
         "index-as-mask"])
def test_symbolic_batch_folds_only_through_expand(model, folds):
    """A symbolic size may fold only as the size `expand` grows a dim to, or as `arange(size)` indexing a dim
    with one entry; a reduced value only through ops that keep it the same along the batch. Anywhere else the
    mask stays a mask and says why. Exact at every batch either way, one compile."""
    reports = []
    compiled = torch.compile(model, backend="sdpa_rewrite",
                             options={"downstream": "eager", "report": reports.append, "strict": True})
    for batch in (2, 3, 6):
        q, k, v = (torch.randn(batch, 2, 8, 4, generator=torch.Generator().manual_seed(batch + i)) for i in range(3))
        torch._dynamo.mark_dynamic(q, 0)
        torch._dynamo.mark_dynamic(k, 0)
        torch._dynamo.mark_dynamic(v, 0)
        torch.testing.assert_close(compiled(q, k, v), model(q, k, v), rtol=1e-5, atol=1e-5)
    assert len(reports) == 1
    (site,) = reports[0].sites
    assert site.rewritten, str(reports[0])
    if folds:
        assert site.causal == "top-left", site.mask
    else:
        assert not site.causal and "symbolic shapes" in site.mask, site.mask


class MaskedAttention(nn.Module):
    def forward(self, q, k, v, m):
        return masked_attention(q, k, v, m)


def test_fake_tensor_example_inputs():
    from torch._subclasses.fake_tensor import FakeTensorMode

    q, k, v = qkv()
    m = keep_mask()
    gm = torch.fx.symbolic_trace(MaskedAttention())
    with FakeTensorMode() as mode:
        fakes = tuple(mode.from_tensor(x) for x in (q, k, v, m))
    report = sdpa_rewrite.rewrite(gm, example_inputs=fakes)
    assert len(report.rewritten) == 1
    torch.testing.assert_close(gm(q, k, v, m), masked_attention(q, k, v, m), rtol=1e-5, atol=1e-5)


def test_fill_that_overflows_to_minus_inf_is_a_minus_inf_mask():
    """finfo.min * 2 is -inf in fp32: eager's fully masked row is NaN, so the rewrite gives zeros, not mean(V)."""
    from patterns.fuzz_found import OverflowingFill

    q, k, v = qkv()
    mask = torch.zeros(2, 1, 8, 8).masked_fill(_rows(), -1.0)
    model = OverflowingFill()
    gm = torch.fx.symbolic_trace(model)
    sdpa_rewrite.rewrite(gm, example_inputs=(q, k, v, mask))
    out, ref = gm(q, k, v, mask), model(q, k, v, mask)
    assert torch.isnan(ref[0, :, 2]).all() and torch.equal(out[0, :, 2], torch.zeros_like(out[0, :, 2]))
    keep = ~torch.isnan(ref)
    torch.testing.assert_close(out[keep], ref[keep], rtol=1e-5, atol=1e-5)


def test_report_of_a_dynamic_graph_is_json():
    import json

    reports = []
    compiled = torch.compile(Attn(), backend="sdpa_rewrite", dynamic=True,
                             options={"downstream": "eager", "report": reports.append, "strict": True})
    compiled(*qkv())
    data = json.loads(json.dumps(reports[0].to_dict()))
    assert data["rewritten"] == 1 and all(isinstance(d, (int, str)) for d in data["sites"][0]["q"])


def test_classify_broadcast_masks():
    """Keep-patterns broadcast along queries or batch (B,1,1,S), (S,) classify like their full form."""
    from sdpa_rewrite.masks import classify

    assert classify(torch.ones(2, 1, 1, 6, dtype=torch.bool), 4, 6).kind == "none"
    keys = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    keys[..., 4:] = False
    assert classify(keys, 4, 6).kind == "constant mask"
    assert classify(torch.ones(6, 6, dtype=torch.bool).tril(), 6, 6).kind == "causal"
    assert classify(torch.ones(4, 6, dtype=torch.bool).tril(2), 4, 6).kind == "causal lower-right"
    band = torch.ones(6, 6, dtype=torch.bool).tril() & ~torch.ones(6, 6, dtype=torch.bool).tril(-3)
    assert str(classify(band, 6, 6)) == "sliding window (width 3)"


def test_clamp_to_finfo_min_turns_minus_inf_rows_uniform():
    """max(s + mask, finfo.min): eager's -inf rows become uniform (mean of V), and so do the rewrite's."""
    from patterns.fuzz_found import ClampedScores

    q, k, v = qkv()
    mask = torch.zeros(2, 1, 8, 8).masked_fill(_rows(), float("-inf"))
    model = ClampedScores()
    gm = torch.fx.symbolic_trace(model)
    report = sdpa_rewrite.rewrite(gm, example_inputs=(q, k, v, mask))
    assert len(report.rewritten) == 1
    out, ref = gm(q, k, v, mask), model(q, k, v, mask)
    torch.testing.assert_close(ref[0, :, 2], v[0].mean(-2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float16])
def test_a_wider_finfo_min_clamp_is_the_identity_in_low_precision(dt):
    """max(s, finfo(float32).min) on bf16/fp16 scores: the floor rounds to -inf there, and max(s, -inf) = s. The site
    is rewritten with no clamp, and -inf rows give zeros (eager: NaN), as for any -inf mask."""
    from patterns.fuzz_found import ClampedScores

    q, k, v = (x.to(dt) for x in qkv())
    mask = torch.zeros(2, 1, 8, 8, dtype=dt).masked_fill(_rows(), float("-inf"))
    model = ClampedScores()
    gm = torch.fx.symbolic_trace(model)
    report = sdpa_rewrite.rewrite(gm, example_inputs=(q, k, v, mask))
    assert len(report.rewritten) == 1, report
    out, ref = gm(q, k, v, mask), model(q, k, v, mask)
    rows = _rows()[..., 0].expand(2, 4, 8)
    assert torch.isnan(ref[rows]).all() and (out[rows] == 0).all()
    torch.testing.assert_close(out[~rows], ref[~rows], rtol=0, atol=2e-2)


def test_a_real_clamp_is_not_read_as_one():
    """max(s, -5.0) changes the scores: it stays eager, with the op named."""
    class Clamp(nn.Module):
        def forward(self, q, k, v):
            return F.softmax(torch.clamp_min(q @ k.transpose(-2, -1), -5.0), dim=-1) @ v

    gm = torch.fx.symbolic_trace(Clamp())
    report = sdpa_rewrite.rewrite(gm, example_inputs=qkv())
    assert not report.rewritten and "lies between" in report.sites[0].reason


class ArithmeticMask(nn.Module):
    """openai-gpt's `w * b + c * (1 - b)` and variants that are not a select, so must stay eager."""

    def __init__(self, form: str):
        super().__init__()
        self.form = form
        b = torch.ones(8, 8).tril()
        self.register_buffer("b", b * 0.5 if form == "b not 0/1" else b)

    def forward(self, q, k, v, m=None):
        w = q @ k.transpose(-1, -2) * 0.25
        b = self.b
        if self.form == "-inf before":
            w = w.masked_fill(m, float("-inf"))
        if self.form == "input b":
            b = m.float()
        if self.form == "term minus scores":
            w = -1e4 * (1 - b) - w * b
        elif self.form == "term not c(1-b)":
            w = w * b + -1e4 * (1 - b) * torch.arange(8.0)
        else:
            w = w * b + -1e4 * (1 - b)
        return torch.softmax(w, dim=-1) @ v


@pytest.mark.parametrize("form, rewritten", [
    ("select", True), ("b not 0/1", False), ("term minus scores", False), ("term not c(1-b)", False),
    ("-inf before", False), ("input b", False)])
def test_arithmetic_mask_is_a_select_only_when_exact(form, rewritten):
    """`S·b + c·(1 − b)` is where(b, S, c) only for a 0/1 constant b, a term equal to c·(1 − b), added (not
    subtracted) to S that nothing masked before. Rewritten or not, the numbers equal eager's."""
    model = ArithmeticMask(form)
    q, k, v = qkv()
    m = torch.ones(8, 8).tril() == 0 if form == "-inf before" else (torch.ones(8, 8).tril() > 0)
    args = (q, k, v, m)
    reports = []
    compiled = torch.compile(model, backend="sdpa_rewrite",
                             options={"downstream": "eager", "report": reports.append, "strict": True})
    out, ref = compiled(*args), model(*args)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5, equal_nan=True)
    (site,) = reports[0].sites
    assert site.rewritten == rewritten, str(reports[0])
    if rewritten:
        assert site.causal == "top-left", site.mask
