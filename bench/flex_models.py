"""Models SDPA cannot run fast or exactly — soft-capping, attention sinks, sliding windows — whole model compiled,
forward and training step, side by side in one process (one process per model: compile caches stay apart):

    eager_inductor   attn_implementation="eager", torch.compile (Inductor): what the model gets without us
    backend_sdpa     eager model, backend="sdpa_rewrite", options={"flex": False}: SDPA targets only
    backend          eager model, backend="sdpa_rewrite": FlexAttention where plan.py chooses it
    flex_inductor    attn_implementation="flex_attention", torch.compile: transformers' own flex path
    sdpa_inductor    attn_implementation="sdpa", torch.compile (Gemma 2: drops the soft-cap, not exact)

    PYTHONPATH=. python bench/flex_models.py gemma2w [--shape 1x8192] [--train-shape 1x4096] [--forms ...]
                                             [--train-dtype fp32|bf16] [--budget-s 500] [--json out.json] [--tiny]
                                             [--ones-mask | --left-pad N]

Forward rows: bf16 weights, no_grad, `rel_err` against the fp32 eager model's logits at the tokens that are not
padding (eager_inductor's own error is the rounding bar; a padding query's row is swamped differently in fp32 and
bf16). Training rows: fp32 weights, bf16 autocast, fused AdamW, `use_cache=False`; or, with
`--train-dtype bf16`, bf16 weights and no autocast (transformers' MoE layers then take their grouped-matmul path
instead of the fallback that Inductor cannot compile backward). `compile_s` is the first call's wall time,
`kernel_load_s` the part of it spent compiling Triton kernels. A form that raises is recorded with its error;
forms past `--budget-s` are skipped. Without a GPU the rows run on the CPU (for `--tiny`, a check of the script).
"""
from __future__ import annotations

import argparse
import gc
import time
import warnings

import torch
from tabulate import tabulate

import sdpa_rewrite  # noqa: F401  (registers the backend)
from bench import zoo
from bench.models import site_counts
from bench.timing import Record, measure

FORMS = ["eager_inductor", "backend_sdpa", "backend", "flex_inductor", "sdpa_inductor"]
warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")


def build(name, form, device, dtype, tiny, reports):
    torch._dynamo.reset()
    _kernel_load_s()                               # a form's own compile only
    impl = {"flex_inductor": "flex_attention", "sdpa_inductor": "sdpa"}.get(form, "eager")
    model = zoo.build(name, impl, device=device, dtype=dtype, tiny=tiny)
    if form.startswith("backend"):
        options = {"report": reports.append}
        if form == "backend_sdpa":
            options["flex"] = False
        return model, torch.compile(model, backend="sdpa_rewrite", options=options)
    return model, torch.compile(model)


def sites(reports) -> dict:
    """The row's `sites` (rewritten/found) and `targets` columns, for the backend's forms."""
    if not reports:
        return {}
    done, found, _ = site_counts(reports)
    return {"sites": f"{done}/{found}", "targets": targets(reports)}


def targets(reports) -> str:
    sites = [s for r in reports for s in r.sites if "router" not in s.location]
    counts = {}
    for s in sites:
        key = s.target if s.rewritten else "eager"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def forward_rows(name, batch, seq, forms, *, device, tiny, reps, record, deadline, ones_mask=False, left_pad=0):
    args = zoo.inputs(name, batch, seq, device=device)
    if ones_mask or left_pad:                      # as a tokenizer hands a prompt over: the mask is a graph input
        args["attention_mask"] = torch.ones_like(args["input_ids"])
        args["attention_mask"][:, :left_pad] = 0
    masked = " all-ones attention_mask" if ones_mask else f" left padding {left_pad}" if left_pad else ""
    with torch.no_grad():
        model = zoo.build(name, "eager", device=device, dtype=torch.float32, tiny=tiny)
        ref = model(**args).logits.float()[:, left_pad:]
        del model
        _free()
    for form in forms:
        if time.perf_counter() > deadline:
            record.add("forward", {"model": name, "form": form, "skipped": "time budget"})
            continue
        reports = []
        row = {"model": name, "shape": f"B{batch} S{seq}" + masked, "form": form}
        try:
            _, compiled = build(name, form, device, torch.bfloat16, tiny, reports)
            with torch.no_grad():
                start = time.perf_counter()
                logits = compiled(**args).logits.float()[:, left_pad:]
                _sync(device)
                row["compile_s"] = round(time.perf_counter() - start, 1)
                row["kernel_load_s"] = _kernel_load_s()
                row["rel_err"] = float(f"{((logits - ref).abs().max() / ref.abs().max()).item():.2e}")
                del logits
                t = measure(lambda: compiled(**args).logits, reps=reps, device=device)  # noqa: B023
            row.update(ms=round(t.ms, 2), iqr_ms=round(t.spread_ms, 2), peak_mib=_mib(t.peak_mib), **sites(reports))
        except Exception as e:                     # a form that cannot run this model: say so, go on
            row["error"] = f"{type(e).__name__}: {str(e)[:160]}"
        record.add("forward", row)
        compiled = None
        _free()


def train_rows(name, batch, seq, forms, *, device, tiny, reps, record, deadline, weights=torch.float32):
    args = zoo.inputs(name, batch, seq, device=device, labels=True)
    autocast = weights == torch.float32
    for form in forms:
        if time.perf_counter() > deadline:
            record.add("steps", {"model": name, "form": form, "skipped": "time budget"})
            continue
        reports = []
        row = {"model": name, "shape": f"B{batch} S{seq}", "form": form,
               "weights": "fp32, bf16 autocast" if autocast else str(weights).removeprefix("torch.")}
        try:
            model, compiled = build(name, form, device, weights, tiny, reports)
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")

            def step():
                with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
                    loss = compiled(**args, use_cache=False).loss  # noqa: B023
                loss.backward()
                opt.step()  # noqa: B023
                opt.zero_grad(set_to_none=True)  # noqa: B023
                return loss.detach()

            start = time.perf_counter()
            row["first_loss"] = round(step().float().item(), 4)
            row["first_step_s"] = round(time.perf_counter() - start, 1)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t = measure(step, warmup=2, reps=reps, device=device)
            peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
            row.update(step_ms=round(t.ms, 1), iqr_ms=round(t.spread_ms, 1), peak_mib=_mib(peak), **sites(reports))
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {str(e)[:160]}"
        record.add("steps", row)
        model = compiled = opt = None
        _free()


def _kernel_load_s():
    """Seconds of the last compile spent loading (compiling) Triton kernels, from Dynamo's timing metrics: the part
    of `compile_s` that grows with a kernel's size (a sort network over the block grid, for one)."""
    from torch._dynamo.utils import compilation_time_metrics

    spent = sum(compilation_time_metrics.get("PyCodeCache.load_by_key_path", []))
    compilation_time_metrics.clear()
    return round(spent, 1)


def _free():
    gc.collect()
    torch.cuda.empty_cache()                       # a no-op where CUDA was never initialised


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _mib(x: float):
    return None if x != x else round(x)            # NaN off CUDA


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", choices=sorted(zoo.MODELS))
    ap.add_argument("--forms", default=",".join(FORMS))
    ap.add_argument("--shape", default="", help="BxS of the forward rows (default: the zoo's shape; 'none')")
    ap.add_argument("--train-shape", default="1x4096", help="BxS of the training rows ('none' for none)")
    ap.add_argument("--train-dtype", choices=["fp32", "bf16"], default="fp32",
                    help="fp32 weights under bf16 autocast, or bf16 weights without autocast")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--budget-s", type=float, default=500, help="skip the forms that would start after this")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--ones-mask", action="store_true", help="forward rows with an all-ones attention_mask input")
    ap.add_argument("--left-pad", type=int, default=0,
                    help="forward rows whose attention_mask pads N tokens on the left")
    ap.add_argument("--json")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    deadline = time.perf_counter() + args.budget_s
    torch._dynamo.config.recompile_limit = 64
    forms, record = args.forms.split(","), Record(args.json)
    shape = args.shape or "x".join(map(str, zoo.MODELS[args.model].shapes[0]))
    if shape != "none":
        b, s = map(int, shape.split("x"))
        forward_rows(args.model, b, s, forms, device=device, tiny=args.tiny, reps=args.reps, record=record,
                     deadline=deadline, ones_mask=args.ones_mask, left_pad=args.left_pad)
    if args.train_shape != "none":
        b, s = map(int, args.train_shape.split("x"))
        train_rows(args.model, b, s, forms, device=device, tiny=args.tiny, reps=args.reps, record=record,
                   deadline=deadline, weights={"fp32": torch.float32, "bf16": torch.bfloat16}[args.train_dtype])
    for table, rows in record.tables.items():
        print(f"\n{table}")
        print(tabulate(rows, headers="keys", tablefmt="github"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
