"""`sdpa-rewrite scan`: 33 transformers architectures built tiny from their configs, each with its fixed
site count, every expressible site rewritten and the numbers equal to eager; the CLI and user factories."""
import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("transformers")

from sdpa_rewrite.cli import main
from sdpa_rewrite.scan import dummy_inputs, scan_model, tiny_config
from sdpa_rewrite.scan.summary import fully_rewritten

# model_type -> (attention softmaxes eager runs, sites rewritten): 2 layers; encoder-decoders have
# encoder self, decoder self and cross attention per layer; CLIP a text and a vision tower
EXPECTED = {
    "gpt2": (2, 2), "opt": (2, 2), "t5": (6, 6), "mt5": (6, 6), "bart": (6, 6), "mbart": (6, 6),
    "marian": (6, 6), "pegasus": (6, 6), "m2m_100": (6, 6), "blenderbot": (6, 6), "llama": (2, 2),
    "mistral": (2, 2), "qwen2": (2, 2), "gemma": (2, 2), "phi": (2, 2), "falcon": (2, 2), "bloom": (2, 2),
    "gpt_neox": (2, 2), "gptj": (2, 2), "gpt_neo": (2, 2), "codegen": (2, 2), "bert": (2, 2),
    "roberta": (2, 2), "distilbert": (2, 2), "albert": (2, 2), "electra": (2, 2), "xlm-roberta": (2, 2),
    "vit": (2, 2), "clip": (4, 4), "whisper": (6, 6), "openai-gpt": (2, 2), "xglm": (2, 2),
    "gemma2": (2, 2), "cohere2": (2, 2),      # gemma2's soft-capped sites on FlexAttention (scan runs no_grad)
    "granite_swa": (2, 2),                    # its logsumexp(S) beside the softmax: served by flex's log-sum-exp
}


def assert_clean(result) -> None:
    assert result.status == "ok", f"{result.status}: {result.note}"
    assert result.graphs == 1
    assert result.max_rel_err is not None and math.isfinite(result.max_rel_err) and result.max_rel_err <= 1e-5
    assert "NaN" not in result.note, result.note


@pytest.mark.parametrize("model_type", sorted(EXPECTED))
def test_architecture_fully_rewritten(model_type):
    result = scan_model(model_type)
    assert_clean(result)
    assert (result.sites, result.rewritten) == EXPECTED[model_type], result.report
    assert not result.skipped and fully_rewritten(result)


def test_soft_capped_sites_go_to_flex():
    result = scan_model("gemma2")
    assert_clean(result)
    assert {s.target for s in result.report.sites} == {"flex"}, result.report
    assert all("soft-cap" in s.scale_source for s in result.report.sites)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("model_type", ["gpt2", "llama", "t5", "bert"])
def test_padded_batches(model_type, side):
    result = scan_model(model_type, padded=side)
    assert_clean(result)
    assert (result.sites, result.rewritten) == EXPECTED[model_type]
    masks = {s.mask.split(" (")[0] for s in result.report.sites}
    assert "input mask" in masks, masks


def test_generic_shrinking_rule_honours_attribute_map():
    gpt2 = tiny_config("gpt2")                          # n_embd / n_head / n_layer through attribute_map
    assert (gpt2.n_embd, gpt2.n_head, gpt2.n_layer, gpt2.vocab_size) == (64, 4, 2, 128)
    assert gpt2.n_positions >= 64 and gpt2.bos_token_id < 4 and gpt2.eos_token_id < 4
    t5 = tiny_config("t5")                              # head_dim -> d_kv
    assert (t5.d_model, t5.num_heads, t5.d_kv, t5.d_ff) == (64, 4, 16, 128)
    clip = tiny_config("clip")                          # sub-configs shrink by the same rule
    assert clip.text_config.hidden_size == clip.vision_config.hidden_size == 64
    assert (clip.vision_config.image_size, clip.vision_config.patch_size) == (32, 8)
    assert tiny_config("llama")._attn_implementation == "eager"


def test_dummy_inputs_follow_the_config():
    from sdpa_rewrite.scan import build

    whisper = dummy_inputs(build("whisper"))
    assert whisper["input_features"].shape == (2, 80, 128) and whisper["decoder_input_ids"].shape == (2, 16)
    vit = dummy_inputs(build("vit"))
    assert vit["pixel_values"].shape == (2, 3, 32, 32)
    llama = dummy_inputs(build("llama"), padded="left")
    assert llama["attention_mask"][0, :5].sum() == 0 and llama["attention_mask"][1].all()
    assert llama["input_ids"].min() >= 4


def test_cli_scan_writes_json_and_coverage(tmp_path, capsys):
    out, page = tmp_path / "scan.json", tmp_path / "COVERAGE.md"
    assert main(["scan", "gpt2", "--json", str(out), "--coverage", str(page)]) == 0
    results = json.loads(out.read_text())
    assert [(r["name"], r["status"], r["sites"], r["rewritten"]) for r in results] == [("gpt2", "ok", 2, 2)]
    assert results[0]["report"]["rewritten"] == 2
    assert "gpt2: ok - 2/2 attention sites rewritten" in capsys.readouterr().out
    text = page.read_text()
    assert "| gpt2" in text and "sites rewritten / sites found: 2 / 2" in text and "wrong results: 0" in text


FACTORY = '''
import torch
import torch.nn.functional as F
from sdpa_rewrite.scan import build


class Attention(torch.nn.Module):
    def forward(self, q, k, v):
        return F.softmax(q @ k.transpose(-2, -1) / 8.0, dim=-1) @ v


def hand_written():
    g = torch.Generator().manual_seed(0)
    return Attention(), tuple(torch.randn(2, 4, 16, 64, generator=g) for _ in range(3))


def opt_model():
    return build("opt")
'''


def test_factory_module_function(tmp_path, monkeypatch, capsys):
    (tmp_path / "scan_factories.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    result = scan_model("scan_factories:hand_written")      # (model, positional inputs)
    assert_clean(result)
    assert (result.name, result.sites, result.rewritten) == ("scan_factories:hand_written", 1, 1)
    result = scan_model("scan_factories:opt_model")         # a model: inputs come from its config
    assert_clean(result)
    assert (result.sites, result.rewritten) == EXPECTED["opt"]
    assert main(["scan", "scan_factories:hand_written"]) == 0
    assert "1/1 attention sites rewritten" in capsys.readouterr().out


def test_statuses_for_what_cannot_be_scanned():
    assert scan_model("no_such_model_type").status == "could not build"
    assert scan_model(lambda: (torch.nn.Linear(4, 4), (torch.randn(2, 4),))).status == "no attention"


@pytest.mark.slow
def test_python_dash_m_scan(tmp_path):
    out = tmp_path / "scan.json"
    proc = subprocess.run([sys.executable, "-m", "sdpa_rewrite", "scan", "bert", "--json", str(out)],
                          check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())[0]["status"] == "ok"
