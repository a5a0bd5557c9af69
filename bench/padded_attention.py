"""Attention alone on a padded batch's dense mask: what SDPA costs reading it, and what FlexAttention costs with the
BlockMask the rewrite builds from it (sdpa_rewrite.flex.dense_block_mask, its build included in every call). This
is the measurement behind plan.DENSE_FLEX_MIN and the dense-mask rule of plan.py.

    sdpa_causal      SDPA is_causal=True on the unpadded batch: the floor, no mask read
    sdpa_additive    SDPA with the dense additive mask (0 / finfo.min), what transformers' eager path builds
    sdpa_bool        SDPA with the dense bool keep-mask
    flex_additive    flex, score_mod adding the additive mask, BlockMask of its visible tiles (the rewrite's call
                     for a float mask)
    flex_bool        flex, BlockMask of the bool mask's visible tiles, partial tiles read through the mask_mod
                     (the rewrite's call for a bool keep-mask)
    flex_rows        flex_additive with one BlockMask entry per batch row (dense_block_mask(per_row=True)), each
                     row's own padding skipped: the rewrite's call for a float mask (plan.DENSE_FLEX_PER_ROW);
                     flex_additive is the same with one BlockMask for the whole batch

Each form is one torch.compile'd function of (q, k, v, mask), forward under no_grad and forward + backward, bf16,
B8 H16 E128 by default; the mask is causal with left or right padding as bench/models.padding_mask makes it
(row b padded by b·S/(2·B) tokens). `rel_err` is against sdpa_additive on the rows that see a key.

    PYTHONPATH=. python bench/padded_attention.py [--seqs 1024,2048,4096,8192] [--pads left,right]
                                                  [--forms ...] [--json out.json] [--budget-s 400]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from tabulate import tabulate

from bench.attention_forms import time_forms
from bench.models import padding_mask
from bench.timing import Record
from sdpa_rewrite.flex import dense_block_mask, flex_attention_site

FORMS = ["sdpa_causal", "sdpa_additive", "sdpa_bool", "flex_additive", "flex_bool", "flex_rows"]


def keep_mask(batch: int, seq: int, pad: str, device: str) -> torch.Tensor:
    tokens = padding_mask(batch, seq, device).bool()
    if pad == "right":
        tokens = tokens.flip(-1)
    causal = torch.ones(seq, seq, dtype=torch.bool, device=device).tril()
    return causal[None, None] & tokens[:, None, None, :]


def attention(form: str, scale: float):
    def sdpa_causal(q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)

    def sdpa_dense(q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

    def flex_additive(q, k, v, mask):
        L, S = q.shape[-2], k.shape[-2]
        return flex_attention_site(q, k, v, mask, None, dense_block_mask(mask, L, S), scale=scale)

    def flex_bool(q, k, v, mask):
        L, S = q.shape[-2], k.shape[-2]
        return flex_attention_site(q, k, v, None, None, dense_block_mask(mask, L, S), scale=scale)

    def flex_rows(q, k, v, mask):
        L, S = q.shape[-2], k.shape[-2]
        return flex_attention_site(q, k, v, mask, None, dense_block_mask(mask, L, S, per_row=True), scale=scale)

    fn = {"sdpa_causal": sdpa_causal, "sdpa_bool": sdpa_dense, "sdpa_additive": sdpa_dense,
          "flex_additive": flex_additive, "flex_bool": flex_bool, "flex_rows": flex_rows}[form]
    return torch.compile(fn)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqs", default="1024,2048,4096,8192")
    ap.add_argument("--pads", default="left,right")
    ap.add_argument("--forms", default=",".join(FORMS))
    ap.add_argument("--shape", default="8x16x128", help="B x H x E")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--budget-s", type=float, default=400)
    ap.add_argument("--json")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    B, H, E = map(int, args.shape.split("x"))
    record, rows, deadline = Record(args.json), [], time.perf_counter() + args.budget_s
    for seq in map(int, args.seqs.split(",")):
        for pad in args.pads.split(","):
            g = torch.Generator(device).manual_seed(seq)
            q, k, v = (torch.randn(B, H, seq, E, device=device, dtype=dtype, generator=g) for _ in range(3))
            keep = keep_mask(B, seq, pad, device)
            additive = torch.zeros(keep.shape, dtype=dtype, device=device).masked_fill(~keep, torch.finfo(dtype).min)
            rows += time_forms(args.forms.split(","), lambda form: attention(form, E ** -0.5),
                               lambda form: keep if form.endswith("bool") else additive,  # noqa: B023
                               (q, k, v), ref_form="sdpa_additive", record=record, key={"S": seq, "pad": pad},
                               reps=args.reps, deadline=deadline, seen=keep.any(-1, keepdim=True),
                               no_error=("sdpa_causal",))
    print(tabulate([r for r in rows if "skipped" not in r], headers="keys", tablefmt="github"))


if __name__ == "__main__":
    main()
