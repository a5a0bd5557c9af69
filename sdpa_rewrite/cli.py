"""`sdpa-rewrite` / `python -m sdpa_rewrite`: the main job from the command line.

    sdpa-rewrite demo [gpt2|llama]   build a tiny transformers model (random weights, eager attention),
                                     print the report of what the backend rewrites, and the max error
    sdpa-rewrite scan gpt2 llama t5  each model_type built tiny from its config (offline), compiled with
                                     the backend and compared with eager: report table + verdict line
    sdpa-rewrite scan --all          every model_type transformers knows, with a summary at the end
    sdpa-rewrite scan --corpus       the third-party corpus: libraries that write attention by hand
                                     (scan/corpus.py; one entry by name: scan segment-anything/image-encoder)
    sdpa-rewrite scan pkg.mod:fn     your factory: returns a model with a transformers config (dummy
                                     inputs are made for it) or (model, inputs), inputs a kwargs dict
                                     or a tuple of positional args
      --json PATH  --coverage PATH (markdown page)  --padded left|right  --timeout SECONDS
    scan exits 1 when a model's numbers differ from eager or the backend raised, else 0.
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
    torch.manual_seed(0)                  # the same random weights every run: the printed error repeats
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


def scan(args, argv: list) -> int:
    import json

    try:
        from transformers.utils import logging
    except ImportError:
        print("scan builds transformers models: pip install transformers", file=sys.stderr)
        return 2
    from .scan import coverage, summary, thirdparty
    from .scan.run import scan_model

    logging.set_verbosity_error()
    torch._logging.set_logs(dynamo=40)      # logging.ERROR: graph-break warnings are the report's business
    if args.all:
        from transformers import CONFIG_MAPPING

        targets = sorted(CONFIG_MAPPING.keys())
    elif args.corpus:
        from .scan.corpus import ENTRIES

        targets = [e.name for e in ENTRIES]
    else:
        targets = args.targets
    if not targets:
        print("sdpa-rewrite scan: name model types (gpt2 llama ...), module:function factories, corpus entries, "
              "--all or --corpus", file=sys.stderr)
        return 2
    long_run = args.all or args.corpus
    results = []
    for i, target in enumerate(targets):
        if long_run:
            _progress(i, len(targets), target)
        result = scan_model(target, padded=args.padded, timeout=args.timeout)
        results.append(result)
        if not long_run:
            if result.report is not None and result.report.sites:
                print(result.report)
            print(summary.verdict(result), end="\n\n", flush=True)
        if args.json:       # written after every model, so a long --all run leaves its results so far
            with open(args.json, "w") as f:
                json.dump([r.to_dict() for r in results], f, indent=1)
    if long_run:
        _progress(len(targets), len(targets), "")
        print(summary.table(results) if args.all else thirdparty.table(results))
        print()
    if args.corpus:
        print("\n".join(thirdparty.totals(results)))
    elif len(results) > 1:
        print("\n".join(summary.Totals.of(results).lines()))
    if args.coverage and args.corpus:
        coverage.write_corpus(args.coverage, results, command="sdpa-rewrite " + " ".join(argv))
    elif args.coverage:
        coverage.write(args.coverage, results, command="sdpa-rewrite " + " ".join(argv), padded=args.padded)
    failed = [r for r in results if r.status == "wrong result" or r.note.startswith("sdpa_rewrite:")]
    return 1 if failed else 0


def _progress(done: int, total: int, name: str, width: int = 30) -> None:
    """One line on stderr, redrawn in place: [#####.....] 123/822 name."""
    filled = width * done // max(total, 1)
    end = "\n" if done == total else ""
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {name:<40.40}", end=end,
          file=sys.stderr, flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="sdpa-rewrite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="rewrite a tiny transformers model and print the report")
    d.add_argument("model", nargs="?", default="gpt2", choices=sorted(TINY))
    s = sub.add_parser("scan", help="run transformers architectures (or your factory) through the backend")
    s.add_argument("targets", nargs="*", metavar="MODEL",
                   help="a transformers model_type (gpt2, t5, ...) or module:function returning a model "
                        "or (model, inputs)")
    s.add_argument("--all", action="store_true", help="every model_type in transformers' CONFIG_MAPPING")
    s.add_argument("--corpus", action="store_true",
                   help="the third-party corpus (libraries that write attention by hand); with --coverage, "
                        "rewrites the page's third-party table")
    s.add_argument("--json", metavar="PATH", help="write the results as JSON")
    s.add_argument("--coverage", metavar="PATH", help="write the markdown coverage page")
    s.add_argument("--padded", choices=["left", "right"], help="pad the first row: the attention mask is input data")
    s.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="give up on a model after this long (default: none; 600 with --all)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args.model)
    if args.command == "scan":
        if (args.all or args.corpus) and args.timeout is None:
            args.timeout = 600.0
        return scan(args, argv)
    return 2


if __name__ == "__main__":
    sys.exit(main())
