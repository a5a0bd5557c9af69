"""The bench scripts stay runnable: tiny models on the CPU through the same code the H100 runs use, and the
largest-batch search against a known memory model."""
import json

import pytest
import torch

pytest.importorskip("transformers")

from bench import models, training  # noqa: E402
from bench.timing import Record  # noqa: E402


@pytest.mark.parametrize("true_max, per_sample, fixed", [(36, 1.9, 8.0), (5, 12.0, 10.0), (3, 20.0, 10.0), (205, 0.35, 5.0), (1, 30.0, 40.0)])
def test_largest_batch_search_finds_the_exact_limit(true_max, per_sample, fixed):
    capacity = 79.0
    def peak(b):                           # a little steeper than the two probes suggest, like a real allocator
        return fixed + per_sample * b * (1.03 if b > 4 else 1.0)
    limit = max(b for b in range(1, 5000) if peak(b) <= capacity) if peak(1) <= capacity else 0
    tried = {}

    def fits(b):
        tried[b] = peak(b) if peak(b) <= capacity else None
        return tried[b] is not None

    out = training._search("m", 1024, "f", fits, tried, capacity, (2, 4), 4096)
    if limit < 2:
        assert out["largest_batch"] == "< 2"
    else:
        assert out["largest_batch"] == limit
        assert fits(limit) and not fits(limit + 1)
    assert len(tried) <= 14


@pytest.mark.slow
def test_forward_rows_rewrite_every_site_and_match_eager(tmp_path):
    record = Record(str(tmp_path / "fwd.json"))
    rows = models.forward("gpt2", 2, 16, ["eager", "backend_eager"], padded=True, device="cpu", tiny=True, reps=2,
                          record=record)
    assert [r["form"] for r in rows] == ["eager", "backend_eager"]
    assert rows[1]["sites"] == "2/2" and rows[1]["rel_err"] <= 1e-5 and rows[1]["err_vs"] == "eager"
    saved = json.loads((tmp_path / "fwd.json").read_text())
    assert saved["forward"] == rows and "torch" in saved["versions"]


@pytest.mark.slow
def test_generate_rows_same_tokens(tmp_path):
    rows = models.generate("llama", 1, ["eager", "backend_eager"], prompt=8, new=4, device="cpu", tiny=True,
                           record=Record())
    assert rows[1]["same_tokens"] == 1.0 and rows[1]["sites"].split("/")[0] == rows[1]["sites"].split("/")[1] != "0"


@pytest.mark.slow
def test_generate_isolated_runs_each_form_in_its_own_process(tmp_path):
    record = Record(str(tmp_path / "gen.json"))
    rows = models.generate_isolated("llama", ["eager", "backend_eager"], 1,
                                    ["--prompt", "8", "--new", "4", "--generate-reps", "2", "--tiny"], record)
    assert [(r["form"], r["round"], r["process"]) for r in rows] == [("eager", 1, "own"), ("backend_eager", 1, "own")]
    assert rows[1]["same_tokens"] == 1.0 and rows[1]["sites"].split("/")[0] == rows[1]["sites"].split("/")[1] != "0"
    assert all(0 < r["best_ms_per_token"] <= r["ms_per_token"] for r in rows)
    assert json.loads((tmp_path / "gen.json").read_text())["generate"] == rows


@pytest.mark.slow
def test_training_profile_prints_each_form(capsys):
    training.step_rows("gpt2", 1, 8, ["backend_eager"], device="cpu", tiny=True, reps=1, record=Record(),
                       profile_rows=3)
    out = capsys.readouterr().out
    assert "== profile: gpt2 B1 S8 backend_eager (3 steps;" in out and "Self CPU" in out


@pytest.mark.slow
def test_training_step_rows_rewrite_every_site():
    rows = training.step_rows("t5", 2, 16, ["eager", "backend_eager"], device="cpu", tiny=True, reps=2, record=Record())
    assert rows[1]["sites"] == "6/6"
    assert all(r["first_loss"] == r["first_loss"] and r["step_ms"] > 0 for r in rows)   # finite


@pytest.mark.slow
def test_dynamic_batch_trainer_compiles_once_and_keeps_is_causal():
    """The cheap largest-batch search: one compile with the batch symbolic, and the causal mask still folds."""
    trainer = training.Trainer("gpt2", "backend_eager", device="cpu", tiny=True, dynamic_batch=True)
    for batch in (2, 3, 5):
        loss = trainer.step(trainer.inputs(batch, 16))
        assert torch.isfinite(loss)
    with_sites = [r for r in trainer.reports if r.sites]           # graphs without attention (the loss) aside
    assert len(with_sites) == 1
    sites = with_sites[0].sites
    assert not isinstance(sites[0].q[0], int), sites[0].q            # the batch is symbolic
    assert len(sites) == 2 and all(s.rewritten and s.causal == "top-left" for s in sites), str(with_sites[0])


@pytest.mark.slow
def test_step_memory_names_the_allocating_line(tmp_path):
    """bench/step_memory.py groups live CUDA blocks by the innermost frame in generated Inductor code (or the
    model, or the rewrite), quoted with its source line: the line names the buffer that costs the memory."""
    from bench.step_memory import _where

    generated = tmp_path / "torchinductor_u" / "cxa47.py"
    generated.parent.mkdir()
    generated.write_text("def call(args):\n    buf0 = empty_strided_cuda((8, 1024), (1024, 1))\n")
    frames = [{"filename": "/torch/_ops.py", "line": 10}, {"filename": str(generated), "line": 2},
              {"filename": "/site-packages/transformers/models/opt/modeling_opt.py", "line": 5}]
    assert _where(frames) == "cxa47.py:2 buf0 = empty_strided_cuda((8, 1024), (1024, 1))"
    assert _where(frames[:1]) == "_ops.py:10"
    assert _where([]) == "?"


def test_step_peak_replays_the_allocator_trace_to_its_highest_point():
    """bench/step_memory.py --at-peak: the allocator's alloc / free events replayed give the highest point and the
    blocks the trace allocated that are live there (a free of a block from before the trace lowers the count)."""
    from bench.step_memory import _replay

    events = [{"action": "alloc", "addr": 1, "size": 10}, {"action": "alloc", "addr": 2, "size": 5},
              {"action": "free_completed", "addr": 1, "size": 10}, {"action": "alloc", "addr": 3, "size": 20},
              {"action": "free_completed", "addr": 9, "size": 3}, {"action": "alloc", "addr": 4, "size": 2},
              {"action": "free_completed", "addr": 3, "size": 20}]
    peak = _replay(events, stop=None)
    assert (peak["high"], peak["index"]) == (25, 3)
    assert sorted(_replay(events, stop=peak["index"])["live"]) == [2, 3]


def test_flex_plot_reads_the_last_row_of_each_form(tmp_path):
    """bench/plot_flex.py takes every row of every list in its files; a form measured again later replaces the
    earlier row, and training rows with bf16 weights are a group of their own."""
    from bench.plot_flex import rows_of

    first, later = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"m": {"forward": [{"model": "m", "shape": "B1 S8", "form": "backend", "ms": 2.0,
                                                    "peak_mib": 9}, {"model": "m", "form": "x", "skipped": "time"}]}}))
    later.write_text(json.dumps({"k": [{"model": "m", "shape": "B1 S8", "form": "backend", "ms": 1.5, "peak_mib": 8},
                                       {"model": "m", "shape": "B1 S8", "form": "backend", "step_ms": 3.0,
                                        "peak_mib": 7, "weights": "bfloat16"}]}))
    found = rows_of([str(first), str(later)])
    assert found[("forward", "m", "B1 S8")]["backend"]["ms"] == 1.5
    assert found[("step", "m", "B1 S8 bf16")]["backend"]["step_ms"] == 3.0
    assert len(found) == 2


@pytest.mark.slow
def test_saved_for_backward_drops_one_attention_output_per_layer_for_a_finite_mask(monkeypatch):
    """bench/step_memory.py --saved on the CPU: with a padding mask built in the graph from finite constants
    (transformers 5.x), the backend saves one attention output per layer less for the backward than when the
    mask is treated as possibly -inf (the output select of rows of -inf alone: a second copy kept for the
    out-projection's weight gradient)."""
    import sys

    from bench.step_memory import saved_mib

    batch, seq = 2, 32
    args = training.zoo.inputs("llama", batch, seq, device="cpu", labels=True)
    args["attention_mask"] = torch.ones(batch, seq, dtype=torch.long)
    args["attention_mask"][1, :10] = 0
    proven = saved_mib(training.Trainer("llama", "backend_eager", device="cpu", tiny=True), args)
    monkeypatch.setattr(sys.modules["sdpa_rewrite.find"], "_finite_mask", lambda *a: False)
    unproven = saved_mib(training.Trainer("llama", "backend_eager", device="cpu", tiny=True), args)
    layers, width = 2, 64                                             # tiny Llama; bf16 under autocast
    assert unproven["saved_mib"] - proven["saved_mib"] == pytest.approx(layers * batch * seq * width * 2 / 2**20, abs=1e-3)


@pytest.mark.slow
def test_padded_attention_rows_agree_with_sdpa(tmp_path, monkeypatch):
    """bench/padded_attention.py on the CPU (flex forward only): every form runs and flex equals SDPA's dense mask
    on the rows that see a key."""
    import sys

    from bench import padded_attention

    out = tmp_path / "padded.json"
    monkeypatch.setattr(sys, "argv", ["padded_attention.py", "--seqs", "256", "--pads", "left,right", "--shape",
                                      "2x2x16", "--reps", "2", "--json", str(out)])
    padded_attention.main()
    rows = json.loads(out.read_text())["attention"]
    assert len(rows) == 2 * len(padded_attention.FORMS)
    flex = [r for r in rows if r["form"].startswith("flex")]
    assert flex and all(r["rel_err"] is not None and r["rel_err"] <= 1e-5 for r in flex), flex


@pytest.mark.slow
def test_bias_attention_rows_agree_with_sdpa(tmp_path, monkeypatch):
    """bench/bias_attention.py on the CPU (flex forward only): every form runs, and flex, reading the dense bias,
    computing ALiBi from the indices or reading it per key, equals SDPA with the bias."""
    import sys

    from bench import bias_attention

    out = tmp_path / "bias.json"
    monkeypatch.setattr(sys, "argv", ["bias_attention.py", "--seqs", "256", "--biases", "alibi,t5", "--shape",
                                      "2x4x16", "--reps", "2", "--json", str(out)])
    bias_attention.main()
    rows = json.loads(out.read_text())["attention"]
    assert [r["form"] for r in rows] == bias_attention.FORMS + bias_attention.FORMS[:-2]   # no ALiBi forms for t5
    flex = [r for r in rows if r["form"].startswith("flex")]
    assert len(flex) == 4 and all(r["rel_err"] is not None and r["rel_err"] <= 1e-5 for r in flex), flex


@pytest.mark.slow
def test_corpus_models_rows_rewrite_every_site(tmp_path):
    """bench/corpus_models.py --tiny: the library's fused path and the backend agree with the fp32 eager model to bf16
    rounding, every site of the eager path rewritten."""
    from bench import corpus_models

    out = tmp_path / "corpus.json"
    assert corpus_models.main(["whisper", "--tiny", "--no-train", "--forms", "fused_inductor,backend",
                               "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["forward"]
    assert [r["form"] for r in rows] == ["fused_inductor", "backend"], rows
    assert rows[1]["sites"].startswith("6/6") and all(float(r["rel_err"]) < 2e-2 for r in rows), rows


@pytest.mark.slow
def test_decode_forms_in_turn_same_tokens(tmp_path):
    """bench/decode.py's static-cache configuration: both forms built, called in turn, every timed call kept, the
    tokens equal to the uncompiled model's in the run's dtype and again in fp32, every backend site rewritten."""
    import argparse

    from bench import decode

    a = argparse.Namespace(tiny=True, new=4, reps=2, window=1024, profile=False, check_tokens=True,
                           profiled=(1, 16), mask_control=True)
    record = Record(str(tmp_path / "decode.json"))
    decode.configuration("llama8", "static", 1, 16, a, "cpu", record)
    rows = record.tables["decode"]
    assert [r["form"] for r in rows] == ["native_static", "sdpa_eager_mask_static", "backend_static"]
    assert all(r["same_tokens"] == 1.0 and r["same_tokens_fp32"] == 1.0 and len(r["calls_ms"]) == 2 for r in rows)
    assert rows[2]["sites"] == "2/2" and not rows[0]["sites"] and not rows[1]["sites"]
    assert all(r["settle_rounds"] == 1 for r in rows)          # no CUDA graph on the CPU: one untimed round settles
    first, last = rows[0]["calls_ms"], rows[2]["calls_ms"]
    ratios = [x / y for x, y in zip(first, last)]                                 # round by round
    slack = sum(r * (0.05 / x + 0.05 / y) for r, x, y in zip(ratios, first, last)) / 2 + 1e-3   # calls_ms: 0.1 ms
    assert rows[0]["paired"] == 1.0
    assert rows[2]["paired"] == pytest.approx(sum(ratios) / 2, abs=slack)      # the median of two: their mean
    assert rows[0]["step_paired"] == 1.0 and all(0 < r["step_ms"] < r["ms"] / 4 for r in rows)


def test_mask_control_builds_the_eager_models_mask_for_sdpa_attention():
    """The control form's model: transformers' sdpa attention, and the additive float mask of its eager models."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from bench import decode

    model = decode.build("llama8", "sdpa_eager_mask_static", "cpu", True, 1024)
    impl = model.config._attn_implementation
    assert impl == decode.MASK_CONTROL and model.generation_config.cache_implementation is None
    assert ALL_MASK_ATTENTION_FUNCTIONS[impl] is eager_mask
    assert ALL_ATTENTION_FUNCTIONS[impl] is ALL_ATTENTION_FUNCTIONS["sdpa"]
    assert decode.forms_of("llama8", "static", True)[1] == "sdpa_eager_mask_static"
    assert decode.forms_of("gemma2w", "static", True) == ["native_static", "native_flex_static", "backend_static"]
    assert decode.forms_of("llama8", "dynamic", True) == ["native_dynamic", "backend_dynamic"]
    assert decode.forms_of("llama8", "static", compiled_forward=True) == ["native_static", "backend_static",
                                                                         "backend_forward_static"]


def test_decode_steps_take_each_forms_prefill_off_its_calls():
    from bench.decode import decode_steps

    times = {"a": [110.0, 210.0, 130.0], "b": [60.0, 60.0, 70.0]}
    steps = decode_steps(times, {"a": 10.0, "b": 20.0}, "a", "b", new=10)
    assert steps["step_ms"] == 4.0                             # (60 - 20) / 10, (60 - 20) / 10, (70 - 20) / 10
    assert steps["step_paired"] == 2.5                         # median of 10/4, 20/4, 12/5
    assert decode_steps(times, {"a": None, "b": None}, "a", "b", new=10) == {"step_ms": None, "step_paired": None}


def test_kernel_differences_name_what_one_step_runs_and_the_other_does_not():
    """The decode profile's kernel table: a kernel only one form launches, or launches for longer, is listed with
    its difference a step; kernels equal in both are not."""
    from bench.decode import kernel_differences

    rows = [{"model": "m", "cache": "static", "shape": "B1", "form": form, "kernels_us_per_step": kernels}
            for form, kernels in (("native", {"gemm": [4, 40.0], "copy": [2, 3.0]}),
                                  ("backend", {"gemm": [4, 40.2], "select": [1, 1.5]}))]
    text = kernel_differences(rows)
    assert "copy" in text and "select" in text and "gemm" not in text and "-3" in text and "1.5" in text


def test_bench_lists_every_suite_with_its_script(capsys):
    """`python -m bench --list`: one line per suite, each naming a script that exists."""
    import os

    from bench import __main__ as cli, standard, suites

    assert cli.main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(suites.SUITES)
    assert all(os.path.exists(os.path.join(suites.HERE, s.script)) for s in suites.SUITES.values())
    assert set(cli.STANDARD) == {c.suite for c in standard.CASES if c.tiny}


@pytest.mark.slow
def test_suite_flags_go_to_the_script(tmp_path):
    """`python -m bench --suite forward <flags>` runs bench/models.py's main with those flags, as its own command
    line would: its rows, in its JSON file."""
    import sys

    from bench import __main__ as cli

    out = tmp_path / "fwd.json"
    argv = sys.argv
    assert cli.main(["--suite", "forward", "gpt2", "--tiny", "--forms", "eager,backend_eager", "--shapes", "2x16",
                     "--reps", "2", "--json", str(out)]) == 0
    assert sys.argv is argv
    rows = json.loads(out.read_text())["forward"]
    assert [r["form"] for r in rows] == ["eager", "backend_eager"] and rows[1]["sites"] == "2/2"
    assert cli.main(["--suite", "forward,training", "gpt2"]) == 2          # script flags need one suite


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message is for machines without CUDA")
def test_gpu_only_suite_says_so_on_the_cpu(capsys):
    from bench import __main__ as cli

    assert cli.main(["--suite", "exact-masks"]) == 2
    assert "runs on CUDA only" in capsys.readouterr().err


@pytest.mark.slow
def test_standard_suite_row_beside_its_alternative(tmp_path, capsys):
    """One standard suite in process (--tiny): the summary row puts the backend beside Inductor on the sdpa model,
    every site rewritten, eager's numbers; the JSON says the device and the versions; the table is printed."""
    from bench import __main__ as cli

    out = tmp_path / "bench.json"
    assert cli.main(["--tiny", "--suite", "forward", "--json", str(out), "--plots", str(tmp_path / "plots")]) == 0
    saved = json.loads(out.read_text())
    (row,) = saved["summary"]
    assert (row["suite"], row["alternative"], row["sites"]) == ("forward", "inductor_sdpa", "2/2")
    assert row["alt"] > 0 and row["backend"] > 0 and row["speedup"] > 0
    assert [r["form"] for r in saved["forward"]] == ["eager", "inductor_sdpa", "backend_inductor"]
    assert all(r["rel_err"] <= 1e-5 for r in saved["forward"])
    assert saved["environment"]["torch"] == torch.__version__ and saved["environment"]["device"]
    assert "| suite" in capsys.readouterr().out


@pytest.mark.slow
def test_python_m_bench_tiny_covers_every_standard_suite(tmp_path):
    """`python -m bench --tiny` as a user runs it: every standard suite gives its row, the backend rewrites every
    site and keeps the reference's numbers (bf16 rounding for flex, against fp32 eager), one table printed."""
    import os
    import subprocess
    import sys

    out = tmp_path / "bench.json"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-m", "bench", "--tiny", "--json", str(out), "--plots", str(tmp_path)],
                          cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    saved = json.loads(out.read_text())
    rows = {(r["suite"], r["measure"]): r for r in saved["summary"]}
    assert set(rows) == {("forward", "ms"), ("training", "step_ms"), ("decode", "tokens_per_s"), ("flex", "ms"),
                         ("regional", "ms"), ("regional", "step_ms")}, saved["summary"]
    for r in rows.values():
        done_, found = r["sites"].split("/")
        assert done_ == found != "0" and r["alt"] > 0 and r["backend"] > 0, r
    assert all(r["rel_err"] <= 1e-5 for r in saved["forward"] + [x for x in saved["regional"] if "rel_err" in x])
    assert all(r["rel_err"] <= 3e-2 for r in saved["flex"])                     # bf16 forms against fp32 eager
    assert all(r["same_tokens"] == 1.0 for r in saved["decode"])
    assert {"torch", "transformers", "device"} <= set(saved["environment"]) and "failed" not in saved
    assert done.stdout.count("| suite ") == 1 and "| decode " in done.stdout


@pytest.mark.slow
def test_deploy_onnx_rows_put_one_attention_node_per_site_and_match_eager(tmp_path):
    """bench/deploy.py's ONNX rows on tiny models: the eager export keeps its Softmax nodes, the rewritten one has an
    Attention node per site and none, both run by ONNX Runtime in their own processes within fp32 rounding of eager."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from bench import deploy

    out = tmp_path / "deploy.json"
    assert deploy.main(["--runtime", "onnx", "--tiny", "--models", "gpt2,llama", "--seqs", "32", "--reps", "2",
                        "--rounds", "2", "--forms", "eager_ort,rewritten_ort", "--json", str(out)]) == 0
    rows = {(r["model"], r["form"]): r for r in json.loads(out.read_text())["onnx"]}
    for model in ("gpt2", "llama"):
        eager, rewritten = rows[(model, "eager_ort")], rows[(model, "rewritten_ort")]
        assert eager["attention_ops"] == 0 and eager["softmax_ops"] == 2, eager
        assert rewritten["attention_ops"] == 2 and rewritten["softmax_ops"] == 0 and rewritten["sites"] == "2/2"
        assert all(r["max_abs_err"] <= 1e-5 and len(r["rounds_ms"]) == 2 and r["ms"] > 0 for r in (eager, rewritten))


@pytest.mark.slow
def test_deploy_aoti_rows_run_each_package_in_its_own_process_and_match(tmp_path):
    """bench/deploy.py's AOTInductor rows on a tiny Llama on the CPU: transformers' sdpa model and the rewritten eager
    model packaged, each package loaded and timed in a process of its own, in rounds; the same logits."""
    from bench import deploy

    out = tmp_path / "deploy.json"
    assert deploy.main(["--runtime", "aoti", "--tiny", "--models", "llama8", "--forms", "native_aoti,rewritten_aoti",
                        "--static", "--seqs", "32", "--reps", "2", "--rounds", "2", "--json", str(out)]) == 0
    rows = {r["form"]: r for r in json.loads(out.read_text())["aoti"]}
    assert rows["rewritten_aoti"]["sites"] == "2/2", rows
    for row in rows.values():
        assert "error" not in row and row["ms"] > 0 and len(row["rounds_ms"]) == 2, row
        assert row["max_abs_err_vs_first"] <= 1e-4, row
