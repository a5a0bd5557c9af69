"""Training: one full step (bf16 autocast forward, backward, fused AdamW step) of the bench/zoo.py models, in
the forms of bench/models.py; step time, peak memory, and the largest batch that fits.

    PYTHONPATH=. python bench/training.py gpt2 llama [--forms eager,native_sdpa,inductor_sdpa,backend_inductor]
                                          [--shape 8x1024] [--max-batch 1024,2048] [--json out.json] [--tiny]

The step passes `use_cache=False`, as a training loop should: with transformers 5.17's OPT the default KV cache
made Dynamo recompile every layer and leave 16 of 24 uncompiled (RESULTS.md; the rows measured before this carry
no `use_cache` key). Weights and optimizer state are fp32 (mixed precision: `torch.autocast(dtype=torch.bfloat16)`;
bf16 needs no loss scaling). Dropout stays as each config sets it (GPT-2, OPT and T5 train with attention dropout, which
the rewrite passes to SDPA as `dropout_p`), so the first losses of the forms agree only to dropout noise;
training equal to eager is checked on the CPU by tests/test_transformers.py with dropout off. Step time is the median of CUDA-event timings after 3 warm-up steps (the first compiles and
creates the optimizer state). Peak memory is the whole device's peak allocation during one step: weights,
gradients, optimizer state and activations, which is what decides the largest batch.

`--max-batch S,...`: for eager and backend_inductor at each sequence length S, the largest batch whose step
fits on the device. Peak memory is affine in the batch, so it is measured at two batches, the largest batch
is predicted from the line, and the prediction is then checked by real steps (walking up or down one batch
at a time) until batch B fits and B+1 runs out of memory. Every compiled batch is its own static-shape
compile (`dynamic=False`), as a training run with a fixed batch gets; `--dynamic-batch` compiles once with the
batch symbolic (the causal mask still folds: only the sequence length must be static), which is much cheaper
on device time.
"""
from __future__ import annotations

import argparse
import gc
import sys
import time

import torch
from tabulate import tabulate

import sdpa_rewrite  # noqa: F401  (registers the backend)
from bench import zoo
from bench.models import compiled, impl, site_counts
from bench.timing import Record, kernel_totals, measure, profiled, versions

FORMS = ["eager", "native_sdpa", "inductor_sdpa", "backend_inductor"]


class Trainer:
    """One model + optimizer, and a step function compiled the way `form` says."""

    def __init__(self, name: str, form: str, *, device: str, tiny: bool, dynamic_batch: bool = False):
        self.name, self.form, self.device, self.dynamic_batch = name, form, device, dynamic_batch
        self.model = zoo.build(name, impl(form), device=device, dtype=torch.float32, tiny=tiny).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=device == "cuda")
        self.reports: list = []
        self.forward = self._compile()

    def _compile(self):
        torch._dynamo.reset()
        # dynamic=None: the batch is marked dynamic in `inputs`; else one static compile per batch
        return compiled(self.model, self.form, self.reports, dynamic=None if self.dynamic_batch else False)

    def step(self, args: dict) -> torch.Tensor:
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        with torch.autocast(self.device, dtype=dtype, enabled=self.device == "cuda"):
            loss = self.forward(**args, use_cache=False).loss   # a training step has no use for a KV cache
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.detach()

    def inputs(self, batch: int, seq: int) -> dict:
        args = zoo.inputs(self.name, batch, seq, device=self.device, labels=True)
        if self.dynamic_batch:                           # one compile with a symbolic batch serves every batch
            for value in args.values():
                torch._dynamo.maybe_mark_dynamic(value, 0)
        return args

    def fits(self, batch: int, seq: int) -> float | None:
        """Peak GiB of one step at this batch (after a warm-up step), or None when it runs out of memory."""
        args = self.inputs(batch, seq)
        if not self.dynamic_batch:
            self.forward = self._compile()               # a fresh static-shape compile for this batch
        try:
            self.step(args)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.step(args)
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**30
        except torch.OutOfMemoryError:
            return None
        finally:
            self.opt.zero_grad(set_to_none=True)
            del args
            gc.collect()
            torch.cuda.empty_cache()


def step_rows(name: str, batch: int, seq: int, forms: list, *, device: str, tiny: bool, reps: int,
              record: Record, profile_rows: int = 0) -> list:
    args = zoo.inputs(name, batch, seq, device=device, labels=True)
    rows = []
    for form in forms:
        trainer = Trainer(name, form, device=device, tiny=tiny)
        start = time.perf_counter()
        loss = trainer.step(args).float().item()
        compile_s = time.perf_counter() - start
        t = measure(lambda: trainer.step(args), warmup=2, reps=reps, device=device)  # noqa: B023, F821  (called before the del below)
        total = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
        done, found, seconds = site_counts(trainer.reports)
        if profile_rows:
            print_profile(lambda: trainer.step(args), f"{name} B{batch} S{seq} {form}", profile_rows, device)  # noqa: B023, F821  (called before the del below)
        rows.append(record.add("steps", {"model": name, "shape": f"B{batch} S{seq}", "form": form, "step_ms": round(t.ms, 1),
                     "iqr_ms": round(t.spread_ms, 1), "peak_mib": round(total) if total else None,
                     "first_step_s": round(compile_s, 1), "sites": f"{done}/{found}" if trainer.reports else "",
                     "first_loss": round(loss, 3), "use_cache": False}))
        del trainer
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def print_profile(step, title: str, rows: int, device: str, steps: int = 3) -> None:
    """The top kernels of `steps` training steps by self device time, and the launch count: where two forms' step
    times differ, this says which kernels differ."""
    events = profiled(step, steps, device)
    launches, kernel_ms = kernel_totals(events)
    sort = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    print(f"== profile: {title} ({steps} steps; {launches} device kernels, "
          f"{kernel_ms / steps:.1f} ms of kernel time per step)")
    print(events.table(sort_by=sort, row_limit=rows, max_name_column_width=90), flush=True)


def largest_batch(name: str, seq: int, form: str, *, tiny: bool, record: Record, probes=(2, 4), limit: int = 4096,
                  dynamic_batch: bool = False) -> dict:
    trainer = Trainer(name, form, device="cuda", tiny=tiny, dynamic_batch=dynamic_batch)
    tried = {}

    def fits(b):
        if b not in tried:
            tried[b] = trainer.fits(b, seq)
            record.add("batch_tries", {"model": name, "seq": seq, "form": form, "batch": b,
                                       "peak_gib": round(tried[b], 2) if tried[b] else "out of memory"})
        return tried[b] is not None

    capacity = torch.cuda.get_device_properties(0).total_memory / 2**30
    out = _search(name, seq, form, fits, tried, capacity, probes, limit)
    sites = [s for r in trainer.reports for s in r.sites]
    out.update(attention_compiles=sum(bool(r.sites) for r in trainer.reports) if trainer.reports else None,
               dynamic_batch=dynamic_batch,
               causal_sites=f"{sum(s.causal == 'top-left' for s in sites)}/{len(sites)}" if sites else None)
    return out


def _search(name, seq, form, fits, tried, capacity, probes, limit) -> dict:
    """Probe two batches, predict the largest from the affine fit (aiming 2% under capacity), then settle it
    with real steps: bisect down if the guess does not fit, step up (1, 2, 4, … batches) while it fits, then bisect."""
    lo, hi = probes
    if not fits(lo):
        return {"model": name, "seq": seq, "form": form, "largest_batch": f"< {lo}", "tried": len(tried)}
    if not fits(hi):
        ok, bad, guess = lo, hi, lo
    else:
        per = (tried[hi] - tried[lo]) / (hi - lo)
        guess = max(hi, min(limit, int(lo + (0.98 * capacity - tried[lo]) / per))) if per > 0 else limit
        ok, bad = (guess, None) if fits(guess) else (hi, guess)
    step = 1
    while bad is None and ok < limit:
        nxt = min(limit, ok + step)
        ok, bad, step = (nxt, None, 2 * step) if fits(nxt) else (ok, nxt, step)
    while bad is not None and bad - ok > 1:
        mid = (ok + bad) // 2
        ok, bad = (mid, bad) if fits(mid) else (ok, mid)
    per = (tried[hi] - tried[lo]) / (hi - lo) if tried.get(hi) else None
    return {"model": name, "seq": seq, "form": form, "largest_batch": ok, "peak_gib_at_largest": round(tried[ok], 1),
            "gib_per_sample": round(per, 3) if per else None, "predicted": guess, "tried": len(tried)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+", choices=sorted(zoo.MODELS))
    ap.add_argument("--forms", default=",".join(FORMS))
    ap.add_argument("--shape", default="8x1024", help="BxS of the step-time rows")
    ap.add_argument("--max-batch", default="", help="sequence lengths for the largest-batch search (CUDA only)")
    ap.add_argument("--max-batch-forms", default="eager,backend_inductor")
    ap.add_argument("--dynamic-batch", action="store_true",
                    help="largest batch: one compile with the batch symbolic instead of one static compile per batch")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--profile-rows", type=int, default=0, help="print each form's top kernels of 3 profiled steps")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch, seq = map(int, args.shape.split("x"))
    rows, biggest, record = [], [], Record(args.json)
    for name in args.models:
        if args.forms:
            rows += step_rows(name, batch, seq, args.forms.split(","), device=device, tiny=args.tiny, reps=args.reps,
                              record=record, profile_rows=args.profile_rows)
        for s in filter(None, args.max_batch.split(",")):
            for form in args.max_batch_forms.split(","):
                biggest.append(record.add("largest_batch", largest_batch(name, int(s), form, tiny=args.tiny, record=record,
                                                                dynamic_batch=args.dynamic_batch)))
    print(versions())
    if rows:
        print(tabulate(rows, headers="keys", tablefmt="github"))
    if biggest:
        print(tabulate(biggest, headers="keys", tablefmt="github"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
