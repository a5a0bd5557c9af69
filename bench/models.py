"""transformers models (random weights, fp16): forward latency and peak memory, and generate() tokens/s with a
KV cache, in these forms:

    eager            attn_implementation="eager"
    native_sdpa      attn_implementation="sdpa"
    dynamo_sdpa      native-sdpa model + torch.compile(backend="eager"): Dynamo's own cost, no compiler
    backend_eager    eager model + torch.compile(backend="sdpa_rewrite", downstream eager)
    inductor_eager   eager model + torch.compile (Inductor)
    inductor_sdpa    native-sdpa model + torch.compile (Inductor)
    inductor_flex    attn_implementation="flex_attention" + torch.compile: transformers' own flex path
    backend_inductor eager model + torch.compile(backend="sdpa_rewrite")  (Inductor downstream)
    backend_inductor_kernel_rows   the same with options={"empty_rows": "kernel"}: query rows that see no
                     key (padding queries) are left to the kernel, as transformers' sdpa path does
    backend_inductor_noflex        the same with options={"flex": False}: every site on SDPA (a padded batch's
                     mask read whole by SDPA, not as a FlexAttention BlockMask)
    backend_inductor_flex_union    the same with plan.DENSE_FLEX_PER_ROW off: a padded batch's BlockMask is one for
                     the whole batch (the tiles every row hides), not an entry per batch row

Usage (the models are in bench/zoo.py; `--tiny` runs 2-layer models, on the CPU if there is no GPU):

    PYTHONPATH=. python bench/models.py gpt2 opt t5 llama [--forms ...] [--shapes 1x1024,8x1024] [--padded]
                                        [--generate] [--json out.json]

Forward: `model(**inputs)` under no_grad; timing and memory from bench/timing.py (median of CUDA events after
warm-up; peak allocated during one call above what was allocated before it). `compile_s` is the first call's
wall time (Dynamo + the rewrite + the downstream compiler); `rewrite_ms` is the rewrite's own share of it, from
the report. The error is max |logits − ref| / max |ref logits|, ref being the first form run (`err_vs`, eager by default) (fp16 rounding is ~1e-3).
Generate: greedy `generate()` with transformers' default dynamic KV cache from a prompt of `--prompt` tokens,
exactly `--new` new tokens; compiled forms compile `model.forward` (prefill, first decode step, then one
dynamic-shape decode graph); tokens/s is batch·new / median wall time of `--generate-reps` (3) timed calls after
one warm-up call; `best_ms_per_token` is the fastest of them. Decode at batch 1 is bound by the host (Python, guard
checks, kernel launches), and on the H200 one form measured 3.6 and 5.6 ms per token in two slots of one process:
`--isolate N` runs every form in a process of its own, N rounds in turn (A B A B ...), so no form inherits another's
compiled state or its slot in the process, and the table says how far rounds of one form differ.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
from tabulate import tabulate

import sdpa_rewrite  # noqa: F401  (registers the backend)
from bench import zoo
from bench.timing import Record, measure, measure_calls, versions
from sdpa_rewrite import plan

FORMS = ["eager", "native_sdpa", "backend_eager", "inductor_eager", "inductor_sdpa", "backend_inductor"]
GENERATE_FORMS = ["eager", "native_sdpa", "backend_eager", "inductor_sdpa", "backend_inductor"]


def compiled(fn, form: str, reports: list, dynamic=False):
    """`fn` (a model or its forward) compiled the way `form` says; uncompiled for eager / native_sdpa.
    `dynamic` as torch.compile takes it: False (a static compile per shape) or None (Dynamo's automatic)."""
    plan.DENSE_FLEX_PER_ROW = not form.endswith("_flex_union")  # read when the graph compiles, on its first call
    if form.startswith("backend"):
        options = {"report": reports.append}
        if form == "backend_eager":
            options["downstream"] = "eager"
        if form == "backend_inductor_kernel_rows":
            options["empty_rows"] = "kernel"
        if form.endswith("_noflex"):
            options["flex"] = False
        return torch.compile(fn, backend="sdpa_rewrite", options=options, dynamic=dynamic)
    if form.startswith("inductor"):
        return torch.compile(fn, dynamic=dynamic)
    if form == "dynamo_sdpa":
        return torch.compile(fn, backend="eager", dynamic=dynamic)
    return fn


def impl(form: str) -> str:
    """The attn_implementation a form's model is built with."""
    if form.endswith("sdpa"):
        return "sdpa"
    return "flex_attention" if form == "inductor_flex" else "eager"


def padding_mask(batch: int, seq: int, device: str) -> torch.Tensor:
    """Left padding: row b starts after b·seq/(2·batch) pad tokens (row 0 has none)."""
    mask = torch.ones(batch, seq, dtype=torch.long, device=device)
    for b in range(batch):
        mask[b, : b * seq // (2 * batch)] = 0
    return mask


def _mib(x: float):
    return None if x != x else round(x)          # NaN off CUDA


def site_counts(reports: list) -> tuple:
    sites = [s for r in reports for s in r.sites]
    return sum(s.rewritten for s in sites), len(sites), sum(r.seconds for r in reports)


def forward(name: str, batch: int, seq: int, forms: list, *, padded: bool, device: str, tiny: bool, reps: int,
            record: Record) -> list:
    args = zoo.inputs(name, batch, seq, device=device)
    if padded:
        args["attention_mask"] = padding_mask(batch, seq, device)
        if "decoder_input_ids" in args:
            args["decoder_attention_mask"] = torch.ones_like(args["decoder_input_ids"])
    rows, ref = [], None
    for form in forms:
        torch._dynamo.reset()
        if device == "cuda":
            torch.cuda.empty_cache()
        reports = []
        model = compiled(zoo.build(name, impl(form), device=device, tiny=tiny), form, reports)
        with torch.no_grad():
            start = time.perf_counter()
            logits = model(**args).logits.float()
            if device == "cuda":
                torch.cuda.synchronize()
            compile_s = time.perf_counter() - start
            if ref is None:
                ref = logits
            err = ((logits - ref).abs().max() / ref.abs().max()).item()
            del logits
            t = measure(lambda: model(**args).logits, reps=reps, device=device)  # noqa: B023, F821  (called before the del below)
        done, found, seconds = site_counts(reports)
        rows.append(record.add("forward", {"model": name, "shape": f"B{batch} S{seq}" + (" padded" if padded else ""), "form": form,
                     "ms": round(t.ms, 2), "iqr_ms": round(t.spread_ms, 2), "peak_mib": _mib(t.peak_mib),
                     "compile_s": round(compile_s, 1), "sites": f"{done}/{found}" if reports else "",
                     "rewrite_ms": round(seconds * 1e3, 1) if reports else None,
                     "rel_err": float(f"{err:.2e}"), "err_vs": forms[0]}))
        del model
    return rows


def generate(name: str, batch: int, forms: list, *, prompt: int, new: int, device: str, tiny: bool,
             record: Record, reps: int = 3, tokens_out: str | None = None) -> list:
    ids = zoo.inputs(name, batch, prompt, device=device)["input_ids"]
    kwargs = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False)
    rows, ref = [], None
    for form in forms:
        torch._dynamo.reset()
        reports = []
        model = zoo.build(name, impl(form), device=device, tiny=tiny)
        # decode steps change the cache length every step: Dynamo goes dynamic after the first decode graph
        model.forward = compiled(model.forward, form, reports, dynamic=None)
        with torch.no_grad():
            start = time.perf_counter()
            out = model.generate(ids, **kwargs)
            if device == "cuda":
                torch.cuda.synchronize()
            first_s = time.perf_counter() - start
            if ref is None:
                ref = out
            same = (out[:, -new:] == ref[:, -new:]).float().mean().item()
            t = measure_calls(lambda: model.generate(ids, **kwargs), warmup=0, reps=reps, device=device)  # noqa: B023, F821  (called before the del below)
        if tokens_out:
            torch.save(out[:, -new:].cpu(), tokens_out)
        done, found, _ = site_counts(reports)
        rows.append(record.add("generate", {"model": name, "shape": f"B{batch} prompt {prompt} + {new}", "form": form,
                     "tokens_per_s": round(batch * new / (t.ms / 1e3), 1), "ms_per_token": round(t.ms / new, 2),
                     "best_ms_per_token": round(t.best_ms / new, 2),
                     "peak_mib": _mib(t.peak_mib), "first_call_s": round(first_s, 1),
                     "sites": f"{done}/{found}" if reports else "", "same_tokens": round(same, 3), "tokens_vs": forms[0]}))
        del model
    return rows


def generate_isolated(name: str, forms: list, rounds: int, argv: list, record: Record) -> list:
    """`generate()` with each form in a fresh process, `rounds` times in turn; same_tokens against the first
    form's first process."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))     # `from bench import ...` in the child
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), root])))
    rows, ref = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for form in forms:
                rows_json, tokens = f"{tmp}/rows.json", f"{tmp}/tokens.pt"
                cmd = [sys.executable, __file__, name, "--generate", "--generate-forms", form, *argv,
                       "--json", rows_json, "--tokens-out", tokens]
                done = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if done.returncode != 0:
                    print(done.stdout[-2000:], done.stderr[-4000:], file=sys.stderr)
                    raise RuntimeError(f"generate({name}, {form}) failed in its own process")
                row = json.load(open(rows_json))["generate"][0]
                out = torch.load(tokens)
                ref = out if ref is None else ref
                row.update(same_tokens=round((out == ref).float().mean().item(), 3), tokens_vs=f"{forms[0]} (round 1)",
                           round=r + 1, process="own")
                rows.append(record.add("generate", row))
    return rows


def shapes(text: str | None, name: str) -> list:
    if not text:
        return list(zoo.MODELS[name].shapes)
    return [tuple(map(int, s.split("x"))) for s in text.split(",")]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+", choices=sorted(zoo.MODELS))
    ap.add_argument("--forms", default=",".join(FORMS))
    ap.add_argument("--shapes", help="BxS,BxS (default: the model's shapes in bench/zoo.py)")
    ap.add_argument("--padded", action="store_true", help="left-padded attention_mask (the mask stays a mask)")
    ap.add_argument("--generate", action="store_true", help="generate() tokens/s instead of the forward")
    ap.add_argument("--generate-forms", default=",".join(GENERATE_FORMS))
    ap.add_argument("--batch", type=int, default=1, help="generate: batch")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--generate-reps", type=int, default=3, help="generate: timed calls per form")
    ap.add_argument("--isolate", type=int, default=0, metavar="ROUNDS",
                    help="generate: each form in a process of its own, ROUNDS rounds in turn")
    ap.add_argument("--tokens-out", help=argparse.SUPPRESS)   # --isolate's child: where to save the new tokens
    ap.add_argument("--tiny", action="store_true", help="2-layer models: check the script, not the speed")
    ap.add_argument("--json")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows, record = [], Record(args.json)
    for name in args.models:
        if args.generate and args.isolate:
            child = ["--batch", str(args.batch), "--prompt", str(args.prompt), "--new", str(args.new),
                     "--generate-reps", str(args.generate_reps)] + (["--tiny"] if args.tiny else [])
            rows += generate_isolated(name, args.generate_forms.split(","), args.isolate, child, record)
        elif args.generate:
            rows += generate(name, args.batch, args.generate_forms.split(","), prompt=args.prompt, new=args.new,
                             device=device, tiny=args.tiny, record=record, reps=args.generate_reps,
                             tokens_out=args.tokens_out)
        else:
            for batch, seq in shapes(args.shapes, name):
                rows += forward(name, batch, seq, args.forms.split(","), padded=args.padded, device=device,
                                tiny=args.tiny, reps=args.reps, record=record)
    print(versions())
    print(tabulate(rows, headers="keys", tablefmt="github"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
