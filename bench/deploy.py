"""Deployment: exported models in ONNX Runtime (CPU) and as AOTInductor packages (GPU), the rewrite beside the others.

    python -m bench --suite deploy --runtime onnx [--models gpt2,bert,llama,xdecoder] [--seqs 128,512,2048]
    python -m bench --suite deploy --runtime aoti [--models llama8,gpt2] [--seqs 128,512,2048]

ONNX Runtime, batch 1, fp32, one export per length (static shapes), every form timed (`--rounds` times, the forms in
turn) in a process of its own that imports
neither torch nor transformers (bench/ort_run.py), so that its peak resident memory is the runtime's:
    eager_ort          the eager model through torch.onnx (dynamo, opset 23), ONNX Runtime's default optimisations
    eager_ort_fused    the same export (without the exporter's optimiser, which the tool cannot read) through
                       onnxruntime.transformers.optimizer with the model's type, for the types it knows (gpt2, bert);
                       `fused` counts the attention ops it made
    rewritten_ort      sdpa_rewrite.to_onnx.export_onnx: one Attention node per site
Models: `gpt2` (GPT-2 124M), `bert` (BERT-base-sized encoder, an all-ones attention_mask), `llama` (a Llama-style
decoder of GPT-2's size: 12 layers, d768, GQA 12/4), `xdecoder` (x-transformers' Decoder, 12 layers, d768, its own
eager attention: the third-party model).

AOTInductor, batch 1, the sequence length dynamic (one package per model and form; `--static`: one per length), on
CUDA in bf16 (fp32 on the CPU), lengths up to the model's positions; each package is loaded and timed in a process of
its own (bench/aoti_run.py), `--rounds` times, the forms in turn:
    native_aoti        transformers' sdpa model exported and packaged
    eager_aoti         the eager model exported and packaged (Inductor on the eager attention)
    rewritten_aoti     the eager model exported, sdpa_rewrite.rewrite(program), packaged
Models: bench/zoo.py's `llama8` and `gpt2`. Peak memory is what one call allocates above what was allocated before;
`loaded_mib` is the device memory the loaded package holds (its weights).
"""
from __future__ import annotations

import argparse
import collections
import faulthandler
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import zoo  # noqa: E402
from bench.timing import Record, versions  # noqa: E402

ONNX_FORMS = ("eager_ort", "eager_ort_fused", "rewritten_ort")
AOTI_FORMS = ("native_aoti", "eager_aoti", "rewritten_aoti")
FUSED_OPS = {"Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention"}


def onnx_model(name: str, tiny: bool):
    """(model, inputs(seq) -> kwargs, the onnxruntime.transformers model type or None, heads, hidden)."""
    import transformers

    torch.manual_seed(0)
    width, layers, heads = (64, 2, 4) if tiny else (768, 12, 12)
    ids = lambda seq: torch.randint(3, 500, (1, seq), generator=torch.Generator().manual_seed(seq))  # noqa: E731
    if name == "gpt2":
        model = zoo.build("gpt2", "eager", device="cpu", tiny=tiny)
        return model, lambda seq: {"input_ids": ids(seq), "use_cache": False}, "gpt2", heads, width
    if name == "bert":
        config = transformers.BertConfig(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                                         intermediate_size=4 * width, max_position_embeddings=2048,
                                         attn_implementation="eager")
        ones = lambda seq: torch.ones(1, seq, dtype=torch.long)  # noqa: E731
        return (transformers.BertModel(config).eval(),
                lambda seq: {"input_ids": ids(seq), "attention_mask": ones(seq)}, "bert", heads, width)
    if name == "llama":
        config = transformers.LlamaConfig(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                                          num_key_value_heads=heads // 3 if not tiny else 2, intermediate_size=
                                          8 * width // 3, vocab_size=32000, max_position_embeddings=4096,
                                          attn_implementation="eager")
        return (transformers.LlamaForCausalLM(config).eval(), lambda seq: {"input_ids": ids(seq), "use_cache": False},
                None, heads, width)
    if name == "xdecoder":
        from x_transformers import Decoder, TransformerWrapper

        model = TransformerWrapper(num_tokens=32000, max_seq_len=4096,
                                   attn_layers=Decoder(dim=width, depth=layers, heads=heads)).eval()
        return model, lambda seq: {"x": ids(seq)}, None, heads, width
    raise SystemExit(f"unknown model {name!r}: gpt2, bert, llama, xdecoder")


def export_forms(name: str, seq: int, forms: list, folder: str, tiny: bool) -> dict:
    """Each form's ONNX file, with what the export made of the attention (or the error that stopped it)."""
    from sdpa_rewrite.to_onnx import export_onnx

    model, inputs, model_type, heads, hidden = onnx_model(name, tiny)
    kwargs = inputs(seq)
    out = {}
    with torch.no_grad():
        reference = model(**kwargs)
    reference = reference if isinstance(reference, torch.Tensor) else reference[0]
    np.savez(os.path.join(folder, "inputs.npz"), **{k: v.numpy() for k, v in kwargs.items()
                                                    if isinstance(v, torch.Tensor)})
    np.save(os.path.join(folder, "reference.npy"), reference.float().numpy())
    for form in forms:
        path, info, started = os.path.join(folder, f"{form}.onnx"), {}, time.perf_counter()
        try:
            if form == "rewritten_ort":
                exported = export_onnx(model, (), kwargs, path, check=False)
                info["sites"] = f"{exported.attention_sites}/{len(exported.sites)}"
            else:
                program = torch.onnx.export(model, (), kwargs=kwargs, dynamo=True, opset_version=23, verbose=False,
                                            optimize=form == "eager_ort")
                program.save(path)
                if form == "eager_ort_fused":
                    if model_type is None:
                        raise RuntimeError("onnxruntime.transformers.optimizer knows no model type for it")
                    from onnxruntime.transformers import optimizer

                    fused = optimizer.optimize_model(path, model_type=model_type, num_heads=heads, hidden_size=hidden)
                    fused.save_model_to_file(path)
            import onnx

            ops = collections.Counter(n.op_type for n in onnx.load(path, load_external_data=False).graph.node)
            info.update(attention_ops=sum(ops[o] for o in FUSED_OPS), softmax_ops=ops["Softmax"])
        except Exception as e:
            info["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        info["export_s"] = round(time.perf_counter() - started, 2)
        out[form] = (path, info)
    return out


def run_module(module: str, *argv) -> tuple:
    """`python -m module argv...` in a fresh process from the repository root: (the JSON lines it printed, the
    completed process)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-m", module, *map(str, argv)], cwd=root, capture_output=True, text=True)
    return [json.loads(ln) for ln in done.stdout.splitlines() if ln.startswith("{")], done


def last_line(done: subprocess.CompletedProcess) -> str:
    return (done.stderr.strip().splitlines() or ["no output"])[-1][:200]


def over_rounds(runs: list, peak: str) -> dict:
    """A form's row from its rounds: the round that peaked highest (`peak`), with `ms` the median of the rounds'
    medians and every round's ms."""
    row = dict(max(runs, key=lambda r: r[peak]))
    row.update(ms=round(statistics.median(r["ms"] for r in runs), 3), rounds_ms=[r["ms"] for r in runs])
    return row


def time_in_process(path: str, folder: str, reps: int) -> dict:
    """Run one ONNX file in a fresh process (bench/ort_run.py): its time, peak memory and error against eager."""
    lines, done = run_module("bench.ort_run", path, folder, reps)
    if done.returncode or not lines:
        return {"error": last_line(done)}
    return lines[-1]


def onnx_rows(a, record: Record) -> list:
    """Per model and length: every form exported once, then each form's process run `--rounds` times, the forms in
    turn (A B C A B C ...), so that a slow spell of the machine falls on every form alike; a row's `ms` is the
    median of its rounds' medians."""
    rows = []
    for name in a.models.split(","):
        for seq in [int(s) for s in a.seqs.split(",")]:
            with tempfile.TemporaryDirectory() as folder:
                exported = export_forms(name, seq, a.forms.split(",") if a.forms else list(ONNX_FORMS), folder,
                                        a.tiny)
                reps = a.reps if seq < 2048 else max(3, a.reps // 2)
                rounds: dict = {form: [] for form, (_, info) in exported.items() if "error" not in info}
                for _ in range(a.rounds):
                    for form in rounds:
                        rounds[form].append(time_in_process(exported[form][0], folder, reps))
                base = None
                for form, (path, info) in exported.items():
                    row = {"model": name, "seq": seq, "form": form, **info}
                    runs = [r for r in rounds.get(form, []) if "ms" in r]
                    if runs:
                        row.update(over_rounds(runs, "model_and_run_mib"))
                    elif form in rounds:
                        row.update(rounds[form][0])                                          # its error
                    base = row.get("ms") if form == "eager_ort" else base
                    if base and row.get("ms"):
                        row["vs_eager_ort"] = round(base / row["ms"], 3)
                    rows.append(record.add("onnx", row))
    return rows


def aoti_rows(a, record: Record) -> list:
    """Per model and length group: every form packaged once, then each package's process run `--rounds` times, the
    forms in turn; a row's `ms` is the median of its rounds' medians, `vs_first` against the first form's."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    forms, rows = a.forms.split(",") if a.forms else list(AOTI_FORMS), []
    with tempfile.TemporaryDirectory() as folder:
        for name in a.models.split(","):
            longest = zoo.config(name, "eager", a.tiny).max_position_embeddings      # GPT-2's n_positions too
            seqs = [int(s) for s in a.seqs.split(",") if int(s) <= longest]
            if len(seqs) < len(a.seqs.split(",")):
                rows.append(record.add("aoti", {"model": name, "error": f"lengths past {longest} positions skipped"}))
            shared = os.path.join(folder, name)           # the first form's logits, which the others are compared with
            os.makedirs(shared, exist_ok=True)
            # one package per length (--static), or one with the length dynamic for all of them
            for group in [[s] for s in seqs] if a.static else [seqs]:
                seq_dim = None if a.static else torch.export.Dim("seq", min=16, max=max(group))
                packaged = {form: aoti_package(a, name, form, group, seq_dim, device, dtype, folder) for form in forms}
                runs: dict = {form: [] for form, info in packaged.items() if "package" in info}
                for _ in range(a.rounds):
                    for form in runs:
                        runs[form].append(time_package(packaged[form]["package"], name, shared, a.reps, group))
                first: dict = {}
                for form, info in packaged.items():
                    for seq in group:
                        row = {"model": name, "seq": seq, "form": form,
                               **{k: v for k, v in info.items() if k != "package"}}
                        measured = [r[seq] for r in runs.get(form, []) if "ms" in r.get(seq, {})]
                        if measured:
                            row.update(over_rounds(measured, "peak_mib"))
                            row["vs_first"] = round(first.setdefault(seq, row["ms"]) / row["ms"], 3)
                        elif runs.get(form):
                            row.update(runs[form][0].get(seq, {}))                           # its error
                        rows.append(record.add("aoti", row))
    return rows


def aoti_package(a, name, form, seqs, seq_dim, device, dtype, folder) -> dict:
    """One model and form exported, (rewritten,) and packaged with AOTInductor: {package, compile_s, sites} or
    {error}."""
    from torch._inductor import aoti_compile_and_package

    import sdpa_rewrite

    model = zoo.build(name, "sdpa" if form == "native_aoti" else "eager", device=device, dtype=dtype, tiny=a.tiny)
    kwargs = {**zoo.inputs(name, 1, seqs[0], device=device), "use_cache": False}
    started, sites = time.perf_counter(), ""
    try:
        with torch.no_grad():
            shapes = None if seq_dim is None else {"input_ids": {1: seq_dim}, "use_cache": None}
            program = torch.export.export(model, (), kwargs, strict=False, dynamic_shapes=shapes)
            if form == "rewritten_aoti":
                program = sdpa_rewrite.rewrite(program)
                report = sdpa_rewrite.report_of(program)
                sites = f"{len(report.rewritten)}/{len(report.sites)}"
            package = aoti_compile_and_package(program,
                                               package_path=os.path.join(folder, f"{name}_{form}_{seqs[0]}.pt2"))
    except Exception as e:
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    finally:
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    return {"package": package, "compile_s": round(time.perf_counter() - started, 1), "sites": sites}


def time_package(package: str, name: str, shared: str, reps: int, seqs: list) -> dict:
    """Load and time one package at each length in a process of its own (bench/aoti_run.py): a crash in the
    package's native code costs this run, and its memory is the package's alone. {seq: row or {error}}."""
    lines, done = run_module("bench.aoti_run", package, name, shared, reps, *seqs)
    measured = {r["seq"]: r for r in lines}
    if len(measured) < len(seqs):
        print(done.stderr[-3000:], file=sys.stderr)     # faulthandler's stack of a crashed package
        error = f"exit {done.returncode} while loading or running the package: {last_line(done)}"
        for seq in seqs:
            measured.setdefault(seq, {"error": error})
    return measured


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runtime", choices=("onnx", "aoti"), default="onnx")
    ap.add_argument("--models", default=None, help="onnx: gpt2,bert,llama,xdecoder; aoti: llama8,gpt2")
    ap.add_argument("--seqs", default="128,512,2048")
    ap.add_argument("--forms", default=None)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3, help="each form's process this many times, the forms in turn")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--static", action="store_true", help="aoti: one package per length, static shapes")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    faulthandler.enable()                 # a crash inside a packaged model's native code still names its Python frame
    a.models = a.models or ("gpt2,bert,llama,xdecoder" if a.runtime == "onnx" else "llama8,gpt2")
    record = Record(a.json, {"runtime": a.runtime, "command": " ".join(sys.argv)})
    print(versions())
    rows = onnx_rows(a, record) if a.runtime == "onnx" else aoti_rows(a, record)
    from tabulate import tabulate

    memory = ["model_and_run_mib"] if a.runtime == "onnx" else ["peak_mib", "loaded_mib"]
    keys = ["model", "seq", "form", "ms", "iqr_ms", *memory,
            "vs_eager_ort" if a.runtime == "onnx" else "vs_first", "attention_ops" if a.runtime == "onnx" else "sites",
            "error"]
    print(tabulate([[r.get(k, "") for k in keys] for r in rows], headers=keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
