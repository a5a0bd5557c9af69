"""`sdpa-rewrite` / `python -m sdpa_rewrite`: the main job from the command line.

    sdpa-rewrite demo [gpt2|llama]   build a tiny transformers model (random weights, eager attention),
                                     print the report of what the backend rewrites, and the max error
"""
from __future__ import annotations

import argparse
import sys

import torch

from .explain import explain

TINY = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=64,
                                                   bos_token_id=0, eos_token_id=0)),
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                                      num_key_value_heads=2, intermediate_size=128, vocab_size=128)),
}


def build_tiny(name: str) -> torch.nn.Module:
    import transformers

    config_cls, model_cls, kwargs = TINY[name]
    config = getattr(transformers, config_cls)(attn_implementation="eager", **kwargs)
    return getattr(transformers, model_cls)(config).eval()


def demo(name: str) -> int:
    try:
        model = build_tiny(name)
    except ImportError:
        print("the demo builds a transformers model: pip install transformers", file=sys.stderr)
        return 2
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    report = explain(model, ids)
    print(report)
    with torch.no_grad():
        ref = model(ids).logits
        compiled = torch.compile(model, backend="sdpa_rewrite", options={"downstream": "eager"})
        out = compiled(ids).logits
    err = ((out - ref).abs().max() / ref.abs().max()).item()
    print(f"\n{name}: {len(report.rewritten)}/{len(report.sites)} sites rewritten, "
          f"max relative error vs eager {err:.2e} (fp32, CPU)")
    return 0 if err <= 1e-5 else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="sdpa-rewrite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="rewrite a tiny transformers model and print the report")
    d.add_argument("model", nargs="?", default="gpt2", choices=sorted(TINY))
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args.model)
    return 2


if __name__ == "__main__":
    sys.exit(main())
