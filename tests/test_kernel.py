"""The report's CUDA kernel column: asked of torch with stand-in tensors, never failing a rewrite."""
import types

import torch
from torch._dynamo.source import ConstantSource
from torch.fx.experimental.symbolic_shapes import ShapeEnv

from sdpa_rewrite import kernel


def _att(L, S):
    return types.SimpleNamespace(q=types.SimpleNamespace(node=None), top_shape=(1, 12, L, S), q_shape=(1, 12, L, 64),
                                 v_shape=(1, 12, S, 64), batch=(1, 12), gqa=1, compute_dtype=torch.float16,
                                 mask_kind="none", causal="", dropout=None)


def test_symbolic_cache_length_is_asked_at_its_traced_size(monkeypatch):
    """A decode graph under dynamic shapes has a symbolic key length (SymInts are unhashable): the kernel is
    asked at the size the compile traced with, once for every layer."""
    env = ShapeEnv()
    past = env.create_symintnode(env.create_symbol(130, ConstantSource("past")), hint=130)
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(kernel, "_meta", lambda node: types.SimpleNamespace(device=torch.device("cuda")))
    monkeypatch.setattr(kernel, "_ask", lambda att, device, sizes: asked.append(sizes) or "flash")
    monkeypatch.setattr(kernel, "_ASKED", {})
    for _ in range(3):
        assert kernel.cuda_kernel(_att(1, past + 1)) == "flash"
    assert asked == [(1, 131, 64, 64, 12)]


def test_not_on_cuda_asks_nothing():
    assert kernel.cuda_kernel(_att(8, 8)) == ""
