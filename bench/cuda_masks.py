"""Fully masked rows on CUDA, per SDPA kernel: does the rewritten graph give eager's answer?

For each mask spelling with some fully masked rows, the module is compiled with the backend (downstream
eager) and run under `sdpa_kernel([k])` for math, efficient, cuDNN and flash, in fp16 and bf16. The rewrite
answers mean(V) on those rows for a finite fill or additive finfo.min (eager's uniform weights; over the first
3 keys where a causal -inf lies over finfo.min padding; in fp16,
eager's own finfo(fp16).min sum is rounding noise, shown in its column) and zeros for -inf (eager: NaN). Prints one row per case; exits 1 on a mismatch.

    PYTHONPATH=. python bench/cuda_masks.py
"""
from __future__ import annotations

import sys
import warnings

import torch
import torch.nn as nn
from tabulate import tabulate
from torch.nn.attention import SDPBackend, sdpa_kernel

import sdpa_rewrite  # noqa: F401  (registers the backend)


class BoolInf(nn.Module):
    def forward(self, q, k, v, keep, additive):
        s = torch.matmul(q, k.transpose(-1, -2)) * 0.125
        return torch.softmax(s.masked_fill(~keep, float("-inf")), -1) @ v


class FiniteFill(nn.Module):
    def forward(self, q, k, v, keep, additive):
        s = torch.matmul(q, k.transpose(-1, -2)) * 0.125
        return torch.softmax(torch.where(keep, s, torch.tensor(-1e4, dtype=s.dtype, device=s.device)), -1) @ v


class AdditiveMin(nn.Module):
    def forward(self, q, k, v, keep, additive):
        s = torch.matmul(q, k.transpose(-1, -2)) * 0.125 + additive
        return torch.softmax(s.float(), -1).to(q.dtype) @ v


class AdditiveCausalOverMin(nn.Module):
    """A causal -inf over a finfo.min padding mask: on the fully masked rows eager's weights are uniform over
    the keys that hold finfo.min (here the first 3), not over all keys."""

    def forward(self, q, k, v, keep, additive):
        tail = torch.zeros_like(additive)
        tail[:, :, :5, 3:] = float("-inf")
        s = torch.matmul(q, k.transpose(-1, -2)) * 0.125 + (additive + tail)
        return torch.softmax(s.float(), -1).to(q.dtype) @ v


CASES = {"-inf bool fill": (BoolInf, "zeros"), "finite fill -1e4": (FiniteFill, "mean(V)"),
         "additive finfo.min": (AdditiveMin, "mean(V)"), "additive -inf over finfo.min": (AdditiveCausalOverMin, "mean(V[:3])")}
KERNELS = {"math": SDPBackend.MATH, "efficient": SDPBackend.EFFICIENT_ATTENTION,
           "cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}


class ChunkedCausal(nn.Module):
    """Queries are the last L of S keys (chunked prefill): a tril buffer sliced with an offset."""

    def __init__(self):
        super().__init__()
        self.register_buffer("bias", torch.tril(torch.ones(1024, 1024)).view(1, 1, 1024, 1024))

    def forward(self, q, k, v):
        L, S = q.size(-2), k.size(-2)
        att = (q @ k.transpose(-2, -1)) * 0.125
        att = att.masked_fill(self.bias[:, :, S - L:S, :S] == 0, float("-inf"))
        return att.softmax(-1) @ v


def lower_right_through_compilers() -> list:
    """The lower-right form (flash's own causal flag) under each downstream compiler, forward and backward."""
    rows = []
    for dt in (torch.float16, torch.bfloat16):
        g = torch.Generator("cuda").manual_seed(1)
        q = torch.randn(2, 8, 128, 64, device="cuda", dtype=dt, generator=g, requires_grad=True)
        k, v = (torch.randn(2, 8, 512, 64, device="cuda", dtype=dt, generator=g, requires_grad=True) for _ in range(2))
        model = ChunkedCausal().cuda()
        ref = model(q, k, v)
        ref_grads = torch.autograd.grad(ref.float().square().sum(), (q, k, v))
        for downstream in ("eager", "aot_eager", "inductor"):
            torch._dynamo.reset()
            reports = []
            compiled = torch.compile(model, backend="sdpa_rewrite",
                                     options={"downstream": downstream, "report": reports.append, "strict": True})
            out = compiled(q, k, v)
            grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
            err = ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
            gerr = max(((a.float() - b.float()).abs().max() / b.float().abs().max()).item() for a, b in zip(grads, ref_grads))
            site = reports[0].sites[0]
            ok = site.causal == "lower-right" and err < 2e-2 and gerr < 5e-2
            rows.append([str(dt)[6:], "lower-right (KV cache slice)", downstream, f"{site.mask}; {site.kernel}",
                         f"grad rel err {gerr:.1e}", f"{err:.1e}", "ok" if ok else "MISMATCH"])
    return rows


def main() -> int:
    rows, bad = [], 0
    for dt in (torch.float16, torch.bfloat16):
        g = torch.Generator("cuda").manual_seed(0)
        B, H, L, E = 2, 4, 128, 64
        q, k, v = (torch.randn(B, H, L, E, device="cuda", dtype=dt, generator=g) for _ in range(3))
        keep = torch.rand(B, 1, L, L, device="cuda", generator=g) > 0.3
        keep[:, :, :5] = False                        # five fully masked rows
        additive = torch.zeros(B, 1, L, L, device="cuda", dtype=dt).masked_fill(~keep, torch.finfo(dt).min)
        args = (q, k, v, keep, additive)
        for case, (cls, expect) in CASES.items():
            model = cls()
            ref = model(*args).float()
            torch._dynamo.reset()
            reports = []
            compiled = torch.compile(model, backend="sdpa_rewrite", options={"downstream": "eager", "report": reports.append})
            for kname, kernel in KERNELS.items():
                try:
                    with sdpa_kernel([kernel]), warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        out = compiled(*args).float()
                except RuntimeError as e:
                    rows.append([str(dt)[6:], case, kname, "kernel not available", "", "", str(e).splitlines()[0][:50]])
                    continue
                empty = out[:, :, :5]
                keys = 3 if expect == "mean(V[:3])" else L
                want = torch.zeros_like(empty) if expect == "zeros" else \
                    v.float()[:, :, :keys].mean(-2, keepdim=True).expand_as(out)[:, :, :5]
                rows_ok = bool(torch.allclose(empty, want, atol=2e-2, rtol=0))
                other = ((out[:, :, 5:] - ref[:, :, 5:]).abs().max() / ref[:, :, 5:].abs().max()).item()
                ok = rows_ok and other < 2e-2
                bad += not ok
                eager_rows = ref[:, :, :5]
                eager_says = ("NaN" if eager_rows.isnan().any() else "same" if torch.allclose(eager_rows, want, atol=2e-2, rtol=0)
                              else f"differs by {(eager_rows - want).abs().max().item():.2g}")
                rows.append([str(dt)[6:], case, kname, f"{expect}: {'yes' if rows_ok else 'NO'}", eager_says,
                             f"{other:.1e}", "ok" if ok else "MISMATCH"])
            site = reports[0].sites[0]
            rows.append([str(dt)[6:], case, "(report)", site.mask, "", "", site.kernel])
    rows += lower_right_through_compilers()
    bad += sum(r[-1] != "ok" for r in rows if r[1] == "lower-right (KV cache slice)")
    print(tabulate(rows, headers=["dtype", "mask", "kernel", "fully masked rows as expected", "eager on those rows",
                                     "other rows rel err", "verdict"],
                   tablefmt="github"))
    print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), torch.cuda.get_device_name())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
