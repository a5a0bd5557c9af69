"""Where a model's forward spends its GPU time, per form: the top CUDA kernels from torch.profiler.

    PYTHONPATH=. python bench/profile_model.py gpt2 --shape 1x1024 --forms inductor_sdpa,backend_inductor

Used to explain a gap between two forms of bench/models.py (which kernel, how many launches, how long).
"""
from __future__ import annotations

import argparse

import torch

import sdpa_rewrite  # noqa: F401  (registers the backend)
from bench import zoo
from bench.models import compiled, impl
from bench.timing import profiled


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", choices=sorted(zoo.MODELS))
    ap.add_argument("--shape", default="1x1024")
    ap.add_argument("--forms", default="inductor_sdpa,backend_inductor")
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch, seq = map(int, args.shape.split("x"))
    inputs = zoo.inputs(args.model, batch, seq, device=device)
    for form in args.forms.split(","):
        torch._dynamo.reset()
        model = compiled(zoo.build(args.model, impl(form), device=device, tiny=args.tiny), form, [])
        with torch.no_grad():
            for _ in range(3):
                model(**inputs)
            if device == "cuda":
                torch.cuda.synchronize()
            events = profiled(lambda: model(**inputs), 5, device)  # noqa: B023  (called here)
        sort = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
        print(f"== {args.model} B{batch} S{seq} {form} (5 calls)")
        print(events.table(sort_by=sort, row_limit=args.rows, max_name_column_width=70))


if __name__ == "__main__":
    main()
