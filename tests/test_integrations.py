"""Where users already are: transformers' Trainer (through accelerate), PEFT, diffusers and sentence-transformers
with the backend."""
import tempfile

import pytest
import torch

transformers = pytest.importorskip("transformers")

from support import assert_close_outputs, compile_and_record  # noqa: E402
from test_transformers import llama  # noqa: E402


def trainer_losses(compile_model: bool, reports: list) -> list:
    torch.manual_seed(0)
    model = llama().train()
    if compile_model:
        model.compile(backend="sdpa_rewrite", options={"report": reports.append, "strict": True})
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": ids, "labels": ids.clone()} for ids in torch.randint(3, 128, (8, 16), generator=g)]
    with tempfile.TemporaryDirectory() as out:
        args = transformers.TrainingArguments(out, per_device_train_batch_size=2, max_steps=3, learning_rate=1e-3,
                                              logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", seed=0)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
        trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


@pytest.mark.slow
def test_trainer_with_the_model_compiled_by_the_backend():
    pytest.importorskip("accelerate")
    """accelerate checks `torch_compile_backend` against its own list of backend names and refuses "sdpa_rewrite";
    compiling the model in place (`model.compile(backend="sdpa_rewrite")`) before handing it to the Trainer is the
    route that works. Three optimizer steps: every site rewritten, the same losses as without the backend."""
    reports = []
    ref = trainer_losses(False, [])
    got = trainer_losses(True, reports)
    sites = [s for r in reports for s in r.sites]
    assert sites and all(s.rewritten for s in sites), "\n".join(map(str, reports))
    assert len(got) == len(ref) == 3
    for a, b in zip(got, ref):
        assert abs(a - b) <= 1e-5 * abs(b), (got, ref)


def test_peft_lora_wrapped_model():
    """LoRA adapters on q_proj / v_proj change the projections, not the attention: every site rewritten."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    model = peft.get_peft_model(llama(), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    ids = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        out, reports, _ = compile_and_record(model, (), {"input_ids": ids})
    sites = [s for r in reports for s in r.sites]
    assert len(sites) == 2 and all(s.rewritten and s.causal == "top-left" for s in sites), "\n".join(map(str, reports))
    assert_close_outputs(out.logits, ref)


def test_diffusers_unet_with_its_eager_attention_processor():
    """diffusers' eager `AttnProcessor` (baddbmm with beta 0 over an empty input, softmax, bmm) in a UNet's self- and
    cross-attention: every site rewritten, the same sample."""
    diffusers = pytest.importorskip("diffusers")
    from diffusers.models.attention_processor import AttnProcessor

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8).eval()
    unet.set_attn_processor(AttnProcessor())
    g = torch.Generator().manual_seed(0)
    x, t, context = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([10]), torch.randn(1, 6, 32, generator=g)
    with torch.no_grad():
        ref = unet(x, t, context).sample
        out, reports, _ = compile_and_record(unet, (x, t, context))
    sites = [s for r in reports for s in r.sites]
    assert len(sites) == 8 and all(s.rewritten for s in sites), "\n".join(map(str, reports))
    assert_close_outputs(out.sample, ref)


def tiny_sentence_transformer(path):
    """A 2-layer BERT with eager attention and a 22-word WordPiece vocabulary, saved to `path` and loaded back as a
    SentenceTransformer (Transformer + mean Pooling): no download."""
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from sentence_transformers import SentenceTransformer

    words = "the a cat dog sat on mat ran fast slow and quick brown fox jumps over lazy".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                     vocab_size=len(vocab), max_position_embeddings=64, attn_implementation="eager")
    transformers.BertModel(config).eval().save_pretrained(path)
    # sentence-transformers loads with attn_implementation="sdpa" unless told: eager is what the backend rewrites
    st = SentenceTransformer(modules=[Transformer(str(path), model_kwargs={"attn_implementation": "eager"}),
                                      Pooling(64)], device="cpu")
    assert st[0].auto_model.config._attn_implementation == "eager"
    return st.eval()


def test_sentence_transformers_encode_with_the_model_compiled_by_the_backend(tmp_path):
    """`SentenceTransformer.compile(backend="sdpa_rewrite")` is nn.Module.compile: encode() calls the model, so the
    compiled forward runs. Four sentences of different lengths in batches of two, both padded: the first batch
    compiles a static graph, the second (shorter) an automatic-dynamic one. Both BERT self-attention sites of each
    graph rewritten, the padding mask read as an input mask, and the same embeddings as the uncompiled model.
    Downstream eager keeps the test short; Inductor is the Trainer test's."""
    pytest.importorskip("sentence_transformers")
    st = tiny_sentence_transformer(tmp_path)
    sentences = ["the quick brown fox jumps over the lazy dog and the cat", "a dog ran fast on the mat",
                 "the cat sat", "dog"]
    batches = [st.preprocess(sentences[i:i + 2]) for i in (0, 2)]
    assert all((b["attention_mask"] == 0).any() for b in batches)          # both batches padded
    reports = []
    with torch.no_grad():
        ref = st.encode(sentences, batch_size=2, convert_to_tensor=True)
        st.compile(backend="sdpa_rewrite", options={"downstream": "eager", "report": reports.append, "strict": True})
        got = st.encode(sentences, batch_size=2, convert_to_tensor=True)
    assert [len(r.sites) for r in reports] == [2, 2], "\n".join(map(str, reports))   # 2 layers, 2 graphs
    sites = [s for r in reports for s in r.sites]
    assert all(s.rewritten and s.mask.startswith("input mask") for s in sites), "\n".join(map(str, reports))
    assert got.shape == ref.shape == (4, 64)
    assert_close_outputs(got, ref)
