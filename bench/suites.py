"""The bench scripts by suite name, and how `python -m bench --suite NAME <flags>` runs one: the script's own `main`,
in this process, with the flags as its command line, so the command does what `python bench/SCRIPT.py <flags>`
does (`distributed` is launched under torchrun, one process per rank, as that script expects).
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclasses.dataclass(frozen=True)
class Suite:
    script: str          # the file in bench/
    about: str           # one line for --list
    gpu_only: bool = False


SUITES = {
    "forward": Suite("models.py", "whole-model forward latency and peak memory per form (--generate: tokens/s)"),
    "training": Suite("training.py", "one training step per form; --max-batch: the largest batch that trains"),
    "decode": Suite("decode.py", "generate() decode, forms in turn: static cache under CUDA graphs, compiled forward"),
    "flex": Suite("flex_models.py", "soft-capped, sink, sliding-window, ALiBi models beside transformers' flex path"),
    "regional": Suite("regional.py", "each layer compiled alone (--fsdp2), forward and training step"),
    "corpus": Suite("corpus_models.py", "third-party models at real sizes: SAM, Whisper, x-transformers, ESM-2"),
    "integrations": Suite("integrations.py", "generate() with CompileConfig, Trainer, timm, GPT-2's peak by line"),
    "memory": Suite("step_memory.py", "where a training step's memory goes (--at-peak, --saved)"),
    "compile": Suite("pass_cost.py", "the rewrite's own time against depth and against the whole compile"),
    "attention": Suite("standalone.py", "one attention call: eager, rewritten, direct SDPA over head dims and lengths"),
    "kernels": Suite("probe_masks.py", "which SDPA kernel each mask form lands on, GQA, lower-right causal", True),
    "padded": Suite("padded_attention.py", "attention alone on a padded batch: SDPA's dense mask vs flex's BlockMask"),
    "bias": Suite("bias_attention.py", "attention alone with ALiBi / a T5 bias: SDPA's dense bias vs flex"),
    "exact": Suite("cuda_catalog.py", "the whole catalog in fp16 and bf16 against eager; exits 1 on a mismatch", True),
    "exact-masks": Suite("cuda_masks.py", "fully masked rows under every CUDA kernel; exits 1 on a mismatch", True),
    "exact-flex": Suite("cuda_flex.py", "flex and sink sites forward and backward against fp32", True),
    "deploy": Suite("deploy.py", "exported models: ONNX Runtime (CPU) and AOTInductor packages (GPU) per form"),
    "distributed": Suite("distributed.py", "DDP and FSDP2 training under torchrun (--tiny: CPU over gloo)"),
    "profile": Suite("profile_model.py", "kernels, launches and host time of one forward per form"),
    "profile-generate": Suite("profile_generate.py", "kernels, launches and host time of one generate() per form"),
    "plots": Suite("plot_models.py", "the forward and training plots from results JSON"),
    "plots-flex": Suite("plot_flex.py", "the FlexAttention models' plot from results JSON"),
}


def listing() -> str:
    width = max(map(len, SUITES))
    return "\n".join(f"{name:<{width}}  {s.script:<20} {'GPU  ' if s.gpu_only else '     '}{s.about}"
                     for name, s in SUITES.items())


def run_script(name: str, argv: list) -> int:
    """`bench/<script> argv` as its own command line would run it; its exit status."""
    suite = SUITES[name]
    if suite.gpu_only and not torch.cuda.is_available():
        print(f"python -m bench: suite {name!r} ({suite.script}) runs on CUDA only, and this machine has no CUDA "
              f"GPU (torch {torch.__version__})", file=sys.stderr)
        return 2
    path = os.path.join(HERE, suite.script)
    if name == "distributed" and "LOCAL_RANK" not in os.environ:
        return _torchrun(path, argv)
    module = importlib.import_module(f"bench.{suite.script.removesuffix('.py')}")
    saved = sys.argv
    sys.argv = [path, *argv]
    try:
        status = module.main()
    except SystemExit as e:                       # argparse's --help and errors, scripts that exit
        status = e.code
    finally:
        sys.argv = saved
    return status if isinstance(status, int) else 0 if status is None else 1


def _torchrun(path: str, argv: list) -> int:
    """distributed.py expects torchrun's ranks: one per GPU, or two on the CPU (gloo)."""
    ranks = torch.cuda.device_count() if torch.cuda.is_available() else 2
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", path, *argv]
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd)
