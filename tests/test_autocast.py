"""Sites under autocast: the call runs in autocast's dtype, so V is not upcast to q's fp32 only to be cast back."""
import pytest
import torch
import torch.nn.functional as F
from support import rel_err

import sdpa_rewrite  # noqa: F401  (registers the backend)


class _RopeUpcast(torch.nn.Module):
    """q and k leave their projections in bf16 under autocast and are multiplied by fp32 rotary factors (Llama's and
    Gemma's RoPE with fp32 cos/sin), so they are fp32; V stays bf16. Eager's matmuls run in bf16 all the same."""

    def __init__(self, inner_autocast: bool):
        super().__init__()
        self.qkv = torch.nn.Linear(32, 96)
        self.register_buffer("cos", torch.linspace(0.5, 1.0, 16))
        self.inner_autocast = inner_autocast

    def attend(self, x):
        q, k, v = self.qkv(x).view(2, 12, 3, 2, 16).permute(2, 0, 3, 1, 4)
        q, k = q * self.cos, k * self.cos
        w = F.softmax(q @ k.transpose(-1, -2) * 0.25, dim=-1, dtype=torch.float32).to(q.dtype)
        return w @ v

    def forward(self, x):
        if self.inner_autocast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return self.attend(x)
        return self.attend(x)


def _casts_to_fp32(node) -> int:
    """`.to(torch.float32)` calls on the path from a call's argument back to the graph it came from."""
    count = 0
    while isinstance(node, torch.fx.Node) and node.op in ("call_method", "call_function"):
        count += node.target == "to" and torch.float32 in node.args[1:]
        node = node.args[0] if node.args else None
    return count


@pytest.mark.parametrize("inner", [False, True], ids=["autocast-around-the-compile", "autocast-in-the-graph"])
def test_value_is_not_upcast_where_autocast_runs_the_call_in_its_dtype(inner):
    """Autocast around the compiled call or inside the graph: SDPA gets V as it is (bf16), and the output equals
    eager's under the same autocast within bf16 rounding."""
    graphs = []

    def downstream(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch.manual_seed(0)
    model, x = _RopeUpcast(inner), torch.randn(2, 12, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not inner):
        ref = model(x)
        out = torch.compile(model, backend="sdpa_rewrite", options={"downstream": downstream, "strict": True})(x)
    (call,) = [n for gm in graphs for n in gm.graph.nodes if n.target is F.scaled_dot_product_attention]
    assert _casts_to_fp32(call.args[2]) == 0, call.args[2]
    assert out.dtype == ref.dtype == torch.bfloat16
    assert rel_err(out.float(), ref.float()) < 2e-2


def test_value_is_upcast_without_autocast():
    """Without autocast an fp32 q with a bf16 V computes in fp32, as eager's fp32 Q·Kᵀ does: V is upcast."""
    class Mixed(torch.nn.Module):
        def forward(self, q, k, v):
            w = F.softmax(q @ k.transpose(-1, -2) * 0.25, dim=-1).to(v.dtype)
            return w @ v

    graphs = []

    def downstream(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    q, k = torch.randn(2, 2, 12, 16), torch.randn(2, 2, 12, 16)
    v = torch.randn(2, 2, 12, 16).bfloat16()
    out = torch.compile(Mixed(), backend="sdpa_rewrite", options={"downstream": downstream, "strict": True})(q, k, v)
    (call,) = [n for gm in graphs for n in gm.graph.nodes if n.target is F.scaled_dot_product_attention]
    assert _casts_to_fp32(call.args[2]) == 1
    assert rel_err(out.float(), Mixed()(q, k, v).float()) < 1e-2
