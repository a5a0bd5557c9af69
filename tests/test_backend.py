"""The torch.compile entry: by name without importing the package, options, never breaking a compile."""
import importlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch


REWRITE_MODULE = importlib.import_module("sdpa_rewrite.rewrite")
from support import compile_and_record

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def attention(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1) / 4.0, dim=-1) @ v


def qkv():
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(2, 4, 8, 16, generator=g) for _ in range(3))


@pytest.mark.slow
def test_backend_by_name_in_fresh_process_with_inductor():
    """Dynamo finds the backend through the torch_dynamo_backends entry point: the script never imports us."""
    script = textwrap.dedent("""
        import sys, torch
        def attention(q, k, v):
            return torch.softmax(q @ k.transpose(-2, -1) / 4.0, dim=-1) @ v
        q, k, v = (torch.randn(2, 4, 8, 16) for _ in range(3))
        out = torch.compile(attention, backend="sdpa_rewrite")(q, k, v)
        torch.testing.assert_close(out, attention(q, k, v), rtol=1e-5, atol=1e-5)
        print("REPORT" if "sdpa_rewrite" in sys.modules else "NOT LOADED")
    """)
    env = dict(os.environ, SDPA_REWRITE_REPORT="1")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd="/", timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "1 of 1 softmax sites rewritten" in run.stdout, run.stdout
    assert "REPORT" in run.stdout


@pytest.mark.parametrize("downstream", ["eager", "aot_eager"])
def test_downstreams(downstream):
    q, k, v = qkv()
    reports = []
    out = torch.compile(attention, backend="sdpa_rewrite",
                        options={"downstream": downstream, "report": reports.append})(q, k, v)
    torch.testing.assert_close(out, attention(q, k, v), rtol=1e-5, atol=1e-5)
    assert len(reports) == 1 and len(reports[0].rewritten) == 1


def test_report_option_prints(capsys):
    q, k, v = qkv()
    torch.compile(attention, backend="sdpa_rewrite", options={"downstream": "eager", "report": True})(q, k, v)
    printed = capsys.readouterr().out
    assert "1 of 1 softmax sites rewritten" in printed and "1/sqrt(16) on scores" in printed


def test_unknown_option_is_an_error():
    q, k, v = qkv()
    with pytest.raises(Exception, match="unknown options"):
        torch.compile(attention, backend="sdpa_rewrite", options={"downstream": "eager", "stict": True})(q, k, v)


@pytest.mark.parametrize("through", ["callable", "aot_eager"])
def test_internal_error_leaves_graph_untouched_and_warns(monkeypatch, through):
    """The graph put back after a failed site is still Dynamo's: AOTAutograd (Inductor, aot_eager) reads
    each placeholder's `_dynamo_source`, which a plain graph copy drops."""
    def broken(gm, att, plan=None):
        raise RuntimeError("forced failure")

    monkeypatch.setattr(REWRITE_MODULE, "emit", broken)
    monkeypatch.setattr(importlib.import_module("sdpa_rewrite.backend"), "_warned", set())   # warned once per process
    q, k, v = qkv()
    graphs = []

    def downstream(gm, example_inputs):
        graphs.append(gm)
        if through == "aot_eager":
            from torch._dynamo.backends.registry import lookup_backend
            return lookup_backend("aot_eager")(gm, example_inputs)
        return gm.forward

    torch._dynamo.reset()
    with pytest.warns(UserWarning, match=r"at site .*softmax.*: RuntimeError: forced failure"):
        out = torch.compile(attention, backend="sdpa_rewrite", options={"downstream": downstream})(q, k, v)
    torch.testing.assert_close(out, attention(q, k, v))
    targets = [n.target for n in graphs[0].graph.nodes]
    assert torch.nn.functional.scaled_dot_product_attention not in targets
    assert any("softmax" in str(t) for t in targets)
    assert all(hasattr(n, "_dynamo_source") for n in graphs[0].graph.find_nodes(op="placeholder"))


def test_internal_error_raises_when_strict(monkeypatch):
    def broken(gm, att, plan=None):
        raise RuntimeError("forced")

    monkeypatch.setattr(REWRITE_MODULE, "emit", broken)
    q, k, v = qkv()
    with pytest.raises(Exception, match="forced"):
        torch.compile(attention, backend="sdpa_rewrite", options={"downstream": "eager", "strict": True})(q, k, v)


def test_training_backward_goes_through_sdpa():
    q, k, v = (x.requires_grad_() for x in qkv())
    out, reports, graphs = compile_and_record(attention, (q, k, v), downstream="aot_eager")
    out.sum().backward()
    q2, k2, v2 = (x.detach().clone().requires_grad_() for x in (q, k, v))
    attention(q2, k2, v2).sum().backward()
    for a, b in ((q, q2), (k, k2), (v, v2)):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)


def test_backend_warns_on_the_last_compile_dynamo_allows_a_frame():
    """Past Dynamo's recompile limit a frame runs uncompiled, attention and all, and never reaches the
    backend: the backend says so on the last compile it sees with attention in it."""
    import torch._dynamo

    from support import LayerDropNet

    torch._dynamo.reset()
    reports = []
    with torch._dynamo.config.patch(recompile_limit=2), pytest.warns(UserWarning, match="last compile Dynamo allows") as seen:
        model = torch.compile(LayerDropNet(), backend="sdpa_rewrite",
                              options={"downstream": "eager", "report": reports.append})
        model(torch.randn(2, 8, 16))
    assert sum("recompile_limit" in str(w.message) for w in seen) == 1
    assert sum(len(r.sites) for r in reports) == 2                       # 2 of the 4 layers reached the backend


class _ModuleDropoutAttention(torch.nn.Module):
    def __init__(self, p):
        super().__init__()
        self.drop = torch.nn.Dropout(p)

    def forward(self, q, k, v):
        return self.drop(torch.softmax(q @ k.transpose(-1, -2) * 0.25, dim=-1)) @ v


@pytest.mark.slow
@pytest.mark.parametrize("downstream", ["eager", "inductor"])
def test_dynamic_true_module_dropout_is_rewritten_in_eval_and_training(downstream):
    """dynamic=True makes an nn.Dropout's float p a graph input. In eval dropout is the identity whatever p is;
    in training SDPA gets the graph's own p. Both sites are rewritten: eval equals eager, p=0 training equals
    eager, and p=0.5 training really drops (differs from the eval output, gradients flow)."""
    from support import RecordSDPA

    x = [torch.randn(2, 4, 8, 16, generator=torch.Generator().manual_seed(i), requires_grad=True) for i in range(3)]
    for p, train in ((0.5, False), (0.0, True), (0.5, True)):
        model = _ModuleDropoutAttention(p).train(train)
        torch._dynamo.reset()
        reports = []
        compiled = torch.compile(model, backend="sdpa_rewrite", dynamic=True,
                                 options={"downstream": downstream, "report": reports.append, "strict": True})
        with RecordSDPA() as rec:
            out = compiled(*x)
        out.sum().backward()
        sites = [s for r in reports for s in r.sites]
        assert sites and all(s.rewritten for s in sites), "\n".join(map(str, reports))
        reference = model.eval()(*x)
        if downstream == "eager":
            assert len(rec.calls) == 1 and rec.calls[0]["dropout_p"] == (p if train else 0.0), rec.calls
        if p and train:
            assert not torch.allclose(out, reference, atol=1e-3)
            assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in x)
        else:
            torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)


class _RegroupedModuleScale(torch.nn.Module):
    """Scores from a (B·H, L, S) bmm, viewed back to (B, H, L, S), then scaled by a module float."""
    def __init__(self):
        super().__init__()
        self.scale = 0.25

    def forward(self, q, k, v):
        b, h, n, e = q.shape
        s = torch.bmm(q.reshape(b * h, n, e), k.reshape(b * h, -1, e).transpose(1, 2)).view(b, h, n, -1)
        return torch.softmax(s * self.scale, dim=-1) @ v


def test_dynamic_true_module_scale_after_a_regroup_is_rewritten():
    """dynamic=True makes the module's float scale a symbolic scalar; a scalar regroups as itself, so a scale
    applied after the bmm's view back is still folded into q. Exact at two sizes, one compile."""
    model, reports = _RegroupedModuleScale(), []
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="sdpa_rewrite", dynamic=True,
                             options={"downstream": "eager", "report": reports.append, "strict": True})
    for n in (8, 11):
        q, k, v = (torch.randn(2, 3, n, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
        torch.testing.assert_close(compiled(q, k, v), model(q, k, v), rtol=1e-5, atol=1e-5)
    assert len(reports) == 1
    (site,) = reports[0].sites
    assert site.rewritten, str(reports[0])


class IndexWrittenMask(torch.nn.Module):
    """A mask built as zeros, then one key column set to -inf by index assignment (`operator.setitem` in
    Dynamo's graph): not the all-visible zeros it started as."""

    def forward(self, q, k, v):
        mask = torch.zeros(q.size(-2), k.size(-2))
        mask[:, 1] = float("-inf")
        return torch.softmax(q @ k.transpose(-1, -2) * 0.25 + mask, dim=-1) @ v


class AliasAndedMask(torch.nn.Module):
    """A causal keep-mask, then `&=` through a view of it (`operator.iand` in Dynamo's graph): the write hides
    key 2 from every row, so the mask is no longer causal."""

    def forward(self, q, k, v):
        keep = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool).tril()
        alias = keep[:, :]
        alias &= torch.arange(k.size(-2)) != 2
        s = (q @ k.transpose(-1, -2) * 0.25).masked_fill(~keep, float("-inf"))
        return torch.softmax(s, dim=-1) @ v


@pytest.mark.parametrize("model", [IndexWrittenMask(), AliasAndedMask()], ids=["setitem", "iand-through-a-view"])
def test_mask_written_in_place_is_folded_with_the_write(model):
    """Writes Dynamo records as Python operators (`x[i] = v`, `x &= m`) are in-place writes: the fold runs
    them in order instead of reading the tensor as it was built."""
    q, k, v = qkv()
    reports = []
    out = torch.compile(model, backend="sdpa_rewrite", options={"downstream": "eager", "report": reports.append})(q, k, v)
    torch.testing.assert_close(out, model(q, k, v), rtol=1e-5, atol=1e-5)
    (site,) = reports[0].sites
    assert site.rewritten and not site.mask.startswith(("none", "causal")), site.mask


def test_mode_as_an_option_with_a_report():
    """torch.compile refuses `mode=` beside `options=`: the mode travels as an option, with the report, and CUDA
    graphs (reduce-overhead) turn the run-time mask check off (a capture may not sync)."""
    from sdpa_rewrite.backend import _cuda_graphs

    reports = []
    model = torch.nn.Linear(4, 4)
    out = torch.compile(model, backend="sdpa_rewrite",
                        options={"mode": "max-autotune-no-cudagraphs", "report": reports.append})(torch.ones(2, 4))
    assert torch.allclose(out, model(torch.ones(2, 4))) and len(reports) == 1
    assert _cuda_graphs("inductor", "reduce-overhead", {}) and not _cuda_graphs("inductor", None, {})
    assert not _cuda_graphs("inductor", "reduce-overhead", {"triton.cudagraphs": False})
    with pytest.raises(Exception, match="Inductor mode"):
        torch.compile(model, backend="sdpa_rewrite", options={"mode": "reduce-overhead", "downstream": "eager"})(
            torch.ones(2, 4))
