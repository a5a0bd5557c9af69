"""CUDA check of the FlexAttention target and attention sinks, forward and backward, compiled by Inductor:
every catalog entry with soft-capping, sinks (gpt-oss's column, Granite SWA's log-sum-exp), a sliding window or
ALiBi built in the graph, and tiny transformers Gemma 2 / gpt-oss / Mistral / Cohere 2 (window 6) and Bloom / MPT
(ALiBi; S 16 and 48, padded and unpadded), in bf16 and fp16. ALiBi's rows go to flex at any length here
(key_rows.KEY_ROW_FLEX_MIN lowered), so that the tiny cases reach the rule.

Each row compares the backend and the model's eager run in the same dtype against an fp32 eager reference: the
rewrite is within rounding when its error is of the order of eager's own. Gradients are those of a loss over the
real tokens (padding queries' outputs weigh 0, as in training: on rows that see no key, eager differentiates
terms its own rounding removed from the forward, the backend does not). Prints a table; exits 1 when an
output or gradient error exceeds 4x eager's own (plus 1e-3), or a site that should be flex is not.

    PYTHONPATH=. python bench/cuda_flex.py [--json rows.json] [--dtypes bfloat16,float16] [--cases alibi/,bloom]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import warnings

import torch
import transformers
from tabulate import tabulate

import sdpa_rewrite  # noqa: F401  (registers the backend)
from patterns import all_entries
from sdpa_rewrite import key_rows

warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
FAMILIES = ("gemma2/", "gpt_oss/", "granite_swa/", "masks/sliding_window", "alibi/")
TINY = ("gemma2", "gpt_oss", "mistral", "cohere2", "bloom", "mpt")


def rel(a, b):
    fin = torch.isfinite(b)
    a, b = a[fin].double(), b[fin].double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() if b.numel() else 0.0


def _cast(x, dt):
    if isinstance(x, torch.Tensor):
        x = x.cuda()
        return x.to(dt) if x.is_floating_point() else x
    return x


def _first(out):
    if hasattr(out, "logits"):
        return out.logits
    return out[0] if isinstance(out, tuple) else out


def run_one(build, inputs, dt, kwargs=None):
    """(output errors, grad errors) of eager-in-dt and backend-in-dt against fp32 eager; targets of the sites."""
    kwargs = kwargs or {}
    base = build().cuda().float()
    results = {}
    for form, dtype in (("fp32", torch.float32), ("eager", dt), ("backend", dt)):
        torch._dynamo.reset()
        m = copy.deepcopy(base).to(dtype)
        x = tuple(_cast(t, dtype) for t in inputs)
        x = tuple(t.detach().requires_grad_() if isinstance(t, torch.Tensor) and t.is_floating_point()
                  and bool((t > -1e3).all()) else t for t in x)            # inputs, not masks, get gradients
        kw = {k: _cast(v, dtype) for k, v in kwargs.items()}
        reports = []
        fn = m if form != "backend" else torch.compile(m, backend="sdpa_rewrite",
                                                       options={"report": reports.append})
        try:
            out = _first(fn(*x, **kw))
        except RuntimeError as err:              # the eager module itself cannot run in this dtype
            return {"eager_out": float("nan"), "backend_out": float("nan"), "eager_grad": float("nan"),
                    "backend_grad": float("nan"), "sites": "-", "targets": f"{form} fails: {str(err)[:40]}"}
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).cuda().to(out.dtype)
        if "attention_mask" in kw and out.dim() == 3:  # a loss reads real tokens only, as training does
            weights = weights * kw["attention_mask"][..., None].to(weights.dtype)
        (out.float() * weights.float()).sum().backward()
        grads = {n: p.grad.float() for n, p in m.named_parameters() if p.grad is not None}
        grads.update((f"input{i}", t.grad.float()) for i, t in enumerate(x)
                     if isinstance(t, torch.Tensor) and t.grad is not None)
        results[form] = (out.float().detach(), grads, reports)
    ref_out, ref_grads, _ = results["fp32"]
    row = {}
    for form in ("eager", "backend"):
        out, grads, _ = results[form]
        row[f"{form}_out"] = rel(out, ref_out)
        row[f"{form}_grad"] = max((rel(grads[n], g) for n, g in ref_grads.items() if n in grads), default=0.0)
    sites = [s for r in results["backend"][2] for s in r.sites if "router" not in s.location]
    row["sites"] = f"{sum(s.rewritten for s in sites)}/{len(sites)}"
    row["targets"] = ",".join(sorted({s.target or "eager" for s in sites}))
    return row


def tiny(name, window=6):
    common = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                  vocab_size=128, sliding_window=window, attn_implementation="eager")
    if name == "gemma2":
        cfg = transformers.Gemma2Config(head_dim=16, intermediate_size=128, attn_logit_softcapping=50.0, **common)
    elif name == "gpt_oss":
        cfg = transformers.GptOssConfig(head_dim=16, intermediate_size=64, num_local_experts=4,
                                        num_experts_per_tok=4, **common)     # every expert: no routing flips
    elif name == "mistral":
        cfg = transformers.MistralConfig(intermediate_size=128, **common)
    elif name == "cohere2":
        cfg = transformers.Cohere2Config(intermediate_size=128, **common)
    elif name == "bloom":
        cfg = transformers.BloomConfig(n_layer=2, hidden_size=64, n_head=4, vocab_size=128, attn_implementation="eager")
    else:
        cfg = transformers.MptConfig(n_layers=2, d_model=64, n_heads=4, vocab_size=128, max_seq_len=64,
                                     attn_implementation="eager")
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(cfg).train(False)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    parser.add_argument("--dtypes", default="bfloat16,float16")
    parser.add_argument("--cases", default="", help="comma-separated name prefixes of the cases to run (default all)")
    args = parser.parse_args()
    rows = []

    def chosen(name):
        return not args.cases or name.startswith(tuple(args.cases.split(",")))

    key_rows.KEY_ROW_FLEX_MIN = key_rows.KEY_ROW_FLEX_MIN_TRAIN = 1

    def record(name, dt, row):
        row = {"case": name, "dtype": str(dt).replace("torch.", ""), **row}
        rows.append(row)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)

    for dt in [getattr(torch, d) for d in args.dtypes.split(",")]:
        for e in all_entries():
            if e.near_miss or not e.name.startswith(FAMILIES) or not chosen(e.name):
                continue
            record(e.name, dt, run_one(e.module, e.inputs(), dt))
        for name in (n for n in TINY if chosen(n)):
            for seq, padded in ((16, False), (48, True)):
                ids = torch.randint(0, 128, (2, seq), generator=torch.Generator().manual_seed(0))
                mask = torch.ones(2, seq, dtype=torch.long)
                if padded:
                    mask[0, :7] = 0
                kwargs = {"attention_mask": mask} if padded else {}
                record(f"tiny {name} S{seq}{' left-padded' if padded else ''}", dt,
                       run_one(lambda n=name: tiny(n), (ids,), dt, kwargs))
    table = [[r["case"], r["dtype"], r["sites"], r["targets"], f"{r['eager_out']:.1e}", f"{r['backend_out']:.1e}",
              f"{r['eager_grad']:.1e}", f"{r['backend_grad']:.1e}"] for r in rows]
    print(tabulate(table, headers=["case", "dtype", "rewritten", "targets", "eager out err", "backend out err",
                                   "eager grad err", "backend grad err"], tablefmt="github"))
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.cuda.get_device_name()}")
    bad = [r["case"] for r in rows if r["backend_out"] > 4 * r["eager_out"] + 1e-3
           or r["backend_grad"] > 4 * r["eager_grad"] + 1e-3]           # NaN (eager fails) compares False
    print("outside rounding:", bad or "none")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
