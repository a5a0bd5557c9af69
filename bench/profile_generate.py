"""Where generate()'s decode time goes, per form: recompiles, the rewrite's report for each compiled graph, and the
top operators and kernels of one profiled generate() call (per token), to explain a tokens/s gap of bench/models.py.

    TORCH_LOGS=recompiles PYTHONPATH=. python bench/profile_generate.py gpt2 --forms inductor_sdpa,backend_inductor
"""
from __future__ import annotations

import argparse

import torch

import sdpa_rewrite  # noqa: F401  (registers the backend)
from bench import zoo
from bench.models import compiled, impl
from bench.timing import kernel_totals, profiled


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", choices=sorted(zoo.MODELS))
    ap.add_argument("--forms", default="inductor_sdpa,backend_inductor")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--rows", type=int, default=15)
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ids = zoo.inputs(args.model, 1, args.prompt, device=device)["input_ids"]
    kwargs = dict(max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False)
    for form in args.forms.split(","):
        torch._dynamo.reset()
        reports: list = []
        model = zoo.build(args.model, impl(form), device=device, tiny=args.tiny)
        model.forward = compiled(model.forward, form, reports, dynamic=None)
        with torch.no_grad():
            model.generate(ids, **kwargs)                # compiles prefill, first decode, dynamic decode
            model.generate(ids, **kwargs)
            if device == "cuda":
                torch.cuda.synchronize()
            events = profiled(lambda: model.generate(ids, **kwargs), 1, device)  # noqa: B023  (called here)
        launches, kernel_ms = kernel_totals(events)
        print(f"== {args.model} {form}: {len(reports)} compiled graphs; per token: "
              f"{launches / args.new:.0f} device kernels, {kernel_ms / args.new:.3f} ms of kernel time, "
              f"{sum(e.self_cpu_time_total for e in events) / 1e3 / args.new:.3f} ms of self CPU time")
        for i, r in enumerate(reports):
            for site in sorted({(s.status, s.q, s.k, s.dtype, s.mask, s.causal, s.kernel) for s in r.sites}, key=str):
                print(f"-- graph {i}: " + " | ".join(map(str, site)))
        for sort in (["self_device_time_total"] if device == "cuda" else []) + ["self_cpu_time_total"]:
            print(events.table(sort_by=sort, row_limit=args.rows, max_name_column_width=80), flush=True)


if __name__ == "__main__":
    main()
