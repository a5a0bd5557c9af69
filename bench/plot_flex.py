"""Plots of the FlexAttention rows: each model's forward and training step against eager + Inductor (speedup, and
peak memory relative to it), the backend beside transformers' own flex_attention path and the backend's SDPA-only
form (`flex=False`).

    python bench/plot_flex.py bench/results/flex_models_h200.json bench/results/flex_compile_h200.json \
        bench/results/alibi_models_h200.json --out bench/plots

Rows are read from every list in the files; where a model, shape and form were measured more than once, the last
row read wins (give the files oldest first: RESULTS.md keeps every run). Training rows are told apart by their
weights (gpt-oss-like trains with bf16 weights; its fp32 rows ran transformers' MoE fallback).
"""
from __future__ import annotations

import argparse
import json
import os

FORMS = {"flex_inductor": ("transformers flex_attention + Inductor", "#3182bd"),
         "backend_sdpa": ("backend, flex=False (SDPA)", "#fdae6b"),
         "backend": ("backend", "#e6550d")}
BASELINE = "eager_inductor"
FORWARD = [("gemma2w", "B1 S8192"), ("gptossw", "B1 S8192"), ("mistralw", "B1 S16384"), ("bloomw", "B1 S8192")]
TRAINING = [("gemma2w", "B1 S4096"), ("gptossw", "B1 S4096 bf16"), ("mistralw", "B1 S8192"), ("bloomw", "B1 S4096")]


def rows_of(paths: list) -> dict:
    """{(kind, model, shape): {form: row}}, kind "forward" or "step"; the last row read wins."""
    found: dict = {}

    def walk(x):
        if isinstance(x, dict) and "form" in x and "model" in x:
            kind = "forward" if x.get("ms") is not None else "step" if x.get("step_ms") is not None else None
            if kind and x.get("shape"):
                shape = x["shape"] + (" bf16" if str(x.get("weights", "")).startswith("bfloat16") else "")
                found.setdefault((kind, x["model"], shape), {})[x["form"]] = x
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    for path in paths:
        with open(path) as f:
            walk(json.load(f))
    return found


def panel(ax, found: dict, kind: str, groups: list, key: str, speedup: bool, title: str) -> None:
    width = 0.8 / len(FORMS)
    for i, (form, (label, color)) in enumerate(FORMS.items()):
        xs, heights = [], []
        for n, (model, shape) in enumerate(groups):
            rows = found.get((kind, model, shape), {})
            if form in rows and BASELINE in rows:
                base, value = rows[BASELINE][key], rows[form][key]
                xs.append(n + (i - len(FORMS) / 2 + 0.5) * width)
                heights.append(base / value if speedup else value / base)
        ax.bar(xs, heights, width, label=label, color=color)
        for x, h in zip(xs, heights):
            ax.text(x, h, f"{h:.2f}", ha="center", va="bottom", fontsize=6)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(range(len(groups)), [f"{m}\n{s}" for m, s in groups], fontsize=8)
    ax.set_title(title, fontsize=10)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("json", nargs="+")
    ap.add_argument("--out", default="bench/plots")
    args = ap.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = rows_of(args.json)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    panel(axes[0][0], found, "forward", FORWARD, "ms", True, "forward, bf16: speedup over eager + Inductor")
    panel(axes[0][1], found, "forward", FORWARD, "peak_mib", False, "forward: peak memory / eager + Inductor's")
    panel(axes[1][0], found, "step", TRAINING, "step_ms", True, "training step: speedup over eager + Inductor")
    panel(axes[1][1], found, "step", TRAINING, "peak_mib", False, "training step: peak memory / eager + Inductor's")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("FlexAttention targets on an H200 (torch 2.11, transformers 5.17; bench/RESULTS.md)", fontsize=11)
    fig.tight_layout()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "flex_models.png")
    fig.savefig(path, dpi=120)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
