"""Training under PyTorch's own scale-out engines, launched with torchrun: DDP over the compiled model, and FSDP2
(`fully_shard`) with each block compiled alone; the backend beside Inductor on transformers' native sdpa model.
Per form: step time (median of CUDA events, rank 0), tokens/s over all ranks, peak memory per rank, the sites
rewritten on every rank, and the loss curve (same seed, same batches for every form).

    torchrun --nproc_per_node 2 bench/distributed.py llama8 [--shape 4x1024] [--steps 20] [--engines ddp,fsdp2]
                                                          [--forms inductor_sdpa,backend_inductor] [--json out.json]
    torchrun --nproc_per_node 2 bench/distributed.py gpt2 --tiny     (the CPU over gloo: checks the script only)

Forms: `inductor_sdpa` (attn_implementation="sdpa", Inductor) and `backend_inductor` (the eager model, backend
"sdpa_rewrite"). fp32 weights, bf16 autocast on CUDA, AdamW, `use_cache=False`. Rank 0 prints a table and writes
the JSON (`--plot PATH` draws the loss curves with matplotlib).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import sdpa_rewrite  # noqa: E402,F401  (registers the backend)
from bench import zoo  # noqa: E402


def blocks(model):
    return model.model.layers if hasattr(model, "model") else model.transformer.h


def wrap(model, engine: str, form: str, reports: list):
    """The model under `engine`, compiled as `form` says (the whole DDP module, or each FSDP2 block alone)."""
    backend = "sdpa_rewrite" if form == "backend_inductor" else "inductor"
    options = {"report": reports.append} if backend == "sdpa_rewrite" else None
    if engine == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [torch.cuda.current_device()] if torch.cuda.is_available() else None
        return torch.compile(DistributedDataParallel(model, device_ids=ids), backend=backend, options=options)
    from torch.distributed.fsdp import fully_shard

    for block in blocks(model):
        fully_shard(block)
        block.compile(backend=backend, options=options)
    fully_shard(model)
    return model


def run(name, engine, form, batch, seq, steps, tiny, device) -> dict:
    torch._dynamo.reset()
    impl = "sdpa" if form == "inductor_sdpa" else "eager"
    model = zoo.build(name, impl, device=device, dtype=torch.float32, tiny=tiny).train()
    reports = []
    wrapped = wrap(model, engine, form, reports)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rank = dist.get_rank()
    g = torch.Generator(device=device).manual_seed(1000 + rank)
    batches = [{"input_ids": torch.randint(3, 500, (batch, seq), device=device, generator=g)} for _ in range(steps)]
    for b in batches:
        b["labels"] = b["input_ids"].clone()
    losses, times = [], []
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i, b in enumerate(batches):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = wrapped(**b, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            times.append((time.perf_counter() - t) * 1e3)
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(mean.item() / dist.get_world_size())
    timed = sorted(times[min(3, steps - 1):])           # the first steps compile
    step_ms = timed[len(timed) // 2]
    sites = [s for r in reports for s in r.sites]
    counts = torch.tensor([sum(s.rewritten for s in sites), len(sites)], device=device)
    every = [torch.zeros_like(counts) for _ in range(dist.get_world_size())]
    dist.all_gather(every, counts)
    peak = torch.tensor([torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else 0.0], device=device)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    return {"model": name, "engine": engine, "form": form, "shape": f"B{batch} S{seq} per rank",
            "ranks": dist.get_world_size(), "step_ms": round(step_ms, 1),
            "tokens_per_s": round(batch * seq * dist.get_world_size() / step_ms * 1e3),
            "peak_mib_max_rank": round(peak.item()) if device == "cuda" else None,
            "sites_per_rank": [f"{int(c[0])}/{int(c[1])}" for c in every] if reports else None,
            "first_step_s": round(times[0] / 1e3, 1), "losses": [round(x, 4) for x in losses]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", choices=sorted(zoo.MODELS))
    ap.add_argument("--shape", default="4x1024")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--engines", default="ddp,fsdp2")
    ap.add_argument("--forms", default="inductor_sdpa,backend_inductor")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--plot")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch._dynamo.config.recompile_limit = 64
    batch, seq = map(int, args.shape.split("x"))
    rows = []
    for engine in args.engines.split(","):
        for form in args.forms.split(","):
            row = run(args.model, engine, form, batch, seq, args.steps, args.tiny, device)
            rows.append(row)
            if dist.get_rank() == 0:
                print({k: v for k, v in row.items() if k != "losses"}, flush=True)
                if args.json:
                    with open(args.json, "w") as f:
                        json.dump({"versions": _versions(), "rows": rows}, f, indent=1)
    if dist.get_rank() == 0:
        from tabulate import tabulate

        print(tabulate([{k: v for k, v in r.items() if k != "losses"} for r in rows], headers="keys",
                       tablefmt="github"))
        if args.plot:
            _plot(rows, args.plot)
    dist.destroy_process_group()
    return 0


def _versions() -> str:
    import transformers

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    return f"{gpu} · torch {torch.__version__} · transformers {transformers.__version__}"


def _plot(rows, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        ax.plot(r["losses"], label=f"{r['engine']} {r['form']}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (mean over ranks)")
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")


if __name__ == "__main__":
    raise SystemExit(main())
