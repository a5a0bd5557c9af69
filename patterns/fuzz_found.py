"""Spellings that property testing (tests/test_fuzz.py) found the engine getting wrong or missing, kept
as fixed examples. Each names the program that exposed it."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import Entry, Expect, padding_mask, qkv


class SoftmaxDimFromRank(nn.Module):
    """`torch.softmax(s, dim=s.dim() - 1)`: in a symbolic_trace graph the dim is a node, read from the rank."""

    def forward(self, q, k, v):
        s = torch.matmul(q, k.transpose(-2, -1)) * 0.25
        return torch.softmax(s, dim=s.dim() - 1) @ v


class TemperatureAfterBmm(nn.Module):
    """A learned scalar temperature applied after the (B·H, L, S) -> (B, H, L, S) view of a bmm."""

    def __init__(self):
        super().__init__()
        self.temperature = nn.Parameter(torch.tensor(0.25))

    def forward(self, q, k, v):
        b, h, l, e = q.shape
        s = torch.bmm(q.reshape(b * h, l, e), k.reshape(b * h, -1, e).transpose(1, 2)).view(b, h, l, -1)
        return F.softmax(s * self.temperature, dim=-1) @ v


class CausalThenTemperature(nn.Module):
    """A causal fill, then a tensor temperature: the fill is scaled at run time by an unknown value, so the
    mask cannot be folded to is_causal (a small temperature would un-mask it in eager)."""

    def __init__(self):
        super().__init__()
        self.temperature = nn.Parameter(torch.tensor(0.25))

    def forward(self, q, k, v):
        keep = torch.ones((q.size(-2), k.size(-2)), dtype=torch.bool).tril()
        s = (q @ k.transpose(-2, -1)).masked_fill(~keep, -1e4) * self.temperature
        return s.softmax(-1) @ v


class OverflowingFill(nn.Module):
    """`masked_fill(m, finfo.min)` then `* 2`: in fp32 the fill overflows to -inf, so it is a -inf mask."""

    def forward(self, q, k, v, mask):
        s = (q @ k.transpose(-2, -1)).masked_fill(mask < 0, torch.finfo(torch.float32).min) * 2.0
        return s.softmax(-1) @ v


ENTRIES = [
    Entry("fuzz_found/softmax_dim_from_rank", "tests/test_fuzz.py: Program(softmax='torch', ...)",
          SoftmaxDimFromRank, lambda: qkv(seed=91), (Expect(scale=0.25),)),
    Entry("fuzz_found/temperature_after_bmm_view", "tests/test_fuzz.py: Program(scores='bmm', scale_at='tensor')",
          TemperatureAfterBmm, lambda: qkv(seed=92), (Expect(scale=1.0),)),
    Entry("fuzz_found/causal_fill_then_tensor_temperature",
          "tests/test_fuzz.py: Program(mask='causal_finite', scale_at='tensor', mask_before_scale=True)",
          CausalThenTemperature, lambda: qkv(seed=93), None, reason="tensor-valued scale is applied after a masked fill"),
    Entry("fuzz_found/finfo_min_fill_overflows_to_minus_inf",
          "tests/test_fuzz.py: Program(mask='finite_fill_input', fill=finfo.min, scale=2.0, mask_before_scale=True)",
          OverflowingFill, lambda: qkv(seed=94) + (padding_mask(2, 8, 8),), (Expect(scale=2.0, mask="bool", verdict="input mask"),),
          notes="the fill is classified as the -inf it becomes, so fully masked rows give zeros (eager: NaN), "
                "not mean(V); tests/test_rewrite.py checks those rows"),
]


class ClampedScores(nn.Module):
    """xglm (found by `sdpa-rewrite scan --all`): `max(s + mask, finfo.min)` turns a -inf in the mask finite."""

    def forward(self, q, k, v, mask):
        s = q @ k.transpose(-2, -1) * 0.25 + mask
        s = torch.max(s, torch.tensor(torch.finfo(torch.float32).min))   # xglm: finfo(s.dtype), fp32 here
        return F.softmax(s, dim=-1) @ v


ENTRIES.append(
    Entry("fuzz_found/xglm_clamp_to_finfo_min", "transformers: models/xglm/modeling_xglm.py (eager attention, "
          "found by sdpa-rewrite scan --all)", ClampedScores, lambda: qkv(seed=95) + (padding_mask(2, 8, 8),),
          (Expect(scale=0.25, mask="float", verdict="input mask"),)))


class ArithmeticMaskOneKey(nn.Module):
    """openai-gpt's `s * b + c * (1 - b)` with a single key: b is all ones, so the product is the identity.
    A bmm (B·H, L, S) site viewed back to (B, H, L, S) first read b as a tensor scale (constant along the
    one key) and then missed the site at the view."""

    def forward(self, q, k, v):
        bsz, h, l, e = q.shape
        s = torch.bmm(q.reshape(bsz * h, l, e), k.reshape(bsz * h, -1, e).transpose(1, 2)).view(bsz, h, l, -1) * 0.5
        b = torch.ones((s.size(-2), s.size(-1)), device=s.device, dtype=s.dtype).tril()
        return F.softmax(s * b + -1e4 * (1 - b), dim=-1) @ v


ENTRIES.append(
    Entry("fuzz_found/arithmetic_mask_one_key",
          "tests/test_fuzz.py: Program(scores='bmm', mask='causal_arith', l=2, s=1)",
          ArithmeticMaskOneKey, lambda: qkv(l=2, s=1, seed=96), (Expect(scale=0.5, verdict="none"),)))
