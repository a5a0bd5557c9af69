"""Regional compilation: each transformer layer compiled on its own (as TorchTitan, torchtune and accelerate's
`compile_regions` do, and as FSDP2 wraps blocks), so the model's mask reaches every layer's graph as an input.
Forward and training step of each form, side by side in one process:

    inductor_sdpa            attn_implementation="sdpa", every layer `layer.compile()` (Inductor)
    backend_inductor         attn_implementation="eager", every layer compiled with backend="sdpa_rewrite"
    backend_inductor_masks   the same with options={"runtime_verdicts": False}: the input mask kept as a mask
                             (the backend before run-time verdicts)
    backend_inductor_noflex  options={"flex": False}: a padded batch's mask read whole by SDPA, not as a
                             FlexAttention BlockMask of its visible tiles
    backend_inductor_flex_union  plan.DENSE_FLEX_PER_ROW off: that BlockMask one for the whole batch, not an
                             entry per batch row

    PYTHONPATH=. python bench/regional.py llama8 gpt2 [--shape 4x2048] [--train-shape 4x1024] [--padded left]
                                          [--fsdp2] [--forms ...] [--json out.json] [--tiny]

`--fsdp2` wraps each layer (and then the model) with `fully_shard` in a one-process group before compiling each
layer, as an FSDP2 training script does (nccl on CUDA, gloo on the CPU). Forward rows: bf16 weights on CUDA (fp32 on
the CPU), under no_grad; training rows: fp32 weights, bf16 autocast on CUDA, fused AdamW, `use_cache=False`. Times are
medians of CUDA events (bench/timing.py); `attn_ms` is the self device time of the attention kernels in one
profiled forward; `verdicts` counts the run-time mask classifications of a forward (host syncs), `verdict_ms` is
the median time of one (the device synchronised by its read-back).
`torch._dynamo.config.recompile_limit` is raised so that no layer falls back to running uncompiled.
"""
from __future__ import annotations

import argparse
import gc
import os
import re
import statistics
import sys
import time

import torch
from tabulate import tabulate

import sdpa_rewrite  # noqa: F401  (registers the backend)
import sdpa_rewrite.runtime as runtime
from bench import zoo
from bench.models import padding_mask, site_counts
from bench.timing import Record, measure, profiled, versions
from sdpa_rewrite import plan
from bench.training import print_profile

FORMS = ["inductor_sdpa", "backend_inductor", "backend_inductor_masks"]
ATTENTION = re.compile(r"attention|fmha|flash|cudnn|sdpa|softmax", re.I)


def layers(model):
    return model.model.layers if hasattr(model, "model") else model.transformer.h


def regional(model, form: str, reports: list, fsdp2: bool):
    """Compile each layer alone, as the form says (and shard it first with --fsdp2)."""
    if fsdp2:
        from torch.distributed.fsdp import fully_shard

        for layer in layers(model):
            fully_shard(layer)
        fully_shard(model)
    plan.DENSE_FLEX_PER_ROW = not form.endswith("_flex_union")  # read when the layers compile, on the first call
    for layer in layers(model):
        if form.startswith("backend"):
            options = {"report": reports.append}
            if form == "backend_inductor_masks":
                options["runtime_verdicts"] = False
            if form == "backend_inductor_noflex":
                options["flex"] = False
            layer.compile(backend="sdpa_rewrite", options=options)
        else:
            layer.compile()
    return model


def build(name: str, form: str, device: str, dtype, tiny: bool, fsdp2: bool, reports: list):
    torch._dynamo.reset()
    model = zoo.build(name, "sdpa" if form.endswith("sdpa") else "eager", device=device, dtype=dtype, tiny=tiny)
    return regional(model, form, reports, fsdp2)


def inputs(name: str, batch: int, seq: int, device: str, padded: str, labels: bool = False) -> dict:
    args = zoo.inputs(name, batch, seq, device=device, labels=labels)
    if padded == "left":
        args["attention_mask"] = padding_mask(batch, seq, device)
    elif padded == "right":
        args["attention_mask"] = padding_mask(batch, seq, device).flip(-1)
    return args


class Verdicts:
    """Counts run-time mask classifications (each is one host sync) and times them."""

    def __init__(self):
        self.count, self.ms, self._kind = 0, [], runtime.runtime_kind
        runtime.runtime_kind = self._counted

    def _counted(self, *a):
        self.count += 1
        start = time.perf_counter()
        verdict = self._kind(*a)
        self.ms.append((time.perf_counter() - start) * 1e3)
        return verdict


def attention_ms(fn, device: str) -> float | None:
    if device != "cuda":
        return None
    events = profiled(fn, 1, device)
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA and ATTENTION.search(e.key)]
    return round(sum(e.self_device_time_total for e in kernels) / 1e3, 3)


def forward_rows(name, batch, seq, forms, *, device, tiny, padded, fsdp2, reps, record, verdicts,
                 profile_rows: int = 0) -> list:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    args = inputs(name, batch, seq, device, padded)
    rows, ref = [], None
    for form in forms:
        reports = []
        model = build(name, form, device, dtype, tiny, fsdp2, reports)
        with torch.no_grad():
            start = time.perf_counter()
            logits = model(**args).logits.float()
            compile_s = time.perf_counter() - start
            ref = logits if ref is None else ref
            err = ((logits - ref).abs().max() / ref.abs().max()).item()
            del logits
            t = measure(lambda: model(**args).logits, reps=reps, device=device)  # noqa: B023
            before = verdicts.count
            for _ in range(5):
                model(**args)
            syncs, verdict_ms = (verdicts.count - before) // 5, sorted(verdicts.ms[before:])
            attn = attention_ms(lambda: model(**args), device)  # noqa: B023
            if profile_rows:
                print_profile(lambda: model(**args), f"{name} forward {form}", profile_rows, device, steps=1)  # noqa: B023
                host_profile(lambda: model(**args), f"{name} forward {form}", profile_rows, device)  # noqa: B023
        done, found, _ = site_counts(reports)
        rows.append(record.add("forward", {
            "model": name, "shape": f"B{batch} S{seq}" + (f" {padded}-padded" if padded else ""), "form": form,
            "fsdp2": fsdp2, "ms": round(t.ms, 2), "iqr_ms": round(t.spread_ms, 2),
            "peak_mib": None if t.peak_mib != t.peak_mib else round(t.peak_mib), "attn_ms": attn,
            "verdicts": syncs, "verdict_ms": round(verdict_ms[len(verdict_ms) // 2], 3) if verdict_ms else None,
            "compile_s": round(compile_s, 1), "sites": f"{done}/{found}" if reports else "", "kernel": kernels(reports),
            "rel_err": float(f"{err:.2e}"), "err_vs": forms[0]}))
        del model
        _free(device)
    return rows


def train_rows(name, batch, seq, forms, *, device, tiny, padded, fsdp2, reps, record) -> list:
    args = inputs(name, batch, seq, device, padded, labels=True)
    rows = []
    for form in forms:
        reports = []
        model = build(name, form, device, torch.float32, tiny, fsdp2, reports).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")

        def step():
            with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                loss = model(**args, use_cache=False).loss  # noqa: B023
            loss.backward()
            opt.step()  # noqa: B023
            opt.zero_grad(set_to_none=True)  # noqa: B023
            return loss.detach()

        start = time.perf_counter()
        loss = step().float().item()
        compile_s = time.perf_counter() - start
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t = measure(step, warmup=2, reps=reps, device=device)
        peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
        done, found, _ = site_counts(reports)
        rows.append(record.add("steps", {
            "model": name, "shape": f"B{batch} S{seq}" + (f" {padded}-padded" if padded else ""), "form": form,
            "fsdp2": fsdp2, "step_ms": round(t.ms, 1), "iqr_ms": round(t.spread_ms, 1),
            "peak_mib": round(peak) if peak else None, "first_step_s": round(compile_s, 1),
            "sites": f"{done}/{found}" if reports else "", "kernel": kernels(reports), "first_loss": round(loss, 3)}))
        del model, opt
        _free(device)
    return rows


def host_profile(fn, title: str, rows: int, device: str, calls: int = 10) -> None:
    """Where the host's time goes in `calls` forwards (cProfile, cumulative): regional compile is often
    host-bound, and what runs between the compiled layers (the model's own mask building) shows here."""
    import cProfile
    import pstats

    profile = cProfile.Profile()
    profile.enable()
    for _ in range(calls):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    profile.disable()
    print(f"== host profile: {title} ({calls} forwards)")
    pstats.Stats(profile).sort_stats("cumulative").print_stats(rows)


def mask_cost(name: str, batch: int, seq: int, device: str, tiny: bool, record: Record, pairs: int = 100) -> None:
    """What the backend adds to a forward beyond Inductor on the sdpa model and the eager model's own mask building.
    The two forms are called alternately `pairs` times in one process (so a slow spell of the machine falls on
    both), with Python's garbage collector held off, and transformers' `create_causal_mask` is timed inside each
    forward (the device synchronised around it); per pair, backend - sdpa - the backend's mask building. `mask_ms`:
    each form's mask building (the sdpa model's is near nothing: it hands SDPA is_causal)."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    args = zoo.inputs(name, batch, seq, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    models = {form: build(name, form, device, dtype, tiny, False, []) for form in ("inductor_sdpa", "backend_inductor")}
    module = sys.modules[type(models["inductor_sdpa"].base_model).__module__]     # both models' modeling module
    original, building = module.create_causal_mask, []

    def timed(*a, **k):
        sync()
        start = time.perf_counter()
        out = original(*a, **k)
        sync()
        building.append((time.perf_counter() - start) * 1e3)
        return out

    module.create_causal_mask = timed
    times, mask_ms = {form: [] for form in models}, {form: [] for form in models}
    try:
        with torch.no_grad():
            for model in models.values():
                for _ in range(3):
                    model(**args)
            gc.collect()
            gc.disable()
            for i in range(pairs):
                for form in (models if i % 2 else reversed(models)):
                    building.clear()
                    sync()
                    start = time.perf_counter()
                    models[form](**args)
                    sync()
                    times[form].append((time.perf_counter() - start) * 1e3)
                    mask_ms[form].append(sum(building))
    finally:
        gc.enable()
        module.create_causal_mask = original
    share = sorted(b - a - m for a, b, m in zip(times["inductor_sdpa"], times["backend_inductor"],
                                               mask_ms["backend_inductor"]))
    quartiles = statistics.quantiles(share, n=4)
    median = lambda x: round(statistics.median(x), 3)  # noqa: E731
    record.add("mask_cost", {"model": name, "shape": f"B{batch} S{seq}", "pairs": pairs,
                             "sdpa_ms": median(times["inductor_sdpa"]), "backend_ms": median(times["backend_inductor"]),
                             "mask_ms": {form: median(ms) for form, ms in mask_ms.items()},
                             "backend_share_ms": median(share), "share_q1_q3": [round(quartiles[0], 3),
                                                                               round(quartiles[2], 3)]})
    del models
    _free(device)


def kernels(reports: list) -> str:
    """The report's CUDA kernel column, as the rewrite predicted it (under autocast: in autocast's dtype)."""
    return ", ".join(sorted({s.kernel for r in reports for s in r.sites if s.kernel}))


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _process_group(device: str) -> None:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29511")
    torch.distributed.init_process_group("nccl" if device == "cuda" else "gloo", rank=0, world_size=1)
    if device == "cuda":
        torch.cuda.set_device(0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+", choices=sorted(zoo.MODELS))
    ap.add_argument("--forms", default=",".join(FORMS))
    ap.add_argument("--shape", default="4x2048", help="BxS of the forward rows ('' for none)")
    ap.add_argument("--train-shape", default="4x1024", help="BxS of the training rows ('' for none)")
    ap.add_argument("--padded", choices=["left", "right"], help="an attention_mask with padding")
    ap.add_argument("--fsdp2", action="store_true", help="fully_shard each layer (one-process group) before compiling")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--profile-rows", type=int, default=0, help="print each form's top kernels of one forward")
    ap.add_argument("--tiny", action="store_true", help="2-layer models: check the script, not the speed")
    ap.add_argument("--mask-cost", action="store_true", help="the backend's share of a forward beyond Inductor on the "
                    "sdpa model and the eager model's own mask building, the two forms called alternately")
    ap.add_argument("--pairs", type=int, default=100, help="--mask-cost: forwards of each form")
    ap.add_argument("--json")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch._dynamo.config.recompile_limit = 256
    torch._dynamo.config.accumulated_recompile_limit = 4096
    if args.fsdp2:
        _process_group(device)
    forms, record, verdicts = args.forms.split(","), Record(args.json), Verdicts()
    fwd, steps = [], []
    for name in args.models:
        if args.shape:
            b, s = map(int, args.shape.split("x"))
            fwd += forward_rows(name, b, s, forms, device=device, tiny=args.tiny, padded=args.padded,
                                fsdp2=args.fsdp2, reps=args.reps, record=record, verdicts=verdicts,
                                profile_rows=args.profile_rows)
        if args.mask_cost and args.shape:
            b, s = map(int, args.shape.split("x"))
            mask_cost(name, b, s, device, args.tiny, record, args.pairs)
        if args.train_shape:
            b, s = map(int, args.train_shape.split("x"))
            steps += train_rows(name, b, s, forms, device=device, tiny=args.tiny, padded=args.padded,
                                fsdp2=args.fsdp2, reps=max(5, args.reps // 2), record=record)
    print(versions())
    for rows in (fwd, steps):
        if rows:
            print(tabulate(rows, headers="keys", tablefmt="github"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
