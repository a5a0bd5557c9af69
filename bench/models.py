"""Forward latency and peak memory of transformers models (random weights, fp16, CUDA), six ways:

    eager            attn_implementation="eager"
    native sdpa      attn_implementation="sdpa"
    dynamo/sdpa      native-sdpa model + torch.compile(backend="eager"): Dynamo's own cost, no compiler
    backend/eager    eager model + torch.compile(backend="sdpa_rewrite", downstream eager)
    inductor/eager   eager model + torch.compile (Inductor)
    inductor/sdpa    native-sdpa model + torch.compile (Inductor)
    backend/inductor eager model + torch.compile(backend="sdpa_rewrite")  (Inductor downstream)
    backend_inductor_kernel_rows   the same with options={"empty_rows": "kernel"}: query rows that see no
                     key (padding queries) are left to the kernel, as transformers' sdpa path does

Usage (one model per call keeps each run under the device's 10-minute limit):

    PYTHONPATH=. python bench/models.py gpt2 llama [--forms eager,native_sdpa,...] [--json out.json]

Latency: median of CUDA-event timings after warm-up; memory: peak allocated during one forward above
what was allocated before it (weights and inputs), i.e. activations and outputs. The rewritten output is compared with eager's (relative error of the logits).
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
import transformers
from tabulate import tabulate

import sdpa_rewrite  # noqa: F401  (registers the backend)

MODELS = {
    # name: (config factory, batch, seq)
    "gpt2": (lambda impl: transformers.GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257,
                                                  n_positions=1024, attn_implementation=impl,
                                                  bos_token_id=0, eos_token_id=0), 8, 1024),
    "llama": (lambda impl: transformers.LlamaConfig(num_hidden_layers=8, hidden_size=2048, num_attention_heads=16,
                                                    num_key_value_heads=4, intermediate_size=5632, vocab_size=32000,
                                                    max_position_embeddings=4096, attn_implementation=impl), 4, 2048),
}
FORMS = ["eager", "native_sdpa", "dynamo_sdpa", "backend_eager", "inductor_eager", "inductor_sdpa", "backend_inductor"]


def build(name: str, impl: str):
    make, _, _ = MODELS[name]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(make(impl)).to(torch.float16)
    return model.cuda().eval()


def timed(fn, warmup: int = 3, reps: int = 20):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    del out
    return times[len(times) // 2], (torch.cuda.max_memory_allocated() - base) / 2**20


def run(name: str, forms: list, padded: bool = False) -> list:
    _, batch, seq = MODELS[name]
    ids = torch.randint(0, 1000, (batch, seq), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    kwargs = {}
    if padded:                         # left padding: row b starts after b * seq / (2 * batch) pad tokens
        mask = torch.ones(batch, seq, dtype=torch.long, device="cuda")
        for b in range(batch):
            mask[b, : b * seq // (2 * batch)] = 0
        kwargs["attention_mask"] = mask
    rows, ref, reports = [], None, []
    for form in forms:
        torch._dynamo.reset()
        torch.cuda.empty_cache()
        model = build(name, "sdpa" if form.endswith("sdpa") else "eager")
        if form == "backend_eager":
            model = torch.compile(model, backend="sdpa_rewrite", options={"downstream": "eager", "report": reports.append})
        elif form == "backend_inductor":
            model = torch.compile(model, backend="sdpa_rewrite", options={"report": reports.append})
        elif form == "backend_inductor_kernel_rows":
            model = torch.compile(model, backend="sdpa_rewrite", options={"report": reports.append, "empty_rows": "kernel"})
        elif form.startswith("inductor"):
            model = torch.compile(model)
        elif form == "dynamo_sdpa":
            model = torch.compile(model, backend="eager")
        with torch.no_grad():
            logits = model(ids, **kwargs).logits.float().cpu()
            if ref is None:
                ref = logits
            err = ((logits - ref).abs().max() / ref.abs().max()).item()
            del logits
            ms, mib = timed(lambda: model(ids, **kwargs).logits)  # noqa: B023, F821  (called before `del model`)
        rows.append({"model": name, "shape": f"B{batch} S{seq}" + (" padded" if padded else ""), "form": form, "ms": round(ms, 2),
                     "peak_mib": round(mib), "rel_err_vs_first": float(f"{err:.2e}")})
        print(rows[-1], flush=True)
        del model
    if reports:
        print("\n".join(str(reports[-1]).splitlines()[:4]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+", choices=sorted(MODELS))
    ap.add_argument("--forms", default=",".join(FORMS))
    ap.add_argument("--json")
    ap.add_argument("--padded", action="store_true", help="left-padded attention_mask (the mask stays a mask)")
    args = ap.parse_args()
    rows = [row for name in args.models for row in run(name, args.forms.split(","), args.padded)]
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
          f"transformers {transformers.__version__}, {torch.cuda.get_device_name()}")
    print(tabulate(rows, headers="keys", tablefmt="github"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
