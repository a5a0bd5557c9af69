"""The backend through the tools users already run, each form in a process of its own (fresh Dynamo state and a
fresh Inductor cache directory, so every first call compiles from nothing):

    PYTHONPATH=. python bench/integrations.py [--parts generate,trainer,timm,gpt2mem] [--new 256] [--steps 20]
                                              [--reps 3] [--budget-s 500] [--json out.json] [--tiny]

generate  llama8 (bf16 on CUDA, fp32 on the CPU), batch 1, a 128-token prompt, exactly `--new` greedy tokens:
          uncompiled (sdpa, dynamic cache: the reference tokens), native_static (sdpa, static cache: transformers
          compiles the decode step with its default CompileConfig), backend_static (eager attention, static cache,
          `CompileConfig(backend="sdpa_rewrite", mode=None, options={"mode": "reduce-overhead", ...})`),
          native_dynamic / backend_dynamic (dynamic cache, `model.forward = torch.compile(model.forward, ...)`).
          First call's wall time, tokens/s of `--reps` timed calls (median and best), the fraction of new tokens
          equal to uncompiled's (on CUDA from one more call in fp32 with TF32 off: bf16 greedy tokens of random
          weights flip on rounding, H200 2026-12-02), Dynamo graphs compiled, sites rewritten/found.
trainer   transformers.Trainer on llama8 (fp32 weights; CUDA: B4 S1024, bf16=True; CPU --tiny: B2 S64), random
          token ids as inputs and labels, `--steps` steps: uncompiled, native_compiled (`model.compile()`),
          backend_compiled (eager attention, `model.compile(backend="sdpa_rewrite")`: accelerate refuses the name
          in TrainingArguments). First step (compile), median step after the first 3, peak memory, and the
          largest difference of the logged losses from uncompiled's (transformers releases that round the logged
          loss round it to 4 decimals).
timm      vit_base_patch16_224 (random weights), bf16, B32, forward: inductor_fused (timm's own SDPA call),
          backend_eager_attn / inductor_eager_attn (every `fused_attn = False`); rel_err against the fp32 model run
          eagerly. Skipped without timm.
gpt2mem   GPT-2 B8 S1024 fp16 forward, inductor_sdpa and backend_inductor (bench/models.py's forms): the peak
          allocated above what was allocated before it, and the blocks live at that peak, from the allocator's
          trace, grouped by allocating line (bench/step_memory.py's `_where`). CUDA only.

Rows are saved to `--json` as they come. A form that would start after `--budget-s` is recorded as skipped; a
form still running 60 s after it is killed (recorded with that error). `--tiny` (2-layer models, vit_tiny,
B2) checks the script on a CPU.
"""
from __future__ import annotations

import argparse
import collections
import copy
import dataclasses
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import transformers
from tabulate import tabulate

import sdpa_rewrite  # noqa: F401  (registers the backend)
from bench import zoo
from bench.models import _mib, compiled, impl, site_counts
from bench.step_memory import _where
from bench.timing import Record, measure, measure_calls, versions

PARTS = {"generate": ["uncompiled", "native_static", "backend_static", "native_dynamic", "backend_dynamic"],
         "trainer": ["uncompiled", "native_compiled", "backend_compiled"],
         "timm": ["inductor_fused", "backend_eager_attn", "inductor_eager_attn"],
         "gpt2mem": ["inductor_sdpa", "backend_inductor"]}
PROMPT, GRACE_S = 128, 60
LONG = ("part", "losses", "live_at_peak", "config_dropped")     # in the JSON, not in the printed tables


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _sites(reports: list) -> str:
    if not reports:
        return ""
    done, found, _ = site_counts(reports)
    return f"{done}/{found}"


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def _compile_config(device: str, **fields):
    """transformers' CompileConfig with the fields this release has (the others are returned, to be recorded);
    off CUDA flagged to compile anyway (transformers auto-compiles the decode step on accelerators only)."""
    from transformers import CompileConfig

    known = {f.name for f in dataclasses.fields(CompileConfig)}
    config = CompileConfig(**{k: v for k, v in fields.items() if k in known})
    if device != "cuda":
        config._compile_all_devices = True
    return config, sorted(set(fields) - known)


def run_generate(form: str, a, device: str, out: str) -> dict:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = zoo.build("llama8", "eager" if form.startswith("backend") else "sdpa", device=device, dtype=dtype,
                      tiny=a.tiny)
    kwargs = {"max_new_tokens": a.new, "min_new_tokens": a.new, "do_sample": False}
    reports, row = [], {}
    if form.endswith("static"):
        kwargs["cache_implementation"] = "static"
        if form == "backend_static":
            options = {"mode": "reduce-overhead", "report": reports.append}
            config, row["config_dropped"] = _compile_config(device, backend="sdpa_rewrite", mode=None, options=options)
            model.generation_config.compile_config = config
        elif device != "cuda":                           # on CUDA transformers' own default config
            model.generation_config.compile_config = _compile_config(device)[0]
    elif form.endswith("dynamic"):
        form_of_models = "backend_inductor" if form.startswith("backend") else "inductor_sdpa"
        model.forward = compiled(model.forward, form_of_models, reports, dynamic=None)
    ids = zoo.inputs("llama8", 1, PROMPT, device=device)["input_ids"]
    with torch.no_grad():
        start = time.perf_counter()
        tokens = model.generate(ids, **kwargs)[:, -a.new:]
        _sync(device)
        first_s = time.perf_counter() - start
        t = measure_calls(lambda: model.generate(ids, **kwargs), warmup=0, reps=a.reps, device=device)
        if dtype != torch.float32:   # bf16 greedy tokens of random weights flip on rounding: compare them in fp32
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            tokens = model.float().generate(ids, **kwargs)[:, -a.new:]     # (compiled again for fp32)
    torch.save(tokens.cpu(), os.path.join(out, "tokens.pt"))
    return {**row, "first_call_s": round(first_s, 1), "tokens_per_s": round(a.new / t.ms * 1e3, 1),
            "best_tokens_per_s": round(a.new / t.best_ms * 1e3, 1), "peak_mib": _mib(t.peak_mib),
            "graphs": _graphs(), "sites": _sites(reports)}


class StepTimes(transformers.TrainerCallback):
    """Wall time of every optimizer step, the device synchronised at both ends."""

    def __init__(self, device: str):
        self.device, self.times, self.start = device, [], 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        _sync(self.device)
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        _sync(self.device)
        self.times.append(time.perf_counter() - self.start)


def run_trainer(form: str, a, device: str, out: str) -> dict:
    batch, seq = (2, 64) if a.tiny else (4, 1024)
    model = zoo.build("llama8", "eager" if form.startswith("backend") else "sdpa", device=device,
                      dtype=torch.float32, tiny=a.tiny).train()
    model.config.use_cache = False
    reports = []
    if form == "native_compiled":
        model.compile()
    elif form == "backend_compiled":
        model.compile(backend="sdpa_rewrite", options={"report": reports.append})
    ids = zoo.inputs("llama8", batch * a.steps, seq, device="cpu")["input_ids"]
    data = [{"input_ids": x, "labels": x.clone()} for x in ids]
    timer = StepTimes(device)
    args = transformers.TrainingArguments(out, per_device_train_batch_size=batch, max_steps=a.steps,
                                          learning_rate=1e-4, logging_steps=1, report_to=[], save_strategy="no",
                                          seed=0, bf16=device == "cuda", use_cpu=device != "cuda",
                                          dataloader_num_workers=0, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[timer])
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    later = timer.times[3:]
    return {"shape": f"B{batch} S{seq}", "steps": len(timer.times), "first_step_s": round(timer.times[0], 2),
            "step_ms": round(statistics.median(later) * 1e3, 1) if later else None,
            "peak_mib": round(torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else None,
            "final_loss": round(losses[-1], 4) if losses else None, "losses": losses, "sites": _sites(reports)}


def run_timm(form: str, a, device: str, out: str) -> dict:
    import timm

    name, batch = ("vit_tiny_patch16_224", 2) if a.tiny else ("vit_base_patch16_224", 32)
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False).eval()       # fp32, run eagerly: the reference
    model = copy.deepcopy(reference).to(device, torch.bfloat16 if device == "cuda" else torch.float32)
    if form.endswith("eager_attn"):
        for m in model.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = False
    reports = []
    fn = (torch.compile(model, backend="sdpa_rewrite", options={"report": reports.append})
          if form.startswith("backend") else torch.compile(model))
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
    xd = x.to(next(model.parameters()).dtype)
    with torch.no_grad():
        ref = reference.to(device)(x).float()
        del reference
        start = time.perf_counter()
        got = fn(xd).float()
        _sync(device)
        compile_s = time.perf_counter() - start
        err = ((got - ref).abs().max() / ref.abs().max()).item()
        del got, ref
        t = measure(lambda: fn(xd), device=device)
    return {"model": f"{name} B{batch}", "ms": round(t.ms, 2), "iqr_ms": round(t.spread_ms, 2),
            "peak_mib": _mib(t.peak_mib), "compile_s": round(compile_s, 1), "rel_err": float(f"{err:.2e}"),
            "sites": _sites(reports)}


def run_gpt2mem(form: str, a, device: str, out: str, top: int = 12) -> dict:
    batch, seq = (2, 64) if a.tiny else (8, 1024)
    reports = []
    model = compiled(zoo.build("gpt2", impl(form), device=device, tiny=a.tiny), form, reports)
    args = zoo.inputs("gpt2", batch, seq, device=device)
    with torch.no_grad():
        for _ in range(3):                               # compile, allocator warm
            model(**args)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.memory._record_memory_history(max_entries=200_000, stacks="python")
        logits = model(**args).logits
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        snapshot = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
    trace_peak, live = live_at_peak(snapshot["device_traces"][torch.cuda.current_device()])
    groups = collections.Counter()
    for size, frames in live:
        groups[(_where(frames), size)] += 1
    lines = [f"{n:3d} x {size / 2**20:8.2f} MiB  {where}"
             for (where, size), n in sorted(groups.items(), key=lambda kv: -kv[0][1] * kv[1])[:top]]
    return {"shape": f"B{batch} S{seq}", "peak_mib": round(peak / 2**20, 1),
            "trace_peak_mib": round(trace_peak / 2**20, 1), "logits_mib": round(logits.nbytes / 2**20, 1),
            "sites": _sites(reports), "live_at_peak": lines}


def live_at_peak(trace: list) -> tuple:
    """Replays the allocator's trace (allocations after the recording started): the largest total allocated and
    the (size, frames) of every block live at that moment."""
    live, total, best, at_best = {}, 0, 0, {}
    for e in trace:
        if e["action"] == "alloc":
            live[e["addr"]] = (e["size"], e.get("frames", []))
            total += e["size"]
            if total > best:
                best, at_best = total, dict(live)
        elif e["action"] == "free_requested" and e["addr"] in live:
            total -= live.pop(e["addr"])[0]
    return best, list(at_best.values())


RUN = {"generate": run_generate, "trainer": run_trainer, "timm": run_timm, "gpt2mem": run_gpt2mem}


def skip_reason(part: str, device: str) -> str:
    if part == "timm" and importlib.util.find_spec("timm") is None:
        return "timm not installed"
    if part == "gpt2mem" and device != "cuda":
        return "CUDA only"
    return ""


def in_own_process(part: str, form: str, a, tmp: str, timeout: float) -> dict:
    """One form in a fresh process (its own Inductor cache directory); its row, or the error it died of."""
    out = os.path.join(tmp, f"{part}_{form}")
    os.makedirs(out)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))     # `from bench import ...` in the child
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), root])),
               TORCHINDUCTOR_CACHE_DIR=os.path.join(out, "torchinductor"))   # `_where` knows its files by the name
    cmd = [sys.executable, os.path.abspath(__file__), "--one", part, form, "--out", out, "--new", str(a.new),
           "--steps", str(a.steps), "--reps", str(a.reps)] + (["--tiny"] if a.tiny else [])
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)                # the child and its compile workers
        proc.communicate()
        return {"error": f"killed after {timeout:.0f} s (time budget)"}
    process_s = round(time.perf_counter() - start, 1)
    if proc.returncode != 0:
        print(stdout[-2000:], stderr[-4000:], file=sys.stderr)
        last = [line for line in stderr.splitlines() if line.strip()][-1:] or [f"exit {proc.returncode}"]
        return {"error": last[0][:200], "process_s": process_s}
    with open(os.path.join(out, "row.json")) as f:
        row = json.load(f)
    if os.path.exists(os.path.join(out, "tokens.pt")):
        row["_tokens"] = torch.load(os.path.join(out, "tokens.pt"))
    return {**row, "process_s": process_s}


def against_reference(part: str, form: str, row: dict, refs: dict) -> None:
    """same_tokens (generate) and loss_max_diff (trainer) against the part's uncompiled form."""
    tokens = row.pop("_tokens", None)
    if part == "generate" and tokens is not None:
        ref = refs.setdefault(part, tokens) if form == "uncompiled" else refs.get(part)
        row["same_tokens"] = round((tokens == ref).float().mean().item(), 3) if ref is not None else None
    if part == "trainer" and "losses" in row:
        ref = refs.setdefault(part, row["losses"]) if form == "uncompiled" else refs.get(part)
        if ref is not None and len(ref) == len(row["losses"]):
            row["loss_max_diff"] = float(f"{max(abs(x - y) for x, y in zip(row['losses'], ref)):.2e}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--forms", help="only these forms, in any part (default: every form)")
    ap.add_argument("--new", type=int, default=256, help="generate: new tokens")
    ap.add_argument("--steps", type=int, default=20, help="trainer: optimizer steps")
    ap.add_argument("--reps", type=int, default=3, help="generate: timed calls after the first")
    ap.add_argument("--budget-s", type=float, default=500, help="skip the forms that would start after this")
    ap.add_argument("--tiny", action="store_true", help="2-layer models: check the script, not the speed")
    ap.add_argument("--json")
    ap.add_argument("--one", nargs=2, metavar=("PART", "FORM"), help=argparse.SUPPRESS)   # a child: one form
    ap.add_argument("--out", help=argparse.SUPPRESS)                                       # the child's folder
    a = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.one:
        row = RUN[a.one[0]](a.one[1], a, device, a.out)
        with open(os.path.join(a.out, "row.json"), "w") as f:
            json.dump(row, f)
        return 0
    parts = a.parts.split(",")
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        ap.error(f"unknown parts {unknown}; known: {list(PARTS)}")
    deadline = time.perf_counter() + a.budget_s
    record, refs = Record(a.json), {}
    with tempfile.TemporaryDirectory() as tmp:
        for part in parts:
            for form in PARTS[part]:
                if a.forms and form not in a.forms.split(","):
                    continue
                row, left = {"part": part, "form": form}, deadline - time.perf_counter()
                skipped = skip_reason(part, device) or ("time budget" if left <= 0 else "")
                if skipped:
                    row["skipped"] = skipped
                else:
                    row.update(in_own_process(part, form, a, tmp, left + GRACE_S))
                    against_reference(part, form, row, refs)
                record.add(part, row)
    print(versions())
    for part in parts:
        rows = record.tables.get(part, [])
        print(f"\n{part}\n" + tabulate([{k: v for k, v in r.items() if k not in LONG} for r in rows],
                                      headers="keys", tablefmt="github"))
        for r in rows:
            if r.get("live_at_peak"):
                print(f"-- {r['form']}: blocks live at the peak ({r['trace_peak_mib']} MiB in the trace)")
                print("\n".join("   " + line for line in r["live_at_peak"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
