"""One row per form of attention alone, shared by bench/padded_attention.py and bench/bias_attention.py, so both
time the same thing: each form a torch.compile'd function of (q, k, v, mask), its forward under no_grad and its
forward + backward (not for flex on the CPU: no backward there), its error against a reference form.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from bench.timing import Record, measure_calls


def time_forms(forms: list, make: Callable, mask_of: Callable, qkv: tuple, *, ref_form: str, record: Record,
               key: dict, reps: int, deadline: float, seen: torch.Tensor | None = None,
               no_error: tuple = ()) -> list:
    """Rows of `forms` on one input: `make(form)` the compiled function, `mask_of(form)` the mask it reads;
    `rel_err` against `ref_form` (run first) on the query rows `seen` marks (all when None), none for `no_error`
    forms. A form that would start after `deadline` (perf_counter) is recorded as skipped."""
    q, k, v = qkv
    device = q.device.type
    B, H, _, E = q.shape
    rows, ref = [], None
    for form in forms:
        if time.perf_counter() > deadline:
            rows.append(record.add("attention", {**key, "form": form, "skipped": "budget"}))
            continue
        torch._dynamo.reset()
        fn, mask = make(form), mask_of(form)
        with torch.no_grad():
            out = fn(q, k, v, mask).float()
            out = out if seen is None else torch.where(seen, out, 0)
            fwd = measure_calls(lambda: fn(q, k, v, mask), reps=reps, device=device)  # noqa: B023  (inputs warm in L2)
        if form == ref_form:
            ref = out
        grads = [t.detach().requires_grad_() for t in qkv]

        def train():
            fn(*grads, mask).sum().backward()  # noqa: B023

        no_backward = device == "cpu" and form.startswith("flex")
        bwd = None if no_backward else measure_calls(train, reps=reps, device=device)
        err = None if ref is None or form in no_error else \
            float(f"{((out - ref).abs().max() / ref.abs().max()).item():.2e}")
        rows.append(record.add("attention", {
            **key, "form": form, "fwd_ms": round(fwd.ms, 3), "fwd_bwd_ms": bwd and round(bwd.ms, 3),
            "fwd_peak_mib": None if math.isnan(fwd.peak_mib) else round(fwd.peak_mib), "rel_err": err,
            "shape": f"B{B} H{H} E{E} {str(q.dtype).split('.')[-1]}"}))
    return rows
