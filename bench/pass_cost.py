"""What the pass costs: time in `rewrite()` (Report.seconds) against graph size and against the whole
torch.compile, on GPT-2-shaped models of 1 to 96 layers (tiny width: the graph, not the math, is measured).

    python bench/pass_cost.py [--inductor-up-to 16] [--device cpu|cuda] [--repeats 3]

For each depth: the first call of torch.compile with backend="eager" (Dynamo capture only), with
backend="sdpa_rewrite" and downstream eager (capture + rewrite), the rewrite's own time, and where asked,
the first call with downstream Inductor (the full compile the pass must stay under 2% of). Every figure is
the median of `--repeats` runs, each after `torch._dynamo.reset()`, with Inductor's on-disk caches off
(`force_disable_caches`), so no run reuses an earlier compile.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import transformers
from tabulate import tabulate

import sdpa_rewrite  # noqa: F401  (registers the backend)


def build(layers: int, device: str):
    cfg = transformers.GPT2Config(n_layer=layers, n_embd=64, n_head=4, vocab_size=128, n_positions=1024,
                                  bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    return transformers.GPT2LMHeadModel(cfg).to(device).eval()


def first_call(model, ids, backend, options=None) -> float:
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, options=options) if options else torch.compile(model, backend=backend)
    start = time.perf_counter()
    with torch.no_grad():
        compiled(ids)
    if ids.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inductor-up-to", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layers", default="1,2,4,8,16,32,64,96")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch._inductor.config.force_disable_caches = True
    rows = []
    for layers in map(int, args.layers.split(",")):
        model = build(layers, args.device)
        ids = torch.randint(0, 128, (2, 256), device=args.device)
        runs = []
        for _ in range(args.repeats):
            reports = []
            run = {"capture": first_call(model, ids, "eager"),
                   "with_pass": first_call(model, ids, "sdpa_rewrite", {"downstream": "eager", "report": reports.append})}
            run["rewrite"] = sum(r.seconds for r in reports)
            run["sites"] = sum(len(r.rewritten) for r in reports)
            if layers <= args.inductor_up_to:
                reports.clear()
                run["full"] = first_call(model, ids, "sdpa_rewrite", {"report": reports.append})
                run["full_rewrite"] = sum(r.seconds for r in reports)
            runs.append(run)

        def med(key):
            return statistics.median(r[key] for r in runs)

        row = {"layers": layers, "sites rewritten": runs[0]["sites"], "dynamo capture s": round(med("capture"), 2),
               "capture + rewrite s": round(med("with_pass"), 2), "rewrite ms": round(med("rewrite") * 1e3, 1),
               "rewrite ms / layer": round(med("rewrite") * 1e3 / layers, 2),
               "rewrite ms range": f"{min(r['rewrite'] for r in runs) * 1e3:.1f}-{max(r['rewrite'] for r in runs) * 1e3:.1f}"}
        if "full" in runs[0]:
            row["compile (Inductor) s"] = round(med("full"), 2)
            row["rewrite share"] = f"{100 * statistics.median(r['full_rewrite'] / r['full'] for r in runs):.2f}%"
        rows.append(row)
        print(row, flush=True)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, device {args.device}")
    print(tabulate(rows, headers="keys", tablefmt="github"))


if __name__ == "__main__":
    main()
