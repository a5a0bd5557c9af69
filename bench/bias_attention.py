"""Attention alone with a position bias (ALiBi, T5-style) beside a causal mask: what SDPA costs reading the combined
float mask, what FlexAttention costs reading the same tensor through its score_mod with the BlockMask of its
visible tiles (the rewrite's dense-mask call, sdpa_rewrite.flex), and what flex costs computing ALiBi from the
indices (reading no tensor: what a rule that reads the bias's algebra could give), and what flex costs reading
ALiBi as Bloom lays it out, one row per head broadcast over the queries (what a rule for a bias constant along
the query dim could give). The first run (bench/RESULTS.md) kept a bias an additive mask on SDPA.

    sdpa_causal        SDPA is_causal=True, no bias: the floor
    sdpa_bias          SDPA with the dense float mask: bias + (0 / finfo.min causal)
    flex_bias          flex, score_mod adding that dense mask, BlockMask of its visible tiles
    flex_alibi_index   flex, score_mod adding slope[h]·(kv − q), causal BlockMask (ALiBi only)
    flex_alibi_keys    flex, score_mod reading an (H, S) tensor slope[h]·kv (Bloom's layout: softmax drops the
                       row's shift −slope[h]·q), causal BlockMask (ALiBi only)

Biases: `alibi` (Bloom's slopes, (1, H, L, S)), `t5` (a random (1, H, L, S) tensor standing for T5's bucketed
table). Forward under no_grad and forward + backward (the bias itself without gradients), bf16, B4 H16 E128 by
default. `rel_err` is against sdpa_bias.

    PYTHONPATH=. python bench/bias_attention.py [--seqs 2048,4096,8192] [--biases alibi,t5] [--forms ...]
                                                [--json out.json] [--budget-s 400]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from tabulate import tabulate

from bench.attention_forms import time_forms
from bench.timing import Record
from sdpa_rewrite.flex import band_block_mask, dense_block_mask, flex_attention_site

FORMS = ["sdpa_causal", "sdpa_bias", "flex_bias", "flex_alibi_index", "flex_alibi_keys"]


def alibi_slopes(heads: int, device) -> torch.Tensor:
    """Bloom's slopes for a power-of-two head count: 2^(-8·i/H), i = 1..H."""
    return torch.tensor([2 ** (-8 * (i + 1) / heads) for i in range(heads)], device=device)


def bias_mask(kind: str, heads: int, seq: int, dtype, device) -> torch.Tensor:
    """(1, H, L, S) float: the bias where causal, finfo.min above the diagonal."""
    pos = torch.arange(seq, device=device)
    if kind == "alibi":
        bias = alibi_slopes(heads, device)[:, None, None] * (pos[None, :] - pos[:, None])[None].float()
    else:
        bias = torch.randn(heads, seq, seq, generator=torch.Generator(device).manual_seed(0), device=device)
    causal = pos[None, :] <= pos[:, None]
    return torch.where(causal, bias, torch.finfo(torch.float32).min)[None].to(dtype)


def attention(form: str, scale: float, heads: int, device):
    def sdpa_causal(q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)

    def sdpa_bias(q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

    def flex_bias(q, k, v, mask):
        L, S = q.shape[-2], k.shape[-2]
        return flex_attention_site(q, k, v, mask, None, dense_block_mask(mask, L, S), scale=scale)

    slopes = alibi_slopes(heads, device)

    def causal_flex(q, k, v, score_mod):
        from torch.nn.attention.flex_attention import flex_attention

        L, S = q.shape[-2], k.shape[-2]
        return flex_attention(q, k, v, score_mod=score_mod, block_mask=band_block_mask(L, S, 0, None, q.device),
                              scale=scale)

    def flex_alibi_index(q, k, v, mask):
        def score_mod(score, b, h, q_idx, kv_idx):
            return score + slopes[h] * (kv_idx - q_idx)

        return causal_flex(q, k, v, score_mod)

    def flex_alibi_keys(q, k, v, mask):
        row = torch.ops.sdpa_rewrite.laid_out(slopes[:, None] * torch.arange(k.shape[-2], device=q.device))

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + row[h, kv_idx]

        return causal_flex(q, k, v, score_mod)

    fn = {"sdpa_causal": sdpa_causal, "sdpa_bias": sdpa_bias, "flex_bias": flex_bias,
          "flex_alibi_index": flex_alibi_index, "flex_alibi_keys": flex_alibi_keys}[form]
    return torch.compile(fn)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqs", default="2048,4096,8192")
    ap.add_argument("--biases", default="alibi,t5")
    ap.add_argument("--forms", default=",".join(FORMS))
    ap.add_argument("--shape", default="4x16x128", help="B x H x E")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--budget-s", type=float, default=400)
    ap.add_argument("--json")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    B, H, E = map(int, args.shape.split("x"))
    record, rows, deadline = Record(args.json), [], time.perf_counter() + args.budget_s
    for seq in map(int, args.seqs.split(",")):
        for kind in args.biases.split(","):
            g = torch.Generator(device).manual_seed(seq)
            q, k, v = (torch.randn(B, H, seq, E, device=device, dtype=dtype, generator=g) for _ in range(3))
            mask = bias_mask(kind, H, seq, dtype, device)
            forms = [f for f in args.forms.split(",") if kind == "alibi" or not f.startswith("flex_alibi")]
            rows += time_forms(forms, lambda form: attention(form, E ** -0.5, H, device),
                               lambda form: mask,  # noqa: B023
                               (q, k, v), ref_form="sdpa_bias", record=record, key={"S": seq, "bias": kind},
                               reps=args.reps, deadline=deadline, no_error=("sdpa_causal",))
    print(tabulate([r for r in rows if "skipped" not in r], headers="keys", tablefmt="github"))


if __name__ == "__main__":
    main()
