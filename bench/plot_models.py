"""Plots of the model benchmarks, in the spirit of the PyTorch 2.0 blog's figures: speedup over the eager model
and peak memory relative to it, one group of bars per model and shape.

    python bench/plot_models.py bench/results/models_h100.json bench/results/training_h100.json --out bench/plots

Where a form was measured more than once for a model and shape, the median of its runs is plotted (RESULTS.md
gives every run): at launch-bound shapes one run can differ from the next by more than the forms differ.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics

FORMS = ["native_sdpa", "backend_eager", "inductor_eager", "inductor_sdpa", "backend_inductor"]
COLORS = {"native_sdpa": "#9ecae1", "backend_eager": "#fdae6b", "inductor_eager": "#c7c7c7",
          "inductor_sdpa": "#3182bd", "backend_inductor": "#e6550d"}


def median_runs(rows: list, key: str) -> dict:
    """{(model, shape): {form: median of `key` over that form's runs}}."""
    runs: dict = {}
    for r in rows:
        if r.get(key) is not None:
            runs.setdefault((r["model"], r["shape"]), {}).setdefault(r["form"], []).append(r[key])
    return {group: {form: statistics.median(v) for form, v in forms.items()} for group, forms in runs.items()}


def bars(ax, groups: dict, value, title: str, ylabel: str) -> None:
    names = sorted(groups, key=lambda g: (g[0], int(g[1].split()[0][1:])))
    width = 0.8 / len(FORMS)
    for i, form in enumerate(FORMS):
        heights = [value(groups[g], form) for g in names]
        xs = [n + (i - len(FORMS) / 2 + 0.5) * width for n in range(len(names))]
        ax.bar([x for x, h in zip(xs, heights) if h], [h for h in heights if h], width, label=form, color=COLORS[form])
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(range(len(names)), [f"{m}\n{s}" for m, s in names], fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ap = argparse.ArgumentParser()
    ap.add_argument("models_json")
    ap.add_argument("training_json", nargs="?")
    ap.add_argument("--out", default="bench/plots")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    data = json.load(open(args.models_json))
    ms, mib = median_runs(data["forward"], "ms"), median_runs(data["forward"], "peak_mib")

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    bars(top, ms, lambda g, f: g["eager"] / g[f] if g.get(f) and g.get("eager") else None,
         "Forward, fp16: speedup over the eager model (higher is better)", "× eager")
    bars(bottom, mib, lambda g, f: g["eager"] / g[f] if g.get(f) and g.get("eager") else None,
         "Forward, fp16: peak-memory saving over the eager model (higher is better)", "× less memory")
    top.legend(fontsize=8, ncol=3)
    fig.suptitle(data["versions"], fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "models_forward.png"), dpi=120)
    print("wrote", os.path.join(args.out, "models_forward.png"))

    if args.training_json:
        training = json.load(open(args.training_json))
        fig, (left, middle, right) = plt.subplots(1, 3, figsize=(13, 4.5), gridspec_kw={"width_ratios": [2, 2, 1.3]})
        steps = [r for r in training["steps"] if not r.get("dynamo_fallback")]   # layers Dynamo left uncompiled
        labels = [f"{r['model']} {r['shape']} · {r['form']}" for r in steps]
        colors = [COLORS.get(r["form"], "#636363") for r in steps]
        left.barh(labels, [r["step_ms"] for r in steps], color=colors)
        left.invert_yaxis()
        left.tick_params(axis="y", labelsize=7)
        left.set_xlabel("step time, ms (lower is better)")
        middle.barh(labels, [r["peak_mib"] / 1024 for r in steps], color=colors)
        middle.invert_yaxis()
        middle.set_yticks([])
        middle.set_xlabel("peak memory, GiB (lower is better)")
        fits = [r for r in training.get("largest_batch", []) if r.get("largest_batch")]
        right.barh([f"{r['model']} S{r['seq']} · {r['form']}" for r in fits], [r["largest_batch"] for r in fits],
                   color=[COLORS.get(r["form"], "#636363") for r in fits])
        right.invert_yaxis()
        right.tick_params(axis="y", labelsize=7)
        right.set_xlabel("largest batch (higher is better)")
        fig.suptitle(f"Training step (bf16 autocast, fused AdamW) · {data['versions']}", fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "training.png"), dpi=120)
        print("wrote", os.path.join(args.out, "training.png"))

if __name__ == "__main__":
    main()
