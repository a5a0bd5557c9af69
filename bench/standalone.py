"""Standalone attention: the eager function, the same function rewritten by sdpa_rewrite, and a direct SDPA
call — median latency and peak memory over head dims and sequence lengths, causal or not, fp16 / bf16,
forward and forward+backward. Also checks that the rewritten call lands on the kernel direct SDPA picks.

    PYTHONPATH=. python bench/standalone.py [--quick] [--json out.json] [--plots DIR]

Rewritten = `torch.compile(eager_attention, backend="sdpa_rewrite", options={"downstream": "eager"})`, so the
difference to direct SDPA is only what the rewrite emits plus Dynamo's call overhead (visible at small
sizes); "sdpa under dynamo" (`torch.compile(sdpa, backend="eager")`) carries the same overhead. Tokens per call are fixed (B·S = 16384, 16 heads) so every row does comparable work.
"""
from __future__ import annotations

import argparse
import json
import math

import torch
import torch.nn.functional as F
from tabulate import tabulate

import sdpa_rewrite  # noqa: F401  (registers the backend)
from bench import timing

NAMES = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn"}


def eager_attention(q, k, v, causal: bool):
    s = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    if causal:
        keep = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).tril()
        s = s.masked_fill(~keep, float("-inf"))
    return torch.matmul(torch.softmax(s.float(), dim=-1).to(q.dtype), v)


def sdpa(q, k, v, causal: bool):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def measure(fn, args, backward: bool, reps: int):
    """Median ms and peak MiB (CUDA; 0 elsewhere) of fn(*args), with its backward when asked (bench/timing.py)."""
    grad = torch.randn_like(args[0][..., : args[2].shape[-1]]) if backward else None

    def step():
        out = fn(*args)
        if backward:
            out.backward(grad)
        return out

    t = timing.measure_calls(step, warmup=3, reps=reps, device=args[0].device)   # inputs warm in L2, as timed
    return t.ms, (t.peak_mib if args[0].is_cuda else 0.0)


def grid(quick: bool):
    seqs = [512, 1024, 2048, 4096, 8192] if not quick else [64]
    dims = [8, 16, 32, 64, 128, 256] if not quick else [16]
    for dt in ((torch.float16, torch.bfloat16) if not quick else (torch.float32,)):
        for causal in (True, False):
            for backward in (False, True):
                for e in dims:                       # head-dim sweep at S=2048 (or the quick size)
                    yield dt, causal, backward, e, seqs[min(2, len(seqs) - 1)]
                for s in seqs:                       # sequence sweep at head dim 64
                    if s != seqs[min(2, len(seqs) - 1)]:
                        yield dt, causal, backward, 64 if not quick else 16, s


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one tiny CPU-sized point per combination")
    ap.add_argument("--json")
    ap.add_argument("--plots")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows, mismatched = [], 0
    rewritten = {}
    for dt, causal, backward, e, s in grid(args.quick):
        torch._dynamo.reset()
        heads, batch = 16, max(1, 16384 // s)
        g = torch.Generator(device).manual_seed(0)
        q, k, v = (torch.randn(batch, heads, s, e, device=device, dtype=dt, generator=g, requires_grad=backward)
                   for _ in range(3))
        reports = []
        rewritten[causal] = torch.compile(lambda q, k, v, c=causal: eager_attention(q, k, v, c), backend="sdpa_rewrite",
                                          options={"downstream": "eager", "report": reports.append, "strict": True})
        row = {"dtype": str(dt)[6:], "causal": causal, "pass": "fwd+bwd" if backward else "fwd",
               "B": batch, "S": s, "E": e}
        sdpa_dynamo = torch.compile(lambda q, k, v, c=causal: sdpa(q, k, v, c), backend="eager")
        for name, fn in (("eager", lambda q, k, v: eager_attention(q, k, v, causal)),
                         ("rewritten", rewritten[causal]), ("sdpa", lambda q, k, v: sdpa(q, k, v, causal)),
                         ("sdpa under dynamo", sdpa_dynamo)):
            try:
                ms, mib = measure(fn, (q, k, v), backward, args.reps)
                row[f"{name} ms"], row[f"{name} MiB"] = round(ms, 3), round(mib)
            except torch.OutOfMemoryError:
                row[f"{name} ms"], row[f"{name} MiB"] = "OOM", ""
                torch.cuda.empty_cache()
        direct = NAMES.get(int(torch._fused_sdp_choice(q, k, v, is_causal=causal)), "?")
        site = reports[0].sites[0] if reports and reports[0].sites else None
        row["kernel (direct)"] = direct
        row["kernel (rewritten)"] = site.kernel if site is not None else "not rewritten"
        if device == "cuda" and (site is None or site.kernel.split(" ")[0] != direct):
            mismatched += 1
        if isinstance(row.get("eager ms"), float) and isinstance(row.get("rewritten ms"), float):
            row["speedup"] = round(row["eager ms"] / row["rewritten ms"], 2)
            row["rewritten/sdpa"] = round(row["rewritten ms"] / row["sdpa ms"], 3)
            row["rewritten/(sdpa under dynamo)"] = round(row["rewritten ms"] / row["sdpa under dynamo ms"], 3)
        rows.append(row)
        print(row, flush=True)
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
          f"{torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}; kernel mismatches: {mismatched}")
    print(tabulate(rows, headers="keys", tablefmt="github"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if args.plots:
        plot(rows, args.plots)
    return 1 if mismatched else 0


def plot(rows, out_dir):
    import os

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    for dtype in sorted({r["dtype"] for r in rows}):
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for causal in (True, False):
            for backward in ("fwd", "fwd+bwd"):
                pick = [r for r in rows if r["dtype"] == dtype and r["causal"] == causal and r["pass"] == backward]
                by_s = sorted((r for r in pick if r["E"] == 64 and "speedup" in r), key=lambda r: r["S"])
                by_e = sorted((r for r in pick if r["S"] == 2048 and "speedup" in r), key=lambda r: r["E"])
                label = f"{'causal' if causal else 'full'} {backward}"
                axes[0].plot([r["S"] for r in by_s], [r["speedup"] for r in by_s], marker="o", label=label)
                axes[1].plot([r["E"] for r in by_e], [r["speedup"] for r in by_e], marker="o", label=label)
                mem = [r for r in by_s if isinstance(r.get("rewritten MiB"), (int, float)) and r["rewritten MiB"]]
                axes[2].plot([r["S"] for r in mem], [r["eager MiB"] / r["rewritten MiB"] for r in mem], marker="o", label=label)
        axes[0].set(xscale="log", xlabel="sequence length (E=64)", ylabel="speedup over eager", title=f"{dtype}: speedup vs S")
        axes[1].set(xscale="log", xlabel="head dim (S=2048)", ylabel="speedup over eager", title=f"{dtype}: speedup vs head dim")
        axes[2].set(xscale="log", yscale="log", xlabel="sequence length (E=64)", ylabel="eager peak / rewritten peak",
                    title=f"{dtype}: memory saving")
        for ax in axes:
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, f"standalone_{dtype}.png"), dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
