"""ramps.py: with symbolic sizes, a mask made of index comparisons over aranges is proven all-visible or
top-left causal for every size; anything else stays a mask. Each case compiles once (`dynamic=True`) and
equals eager at every size it runs."""
import pytest
import torch
import torch.nn as nn

from patterns import qkv
from patterns.masks import V5CacheOffsetMask, V5CachedChunk, V5PackedSequenceCheck, V5SdpaMask


def _attend(q, k, v, keep):
    # finfo read inline, as transformers does: under dynamic=True a module-global float would be a graph input
    s = q @ k.transpose(-1, -2) * 0.25 + torch.where(keep, torch.tensor(0.0), torch.finfo(torch.float32).min)
    return torch.softmax(s, dim=-1) @ v


class StrictCausal(nn.Module):
    """`kv_idx < q_idx`: row 0 sees no key. Not causal: a proof off by one would change every row."""
    def forward(self, q, k, v):
        keep = torch.arange(k.size(-2))[None, None, None, :] < torch.arange(q.size(-2))[None, None, :, None]
        return _attend(q, k, v, keep)


class SlidingBand(nn.Module):
    """Causal and at most 3 keys back: two bounds, a band that is neither causal nor all-visible."""
    def forward(self, q, k, v):
        kv, qi = torch.arange(k.size(-2))[None, None, None, :], torch.arange(q.size(-2))[None, None, :, None]
        return _attend(q, k, v, (kv <= qi) & (kv > qi - 3))


class BoolKeyRamp(nn.Module):
    """Key positions cast to bool (0, 1, 1, …) before the comparison: not the key index any more."""
    def forward(self, q, k, v):
        kv = torch.arange(k.size(-2)).to(torch.bool)[None, None, None, :]
        return _attend(q, k, v, kv <= torch.arange(q.size(-2))[None, None, :, None])


class KeyRampOfOne(nn.Module):
    """`arange(1) <= q_idx` broadcast over the keys: all visible, yet read as j - i <= 0 it would look
    causal. The ramp must be as long as the keys for its values to be the key positions."""
    def forward(self, q, k, v):
        keep = torch.arange(1)[None, None, None, :] <= torch.arange(q.size(-2))[None, None, :, None]
        return _attend(q, k, v, keep.expand(-1, -1, -1, k.size(-2)))


class DecodeHidesLastKey(nn.Module):
    """A decode query placed one before the last key: the last key is hidden, the row is not all visible."""
    def forward(self, q, k, v):
        kv_len = k.size(-2)
        keep = torch.arange(kv_len)[None, None, None, :] <= torch.arange(kv_len - 2, kv_len - 1)[None, None, :, None]
        return _attend(q, k, v, keep)


class PackedCheckWithAppend(nn.Module):
    """The packed-sequence check with the last position appended instead of a first one prepended: the last
    diff is 0, so the last token is a sequence of its own and the mask is not causal."""
    def forward(self, q, k, v):
        batch, n = q.size(0), q.size(-2)
        pos = torch.arange(n)[None].expand(batch, -1)
        packed = (torch.diff(pos, append=pos[:, -1:], dim=-1) != 1).cumsum(-1)
        b, qi, ki = torch.arange(batch)[:, None, None, None], torch.arange(n)[None, None, :, None], torch.arange(n)[None, None, None, :]
        keep = (pos[b, ki] <= pos[b, qi]) & (packed[b, qi] == packed[b, ki])
        return _attend(q, k, v, keep)


class OnesTriangle(nn.Module):
    """A triangle of ones built in forward, the hand-written causal mask, in its usual spellings."""
    def __init__(self, how):
        super().__init__()
        self.how = how

    def forward(self, q, k, v):
        n, m = q.size(-2), k.size(-2)
        s = q @ k.transpose(-1, -2) * 0.25
        if self.how == "tril-bool":
            s = s.masked_fill(~torch.ones(n, m).tril().bool(), float("-inf"))
        elif self.how == "tril-eq-0":
            s = s.masked_fill(torch.ones(n, m).tril() == 0, torch.finfo(torch.float32).min)
        elif self.how == "triu-1":
            s = s.masked_fill(torch.ones(n, m, dtype=torch.bool).triu(1), float("-inf"))
        elif self.how == "tril-minus-1":             # strict: row 0 sees no key (finite fill: uniform there)
            s = s.masked_fill(torch.ones(n, m).tril(-1) == 0, torch.finfo(torch.float32).min)
        elif self.how == "corner":                   # masks only the bottom-left entry: not all visible
            s = s.masked_fill(torch.ones(n, m).tril(1 - n).bool(), float("-inf"))
        elif self.how == "zeros-tril":               # not ones: every position masked
            s = s.masked_fill(torch.zeros(n, m).tril() == 0, torch.finfo(torch.float32).min)
        return torch.softmax(s, dim=-1) @ v


class ZeroBias(nn.Module):
    """T5's cross-attention without relative attention: a zero bias of symbolic size, all visible; with a
    column written to -inf in place it is a mask (the in-place write must be seen)."""
    def __init__(self, written: bool):
        super().__init__()
        self.written = written

    def forward(self, q, k, v):
        bias = torch.zeros((1, q.size(1), q.size(-2), k.size(-2)))
        if self.written:
            bias[..., 0] = float("-inf")
        return torch.softmax(q @ k.transpose(-1, -2) * 0.25 + bias, dim=-1) @ v


CASES = [
    (V5SdpaMask(), [(2, 8, 8), (3, 11, 11), (2, 5, 5)], "causal"),
    (V5PackedSequenceCheck(), [(2, 8, 8), (3, 11, 11), (2, 5, 5)], "causal"),
    (V5CacheOffsetMask(), [(2, 1, 9), (3, 1, 12), (2, 1, 17)], "none"),
    (V5CacheOffsetMask(), [(2, 5, 12), (2, 3, 10), (3, 6, 9)], None),      # lower-right: not proven, a mask
    (StrictCausal(), [(2, 8, 8), (3, 11, 11)], None),
    (SlidingBand(), [(2, 8, 8), (3, 11, 11)], None),
    (KeyRampOfOne(), [(2, 8, 8), (3, 11, 11)], None),
    (BoolKeyRamp(), [(2, 8, 8), (3, 11, 11)], None),
    (DecodeHidesLastKey(), [(2, 1, 9), (3, 1, 12)], None),
    (PackedCheckWithAppend(), [(2, 8, 8), (3, 11, 11)], None),
    (OnesTriangle("tril-bool"), [(2, 8, 8), (3, 11, 11)], "causal"),
    (OnesTriangle("tril-eq-0"), [(2, 8, 8), (3, 11, 11)], "causal"),
    (OnesTriangle("triu-1"), [(2, 8, 8), (3, 11, 11)], "causal"),
    (OnesTriangle("tril-minus-1"), [(2, 8, 8), (3, 11, 11)], None),
    (OnesTriangle("zeros-tril"), [(2, 8, 8), (3, 11, 11)], None),
    (OnesTriangle("corner"), [(2, 8, 8), (3, 11, 11)], None),
    (ZeroBias(False), [(2, 8, 8), (3, 11, 11)], "none"),
    (ZeroBias(True), [(2, 8, 8), (3, 11, 11)], None),
]


@pytest.mark.parametrize("model, shapes, proven", CASES,
                         ids=["v5-causal", "v5-packed", "v5-decode", "v5-chunk", "strict", "band", "ramp-of-one", "bool-ramp", "hides-last",
                              "packed-append", "tril-bool", "tril-eq-0", "triu-1", "tril-minus-1", "zeros-tril", "corner",
                              "zero-bias", "zero-bias-written"])
def test_symbolic_masks_proven_only_when_they_are(model, shapes, proven):
    reports = []
    compiled = torch.compile(model, backend="sdpa_rewrite", dynamic=True,
                             options={"downstream": "eager", "report": reports.append, "strict": True})
    for i, (b, l, s) in enumerate(shapes):
        q, k, v = qkv(b=b, l=l, s=s, seed=i)
        torch.testing.assert_close(compiled(q, k, v), model(q, k, v), rtol=1e-5, atol=1e-5)
    assert len(reports) == 1, f"{len(reports)} compiles"
    (site,) = reports[0].sites
    assert site.rewritten, str(reports[0])
    assert not isinstance(site.k[-2], int), site.k                          # the key length really is symbolic
    if proven == "causal":
        assert site.causal == "top-left" and "proven for every size" in site.mask, site.mask
    elif proven == "none":
        assert not site.causal and site.mask.startswith("none") and "proven" in site.mask, site.mask
    else:
        assert not site.causal and "symbolic shapes" in site.mask, site.mask


@pytest.mark.parametrize("downstream", ["eager", "aot_eager"])
def test_chunk_after_a_cache_is_lower_right_for_every_size(downstream):
    """Keys cat-ed onto a cache make S - L a size the graph knows is >= 0: the v5 mask over them is proven
    lower-right causal with symbolic lengths (the helper gets q, k, v, the scale and no mask), and stays exact
    at lengths and cache sizes the one compile never saw. V5CacheOffsetMask, whose q and k are unrelated
    inputs, keeps its mask (test above): there S >= L is not known and rows could be empty. q and the new
    keys share their length, as projections of one hidden state do."""
    from torch._dynamo.backends.registry import lookup_backend
    from sdpa_rewrite.emit import causal_lower_right_attention

    model, reports, graphs = V5CachedChunk(), [], []

    def keep_graph(gm, example_inputs):
        graphs.append(gm)
        return lookup_backend(downstream)(gm, example_inputs)

    compiled = torch.compile(model, backend="sdpa_rewrite", dynamic=True,
                             options={"downstream": keep_graph, "report": reports.append, "strict": True})
    for i, (l, past) in enumerate([(5, 8), (6, 3), (7, 10), (9, 11)]):   # no length equal to another size:
        b = 2                                      # Dynamo's duck sizing would make them one symbol
        g = torch.Generator().manual_seed(i)
        q, k, v = (torch.randn(b, 4, l, 16, generator=g) for _ in range(3))
        kc, vc = (torch.randn(b, 4, past, 16, generator=g) for _ in range(2))
        for t in (q, k, v):
            t.requires_grad_(downstream == "aot_eager")
        out, ref = compiled(q, k, v, kc, vc), model(q, k, v, kc, vc)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        if downstream == "aot_eager":
            grads = torch.autograd.grad(out.sum(), (q, k, v))
            for got, want in zip(grads, torch.autograd.grad(ref.sum(), (q, k, v))):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert len(reports) == 1, f"{len(reports)} compiles"
    (site,) = reports[0].sites
    assert site.rewritten and not isinstance(site.q[-2], int) and not isinstance(site.k[-2], int), site
    assert site.causal == "lower-right" and "proven for every size" in site.mask, site.mask
    (call,) = [n for n in graphs[0].graph.nodes if n.op == "call_function" and n.target is causal_lower_right_attention]
    # dynamic=True lifts the module-global float SCALE into a graph input: it is folded into q, so scale=1.0
    assert "folded into q" in site.scale_source, site.scale_source
    assert len(call.args) == 3 and call.kwargs == {"dropout_p": 0.0, "scale": 1.0}, (call.args, call.kwargs)
    assert not [n for n in graphs[0].graph.nodes if n.target is torch.nn.functional.scaled_dot_product_attention]


def test_nanogpt_growing_length_is_causal_for_every_length():
    """nanoGPT's generate calls the model with a growing length: after the second length Dynamo makes it
    symbolic by itself. The sliced `bias` buffer is still proven causal (the slice guards T <= block_size)."""
    from patterns.nanogpt import NanoGPTAttention

    model, reports = NanoGPTAttention().eval(), []
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="sdpa_rewrite",
                             options={"downstream": "eager", "report": reports.append, "strict": True})
    for t in (5, 6, 7, 9, 12):
        x = torch.randn(2, t, 64, generator=torch.Generator().manual_seed(t))
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    assert len(reports) == 2, f"{len(reports)} compiles"                  # one static, then one symbolic
    symbolic = [s for r in reports for s in r.sites if not isinstance(s.q[-2], int)]
    assert symbolic and all(s.causal == "top-left" and "proven" in s.mask for s in symbolic), \
        [s.mask for r in reports for s in r.sites]
