"""CUDA correctness sweep of the catalog in fp16 and bf16: every rewritable entry, eager vs the backend
(downstream eager), plus tiny transformers GPT-2 / Llama. Prints a table; exits 1 on a wrong result.

    PYTHONPATH=. python bench/cuda_catalog.py [NAME_PREFIX ...] [--grads]
        NAME_PREFIX: only the entries whose name starts so; --grads: compare the gradients of the inputs and the
        parameters too (the worst of them in the error column), where SDPA's backward runs: a mask that needs a
        gradient (a bias computed from parameters or from q) goes through its kernel's bias gradient
"""
import sys

import torch
from tabulate import tabulate

import sdpa_rewrite  # noqa: F401  (registers the backend)
from patterns import all_entries


def cast(x, dt):
    if isinstance(x, torch.Tensor):
        x = x.cuda()
        return x.to(dt) if x.is_floating_point() else x
    return x


def rel(a, b):
    fin = torch.isfinite(b)
    a, b = a[fin].double(), b[fin].double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() if b.numel() else 0.0


def grads_error(m, out_of, inputs, dt) -> float:
    """The worst relative error over the gradients of the floating inputs and the parameters, backend vs eager."""
    def run(fn):
        xs = [x.detach().clone().requires_grad_(x.is_floating_point()) if isinstance(x, torch.Tensor) else x
              for x in inputs]
        m.zero_grad(set_to_none=True)
        out = fn(*xs)
        (out[0] if isinstance(out, tuple) else out).float().square().mean().backward()
        return [x.grad for x in xs if isinstance(x, torch.Tensor) and x.grad is not None] + \
            [p.grad.clone() for p in m.parameters() if p.grad is not None]

    want, got = run(m), run(out_of)
    if len(want) != len(got):
        return float("inf")
    return max((rel(g.float(), w.float()) for g, w in zip(got, want)), default=0.0)


def main():
    args = sys.argv[1:]
    with_grads = "--grads" in args
    only = tuple(a for a in args if a != "--grads")
    rows, worst = [], {}
    for dt in (torch.float16, torch.bfloat16):
        for e in all_entries():
            if e.near_miss or e.training or only and not e.name.startswith(only):
                continue
            torch._dynamo.reset()
            torch.manual_seed(0)
            m = e.module().cuda().to(dt)
            inputs = tuple(cast(x, dt) for x in e.inputs())
            reports = []
            with torch.no_grad():
                try:
                    ref = m(*inputs)
                except RuntimeError as err:   # the eager module itself mixes fp32 masks with low precision
                    rows.append([e.name, str(dt).replace("torch.", ""), "-", f"eager fails: {str(err)[:40]}"])
                    continue
                out = torch.compile(m, backend="sdpa_rewrite",
                                    options={"downstream": "eager", "report": reports.append})(*inputs)
            ref = ref[0] if isinstance(ref, tuple) else ref
            out = out[0] if isinstance(out, tuple) else out
            n = sum(len(r.rewritten) for r in reports)
            err = rel(out.float(), ref.float())
            if with_grads:
                torch._dynamo.reset()
                compiled = torch.compile(m, backend="sdpa_rewrite", options={"downstream": "eager"})
                err = max(err, grads_error(m, compiled, inputs, dt))
            worst[str(dt)] = max(worst.get(str(dt), 0.0), err)
            rows.append([e.name, str(dt).replace("torch.", ""), f"{n}/{len(e.expect)}", f"{err:.2e}"])
    print(tabulate(rows, headers=["entry", "dtype", "rewritten", "max rel err vs eager"], tablefmt="github"))
    print()
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, rows {len(rows)}")
    print("worst relative error:", {k: f"{v:.2e}" for k, v in worst.items()})
    for d in ("float16", "bfloat16"):
        mine = [r for r in rows if r[1] == d]
        ran = [r for r in mine if r[2] != "-"]
        full = [r for r in ran if r[2].split("/")[0] == r[2].split("/")[1]]
        print(f"{d}: entries {len(mine)}, ran {len(ran)}, all sites rewritten in {len(full)}, "
              f"eager fails: {[r[0] for r in mine if r[2] == '-']}, partly eager: {[r[0] for r in ran if r not in full]}")
    # fp16 rounding of the eager graph itself is ~1e-3; a wrong rewrite is O(1)
    return 0 if all(v < 2e-2 for v in worst.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
