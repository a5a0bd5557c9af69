"""The catalog: real-world spellings of eager attention, each with the SDPA call it must become.

One file per family (`patterns/gpt2.py`, `patterns/t5.py`, ...), each exporting `ENTRIES`, a list of
`Entry`. An entry is a small runnable module (copied in spirit from the named source file, written
here), a function that makes example inputs, and `Expect` — the SDPA arguments per site — or
`expect=None` for a near-miss that must stay eager (with a substring of the reason it must report).
Tests iterate `all_entries()`; a new spelling is a new entry, nothing else.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable, Optional

import torch


@dataclass(frozen=True)
class Expect:
    """The SDPA call one site must become."""

    scale: float
    mask: str = "none"          # "none" | "bool" | "float": the attn_mask SDPA receives
    dropout_p: float = 0.0      # the dropout_p SDPA is called with (p when training, else 0)
    is_causal: bool = False
    enable_gqa: bool = False
    verdict: Optional[str] = None  # the report's mask verdict kind ("causal", "input mask", ...); None: unchecked
    target: str = "sdpa"        # "sdpa" | "flex": what the site calls where flex can run (inference, or CUDA)
    cap: Optional[float] = None  # flex: the soft-cap β of score_mod β·tanh(score)
    sink: bool = False          # attention sinks: an extra logit column per head, sliced off after the softmax


@dataclass(frozen=True)
class Entry:
    name: str                                   # "gpt2/eager_attention_forward"
    source: str                                 # where the spelling comes from (repo: file: function)
    module: Callable[[], torch.nn.Module]       # builds the module (eval() unless the entry trains)
    inputs: Callable[[], tuple]                 # example positional inputs, fp32 CPU
    expect: Optional[tuple] = None              # one Expect per site, in graph order; None: near-miss
    reason: str = ""                            # near-miss: substring of the skip reason
    traceable: bool = True                      # torch.fx.symbolic_trace can trace it
    training: bool = False                      # run in train mode (dropout active: numbers are not compared)
    notes: str = ""

    @property
    def near_miss(self) -> bool:
        return self.expect is None


def all_entries() -> list:
    entries = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        entries.extend(getattr(module, "ENTRIES", []))
    names = [e.name for e in entries]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ValueError(f"duplicate catalog names: {sorted(dupes)}")
    return entries


def qkv(b: int = 2, h: int = 4, l: int = 8, s: Optional[int] = None, e: int = 16, ev: Optional[int] = None,
        seed: int = 0) -> tuple:
    """q (b,h,l,e), k (b,h,s,e), v (b,h,s,ev) with a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    s = l if s is None else s
    ev = e if ev is None else ev
    return (torch.randn(b, h, l, e, generator=g), torch.randn(b, h, s, e, generator=g),
            torch.randn(b, h, s, ev, generator=g))


def hidden(b: int = 2, l: int = 8, d: int = 64, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, l, d, generator=g),)


def padding_mask(b: int = 2, l: int = 8, s: int = 8, seed: int = 0) -> torch.Tensor:
    """An additive (b,1,l,s) mask, 0 = attend and finfo.min = masked, last keys of batch 1 padded."""
    m = torch.zeros(b, 1, l, s)
    m[1, :, :, s - 3:] = torch.finfo(torch.float32).min
    return m


class Heads(torch.nn.Module):
    """q/k/v projections split into heads (B, H, L, E) and the output projection: the frame around an attention
    spelling that the catalog's entries share."""

    def __init__(self, dim=64, heads=4):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q_proj = torch.nn.Linear(dim, dim)
        self.k_proj = torch.nn.Linear(dim, dim)
        self.v_proj = torch.nn.Linear(dim, dim)
        self.o_proj = torch.nn.Linear(dim, dim)

    def qkv(self, x):
        b, l = x.shape[0], x.shape[1]
        split = lambda t: t.view(b, l, self.heads, self.head_dim).transpose(1, 2)
        return split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))

    def out(self, o):
        b, l = o.shape[0], o.shape[2]
        return self.o_proj(o.transpose(1, 2).reshape(b, l, -1))
