"""Tiny transformers models (random weights from their config classes, eager attention) through the backend."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

import sdpa_rewrite  # noqa: E402
from support import assert_close_outputs, compile_and_record, sdpa_calls_of  # noqa: E402


def gpt2():
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=64,
                                  bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    return transformers.GPT2LMHeadModel(cfg).eval()


def llama():
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=128, vocab_size=128, attn_implementation="eager")
    return transformers.LlamaForCausalLM(cfg).eval()


def mistral():
    cfg = transformers.MistralConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                     intermediate_size=128, vocab_size=128, attn_implementation="eager")
    return transformers.MistralForCausalLM(cfg).eval()


def qwen2():
    cfg = transformers.Qwen2Config(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=128, vocab_size=128, attn_implementation="eager")
    return transformers.Qwen2ForCausalLM(cfg).eval()


DECODERS = [(gpt2, False), (llama, True), (mistral, True), (qwen2, True)]
DECODER_IDS = ["gpt2", "llama", "mistral", "qwen2"]


@pytest.mark.parametrize("build,gqa", DECODERS, ids=DECODER_IDS)
def test_no_attention_mask_is_causal_without_mask(build, gqa):
    """No attention_mask: the graph's causal mask folds away, SDPA gets is_causal=True and no attn_mask."""
    model = build()
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits
        out, reports, graphs = compile_and_record(model, (ids,))
    sites = [s for r in reports for s in r.sites]
    assert len(sites) == 2 and all(s.rewritten and s.causal == "top-left" for s in sites), "\n".join(map(str, reports))
    assert all(s.mask.startswith("causal") for s in sites)
    calls = sdpa_calls_of(graphs)
    assert len(calls) == 2
    assert all(c["is_causal"] and c["mask"] == "none" and c["enable_gqa"] == gqa for c in calls), calls
    assert_close_outputs(out.logits, ref)


@pytest.mark.parametrize("build,gqa", DECODERS, ids=DECODER_IDS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_attention_mask_stays_a_mask(build, gqa, side):
    """A padded attention_mask is input data: the mask is kept, and every position equals eager."""
    model = build()
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[0, :5] = 0 if side == "left" else 1
    if side == "right":
        mask[0, -5:] = 0
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
        out, reports, graphs = compile_and_record(model, (ids,), {"attention_mask": mask})
    sites = [s for r in reports for s in r.sites]
    assert len(sites) == 2 and all(s.rewritten and not s.causal for s in sites)
    assert all(s.mask.startswith("input mask") for s in sites), [s.mask for s in sites]
    calls = sdpa_calls_of(graphs)
    assert len(calls) == 2 and all(not c["is_causal"] and c["mask"] != "none" for c in calls), calls
    assert_close_outputs(out.logits, ref)


@pytest.mark.parametrize("build,gqa", [(gpt2, False), (llama, True)], ids=["gpt2", "llama"])
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
def test_every_attention_site_rewritten(build, gqa, padded):
    model = build()
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 16, dtype=torch.long)
    if padded:
        mask[0, :5] = 0
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
        out, reports, graphs = compile_and_record(model, (ids,), {"attention_mask": mask})
        out = out.logits
    sites = [s for r in reports for s in r.sites]
    assert len(sites) == 2 and all(s.rewritten for s in sites), "\n".join(map(str, reports))
    assert all((s.gqa_groups == 2) == gqa for s in sites)
    assert_close_outputs(out[mask.bool()], ref[mask.bool()])
    calls = sdpa_calls_of(graphs[:1])                  # the graph compiled for any mask: the mask kept
    assert len(calls) == 2 and all(c["enable_gqa"] == gqa and c["mask"] == "float" for c in calls)
    assert all(s.runtime_verdict for s in sites)
    # what ran: an all-ones attention_mask is found causal at run time and a variant calls is_causal
    ran = sdpa_calls_of(graphs[1:])
    want = [] if padded else [{"mask": "none", "is_causal": True}] * 2
    assert [{"mask": c["mask"], "is_causal": c["is_causal"]} for c in ran] == want, ran


def test_explain_gpt2():
    model = gpt2()
    ids = torch.randint(0, 128, (1, 8))
    report = sdpa_rewrite.explain(model, ids)
    assert len(report.rewritten) == 2 and not report.skipped
    assert report.to_dict()["rewritten"] == 2
    assert "transformer.h.0.attn" in report.sites[0].location


def t5():
    cfg = transformers.T5Config(num_layers=2, num_decoder_layers=2, d_model=64, num_heads=4, d_kv=16, d_ff=128,
                                vocab_size=128, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
                                eos_token_id=1, attn_implementation="eager")
    return transformers.T5ForConditionalGeneration(cfg).eval()


@pytest.mark.parametrize("build,sites", [(gpt2, 2), (t5, 6), (llama, 2)], ids=["gpt2", "t5", "llama"])
def test_training_loss_and_gradients_equal_eager(build, sites):
    """A training step (dropout off) through AOTAutograd: every site rewritten, the loss and every
    parameter's gradient equal eager's."""
    model = build()
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    ref_model = __import__("copy").deepcopy(model)
    ids = torch.randint(2, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    reports = []
    compiled = torch.compile(model, backend="sdpa_rewrite",
                             options={"downstream": "aot_eager", "strict": True, "report": reports.append})
    loss = compiled(input_ids=ids, labels=ids).loss
    loss.backward()
    ref_loss = ref_model(input_ids=ids, labels=ids).loss
    ref_loss.backward()
    found = [s for r in reports for s in r.sites]
    assert len(found) == sites and all(s.rewritten for s in found), "\n".join(map(str, reports))
    assert_close_outputs(loss, ref_loss)
    scale = max(q.grad.abs().max().item() for q in ref_model.parameters() if q.grad is not None)
    for (name, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters()):
        if q.grad is None:
            assert p.grad is None, name
            continue
        err = ((p.grad - q.grad).abs().max() / max(q.grad.abs().max().item(), 0.1 * scale)).item()
        assert err <= 1e-4, f"{name}: gradient relative error {err:.2e}"


@pytest.mark.parametrize("build,gqa", [(gpt2, False), (llama, True)], ids=["gpt2", "llama"])
@pytest.mark.parametrize("how", ["dynamic=True", "mark_dynamic", "dynamic=True, use_cache=False"])
def test_dynamic_shapes_rewritten_exact_without_recompiles(build, gqa, how):
    """Symbolic batch and sequence: every site is still rewritten, its causal mask proven causal for every
    size, outputs equal eager at every size, and the graph is compiled once, not once per size."""
    model = build()
    reports = []
    compiled = torch.compile(model, backend="sdpa_rewrite", dynamic=True if how.startswith("dynamic=True") else None,
                             options={"downstream": "eager", "report": reports.append, "strict": True})
    g = torch.Generator().manual_seed(0)
    for batch, length in ((2, 16), (3, 11), (4, 20), (5, 7)):      # not 1: Dynamo specialises sizes 0 and 1
        ids = torch.randint(0, 128, (batch, length), generator=g)
        if how == "mark_dynamic":
            torch._dynamo.mark_dynamic(ids, 0)
            torch._dynamo.mark_dynamic(ids, 1)
        kwargs = {"use_cache": False} if "use_cache" in how else {}      # no cache: the packed-sequence check
        with torch.no_grad():
            assert_close_outputs(compiled(ids, **kwargs).logits, model(ids, **kwargs).logits)
    assert len(reports) == 1, f"{len(reports)} compiles for 4 sizes"
    sites = reports[0].sites
    assert len(sites) == 2 and all(s.rewritten for s in sites), str(reports[0])
    assert all((s.gqa_groups == 2) == gqa for s in sites)
    # the causal mask is `kv_idx <= q_idx` over aranges: proven top-left causal for every length (ramps.py)
    assert all(s.causal == "top-left" and "proven for every size" in s.mask for s in sites), [s.mask for s in sites]


def test_t5_dynamic_shapes_keep_the_bias_a_bias():
    """dynamic=True turns the embedding's float `norm_type` into a graph input; F.embedding never reads it
    without a `max_norm`, so the position bias stays a parameter bias (no empty-row check), and the
    cross-attention's zero bias of symbolic size is proven all-visible."""
    model = t5()
    reports = []
    compiled = torch.compile(model, backend="sdpa_rewrite", dynamic=True,
                             options={"downstream": "eager", "report": reports.append, "strict": True})
    g = torch.Generator().manual_seed(0)
    for batch, length in ((2, 16), (3, 11)):
        ids = torch.randint(0, 128, (batch, length), generator=g)
        dec = torch.randint(0, 128, (batch, length), generator=g)
        with torch.no_grad():
            assert_close_outputs(compiled(input_ids=ids, decoder_input_ids=dec).logits,
                                 model(input_ids=ids, decoder_input_ids=dec).logits)
    assert len(reports) == 1, f"{len(reports)} compiles for 2 sizes"
    sites = reports[0].sites
    assert len(sites) == 6 and all(s.rewritten for s in sites), str(reports[0])
    cross = [s for s in sites if "EncDecAttention" in s.location]
    assert all(s.mask.startswith("none") for s in cross), [s.mask for s in cross]
    assert all(s.mask == "bias (reads the parameter `weight`) -> additive" for s in sites if s not in cross), \
        [s.mask for s in sites]


@pytest.mark.parametrize("build", [gpt2, llama], ids=["gpt2", "llama"])
@pytest.mark.parametrize("padded", [False, True], ids=["no mask", "left-padded"])
@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no cache"])
def test_symbolic_batch_alone_still_folds_the_causal_mask(build, padded, use_cache):
    """A second batch size makes Dynamo's batch symbolic (a smaller last batch in training does that). The
    causal mask is `causal.expand(batch, -1, L, S)`: the same for every batch, so it still folds to
    is_causal, exact at every batch with one compile. Without a cache, transformers also checks the
    position ids for packed sequences, indexing them per row with `arange(batch)`: that folds too. A padding
    mask is input data and stays a mask."""
    model = build()
    reports = []
    compiled = torch.compile(model, backend="sdpa_rewrite",
                             options={"downstream": "eager", "report": reports.append, "strict": True})
    g = torch.Generator().manual_seed(0)
    for batch in (2, 3, 5):
        ids = torch.randint(4, 128, (batch, 12), generator=g)
        kwargs = {}
        if padded:
            mask = torch.ones_like(ids)
            mask[1:, :3] = 0
            kwargs["attention_mask"] = mask
            torch._dynamo.mark_dynamic(mask, 0)
        torch._dynamo.mark_dynamic(ids, 0)
        with torch.no_grad():
            assert_close_outputs(compiled(ids, **kwargs, use_cache=use_cache).logits,
                                 model(ids, **kwargs, use_cache=use_cache).logits)
    assert len(reports) == 1, f"{len(reports)} compiles for 3 batch sizes"
    sites = reports[0].sites
    assert not isinstance(sites[0].q[0], int), sites[0].q            # the batch really is symbolic
    assert len(sites) == 2 and all(s.rewritten for s in sites), str(reports[0])
    if padded:
        assert all(not s.causal and s.mask.startswith("input mask") for s in sites), [s.mask for s in sites]
    else:
        assert all(s.causal == "top-left" for s in sites), [s.mask for s in sites]


def bert():
    cfg = transformers.BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                                  vocab_size=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                  attn_implementation="eager")
    return transformers.BertModel(cfg).eval()


def bart():
    cfg = transformers.BartConfig(encoder_layers=2, decoder_layers=2, d_model=64, encoder_attention_heads=4,
                                  decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=128,
                                  max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                  decoder_start_token_id=2, attn_implementation="eager")
    return transformers.BartForConditionalGeneration(cfg).eval()


@pytest.mark.parametrize("build,sites", [(bert, 2), (t5, 6), (bart, 6)], ids=["bert", "t5", "bart"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_encoder_and_seq2seq_padding_equal_on_every_position(build, sites, side):
    model = build()
    ids = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 12, dtype=torch.long)
    if side == "left":
        mask[0, :4] = 0
    else:
        mask[0, -4:] = 0
    kwargs = {"attention_mask": mask}
    if build is not bert:
        kwargs["decoder_input_ids"] = ids[:, :7]
    with torch.no_grad():
        ref = model(ids, **kwargs)
        out, reports, _ = compile_and_record(model, (ids,), kwargs)
    found = [s for r in reports for s in r.sites]
    assert len(found) == sites and all(s.rewritten for s in found), "\n".join(map(str, reports))
    key = "last_hidden_state" if build is bert else "logits"
    assert_close_outputs(out[key], ref[key])
