"""GPU probe of the mask forms: which SDPA kernel each call form lands on, its speed, and what each
kernel returns on fully masked rows. Run on CUDA: `PYTHONPATH=. python bench/probe_masks.py`."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tabulate import tabulate
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

from sdpa_rewrite.emit import causal_lower_right_attention

dev = "cuda"
BACKENDS = {int(v): k for k, v in SDPBackend.__members__.items()}


def choice(q, k, v, mask=None, causal=False, gqa=False):
    return BACKENDS.get(torch._fused_sdp_choice(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=causal, enable_gqa=gqa), "?")


def bench(fn, reps=50):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(True), torch.cuda.Event(True)
        a.record(); fn(); b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


def repeat_kv(x, n):
    b, h, s, e = x.shape
    return x[:, :, None].expand(b, h, n, s, e).reshape(b, h * n, s, e)


rows = []
for dt in (torch.float16, torch.bfloat16):
    B, H, G, L, E = 4, 32, 8, 2048, 64
    q = torch.randn(B, H, L, E, device=dev, dtype=dt)
    kg = torch.randn(B, G, L, E, device=dev, dtype=dt)
    vg = torch.randn(B, G, L, E, device=dev, dtype=dt)
    causal = torch.ones(L, L, device=dev, dtype=torch.bool).tril()
    fmask = torch.zeros(L, L, device=dev, dtype=dt).masked_fill(~causal, float("-inf"))
    n = H // G
    cases = {
        "causal, enable_gqa": lambda: F.scaled_dot_product_attention(q, kg, vg, is_causal=True, enable_gqa=True),
        "causal, repeat_kv": lambda: F.scaled_dot_product_attention(q, repeat_kv(kg, n), repeat_kv(vg, n), is_causal=True),
        "bool mask, enable_gqa": lambda: F.scaled_dot_product_attention(q, kg, vg, attn_mask=causal, enable_gqa=True),
        "bool mask, repeat_kv": lambda: F.scaled_dot_product_attention(q, repeat_kv(kg, n), repeat_kv(vg, n), attn_mask=causal),
        "float mask, enable_gqa": lambda: F.scaled_dot_product_attention(q, kg, vg, attn_mask=fmask, enable_gqa=True),
        "float mask, repeat_kv": lambda: F.scaled_dot_product_attention(q, repeat_kv(kg, n), repeat_kv(vg, n), attn_mask=fmask),
    }
    kinds = {
        "causal, enable_gqa": choice(q, kg, vg, None, True, True),
        "causal, repeat_kv": choice(q, repeat_kv(kg, n), repeat_kv(vg, n), None, True),
        "bool mask, enable_gqa": choice(q, kg, vg, causal, False, True),
        "bool mask, repeat_kv": choice(q, repeat_kv(kg, n), repeat_kv(vg, n), causal),
        "float mask, enable_gqa": choice(q, kg, vg, fmask, False, True),
        "float mask, repeat_kv": choice(q, repeat_kv(kg, n), repeat_kv(vg, n), fmask),
    }
    for name, fn in cases.items():
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        ms = bench(fn)
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        rows.append(["gqa " + str(dt)[6:], name, kinds[name], f"{ms:.3f}", f"{peak:.0f}"])

    # lower-right causal: queries are the last Lq of S keys (chunked prefill)
    for Lq, S in ((512, 2048), (1024, 4096), (16, 2048)):
        q2 = torch.randn(B, H, Lq, E, device=dev, dtype=dt)
        k2 = torch.randn(B, H, S, E, device=dev, dtype=dt)
        v2 = torch.randn(B, H, S, E, device=dev, dtype=dt)
        bmask = torch.ones(Lq, S, device=dev, dtype=torch.bool).tril(S - Lq)
        lr = causal_lower_right(Lq, S)
        ref = F.scaled_dot_product_attention(q2.float(), k2.float(), v2.float(), attn_mask=bmask)
        for name, fn in {
            "causal_lower_right": lambda: F.scaled_dot_product_attention(q2, k2, v2, attn_mask=lr),
            "sdpa_rewrite helper": lambda: causal_lower_right_attention(q2, k2, v2),
            "explicit bool mask": lambda: F.scaled_dot_product_attention(q2, k2, v2, attn_mask=bmask),
        }.items():
            err = ((fn().float() - ref).abs().max() / ref.abs().max()).item()
            kind = choice(q2, k2, v2, bmask) if "bool" in name else "(CausalBias dispatch)"
            rows.append([f"lower-right {str(dt)[6:]} L{Lq} S{S}", name, kind, f"{bench(fn):.3f}", f"err {err:.1e}"])

print(tabulate(rows, headers=["case", "form", "kernel", "ms", "MiB / err"], tablefmt="github"))

# fully masked rows: eager vs every kernel, -inf bool mask and finite float mask
out = []
for dt in (torch.float32, torch.float16, torch.bfloat16):
    B, H, L, E = 2, 4, 128, 64
    q, k, v = (torch.randn(B, H, L, E, device=dev, dtype=dt) for _ in range(3))
    keep = torch.rand(B, 1, L, L, device=dev) > 0.3
    keep[:, :, :5] = False                       # five fully masked rows
    s = (q @ k.transpose(-1, -2)).float() / math.sqrt(E)
    eager_inf = (s.masked_fill(~keep, float("-inf")).softmax(-1) @ v.float())
    for be in (SDPBackend.MATH, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION):
        try:
            with sdpa_kernel([be]):
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=keep).float()
            rows_ = o[:, :, :5]
            mean_v = v.float().mean(-2, keepdim=True).expand_as(o)[:, :, :5]
            verdict = ("NaN" if rows_.isnan().any() else "zeros" if (rows_ == 0).all() else
                       "mean(V)" if torch.allclose(rows_, mean_v, atol=1e-2) else f"other (|x| max {rows_.abs().max().item():.3g})")
            ref = eager_inf[:, :, 5:]
            err = ((o[:, :, 5:] - ref).abs().max() / ref.abs().max()).item()
            out.append([str(dt)[6:], [k for k, x in SDPBackend.__members__.items() if x == be][0], verdict, f"{err:.1e}"])
        except Exception as e:
            out.append([str(dt)[6:], [k for k, x in SDPBackend.__members__.items() if x == be][0], "not available: " + str(e).splitlines()[0][:60], ""])
print()
print(tabulate(out, headers=["dtype", "kernel", "fully masked rows (-inf bool mask)", "other rows rel err"], tablefmt="github"))
print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), torch.cuda.get_device_name())
