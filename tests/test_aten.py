"""aten-level graphs: every inference catalog entry traced by make_fx and by torch.export, rewritten in place
by sdpa_rewrite.rewrite(), gives eager's numbers and the entry's SDPA calls. These front ends spell the same
attention with aten ops (make_fx decomposes matmul into expand + bmm + view; export keeps aten.matmul and adds
its own metadata checks), so a spelling the Python-level matcher knows must not be lost, or changed, here."""
import warnings
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
from torch.fx.experimental.proxy_tensor import make_fx

import sdpa_rewrite
from patterns import all_entries, qkv
from support import assert_close_outputs, calls_of, check_calls, keep_mask, masked_attention

ENTRIES = [e for e in all_entries() if not e.training]

# Sites an aten front end leaves eager, with the reason the report gives; the Python front ends match them.
# make_fx decomposes einsum into unsqueeze + permute + bmm, which the matcher does not read back, and puts
# XCiT's temperature after a reshape; export upcasts GPT-2's reordered baddbmm out of the matcher's reach.
MISSES = {
    "make_fx": {"diffusers/ldm_cross_attention_einsum": "not a ·V matmul",
                "diffusers/ldm_cross_attention_einsum_masked": "not a ·V matmul",
                "diffusers/two_successive_scale_factors": "not a ·V matmul",
                "diffusers/q_and_scores_scale_factors": "not a ·V matmul",
                "diffusers/guided_diffusion_qkv_attention_legacy": "not a ·V matmul",
                "diffusers/guided_diffusion_qkv_attention": "not a ·V matmul",
                "diffusers/xcit_learned_temperature": "tensor-valued scale after a reshape",
                "libraries/x_transformers_saved_similarities": "not a ·V matmul",
                "libraries/x_transformers_zero_padded_bias": "not a ·V matmul",
                "libraries/esm_tied_row_attention": "not a ·V matmul",
                "libraries/coca_multi_query_stable_softmax": "not a ·V matmul"},
    "export": {"gpt2/upcast_reordered_baddbmm": "no Q·Kᵀ matmul"},
}
# Sites whose SDPA call from make_fx differs from the Python front ends' in one argument, the numbers exact either
# way: "scale" — the 1/sqrt(d) stays an op on q (make_fx spells q's scaling before its 3-D regroup), or, for
# CodeGen, is known where Dynamo lifts the 0-d `scale_attn` buffer as an input; "gqa" — the repeated K/V are
# passed as they are, without enable_gqa (make_fx regroups them to 3-D, where the un-repeat is not read).
# export gives every rewritten entry the Python front ends' call. Numbers and every other argument are checked.
WEAKER = {
    "make_fx": {"bert/distilbert_mhsa_v4": {"scale"}, "falcon/rotary_multi_query": {"gqa"},
                "gptj/codegen_mask_then_scale": {"scale"}, "gpt_oss/sinks_causal": {"gqa"}, "gpt_oss/sinks_padded": {"gqa"},
                "llama/eager_attention_forward_gqa": {"gqa"},
                "llama/mqa_no_rope": {"gqa"}, "llama/qwen2_sliced_long_mask": {"gqa"},
                "llama/repeat_interleave_gqa": {"gqa"}, "vit/timm_attention": {"scale"}, "vit/mT_key": {"scale"},
                "libraries/whisper_returned_logits": {"scale"}, "libraries/sam_decomposed_rel_pos": {"scale"}},
    "export": {},
}
# A near-miss of the Python front ends that an aten front end rewrites, exactly: make_fx bakes GPT-J's 0-d
# `scale_attn` tensor into the graph as a constant, so the scale that divides the finfo.min fill is known.
REWRITTEN_NEAR_MISSES = {"make_fx": {"gptj/legacy_where_tensor_fill_then_scale"}, "export": set()}


def _trace(front_end: str, model, inputs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if front_end == "make_fx":
            return make_fx(model)(*inputs)
        return torch.export.export(model, inputs).module()


@pytest.mark.parametrize("front_end", ["make_fx", "export"])
@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_aten_graph_of_catalog_entry(entry, front_end):
    model = entry.module().eval()
    inputs = entry.inputs()
    with torch.no_grad():
        ref = model(*inputs)
        gm = _trace(front_end, model, inputs)
        report = sdpa_rewrite.rewrite(gm)
        out = gm(*inputs)
        calls = calls_of(gm, inputs)
    assert_close_outputs(out, ref)
    gm.graph.lint()
    miss = MISSES[front_end].get(entry.name)
    if entry.near_miss and entry.name not in REWRITTEN_NEAR_MISSES[front_end]:
        assert not report.rewritten and calls == [], str(report)
    elif miss is not None:
        assert not report.rewritten and miss in " | ".join(s.reason for s in report.skipped), str(report)
    elif not entry.near_miss:
        assert len(report.rewritten) == len(report.sites) == len(entry.expect), str(report)
        assert len(calls) == len(entry.expect), calls
        weaker = WEAKER[front_end].get(entry.name, set())
        expect = tuple(replace(e, scale=c["scale"] if "scale" in weaker else e.scale,
                               enable_gqa=c["enable_gqa"] if "gqa" in weaker else e.enable_gqa)
                       for e, c in zip(entry.expect, calls))
        check_calls(calls, expect)
        differs = {name for e, c in zip(entry.expect, calls) for name, d in
                   (("scale", abs(c["scale"] - e.scale) > 1e-6 * e.scale), ("gqa", c["enable_gqa"] != e.enable_gqa)) if d}
        assert differs == weaker, (entry.name, differs)      # the list says exactly what differs: keep it true


@pytest.mark.parametrize("tracing_mode", ["real", "fake", "symbolic"])
def test_make_fx_tracing_modes(tracing_mode):
    """make_fx with real, fake and symbolic tensors: the same site, rewritten, exact (symbolic sizes included)."""
    q, k, v = qkv()
    m = keep_mask()
    gm = make_fx(masked_attention, tracing_mode=tracing_mode)(q, k, v, m)
    report = sdpa_rewrite.rewrite(gm)
    assert len(report.sites) == 1 and len(report.rewritten) == 1, str(report)
    gm.graph.lint()
    torch.testing.assert_close(gm(q, k, v, m), masked_attention(q, k, v, m), rtol=1e-5, atol=1e-5)
    if tracing_mode == "symbolic":
        q2, k2, v2 = qkv(b=3, l=6, seed=1)
        m2 = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(4)) > 0.3
        torch.testing.assert_close(gm(q2, k2, v2, m2), masked_attention(q2, k2, v2, m2), rtol=1e-5, atol=1e-5)


def _bmm_attention(q, k, v):
    b, h, l, e = q.shape
    s = torch.bmm(q.reshape(b * h, l, e), k.reshape(b * h, l, e).transpose(1, 2)) * 0.25
    return torch.bmm(torch.softmax(s, -1), v.reshape(b * h, l, e)).view(b, h, l, e)


def _one_sequence_attention(q, k, v):
    keep = torch.ones(8, 8, dtype=torch.bool).tril()
    return torch.softmax((q[0, 0] @ k[0, 0].transpose(-2, -1) * 0.25).masked_fill(~keep, -1e9), -1) @ v[0, 0]


@pytest.mark.parametrize("attn", [_bmm_attention, _one_sequence_attention], ids=["3-D", "2-D"])
def test_three_d_site_runs_four_d_for_the_fused_kernels(attn):
    """A (B·H, L, E) site (bmm spellings, every make_fx matmul) reaches SDPA as (B·H, 1, L, E), and an (L, E)
    site (one sequence, one head) as (1, 1, L, E): the fused kernels take 4-D inputs only, and a 3-D or 2-D call
    runs the math kernel. The CPU's flash kernel is chosen."""
    q, k, v = qkv()
    gm = torch.fx.symbolic_trace(attn)
    sdpa_rewrite.rewrite(gm, example_inputs=(q, k, v))
    seen = []

    class Spy(torch.fx.Interpreter):
        def call_function(self, target, args, kwargs):
            if target is torch.nn.functional.scaled_dot_product_attention:
                seen.append(int(torch._fused_sdp_choice(*args[:3], **kwargs)))
                assert all(t.dim() == 4 for t in args[:3]), [t.shape for t in args[:3]]
            return super().call_function(target, args, kwargs)

    out = Spy(gm).run(q, k, v)
    assert seen == [1]                                        # SDPBackend.FLASH_ATTENTION on the CPU
    torch.testing.assert_close(out, attn(q, k, v), rtol=1e-5, atol=1e-5)


class WrittenMask(nn.Module):
    """A mask built by writes into a tensor, spelled as aten in-place ops and views by make_fx and export: the
    fold must run the writes (a mask read as the zeros or ones it started as would be a wrong result)."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how

    def forward(self, q, k, v):
        n, m = q.size(-2), k.size(-2)
        if self.how == "setitem":
            mask = torch.zeros(n, m)
            mask[:, 1] = float("-inf")
        elif self.how == "fill_through_view":
            mask = torch.zeros(n, m)
            mask.view(-1)[3:9].fill_(float("-inf"))
        elif self.how == "and_through_alias":
            keep = torch.ones(n, m, dtype=torch.bool).tril()
            alias = keep[:, :]
            alias &= torch.arange(m) % 2 == 0
            alias |= torch.eye(n, m, dtype=torch.bool)
            mask = torch.zeros(n, m).masked_fill(~keep, float("-inf"))
        else:                                                  # masked_fill_: the causal mask, written in place
            mask = torch.zeros(n, m)
            mask.masked_fill_(torch.ones(n, m, dtype=torch.bool).triu(1), float("-inf"))
        return torch.softmax(q @ k.transpose(-1, -2) * 0.25 + mask, -1) @ v


@pytest.mark.parametrize("front_end", ["make_fx", "export"])
@pytest.mark.parametrize("how, verdict", [("setitem", "constant mask"), ("fill_through_view", "constant mask"),
                                          ("and_through_alias", "constant mask"), ("masked_fill_", "causal")])
def test_masks_written_in_place_by_aten_ops(how, verdict, front_end):
    model = WrittenMask(how)
    q, k, v = qkv()
    gm = _trace(front_end, model, (q, k, v))
    report = sdpa_rewrite.rewrite(gm)
    assert len(report.rewritten) == 1 and report.sites[0].mask.startswith(verdict), str(report)
    torch.testing.assert_close(gm(q, k, v), model(q, k, v), rtol=1e-5, atol=1e-5)


def test_safe_softmax_is_a_softmax_and_unknown_softmaxes_are_reported():
    """aten._safe_softmax (SDPA's own math decomposition) gives 0 on rows of -inf alone, as the rewrite does: it is
    read as a softmax. A softmax the vocabulary does not know (aten._masked_softmax) is a skipped row with its name."""

    def safe(q, k, v, keep):
        s = (q @ k.transpose(-1, -2) * 0.25).masked_fill(~keep, float("-inf"))
        return torch.ops.aten._safe_softmax.default(s, -1) @ v

    def masked(q, k, v, keep):
        return torch.ops.aten._masked_softmax(q @ k.transpose(-1, -2), ~keep, -1, 0) @ v

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 8, 16, generator=g) for _ in range(3))
    keep = torch.rand(2, 1, 8, 8, generator=g) > 0.3
    keep[0, 0, 2] = False                                 # a row with no visible key: 0 in both
    gm = make_fx(safe)(q, k, v, keep)
    want = safe(q, k, v, keep)
    report = sdpa_rewrite.rewrite(gm)
    assert len(report.rewritten) == 1, report
    torch.testing.assert_close(gm(q, k, v, keep), want, rtol=0, atol=1e-5)
    report = sdpa_rewrite.rewrite(make_fx(masked)(q, k, v, keep.expand(2, 4, 8, 8)))
    (site,) = report.sites
    assert site.status == "skipped" and "_masked_softmax" in site.reason, report


def test_an_aten_packet_reads_like_its_overload():
    """Every ATen overload the vocabulary knows is read the same when called as its packet (`aten._safe_softmax(x, -1)`
    in Inductor's fuse_attention patterns 29 and 30); `aten.max` reads like `torch.max`, told apart by its arguments."""
    from sdpa_rewrite.view import _FUNCTIONS

    overloads = [t for t in _FUNCTIONS if isinstance(t, torch._ops.OpOverload)]
    for op in overloads:
        packet = op.overloadpacket
        assert packet in _FUNCTIONS, packet
        if packet is not torch.ops.aten.max:
            assert _FUNCTIONS[packet] == _FUNCTIONS[op], (packet, op)

    def spelled(s, v):
        return torch.ops.aten._safe_softmax(s - torch.ops.aten.max(s, -1, True)[0], -1) @ v   # a row shift

    q, k, v = qkv()
    gm = torch.fx.symbolic_trace(lambda q, k, v: spelled(q @ k.transpose(-1, -2) * 0.25, v))
    report = sdpa_rewrite.rewrite(gm, example_inputs=(q, k, v))
    assert len(report.rewritten) == 1, str(report)
    torch.testing.assert_close(gm(q, k, v), spelled(q @ k.transpose(-1, -2) * 0.25, v), rtol=1e-5, atol=1e-5)


class _SizedCausal(nn.Module):
    """A causal mask built from the input's length, as tril, as an arange comparison, or as transformers v5 builds
    it: position ids gathered per batch row and per query / key index, with its packed-sequence check (export spells
    the gathers `aten.index` and the first position's slice `aten.slice`)."""

    def __init__(self, spelling: str):
        super().__init__()
        self.qkv, self.spelling = nn.Linear(16, 48), spelling

    def forward(self, x):
        B, L, _ = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, 2, 8).permute(2, 0, 3, 1, 4)
        if self.spelling == "tril":
            keep = torch.ones(L, L, dtype=torch.bool).tril()
        elif self.spelling == "positions":
            pos = torch.arange(L).unsqueeze(0).expand(B, -1)
            packed = (torch.diff(pos, dim=-1, prepend=pos[:, :1] - 1) != 1).cumsum(-1)
            b, qi, ki = torch.arange(B)[:, None, None], torch.arange(L)[None, :, None], torch.arange(L)[None, None, :]
            keep = ((pos[b, ki] <= pos[b, qi]) & (packed[b, qi] == packed[b, ki]))[:, None]
        else:
            i = torch.arange(L)
            keep = i[:, None] >= i[None, :]
        w = (q @ k.transpose(-1, -2) / 8 ** 0.5).masked_fill(~keep, float("-inf")).softmax(-1)
        return (w @ v).transpose(1, 2).reshape(B, L, 16)


@pytest.mark.parametrize("spelling", ["tril", "arange", "positions"])
def test_export_with_dynamic_shapes_reads_sizes_through_aten_sym_size(spelling):
    """With the batch and length dynamic, export reads the length through `aten.sym_size.int`: a metadata read,
    so the mask is proven causal for every size and SDPA gets is_causal, at any other size too. (make_fx's symbolic
    tracing regroups the scores to 3-D first, where the mask is not folded: a known miss.)"""
    model = _SizedCausal(spelling).eval()
    x = torch.randn(2, 8, 16)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        dims = {0: torch.export.Dim("b", min=1, max=64), 1: torch.export.Dim("s", min=2, max=512)}
        gm = torch.export.export(model, (x,), dynamic_shapes={"x": dims}).module()
        report = sdpa_rewrite.rewrite(gm)
        assert len(report.rewritten) == 1 and report.rewritten[0].mask == "causal (top-left, proven for every size)", \
            str(report)
        other = torch.randn(3, 11, 16)
        assert_close_outputs(gm(other), model(other))
        assert [c["is_causal"] for c in calls_of(gm, [other])] == [True]
