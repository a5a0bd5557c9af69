"""The FlexAttention target and attention sinks: block masks, the sink correction, and tiny transformers models with
soft-capping, sinks and sliding windows (Gemma 2, gpt-oss, Mistral, Cohere 2) through the backend on the CPU."""
import math
import warnings

import pytest
import torch

import sdpa_rewrite
from sdpa_rewrite.flex import band, band_block_mask, flex_attention_site
from sdpa_rewrite.sinks import with_sink_keys
from support import assert_close_outputs, compile_and_record, sdpa_calls_of

transformers = pytest.importorskip("transformers")
flex_attention = pytest.importorskip("torch.nn.attention.flex_attention")

warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
torch.fx.wrap("flex_attention_site")          # a leaf of symbolic_trace, as the rewrite's graphs call it


def _dense_band(L, S, lo, hi):
    d = torch.arange(L)[:, None] - torch.arange(S)[None, :]
    keep = d >= lo
    return keep & (d <= hi) if hi is not None else keep


@pytest.mark.parametrize("L,S,causal,window", [
    (256, 256, "top-left", None), (300, 500, "lower-right", None), (130, 130, "", (64, False)),
    (200, 520, "", (100, True)), (1024, 1024, "", (128, False)), (64, 64, "top-left", None)])
def test_band_block_mask_matches_the_dense_band(L, S, causal, window):
    """The BlockMask built from the block grid says exactly the band: its dense form (partial blocks through the
    mask_mod) equals the position-wise band, and each block is full / partial / empty as create_block_mask says."""
    lo, hi = band(L, S, causal, window)
    built = band_block_mask(L, S, lo, hi, torch.device("cpu"))
    mask_mod = built.mask_mod
    reference = flex_attention.create_block_mask(mask_mod, None, None, L, S, device="cpu")
    want = _dense_band(L, S, lo, hi)
    assert torch.equal(flex_attention.create_mask(mask_mod, 1, 1, L, S, device="cpu")[0, 0], want)
    if L % 128 == 0 and S % 128 == 0:    # create_block_mask counts blocks that reach past L or S as partial
        for ours, theirs in ((built.kv_num_blocks, reference.kv_num_blocks),
                             (built.full_kv_num_blocks, reference.full_kv_num_blocks)):
            assert torch.equal(ours.flatten(), theirs.flatten())
    q, k, v = (torch.randn(1, 2, n, 16, generator=torch.Generator().manual_seed(n)) for n in (L, S, S))
    out = flex_attention.flex_attention(q, k, v, block_mask=built, scale=0.25)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=want, scale=0.25)
    assert_close_outputs(out, ref)


@pytest.mark.parametrize("with_mask", [False, True])
def test_sink_correction_from_the_log_sum_exp(with_mask):
    """flex + sigmoid(lse − logsumexp(sinks)) and SDPA with zero sink keys both equal eager's cat-softmax-slice,
    rows with every key masked included (eager: all weight on the sinks, output 0)."""
    g = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(2, 4, 12, 16, generator=g), torch.randn(2, 2, 12, 16, generator=g), \
        torch.randn(2, 2, 12, 16, generator=g)
    sink = torch.randn(4, 2, generator=g)[None, :, None, :].expand(2, 4, 12, 2)
    keep = torch.ones(2, 1, 12, 12, dtype=torch.bool).tril()
    if with_mask:
        keep[1, :, :, :5] = False                            # left padding: rows 0-4 of batch 1 see no key
    scores = (q @ k.repeat_interleave(2, 1).transpose(-1, -2)) * 0.25
    scores = scores.masked_fill(~keep, -math.inf)
    weights = torch.cat([scores, sink], -1).softmax(-1)[..., :-2]
    ref = weights @ v.repeat_interleave(2, 1)
    with torch.no_grad():
        out = flex_attention_site(q, k, v, mask=keep, sink=sink, scale=0.25, enable_gqa=True)
        assert_close_outputs(out, ref)
        k2, v2, mask2 = with_sink_keys(k, v, keep, sink, "", torch.float32)
        out2 = torch.nn.functional.scaled_dot_product_attention(q, k2, v2, attn_mask=mask2, scale=0.25,
                                                                enable_gqa=True)
        assert_close_outputs(out2, ref)
        k3, v3, mask3 = with_sink_keys(k, v, None, sink, "top-left", torch.float32)
        if not with_mask:
            out3 = torch.nn.functional.scaled_dot_product_attention(q, k3, v3, attn_mask=mask3, scale=0.25,
                                                                    enable_gqa=True)
            assert_close_outputs(out3, ref)


def gemma2():
    cfg = transformers.Gemma2Config(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                    head_dim=16, intermediate_size=128, vocab_size=128, sliding_window=6,
                                    attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                                    attn_implementation="eager")
    return transformers.Gemma2ForCausalLM(cfg).eval()


def gpt_oss():
    cfg = transformers.GptOssConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                    head_dim=16, intermediate_size=64, vocab_size=128, sliding_window=6,
                                    num_local_experts=4, num_experts_per_tok=2, attn_implementation="eager")
    return transformers.GptOssForCausalLM(cfg).eval()


def mistral():
    cfg = transformers.MistralConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                     intermediate_size=128, vocab_size=128, sliding_window=6,
                                     attn_implementation="eager")
    return transformers.MistralForCausalLM(cfg).eval()


def cohere2():
    cfg = transformers.Cohere2Config(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                     intermediate_size=128, vocab_size=128, sliding_window=6,
                                     attn_implementation="eager")
    return transformers.Cohere2ForCausalLM(cfg).eval()


MODELS = {"gemma2": gemma2, "gpt_oss": gpt_oss, "mistral": mistral, "cohere2": cohere2}
# what each site calls on the CPU without gradients: soft-capping needs flex; sinks and windows stay on SDPA
CPU_TARGETS = {"gemma2": "flex", "gpt_oss": "sdpa", "mistral": "sdpa", "cohere2": "sdpa"}


def _attention_sites(reports):
    return [s for r in reports for s in r.sites if "router" not in s.location]


def _ids_and_mask(padded):
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 16, dtype=torch.long)
    if padded:
        mask[0, :5] = 0
    return ids, mask


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
@pytest.mark.parametrize("name", list(MODELS))
def test_every_site_rewritten_and_equal(name, padded):
    """Inference on the CPU: every attention site rewritten, to flex where SDPA cannot say it, numbers equal eager
    (padding queries' rows included: eager's answer there is kept)."""
    torch.manual_seed(0)
    model = MODELS[name]()
    ids, mask = _ids_and_mask(padded)
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
        out, reports, graphs = compile_and_record(model, (ids,), {"attention_mask": mask})
    sites = _attention_sites(reports)
    assert len(sites) == 2 and all(s.rewritten for s in sites), "\n".join(map(str, reports))
    assert {s.target for s in sites} == {CPU_TARGETS[name]}, "\n".join(map(str, reports))
    assert_close_outputs(out.logits, ref)
    if name == "gemma2":
        calls = sdpa_calls_of(graphs)
        assert calls and all(c["target"] == "flex" and c["cap"] == 50.0 for c in calls), calls


def test_sliding_window_verdict_in_the_report():
    """Mistral's window built in the graph at S > window is proven a sliding window (width 6); on the CPU it stays a
    dense SDPA mask, and the report says flex takes it on CUDA."""
    model = mistral()
    ids, mask = _ids_and_mask(False)
    with torch.no_grad():
        _, reports, _ = compile_and_record(model, (ids,))
    sites = _attention_sites(reports)
    assert all(s.mask.startswith("sliding window (width 6)") for s in sites), [s.mask for s in sites]
    assert all("CUDA" in s.target_reason for s in sites)


@pytest.mark.parametrize("name", ["gemma2", "gpt_oss"])
def test_cpu_training(name):
    """With gradients on the CPU: soft-capped sites stay eager with the reason (flex has no CPU backward), sinks go
    to SDPA with sink keys; loss and gradients equal eager."""
    torch.manual_seed(0)
    model = MODELS[name]()
    reference = MODELS[name]()
    reference.load_state_dict(model.state_dict())
    ids, mask = _ids_and_mask(True)
    out, reports, _ = compile_and_record(model, (ids,), {"attention_mask": mask, "labels": ids})
    ref = reference(ids, attention_mask=mask, labels=ids)
    sites = _attention_sites(reports)
    if name == "gemma2":
        assert sites and not any(s.rewritten for s in sites)
        assert all("no backward on the CPU" in s.reason for s in sites), [s.reason for s in sites]
    else:
        assert sites and all(s.rewritten and s.target == "sdpa" for s in sites)
    assert_close_outputs(out.loss, ref.loss)
    out.loss.backward()
    ref.loss.backward()
    for (n, p), (_, r) in zip(model.named_parameters(), reference.named_parameters()):
        if r.grad is not None:
            assert_close_outputs(p.grad, r.grad, tol=1e-4, floor=1e-3)


def test_flex_off_keeps_soft_capping_eager():
    model = gemma2()
    ids, _ = _ids_and_mask(False)
    with torch.no_grad():
        _, reports, _ = compile_and_record(model, (ids,), flex=False)
    sites = _attention_sites(reports)
    assert sites and not any(s.rewritten for s in sites)
    assert all("options={'flex': False}" in s.reason for s in sites)


@pytest.mark.slow
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
def test_inductor_cpu_forward(padded):
    """Inductor compiles the flex sites for the CPU (forward): same numbers as eager, a padded mask computed in the
    graph included (the score_mod reads it through `laid_out`, whose layout Inductor's flex lowering accepts)."""
    torch.manual_seed(0)
    model = gemma2()
    ids, mask = _ids_and_mask(padded)
    reports = []
    kwargs = {"attention_mask": mask} if padded else {}          # unpadded: the causal mask folds in the graph
    with torch.no_grad():
        ref = model(ids, **kwargs).logits
        compiled = torch.compile(model, backend="sdpa_rewrite", options={"report": reports.append, "strict": True})
        out = compiled(ids, **kwargs).logits
    sites = _attention_sites(reports)
    assert sites and all(s.rewritten and s.target == "flex" for s in sites), reports
    if not padded:
        assert all(s.mask.endswith("BlockMask") for s in sites), reports
    assert_close_outputs(out, ref, tol=1e-4)


class _TwoKeyLengths(torch.nn.Module):
    """Two soft-capped sites whose masks (graph inputs) differ in key length, as a decode step's sliding-window and
    full layers do with a static cache."""

    def forward(self, q, k1, v1, m1, k2, v2, m2):
        return (flex_attention_site(q, k1, v1, m1, scale=0.25, cap=50.0),
                flex_attention_site(q, k2, v2, m2, scale=0.25, cap=50.0))


@pytest.mark.slow
def test_flex_sites_of_different_key_lengths_compile_with_inductor():
    """flex_attention, traced outside Dynamo, compiles its wrapper with Dynamo: the second site's other mask shape
    must not make a size symbolic there (Inductor then fails: a score_mod subgraph that takes a size)."""
    from torch._inductor.compile_fx import compile_fx

    gm = torch.fx.symbolic_trace(_TwoKeyLengths())
    g = torch.Generator().manual_seed(0)
    q, k1, v1, k2, v2 = (torch.randn(1, 4, n, 16, generator=g) for n in (1, 8, 8, 23, 23))
    m1, m2 = torch.zeros(1, 1, 1, 8), torch.zeros(1, 1, 1, 23)
    m1[..., :2], m2[..., 5:] = -1e9, -1e9
    args = [q, k1, v1, m1, k2, v2, m2]
    out = compile_fx(gm, args)(*args)
    for got, want in zip(out, _TwoKeyLengths()(*args)):
        assert_close_outputs(got, want, tol=1e-5)


def test_band_tile_lists_reach_the_compiler_without_a_sort():
    """The band's tile lists, the q lists the backward reads among them, reach the downstream compiler as plain
    tensor ops with no sort: a traced argsort became a Triton sort network whose compile time grew with the
    sequence length, and an opaque op cost its launches at run time."""
    from torch._functorch.aot_autograd import aot_module_simplified

    graphs = []

    def downstream(gm, example_inputs):
        def keep(graph, _):
            graphs.append(graph)
            return graph
        return aot_module_simplified(gm, example_inputs, fw_compiler=keep)

    torch.manual_seed(0)
    model = gemma2()
    ids, _ = _ids_and_mask(False)
    reports = []
    with torch.no_grad():
        out = torch.compile(model, backend="sdpa_rewrite",
                            options={"downstream": downstream, "report": reports.append})(ids).logits
        assert_close_outputs(out, model(ids).logits)
    targets = [str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    assert "aten.cumsum.default" in targets
    assert not [t for t in targets if "sort" in t or "band_tiles" in t], targets


@pytest.mark.parametrize("width", [1, 5, 64, 300])
def test_tile_order_is_a_stable_descending_argsort(width):
    """`_ordered` lays out a grid's kept tiles as from_kv_blocks does (a stable descending argsort), without one."""
    from sdpa_rewrite.flex import _ordered

    grid = torch.rand(3, 2, 7, width, generator=torch.Generator().manual_seed(width)) > 0.6
    count, order = _ordered(grid)
    assert torch.equal(count, grid.sum(-1).to(torch.int32))
    assert torch.equal(order, torch.argsort(grid.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32))
    count_t, order_t = _ordered(grid.mT)
    assert order_t.is_contiguous() and count_t.is_contiguous()


@pytest.mark.parametrize("op, args", [
    ("visible_tiles", (torch.rand(2, 1, 300, 520) > 0.3, 300, 520, True)),
    ("visible_tiles", (torch.rand(1, 1, 256, 384) - 0.5, 256, 384, False)),
    ("laid_out", (torch.rand(2, 1, 8, 8).mT,)),
])
def test_opaque_ops_fake_implementations_match_their_outputs(op, args):
    """Each opaque op's fake says the shapes, dtypes and strides its outputs really have: Inductor asserts them
    where an output is read (a transposed grid's argsort once broke flex's compiled backward on the GPU)."""
    torch.library.opcheck(getattr(torch.ops.sdpa_rewrite, op).default, args)


@pytest.mark.parametrize("build", ["band", "dense per row"])
def test_block_mask_q_lists_are_the_transposed_kv_lists(build):
    """The q lists the tile lists hand over are exactly what BlockMask.from_kv_blocks derives from the kv lists
    (tail tiles and per-row masks included)."""
    from torch.nn.attention.flex_attention import BlockMask

    from sdpa_rewrite.flex import dense_block_mask

    if build == "band":
        built = band_block_mask(300, 500, -200, None, torch.device("cpu"))
    else:
        keep = torch.rand(3, 1, 300, 420, generator=torch.Generator().manual_seed(0)) > 0.7
        built = dense_block_mask(keep, 300, 420, per_row=True)
    derived = BlockMask.from_kv_blocks(built.kv_num_blocks, built.kv_indices, built.full_kv_num_blocks,
                                       built.full_kv_indices, BLOCK_SIZE=128, seq_lengths=built.seq_lengths)
    for name in ("q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices"):
        assert torch.equal(getattr(built, name), getattr(derived, name)), name


@pytest.mark.parametrize("downstream", ["eager", "aot_eager"])
def test_dynamic_shapes(downstream):
    """dynamic=True: one graph for every length. The soft-cap read from a module attribute becomes a symbolic
    scalar and is computed in the graph; a causal band is proven for every size and stays a BlockMask; a window
    built from symbolic sizes is not folded and reaches the score_mod as a mask. Numbers equal eager at each size."""
    from patterns.gemma2 import Gemma2SlidingLayer, GrokCap

    for build, mask in ((Gemma2SlidingLayer, "-> additive"), (GrokCap, "-> BlockMask")):
        torch._dynamo.reset()
        model = build().eval()
        reports = []
        compiled = torch.compile(model, backend="sdpa_rewrite", dynamic=True,
                                 options={"downstream": downstream, "report": reports.append, "strict": True})
        with torch.no_grad():
            for length in (12, 20, 33):
                x = torch.randn(2, length, 64, generator=torch.Generator().manual_seed(length))
                assert_close_outputs(compiled(x), model(x))
        assert len(reports) == 1, "one graph for every length"
        site = reports[0].sites[0]
        assert site.target == "flex" and mask in site.mask and "tanh" in site.scale_source, reports[0]


def test_head_dims_flex_kernels_are_not_sure_of_stay_off_flex():
    """Under a compiled flex kernel (here Inductor on the CPU) a head dim that is not a power of two from 16 to 256
    keeps the soft-capped site eager, with the reason; eager flex (downstream eager) takes any head dim."""
    from patterns.gemma2 import GrokCap

    model = GrokCap()
    model.heads, model.head_dim = 8, 8                     # dim 64 over 8 heads: head dim 8
    x = torch.randn(2, 8, 64, generator=torch.Generator().manual_seed(3))
    reports = []
    with torch.no_grad():
        ref = model(x)
        out = torch.compile(model, backend="sdpa_rewrite", options={"report": reports.append})(x)
        assert_close_outputs(out, ref)
        site = reports[0].sites[0]
        assert not site.rewritten and "head dims 8/8" in site.reason, reports[0]
        torch._dynamo.reset()
        _, eager_reports, _ = compile_and_record(model, (x,))
    assert eager_reports[0].sites[0].target == "flex"


# --- a dense mask (a padded batch) on flex: a BlockMask of the mask's visible tiles --------------------------------

def _padded_causal(B, L, S, left, right):
    """(B, 1, L, S) keep-mask: causal (lower-right), batch 1 left-padded, batch 2 right-padded."""
    keep = torch.ones(B, 1, L, S, dtype=torch.bool).tril(S - L)
    keep[1, :, :, :left] = False                              # its first `left` query rows see no key
    keep[2, :, :, S - right:] = False
    return keep


@pytest.mark.parametrize("L,S", [(256, 256), (384, 384), (300, 300), (200, 330)])
@pytest.mark.parametrize("form", ["bool", "finfo.min", "-inf"])
def test_dense_block_mask_skips_hidden_tiles(L, S, form):
    """The BlockMask built from a dense mask lists exactly the tiles that some batch row sees (a bool True, a
    float above -MASKING), full where every row sees the whole tile (bool); flex with it equals SDPA with the dense
    mask, rows that see no key aside (SDPA: NaN on -inf, uniform on finfo.min; the rewrite handles those rows
    before the call, emit.py)."""
    from sdpa_rewrite.flex import dense_block_mask

    keep = _padded_causal(3, L, S, left=150, right=140)
    mask = keep if form == "bool" else torch.where(keep, 0.0, torch.finfo(torch.float32).min
                                                   if form == "finfo.min" else -math.inf)
    built = dense_block_mask(mask, L, S)
    nq, nk = -(-L // 128), -(-S // 128)
    padded = torch.nn.functional.pad(keep, (0, nk * 128 - S, 0, nq * 128 - L))
    tiles = padded.reshape(3, 1, nq, 128, nk, 128)
    kept = built.kv_num_blocks + built.full_kv_num_blocks
    assert kept.shape == (1, 1, nq)
    assert torch.equal(kept[0, 0], tiles.any(-1).any(-2).any(0).any(0).sum(-1).int())
    assert torch.equal(built.to_dense()[0, 0].bool(), tiles.any(-1).any(-2).any(0).any(0))   # which tiles, too
    if L == S:
        assert bool((kept < nk).any()), "the causal triangle hides whole tiles"
    if form == "bool":
        assert torch.equal(built.full_kv_num_blocks[0, 0], tiles.all(-1).all(-2).all(0).all(0).sum(-1).int())
    g = torch.Generator().manual_seed(L + S)
    q, k, v = (torch.randn(3, 2, n, 16, generator=g) for n in (L, S, S))
    with torch.no_grad():
        out = flex_attention_site(q, k, v, None if form == "bool" else mask, None, built, scale=0.25)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.25)
    seen = keep.any(-1, keepdim=True)
    assert_close_outputs(torch.where(seen, out, 0.0), torch.where(seen, ref, 0.0))


def test_dense_block_mask_skips_padding_every_row_shares():
    """Key tiles hidden from every batch row (padding common to the batch) are skipped too."""
    from sdpa_rewrite.flex import dense_block_mask

    keep = torch.ones(2, 1, 256, 512, dtype=torch.bool)
    keep[:, :, :, 384:] = False
    keep[1, :, :, :200] = False
    built = dense_block_mask(keep, 256, 512)
    assert (built.kv_num_blocks + built.full_kv_num_blocks).flatten().tolist() == [3, 3]
    assert built.full_kv_num_blocks.flatten().tolist() == [1, 1]     # tiles 0 and 1 are partial: row 1 pads them


def test_dense_block_mask_per_row_skips_each_rows_padding():
    """per_row=True lists, for every batch row, the tiles that row sees: its own padding is skipped too, and flex
    with it equals SDPA on the rows that see a key."""
    from sdpa_rewrite.flex import dense_block_mask

    keep = _padded_causal(3, 300, 300, left=150, right=140)
    built = dense_block_mask(keep, 300, 300, per_row=True)
    tiles = torch.nn.functional.pad(keep, (0, 84, 0, 84)).reshape(3, 1, 3, 128, 3, 128)
    assert built.kv_num_blocks.shape == (3, 1, 3)
    assert torch.equal(built.to_dense().bool(), tiles.any(-1).any(-2))
    assert torch.equal(built.full_kv_num_blocks, tiles.all(-1).all(-2).sum(-1).int())
    assert (built.to_dense()[1] < built.to_dense()[0]).any(), "row 1's left padding hides tiles row 0 sees"
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 300, 16, generator=g) for _ in range(3))
    with torch.no_grad():
        out = torch.compile(flex_attention_site)(q, k, v, None, None, built, scale=0.25)   # compiled: honours skips
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=0.25)
    seen = keep.any(-1, keepdim=True)
    assert_close_outputs(torch.where(seen, out, 0.0), torch.where(seen, ref, 0.0))


def _cpu_as_fast(monkeypatch):
    """Plan as on CUDA (flex for speed) on this CPU, with short sequences counting as long."""
    import sdpa_rewrite.plan as plan

    monkeypatch.setattr(plan, "DENSE_FLEX_MIN", 8)
    return plan.Conditions(fast_on=("cuda", "cpu"), may_train=False)


def _rewriting(conditions, reports, graphs, downstream=None):
    """A backend that rewrites under `conditions`, keeps each report and graph, and runs the graph eagerly (or
    compiled by `downstream`)."""
    def backend(gm, example_inputs):
        reports.append(sdpa_rewrite.rewrite(gm, conditions=conditions))
        graphs.append((gm, example_inputs))
        return gm.forward if downstream is None else downstream(gm, example_inputs)
    return backend


def _padded_llama():
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=128, vocab_size=128, head_dim=16, attn_implementation="eager")
    return transformers.LlamaForCausalLM(cfg).eval()


def _padded_gpt2():
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128, attn_implementation="eager")
    return transformers.GPT2LMHeadModel(cfg).eval()


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("build", [_padded_llama, _padded_gpt2], ids=["llama", "gpt2"])
def test_padded_batch_on_flex_whole_model(monkeypatch, build, side):
    """A padded batch's mask (computed in the graph from attention_mask) on a device where flex is chosen for speed:
    every site calls flex with a BlockMask built from the mask, numbers equal eager, padding rows included."""
    when = _cpu_as_fast(monkeypatch)
    torch.manual_seed(0)
    model = build()
    ids = torch.randint(0, 128, (3, 40), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 40, dtype=torch.long)
    mask[1, :13] = 0 if side == "left" else 1
    mask[2, 29:] = 0 if side == "right" else 1
    mask[1, 29:] = 0 if side == "right" else 1
    reports, graphs = [], []
    torch._dynamo.reset()
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
        out = torch.compile(model, backend=_rewriting(when, reports, graphs))(ids, attention_mask=mask).logits
    sites = _attention_sites(reports)
    assert len(sites) == 2 and all(s.rewritten and s.target == "flex" for s in sites), "\n".join(map(str, reports))
    assert all("BlockMask of its visible tiles" in s.mask for s in sites), [s.mask for s in sites]
    calls = sdpa_calls_of(graphs)
    assert len(calls) == 2 and all(c["target"] == "flex" and c["block_mask"] for c in calls), calls
    from sdpa_rewrite.flex import dense_block_mask
    built = [n for gm, _ in graphs for n in gm.graph.nodes if n.target is dense_block_mask]
    assert len(built) == len(graphs), "the layers reading one mask share one BlockMask"
    assert_close_outputs(out, ref)


def test_padded_batch_on_flex_each_layer_compiled_alone(monkeypatch):
    """Regional compilation: the mask reaches each layer's graph as an input and flex still reads it exactly."""
    when = _cpu_as_fast(monkeypatch)
    torch.manual_seed(0)
    model = _padded_llama()
    ids = torch.randint(0, 128, (2, 40), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, :17] = 0
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
    reports, graphs = [], []
    torch._dynamo.reset()
    for layer in model.model.layers:
        layer.compile(backend=_rewriting(when, reports, graphs))
    with torch.no_grad():
        out = model(ids, attention_mask=mask).logits
    sites = _attention_sites(reports)
    assert sites and all(s.target == "flex" and s.mask.startswith("input mask") for s in sites), reports
    assert_close_outputs(out, ref)


@pytest.mark.slow
@pytest.mark.parametrize("per_row", [False, True], ids=["union", "per-row"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_on_flex_under_inductor(monkeypatch, side, per_row):
    """The same under Inductor's CPU flex kernel, which (unlike eager flex) skips the tiles the BlockMask leaves out:
    L = S = 300 is three tiles a side, padding hides whole tiles of the batch (or, per row, of each row), and the
    numbers still equal eager."""
    from torch._inductor.compile_fx import compile_fx

    import sdpa_rewrite.plan as plan
    from sdpa_rewrite.flex import dense_block_mask

    monkeypatch.setattr(plan, "DENSE_FLEX_MIN", 8)
    monkeypatch.setattr(plan, "DENSE_FLEX_PER_ROW", per_row)
    when = plan.Conditions(fast_on=("cuda", "cpu"), cpu_inductor=True, may_train=False)
    reports, graphs = [], []
    backend = _rewriting(when, reports, graphs, downstream=compile_fx)

    torch.manual_seed(0)
    model = _padded_llama()
    ids = torch.randint(0, 128, (2, 300), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 300, dtype=torch.long)
    if side == "left":
        mask[:, :140] = 0                                   # every row: key tile 0 is padding alone
        mask[1, :260] = 0                                   # row 1 alone: key tile 1 too
    else:
        mask[:, 256:] = 0                                   # every row: key tile 2 is padding alone
        mask[0, 128:] = 0                                   # row 0 alone: key tile 1 too
    torch._dynamo.reset()
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
        out = torch.compile(model, backend=backend)(ids, attention_mask=mask).logits
    sites = _attention_sites(reports)
    assert len(sites) == 2 and all(s.target == "flex" and "BlockMask" in s.mask for s in sites), reports
    built = [n.args for gm, _ in graphs for n in gm.graph.nodes if n.target is dense_block_mask]
    assert built and all(args[-1] is per_row for args in built), built
    assert_close_outputs(out, ref, tol=1e-4)


def test_chunked_attention_on_flex_skips_the_other_chunks(monkeypatch):
    """Llama 4's chunked attention is neither causal nor a window: a constant mask. Where flex is chosen for speed
    its BlockMask keeps only the diagonal tiles of 128-key chunks, and Inductor's CPU flex kernel (which honours the
    skips) gives eager's numbers."""
    from torch._inductor.compile_fx import compile_fx

    import sdpa_rewrite.plan as plan
    from patterns.masks import ChunkedCausal
    from sdpa_rewrite.flex import dense_block_mask

    monkeypatch.setattr(plan, "DENSE_FLEX_MIN", 8)
    when = plan.Conditions(fast_on=("cuda", "cpu"), cpu_inductor=True, may_train=False)
    reports = []
    backend = _rewriting(when, reports, [], downstream=compile_fx)
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, 384, 16, generator=g) for _ in range(3))
    module = ChunkedCausal(chunk_size=128).eval()
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(module, backend=backend)(q, k, v)
    sites = _attention_sites(reports)
    assert len(sites) == 1 and sites[0].target == "flex" and "BlockMask" in sites[0].mask, reports
    keep = torch.ones(384, 384, dtype=torch.bool).tril()
    keep &= (torch.arange(384)[:, None] // 128) == (torch.arange(384)[None, :] // 128)
    blocks = dense_block_mask(keep, 384, 384).to_dense()[0, 0]
    assert torch.equal(blocks.bool(), torch.eye(3, dtype=torch.bool)), blocks
    assert_close_outputs(out, module(q, k, v), tol=1e-4)


def test_dense_mask_stays_on_sdpa_where_flex_is_not_chosen():
    """On the CPU (flex not measured faster there), or short, or with dropout that may drop: SDPA reads the mask."""
    import sdpa_rewrite.plan as plan

    torch.manual_seed(0)
    model = _padded_llama()
    ids = torch.randint(0, 128, (2, 40), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, :17] = 0
    for when in (plan.Conditions(may_train=False), plan.Conditions(fast_on=("cuda", "cpu"), may_train=False)):
        reports, graphs = [], []
        torch._dynamo.reset()
        with torch.no_grad():
            torch.compile(model, backend=_rewriting(when, reports, graphs))(ids, attention_mask=mask)
        sites = _attention_sites(reports)
        assert len(sites) == 2 and all(s.rewritten and s.target == "sdpa" for s in sites), reports


def _granite_swa():
    cfg = transformers.GraniteSWAConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                        num_key_value_heads=2, intermediate_size=128, vocab_size=128, sliding_window=6,
                                        layer_types=["full_attention", "sliding_attention"],
                                        attention_multiplier=0.25, attn_implementation="eager")
    return transformers.GraniteSWAForCausalLM(cfg).eval()


@pytest.mark.skipif(not hasattr(transformers, "GraniteSWAConfig"), reason="this transformers has no Granite SWA")
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
def test_log_sum_exp_read_beside_the_softmax(padded):
    """Granite SWA reads logsumexp(S) beside softmax(S) for its sinks: unpadded, both sites (full and sliding
    window) call flex for its log-sum-exp, numbers equal eager; padded, a padding query sees no key and the sites
    stay eager with that reason."""
    torch.manual_seed(0)
    model = _granite_swa()
    ids, mask = _ids_and_mask(padded)
    kwargs = {"attention_mask": mask} if padded else {}          # unpadded: the masks fold in the graph
    with torch.no_grad():
        ref = model(ids, **kwargs).logits
        out, reports, graphs = compile_and_record(model, (ids,), kwargs)
    sites = _attention_sites(reports)
    assert len(sites) == 2, reports
    if padded:
        assert not any(s.rewritten for s in sites) and all("a row may see no key" in s.reason for s in sites), \
            [s.reason for s in sites]
    else:
        assert all(s.rewritten and s.target == "flex" for s in sites), "\n".join(map(str, reports))
        assert {s.mask.split(" (")[0] for s in sites} == {"causal", "sliding window"}, [s.mask for s in sites]
        assert not any(n.target is torch.logsumexp for gm, _ in graphs for n in gm.graph.nodes)
    assert_close_outputs(out.logits, ref)
