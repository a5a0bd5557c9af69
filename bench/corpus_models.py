"""Third-party models (the corpus of sdpa_rewrite/scan/corpus.py) at real sizes, whole model compiled, forward and a
training step, side by side in one process:

    eager_inductor   the library's own eager attention, torch.compile (Inductor): what the model gets without us
    fused_inductor   the library's own fused path (it calls SDPA itself), torch.compile; only where it has one
    backend          the library's eager attention, backend="sdpa_rewrite"

    PYTHONPATH=. python bench/corpus_models.py sam whisper xtransformers esm2 [--forms ...] [--no-forward]
                                               [--no-train] [--budget-s 540] [--json out.json] [--tiny]

The models: `sam` segment-anything's ImageEncoderViT at ViT-B size (12 layers, d768, 12 heads, 14x14 windows with
decomposed relative position, 4 global layers), a 1024x1024 image for the forward (4096 tokens in the global layers)
and 512x512 for training (1024 tokens); `whisper` openai-whisper `base` (6+6 layers, d512, 30 s of audio, 224
tokens; fused path: `use_sdpa=True`); `xtransformers` an x-transformers Decoder (12 layers, d1024, 16 heads, S2048;
fused path: `attn_flash=True`); `esm2` fair-esm's ESM-2 150M (30 layers, d640, 20 heads, 1024 residues; no fused
path). Forward rows: bf16 weights, no_grad, `rel_err` of the output against the fp32 eager model. Training rows:
fp32 weights, bf16 autocast, forward + backward of a mean-square loss. `compile_s` is the first call's wall time.
"""
from __future__ import annotations

import argparse
import copy
import gc
import time
import warnings

import torch
from tabulate import tabulate

import sdpa_rewrite  # noqa: F401  (registers the backend)
from bench.timing import Record, measure
from sdpa_rewrite.scan.corpus import fill_uninitialized, without_torchvision

FORMS = ["eager_inductor", "fused_inductor", "backend"]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def sam(tiny: bool, fused: bool, train: bool):
    with without_torchvision():         # only where torchvision does not load (the CPU torch of the tests)
        from segment_anything.modeling import ImageEncoderViT

    size = (64 if tiny else 512) if train else (64 if tiny else 1024)
    dims = dict(embed_dim=64, depth=2, num_heads=4, window_size=4, global_attn_indexes=(1,)) if tiny else \
        dict(embed_dim=768, depth=12, num_heads=12, window_size=14, global_attn_indexes=(2, 5, 8, 11))
    model = ImageEncoderViT(img_size=size, patch_size=16, out_chans=256, use_rel_pos=True, rel_pos_zero_init=False,
                            **dims)
    return model, (torch.randn(1, 3, size, size, generator=_gen()),)


def whisper(tiny: bool, fused: bool, train: bool):
    import whisper.model as wm

    wm.MultiHeadAttention.use_sdpa = fused
    dims = wm.ModelDimensions(n_mels=80, n_audio_ctx=32 if tiny else 1500, n_audio_state=64 if tiny else 512,
                              n_audio_head=4 if tiny else 8, n_audio_layer=2 if tiny else 6, n_vocab=51865,
                              n_text_ctx=32 if tiny else 448, n_text_state=64 if tiny else 512,
                              n_text_head=4 if tiny else 8, n_text_layer=2 if tiny else 6)
    batch = 2 if tiny else 8
    mel = torch.randn(batch, 80, 2 * dims.n_audio_ctx, generator=_gen())
    tokens = torch.randint(0, dims.n_vocab, (batch, 16 if tiny else 224), generator=_gen(1))
    model = wm.Whisper(dims)
    fill_uninitialized(model.decoder.positional_embedding)     # torch.empty, for a checkpoint to fill: may hold NaN
    return model, (mel, tokens)


def xtransformers(tiny: bool, fused: bool, train: bool):
    from x_transformers import Decoder, TransformerWrapper

    seq = 64 if tiny else 2048
    model = TransformerWrapper(num_tokens=32000, max_seq_len=seq,
                               attn_layers=Decoder(dim=64 if tiny else 1024, depth=2 if tiny else 12,
                                                   heads=4 if tiny else 16, attn_flash=fused))
    return model, (torch.randint(0, 32000, (1 if tiny else 4, seq), generator=_gen()),)


def esm2(tiny: bool, fused: bool, train: bool):
    import esm

    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    model = esm.ESM2(num_layers=2 if tiny else 30, embed_dim=64 if tiny else 640, attention_heads=4 if tiny else 20,
                     alphabet=alphabet)
    tokens = torch.randint(4, 24, (2 if tiny else 8, 64 if tiny else 1024), generator=_gen())
    tokens[:, 0] = alphabet.cls_idx
    return _Representations(model), (tokens,)


class _Representations(torch.nn.Module):
    """ESM-2's last hidden states (its forward returns a dict with logits and the representations asked for)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens):
        return self.model(tokens, repr_layers=[self.model.num_layers])["representations"][self.model.num_layers]


MODELS = {"sam": sam, "whisper": whisper, "xtransformers": xtransformers, "esm2": esm2}
HAS_FUSED = {"whisper", "xtransformers"}


def _output(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]


def _compiled(model, form: str, reports: list):
    if form == "backend":
        return torch.compile(model, backend="sdpa_rewrite", options={"report": reports.append})
    return torch.compile(model)


def _sites(reports) -> str:
    """'12/12 (efficient ×8, flash ×4)': sites rewritten of those found, and the SDPA kernel each one picks."""
    from collections import Counter

    rewritten = [s for r in reports for s in r.rewritten]
    kernels = Counter(s.kernel or s.target for s in rewritten)
    named = ", ".join(f"{k} ×{n}" for k, n in kernels.most_common() if k)
    return f"{len(rewritten)}/{sum(len(r.sites) for r in reports)}" + (f" ({named})" if named else "")


_WEIGHTS: dict = {}


def build(name, form, tiny, train):
    """The model and inputs of one form, with the weights every form of the model gets (whisper keeps a
    `torch.empty` positional embedding: a second build would hold other numbers)."""
    model, inputs = MODELS[name](tiny, form == "fused_inductor", train)
    weights = _WEIGHTS.setdefault((name, tiny, train), copy.deepcopy(model.state_dict()))
    model.load_state_dict(weights)
    return model, inputs


def forward_row(name, form, tiny, device, reps, reference):
    model, inputs = build(name, form, tiny, False)
    model = model.to(device).eval()
    if reference is None:      # the fp32 eager model's output, once per model, on a copy (ESM caches its rotary table)
        with torch.no_grad():
            reference = _output(copy.deepcopy(model)(*(x.to(device) for x in inputs))).float()
    model = model.to(torch.bfloat16)
    inputs = tuple(x.to(device).to(torch.bfloat16) if x.is_floating_point() else x.to(device) for x in inputs)
    reports = []
    compiled = _compiled(model, form, reports)
    with torch.no_grad():
        t0 = time.perf_counter()
        out = _output(compiled(*inputs)).float()
        if device == "cuda":
            torch.cuda.synchronize()
        compile_s = time.perf_counter() - t0
        timing = measure(lambda: compiled(*inputs), reps=reps, device=device)
    err = ((out - reference).abs().max() / reference.abs().max()).item()
    return reference, {"model": name, "form": form, "ms": round(timing.ms, 3), "spread_ms": round(timing.spread_ms, 3),
                       "peak_mib": round(timing.peak_mib, 1), "compile_s": round(compile_s, 1),
                       "rel_err": f"{err:.1e}", "sites": _sites(reports)}


def train_row(name, form, tiny, device, reps):
    model, inputs = build(name, form, tiny, True)
    model = model.to(device).train()
    inputs = tuple(x.to(device) for x in inputs)
    reports = []
    compiled = _compiled(model, form, reports)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = _output(compiled(*inputs)).float().pow(2).mean()
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss.detach()

    t0 = time.perf_counter()
    step()
    if device == "cuda":
        torch.cuda.synchronize()
    compile_s = time.perf_counter() - t0
    timing = measure(step, reps=reps, device=device)
    return {"model": name, "form": form, "ms": round(timing.ms, 3), "spread_ms": round(timing.spread_ms, 3),
            "peak_mib": round(timing.peak_mib, 1), "compile_s": round(compile_s, 1), "sites": _sites(reports)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", choices=sorted(MODELS))
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--train", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--forward", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--budget-s", type=float, default=None, help="skip what would start after this many seconds")
    parser.add_argument("--json", default=None)
    parser.add_argument("--tiny", action="store_true", help="2-layer models on the CPU: a check of the script")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    reps = 2 if args.tiny else args.reps
    record, started = Record(args.json), time.perf_counter()
    for name in args.models:
        reference = None
        forms = [f for f in args.forms.split(",") if f != "fused_inductor" or name in HAS_FUSED]
        for kind in [k for k, on in (("forward", args.forward), ("train", args.train)) if on]:
            for form in forms:
                if args.budget_s is not None and time.perf_counter() - started > args.budget_s:
                    record.add(kind, {"model": name, "form": form, "error": "skipped: --budget-s spent"})
                    continue
                torch._dynamo.reset()
                try:
                    if kind == "forward":
                        reference, row = forward_row(name, form, args.tiny, device, reps, reference)
                    else:
                        row = train_row(name, form, args.tiny, device, reps)
                except Exception as e:  # noqa: BLE001 - a form that fails is a row with its error
                    row = {"model": name, "form": form, "error": f"{type(e).__name__}: {str(e)[:200]}"}
                record.add(kind, row)
                gc.collect()
                if device == "cuda":
                    torch.cuda.empty_cache()
    for kind, rows in record.tables.items():
        print(f"\n{kind}")
        print(tabulate(rows, headers="keys"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
