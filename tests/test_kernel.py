"""The report's CUDA kernel column: asked of torch with stand-in tensors, never failing a rewrite."""
import types

import pytest

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
    monkeypatch.setattr(kernel, "_ask", lambda att, device, sizes, dt: asked.append(sizes) or "flash")
    monkeypatch.setattr(kernel, "_ASKED", {})
    for _ in range(3):
        assert kernel.cuda_kernel(_att(1, past + 1)) == "flash"
    assert asked == [(1, 131, 64, 64, 12)]


def test_not_on_cuda_asks_nothing():
    assert kernel.cuda_kernel(_att(8, 8)) == ""


class _UpcastQ(torch.nn.Module):
    """q leaves its projection in bf16 under autocast and is upcast (as Llama's RoPE does with fp32 cos/sin)."""

    def __init__(self, inner_autocast: bool):
        super().__init__()
        self.qkv = torch.nn.Linear(16, 48)
        self.inner_autocast = inner_autocast

    def attend(self, x):
        q, k, v = self.qkv(x).view(2, 8, 3, 2, 8).permute(2, 0, 3, 1, 4)
        return ((q.float() @ k.float().transpose(-1, -2)) * 0.35).softmax(-1) @ v.float()

    def forward(self, x):
        if self.inner_autocast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return self.attend(x)
        return self.attend(x)


@pytest.mark.parametrize("inner", [False, True], ids=["autocast-around-the-compile", "autocast-in-the-graph"])
def test_kernel_is_asked_in_the_dtype_autocast_runs_sdpa_in(inner):
    """An fp32 site under bf16 autocast runs SDPA in bf16 (autocast casts it), so the kernel question is asked in bf16
    (asking in fp32 named the math kernel while cuDNN ran)."""
    from sdpa_rewrite.find import Attention, find

    seen = []

    def capture(gm, example_inputs):          # what the backend sees while Dynamo compiles
        (att,) = [f for f in find(gm) if isinstance(f, Attention)]
        seen.append((att.compute_dtype, kernel.dtype_at_call(att, torch.device("cpu"))))
        seen.append(att)
        return gm.forward

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not inner):
        torch.compile(_UpcastQ(inner), backend=capture)(torch.randn(2, 8, 16))
    assert seen[0] == (torch.float32, torch.bfloat16)
    if not inner:
        assert kernel.dtype_at_call(seen[1], torch.device("cpu")) == torch.float32     # autocast off: as traced
