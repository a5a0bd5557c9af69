"""Random eager-attention programs for property tests: a `Program` is a set of independent choices
(scores spelling, scale spelling and placement, mask kind / fill / broadcast, casts, key layout,
softmax and dropout spelling, GQA repetition, lengths, head dims, stacked sites) or a near-miss
mutation; `Attention(program)` is an nn.Module whose forward spells exactly those choices."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import strategies as st

MIN32 = torch.finfo(torch.float32).min


@dataclass(frozen=True)
class Program:
    b: int
    h: int
    groups: int            # query heads per k/v head
    repeat: str            # none | repeat_kv | repeat_interleave | broadcast (one k/v head, broadcast in matmul)
    l: int
    s: int
    e: int
    ev: int
    scores: str            # matmul | operator | mT | einsum | bmm | baddbmm | pre_transposed
    scale: float
    scale_at: str          # scores_mul | scores_div | q | k | both | none | tensor | baddbmm_alpha
    mask: str              # none | bool_input | bool_masked_fill | int_input | additive_input | causal_const | causal_finite | causal_arith | causal_indexed | causal_ramp | finite_fill_input
    mask_shape: str        # b1ls | 11ls | ls
    mask_before_scale: bool
    fill: float            # for finite fills
    empty_rows: bool       # the input mask masks whole rows
    upcast: str            # none | softmax_dtype | float_scores
    softmax: str           # functional | torch | method | module
    dropout: str           # none | functional_eval | module_eval
    sites: int             # 1, or 2 stacked (the second site's q is the first's output)
    near_miss: str         # "" or softcap | post_softmax | head_mix | other_dim | weights_returned
    cap: float = 0.0       # soft-capping cap·tanh(s / cap) after the scale, before the mask (0: none): a flex site
    row: float = 0.0       # ALiBi as Bloom lays it out: + slope·(h + 1)·j over the keys, built in the graph (0: none)

    @property
    def kv_heads(self) -> int:
        return 1 if self.repeat == "broadcast" else self.h // self.groups

    @property
    def rewritable(self) -> bool:
        return not self.near_miss


@st.composite
def capped_programs(draw) -> Program:
    """Rewritable programs with soft-capped scores, the mask added or filled after the cap (FlexAttention sites)."""
    from dataclasses import replace

    p = draw(programs())
    return replace(p, cap=draw(st.sampled_from([5.0, 30.0])), mask_before_scale=False)


@st.composite
def programs(draw, near_miss: bool = False) -> Program:
    h = draw(st.sampled_from([1, 2, 4]))
    groups = draw(st.sampled_from([g for g in (1, 2, 4) if h % g == 0]))
    repeat = "none" if groups == 1 else draw(st.sampled_from(["repeat_kv", "repeat_interleave"]))
    if h > 1 and groups == 1 and draw(st.booleans()) and draw(st.booleans()):
        repeat = "broadcast"
    l = draw(st.integers(1, 9))
    s = draw(st.sampled_from([l, draw(st.integers(1, 9))]))
    e = draw(st.sampled_from([4, 8, 16]))
    ev = draw(st.sampled_from([e, e, 8]))
    scores = draw(st.sampled_from(["matmul", "operator", "mT", "einsum", "bmm", "baddbmm", "pre_transposed"]))
    if scores in ("bmm", "baddbmm") and repeat == "broadcast":
        repeat = "none"
    scale = draw(st.sampled_from([1 / math.sqrt(e), 1.0, 0.3, 2.0]))
    placements = ["scores_mul", "scores_div", "q", "k", "both", "tensor"] + (["none"] if scale == 1.0 else [])
    if scores == "baddbmm":
        placements.append("baddbmm_alpha")
    scale_at = draw(st.sampled_from(placements))
    near = draw(st.sampled_from(["softcap", "post_softmax", "head_mix", "other_dim", "weights_returned"])) \
        if near_miss else ""
    masks = ["none", "bool_input", "bool_masked_fill", "int_input", "additive_input", "causal_const",
             "causal_finite", "causal_arith", "causal_indexed", "causal_ramp", "finite_fill_input"]
    # the softcap near-miss caps *masked* scores (a mask inside the tanh); over unmasked scores it is flex's site
    mask = draw(st.sampled_from(masks[1:] if near == "softcap" else masks))
    return Program(
        b=draw(st.integers(1, 3)), h=h, groups=groups, repeat=repeat, l=l, s=s, e=e, ev=ev, scores=scores,
        scale=scale, scale_at=scale_at, mask=mask, mask_shape=draw(st.sampled_from(["b1ls", "11ls", "ls"])),
        mask_before_scale=draw(st.booleans()), fill=draw(st.sampled_from([-1e4, -1e9, MIN32])),
        empty_rows=draw(st.booleans()), upcast=draw(st.sampled_from(["none", "softmax_dtype", "float_scores"])),
        softmax=draw(st.sampled_from(["functional", "torch", "method", "module"])),
        dropout=draw(st.sampled_from(["none", "functional_eval", "module_eval"])),
        sites=draw(st.sampled_from([1, 1, 2])) if l == s and e == ev and repeat == "none" and not near_miss else 1,
        near_miss=near,
    )


def inputs(p: Program, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(p.b, p.h, p.l, p.e, generator=g)
    k = torch.randn(p.b, p.kv_heads, p.s, p.e, generator=g)
    v = torch.randn(p.b, p.kv_heads, p.s, p.ev, generator=g)
    shape = {"b1ls": (p.b, 1, p.l, p.s), "11ls": (1, 1, p.l, p.s), "ls": (p.l, p.s)}[p.mask_shape]
    keep = torch.rand(*shape, generator=g) > 0.3
    if p.l <= p.s:
        keep = keep | torch.eye(p.l, p.s, dtype=torch.bool)      # rows see at least the diagonal ...
    else:
        keep[..., 0] = True
    if p.empty_rows:
        keep[..., p.l // 2, :] = False                           # ... unless whole rows are masked on purpose
    mask = {"bool_input": keep, "bool_masked_fill": ~keep, "int_input": keep.long(),
            "additive_input": additive_mask(p, keep),
            "finite_fill_input": ~keep}.get(p.mask)
    if p.scores == "pre_transposed":
        k = k.transpose(-2, -1).contiguous()
    args = (q, k, v) + ((mask,) if mask is not None else ())
    return args


def additive_mask(p: Program, keep: torch.Tensor) -> torch.Tensor:
    """0 where kept, the fill where masked; an empty row holds -inf over its second half (a causal mask over
    padding), so its answer depends on which keys hold the row's maximum."""
    mask = torch.zeros(keep.shape).masked_fill(~keep, p.fill)
    if p.empty_rows and p.s >= 2:
        mask[..., p.l // 2, p.s // 2:] = float("-inf")
    return mask


def swamps_scores(p: Program) -> bool:
    """An additive fill so large that eager's s + fill no longer depends on s (finfo.min, and -1e9 in fp32 for
    these small scores); BERT's -1e4 does not: eager's answer on an empty row is then the softmax of the scores."""
    return p.fill <= -1e9


class Attention(nn.Module):
    def __init__(self, p: Program):
        super().__init__()
        self.p = p
        self.drop = nn.Dropout(0.1)
        self.soft = nn.Softmax(dim=-1)
        self.temperature = nn.Parameter(torch.tensor(p.scale)) if p.scale_at == "tensor" else None
        if p.near_miss == "head_mix":
            self.mix = nn.Parameter(torch.randn(p.h, p.h))

    def forward(self, q, k, v, mask=None):
        out = self.site(q, k, v, mask)
        if self.p.sites == 2:
            x = out[0] if isinstance(out, tuple) else out
            out = self.site(x, k, v, mask)
        return out

    def site(self, q, k, v, mask):
        p = self.p
        if p.repeat == "repeat_kv":
            b, hk, s, e = k.shape[0], k.shape[1], k.shape[2], k.shape[3]
            k = k[:, :, None, :, :].expand(b, hk, p.groups, s, e).reshape(b, hk * p.groups, s, e)
            ev = v.shape[-1]
            v = v[:, :, None, :, :].expand(b, hk, p.groups, v.shape[2], ev).reshape(b, hk * p.groups, v.shape[2], ev)
        elif p.repeat == "repeat_interleave":
            k = torch.repeat_interleave(k, p.groups, dim=1)
            v = torch.repeat_interleave(v, p.groups, dim=1)
        scale = p.scale
        if p.scale_at == "q":
            q = q * scale
        elif p.scale_at == "k":
            k = k * scale
        elif p.scale_at == "both":
            q, k = q * math.sqrt(scale), k * math.sqrt(scale)
        s = self.scores(q, k)
        if p.mask_before_scale:
            s = self.masked(s, mask)
        if p.scale_at == "scores_mul":
            s = s * scale
        elif p.scale_at == "scores_div":
            s = s / (1.0 / scale)
        elif p.scale_at == "tensor":
            s = s * self.temperature
        if p.cap:
            s = torch.tanh(s / p.cap) * p.cap
        if p.row:
            n, heads = s.size(-1), torch.arange(1, s.size(1) + 1, dtype=s.dtype, device=s.device)
            s = s + p.row * heads[:, None, None] * torch.arange(n, dtype=s.dtype, device=s.device)
        if not p.mask_before_scale:
            s = self.masked(s, mask)
        if p.near_miss == "softcap":
            s = torch.tanh(s / 5.0) * 5.0
        if p.near_miss == "head_mix":
            s = torch.einsum("bhls,hg->bgls", s, self.mix)
        if p.upcast == "float_scores":
            s = s.float()
        if p.near_miss == "other_dim":
            w = F.softmax(s, dim=-2)
        elif p.softmax == "functional":
            w = F.softmax(s, dim=-1, dtype=torch.float32 if p.upcast == "softmax_dtype" else None)
        elif p.softmax == "torch":
            w = torch.softmax(s, dim=s.dim() - 1)
        elif p.softmax == "method":
            w = s.softmax(-1)
        else:
            w = self.soft(s)
        w = w.to(q.dtype)
        if p.dropout == "functional_eval":
            w = F.dropout(w, p=0.1, training=False)
        elif p.dropout == "module_eval":
            w = self.drop(w)
        if p.near_miss == "post_softmax":
            w = w * 2.0
        out = w @ v
        if p.near_miss == "weights_returned":
            return out, w
        return out

    def scores(self, q, k):
        p = self.p
        alpha = p.scale if p.scale_at == "baddbmm_alpha" else 1.0
        if p.scores == "matmul":
            return torch.matmul(q, k.transpose(-2, -1))
        if p.scores == "operator":
            return q @ k.transpose(-1, -2)
        if p.scores == "mT":
            return q @ k.mT
        if p.scores == "einsum":
            return torch.einsum("bhld,bhsd->bhls", q, k)
        if p.scores == "pre_transposed":
            return q @ k
        b, h, l, e = q.shape[0], q.shape[1], q.shape[2], q.shape[3]
        s = k.shape[2]
        q3, k3 = q.reshape(b * h, l, e), k.reshape(b * h, s, e)
        if p.scores == "bmm":
            return torch.bmm(q3, k3.transpose(1, 2)).view(b, h, l, s)
        base = torch.zeros((b * h, l, s), dtype=q.dtype, device=q.device)
        return torch.baddbmm(base, q3, k3.transpose(1, 2), beta=0.0, alpha=alpha).view(b, h, l, s)

    def masked(self, s, mask):
        p = self.p
        if p.mask == "bool_input":
            return torch.where(mask, s, float("-inf"))
        if p.mask == "bool_masked_fill":
            return s.masked_fill(mask, float("-inf"))
        if p.mask == "int_input":
            return s.masked_fill(mask == 0, float("-inf"))
        if p.mask == "additive_input":
            return s + mask
        if p.mask == "finite_fill_input":
            return s.masked_fill(mask, p.fill)
        if p.mask == "causal_arith":                  # openai-gpt: a float 0/1 causal mask applied arithmetically
            b = torch.ones((s.size(-2), s.size(-1)), dtype=s.dtype, device=s.device).tril()
            return s * b + p.fill * (1 - b)
        if p.mask == "causal_ramp":                   # transformers v5: kv_idx <= q_idx over aranges
            dev = s.device
            keep = torch.arange(s.size(-1), device=dev)[None, None, None, :] <= \
                torch.arange(s.size(-2), device=dev)[None, None, :, None]
            return torch.where(keep, s, float("-inf"))
        if p.mask == "causal_indexed":                # transformers without a cache: positions indexed per row
            n, m, dev = s.size(-2), s.size(-1), s.device
            qpos = torch.arange(n, device=dev)[None].expand(s.size(0), -1)
            kpos = torch.arange(m, device=dev)[None].expand(s.size(0), -1)
            rows = torch.arange(s.size(0), device=dev)[:, None, None, None]
            keep = kpos[rows, torch.arange(m, device=dev)[None, None, None, :]] <= \
                qpos[rows, torch.arange(n, device=dev)[None, None, :, None]]
            return s.masked_fill(~keep, float("-inf"))
        if p.mask in ("causal_const", "causal_finite"):
            keep = torch.ones((s.size(-2), s.size(-1)), dtype=torch.bool, device=s.device).tril()
            fill = float("-inf") if p.mask == "causal_const" else p.fill
            return s.masked_fill(~keep, fill)
        return s
