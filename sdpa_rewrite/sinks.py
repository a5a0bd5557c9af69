"""Attention sinks on SDPA: each sink column is one more key whose logit is the sink itself — a zero key (so
scale·q·0 = 0 exactly) and a zero value (it adds nothing to the output), with the sink logit in its column of a
float mask. That is eager's arithmetic term for term: the softmax runs over the keys and the sinks together, and
the sinks' weights multiply zeros. Exact on every SDPA kernel that takes a float mask, and differentiable on the
CPU, where FlexAttention is not.
"""
from __future__ import annotations

import math
from typing import Optional

import torch


def with_sink_keys(k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor], sink: torch.Tensor,
                   causal: str, dtype: torch.dtype):
    """(k, v, mask) with n = sink.size(-1) zero keys and values appended and the sink logits as the mask's last n
    columns. `mask`: None, a bool keep-mask or an additive float mask over the real keys; `causal`: "top-left" /
    "lower-right" when the mask was dropped for a causal flag (the columns need it spelled out)."""
    n = sink.size(-1)
    L, S = sink.size(-2), k.size(-2)
    if mask is None and causal:
        mask = torch.ones(L, S, dtype=torch.bool, device=k.device).tril(S - L if causal == "lower-right" else 0)
    if mask is None:
        mask = torch.zeros((), dtype=dtype, device=k.device)
    elif mask.dtype == torch.bool:
        mask = torch.where(mask, 0.0, -math.inf).to(dtype)
    else:
        mask = mask.to(dtype)
    mask = torch.cat([mask.expand(*sink.shape[:-1], S), sink.to(dtype)], dim=-1)
    zeros = k.new_zeros(*k.shape[:-2], n, k.size(-1))
    return torch.cat([k, zeros], dim=-2), torch.cat([v, v.new_zeros(*v.shape[:-2], n, v.size(-1))], dim=-2), mask
