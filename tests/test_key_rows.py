"""A bias constant along the queries beside a causal band (ALiBi as Bloom and MPT build it): split into rows the
flex score_mod reads and a band the BlockMask says (key_rows.py), where plan.py chooses flex for it; numbers equal
eager, and the splits that would not be exact are refused."""
import math

import pytest
import torch
import torch.nn as nn
import transformers

import sdpa_rewrite
from patterns import all_entries
from sdpa_rewrite import key_rows, plan
from support import assert_close_outputs, calls_of, sdpa_calls_of

ALIBI = [e for e in all_entries() if e.name.startswith("alibi/")]


@pytest.fixture
def fast(monkeypatch):
    """Plan as on CUDA (flex for speed) on this CPU, with short sequences counting as long."""
    monkeypatch.setattr(key_rows, "KEY_ROW_FLEX_MIN", 8)
    return plan.Conditions(fast_on=("cuda", "cpu"), may_train=False)


@pytest.fixture
def split_at_run_time(monkeypatch):
    """The backend asks for the run-time split on this CPU as on CUDA, and plans as there, with short sequences
    counting as long (with gradients or not)."""
    import functools

    import sdpa_rewrite.backend as backend

    monkeypatch.setattr(key_rows, "KEY_ROW_FLEX_MIN", 8)
    monkeypatch.setattr(key_rows, "KEY_ROW_FLEX_MIN_TRAIN", 8)
    monkeypatch.setattr(key_rows, "RUN_TIME_ON", ("cuda", "cpu"))
    monkeypatch.setattr(backend, "Conditions", functools.partial(plan.Conditions, fast_on=("cuda", "cpu")))


def _compiled(model, conditions, *args, **kwargs):
    """Run `model` through torch.compile with a backend that rewrites under `conditions` and runs the graph eagerly;
    (output, reports, graphs)."""
    reports, graphs = [], []

    def backend(gm, example_inputs):
        reports.append(sdpa_rewrite.rewrite(gm, conditions=conditions))
        graphs.append((gm, example_inputs))
        return gm.forward

    torch._dynamo.reset()
    out = torch.compile(model, backend=backend)(*args, **kwargs)
    return out, [s for r in reports for s in r.sites], graphs


@pytest.mark.parametrize("entry", ALIBI, ids=[e.name for e in ALIBI])
def test_catalog_alibi_on_flex(fast, entry):
    """Each ALiBi spelling through both front ends: flex with the rows as a float score_mod input and the causal band
    as a BlockMask; numbers equal eager's."""
    model, inputs = entry.module(), entry.inputs()
    with torch.no_grad():
        ref = model(*inputs)
        out, sites, graphs = _compiled(model, fast, *inputs)
        assert [s.target for s in sites] == ["flex"], sites
        assert sites[0].mask.endswith("-> rows along the keys + causal BlockMask"), sites[0].mask
        (call,) = sdpa_calls_of(graphs)
        assert (call["target"], call["mask"], call["block_mask"], call["cap"]) == ("flex", "float", True, None), call
        assert math.isclose(call["scale"], entry.expect[0].scale, rel_tol=1e-6), call
        assert_close_outputs(out, ref)
        if entry.traceable:
            gm = torch.fx.symbolic_trace(model)
            report = sdpa_rewrite.rewrite(gm, example_inputs=inputs, conditions=fast)
            assert [s.target for s in report.rewritten] == ["flex"], str(report)
            assert [c["block_mask"] for c in calls_of(gm, inputs)] == [True]
            assert_close_outputs(gm(*inputs), ref)


def _tiny(name):
    if name == "bloom":
        cfg = transformers.BloomConfig(n_layer=2, hidden_size=64, n_head=4, vocab_size=128)
    else:
        cfg = transformers.MptConfig(n_layers=2, d_model=64, n_heads=4, vocab_size=128, max_seq_len=64)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("name", ["bloom", "mpt"])
def test_alibi_models_on_flex(fast, name):
    """Tiny Bloom and MPT with no attention_mask: every site reads its rows on flex, the layers share one BlockMask,
    logits equal eager's. At the default length bar the same sites keep SDPA's dense bias."""
    model = _tiny(name)
    ids = torch.randint(0, 128, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(ids).logits
        out, sites, graphs = _compiled(model, fast, ids)
    assert len(sites) == 2 and all(s.target == "flex" for s in sites), sites
    assert all("rows along the keys + causal BlockMask" in s.mask for s in sites), [s.mask for s in sites]
    (gm, _), = graphs
    targets = [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
    assert sum("band_block_mask" in t for t in targets) == 1, "the layers share one BlockMask"
    assert_close_outputs(out, ref)

    key_rows.KEY_ROW_FLEX_MIN = 4096
    with torch.no_grad():
        out, sites, _ = _compiled(model, fast, ids)
    assert all(s.target == "sdpa" and "rows along the keys" not in s.mask for s in sites), sites
    assert_close_outputs(out, ref)


class RowAndMask(nn.Module):
    """scores + slope·j (a row along the keys, per head) + a mask built in the forward: `fill` above the diagonal
    ("causal"), below it ("anti-causal"), a bias of small integers ("bias") or nothing ("zeros")."""

    def __init__(self, slope, mask, fill=0.0):
        super().__init__()
        self.slope, self.mask, self.fill = slope, mask, fill

    def forward(self, q, k, v):
        n = q.shape[-2]
        s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        row = (torch.arange(n, dtype=torch.float32) * self.slope).expand(q.shape[1], 1, n)
        i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
        if self.mask == "bias":
            mask = ((i * 7 + j * 3) % 5).float()
        else:
            hidden = {"causal": j > i, "anti-causal": j < i, "zeros": torch.zeros(n, n, dtype=torch.bool)}[self.mask]
            mask = torch.zeros(n, n).masked_fill(hidden, self.fill)
        return torch.softmax(s + row + mask, dim=-1) @ v


@pytest.mark.parametrize("model,split", [
    (RowAndMask(0.5, "causal", torch.finfo(torch.float32).min), "causal"),
    (RowAndMask(0.5, "causal", -math.inf), "causal"),
    (RowAndMask(0.5, "zeros"), "none"),
    (RowAndMask(80.0, "causal", -1100.0), None),     # a hidden key up to 100 above a visible one: eager weighs it
    (RowAndMask(0.5, "bias"), None),                 # the rest is a bias, not a band
    (RowAndMask(0.5, "anti-causal", -math.inf), None),
], ids=["alibi_finfo_min", "alibi_inf", "rows_alone", "row_outweighs_the_fill", "rest_not_a_band", "anti_causal"])
def test_split_only_where_the_band_still_hides_what_eager_hides(fast, model, split):
    """The rows are split off only when the rest is a band whose hidden values stay masking once a row is added;
    otherwise the site keeps the whole sum as SDPA's float mask. Numbers equal eager's either way."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 16, 16, generator=g) for _ in range(3))
    with torch.no_grad():
        ref = model(q, k, v)
        out, sites, _ = _compiled(model, fast, q, k, v)
    (site,) = sites
    if split == "none":
        assert site.target == "flex" and site.mask.endswith("-> rows along the keys"), site
    elif split:
        assert site.target == "flex" and f"rows along the keys + {split} BlockMask" in site.mask, site
    else:
        assert site.target == "sdpa" and "rows along the keys" not in site.mask, site
    assert_close_outputs(out, ref)


class CappedRowAndMask(RowAndMask):
    """Grok-style soft-capping, 30·tanh(s / 30), then the row and the causal mask."""

    def forward(self, q, k, v):
        n = q.shape[-2]
        s = 30.0 * torch.tanh(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) / 30.0)
        row = (torch.arange(n, dtype=torch.float32) * self.slope).expand(q.shape[1], 1, n)
        hidden = torch.arange(n)[None, :] > torch.arange(n)[:, None]
        return torch.softmax(s + row + torch.zeros(n, n).masked_fill(hidden, self.fill), dim=-1) @ v


def test_soft_capped_site_reads_rows_at_any_length():
    """A soft-capped site goes to flex anyway: with ALiBi rows beside a causal mask it reads the rows and says the
    band as a BlockMask, at any length (default conditions, no gradients), numbers equal eager's."""
    model = CappedRowAndMask(0.5, "causal", torch.finfo(torch.float32).min)
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, 2, 16, 16, generator=g) for _ in range(3))
    with torch.no_grad():
        ref = model(q, k, v)
        out, sites, graphs = _compiled(model, plan.Conditions(may_train=False), q, k, v)
    (site,) = sites
    assert site.target == "flex" and site.mask.endswith("rows along the keys + causal BlockMask"), site
    (call,) = sdpa_calls_of(graphs)
    assert (call["cap"], call["mask"], call["block_mask"]) == (30.0, "float", True), call
    assert_close_outputs(out, ref)


@pytest.mark.parametrize("name", ["bloom", "mpt"])
def test_rows_read_from_attention_mask_split_at_run_time(monkeypatch, split_at_run_time, name):
    """With an attention_mask the rows and the causal mask read the graph's input: the rest's verdict (causal for an
    all-ones mask) and the rows' span are taken at run time, and the variant compiled for it reads the rows on flex
    with a causal BlockMask. A left-padded batch keeps the general graph (its rest is no band). Logits equal eager's
    both ways. Without gradients and shorter than key_rows.KEY_ROW_FLEX_MIN, the split is not even asked for."""
    model = _tiny(name)
    ids = torch.randint(0, 128, (2, 40), generator=torch.Generator().manual_seed(4))
    for padded, long_enough in ((False, True), (True, True), (False, False)):
        monkeypatch.setattr(key_rows, "KEY_ROW_FLEX_MIN", 8 if long_enough else 4096)
        mask = torch.ones(2, 40, dtype=torch.long)
        if padded:
            mask[0, :9] = 0
        graphs = []

        def downstream(gm, example_inputs):
            graphs.append((gm, example_inputs))
            return gm.forward

        torch._dynamo.reset()
        with torch.no_grad():
            ref = model(ids, attention_mask=mask).logits
            out = torch.compile(model, backend="sdpa_rewrite", options={"downstream": downstream, "strict": True})(
                ids, attention_mask=mask).logits
        assert_close_outputs(out, ref)
        calls = [sdpa_calls_of([g]) for g in graphs]
        targets = [[c["target"] for c in cs] for cs in calls]
        if padded or not long_enough:      # no band at run time; or too short to ask (no gradients: the 4096 bar)
            assert targets == [["sdpa", "sdpa"]], calls                # the general graph alone
        else:
            assert targets == [["sdpa", "sdpa"], ["flex", "flex"]], calls     # then the variant for a causal rest
            assert all(c["block_mask"] and c["mask"] == "float" for c in calls[1]), calls


class RowsBesideInputMask(nn.Module):
    """scores + rows along the keys built in the graph from constants + an additive mask that is a graph input."""

    def __init__(self, rows):
        super().__init__()
        self.rows = rows

    def forward(self, q, k, v, mask):
        return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + self.rows() + mask, dim=-1) @ v


@pytest.mark.parametrize("rows,target", [
    (lambda: (torch.arange(16.0) * 0.5).view(1, 1, 1, 16), "sdpa"),                  # ALiBi-like: a bias
    (lambda: torch.zeros(1, 1, 1, 16).masked_fill(torch.arange(16) < 3, -1e9), "flex"),  # padding: a keep-pattern
    (lambda: torch.zeros(1, 1, 1, 16), "flex"),                                       # nothing
], ids=["bias_rows", "padding_rows", "zero_rows"])
def test_input_mask_beside_a_bias_along_the_keys_stays_on_sdpa(monkeypatch, fast, rows, target):
    """A mask read at run time that no band splits (a padded batch) goes to flex's dense-mask path where it is a
    keep-pattern; beside finite, nonzero rows along the keys it is a bias, which SDPA reads faster, so it stays on
    SDPA. Numbers equal eager's either way."""
    monkeypatch.setattr(plan, "DENSE_FLEX_MIN", 8)
    g = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(2, 2, 16, 16, generator=g) for _ in range(3))
    mask = torch.zeros(2, 1, 16, 16).masked_fill(torch.ones(16, 16, dtype=torch.bool).triu(1), float("-inf"))
    mask[1, ..., 11:] = float("-inf")                                   # right padding: no row sees no key
    model = RowsBesideInputMask(rows)
    with torch.no_grad():
        ref = model(q, k, v, mask)
        out, sites, _ = _compiled(model, fast, q, k, v, mask)
    assert [(s.rewritten, s.target) for s in sites] == [(True, target)], sites
    assert ("bias along the keys" in sites[0].target_reason) == (target == "sdpa"), sites
    assert_close_outputs(out, ref)


def test_padded_mpt_stays_on_sdpa(monkeypatch, fast):
    """MPT's constant ALiBi rows beside a left-padded batch's mask: no band splits the rest, and the mask, a bias,
    stays on SDPA where a padding mask alone would go to flex's dense-mask path. Logits equal eager's, the padding
    queries' included."""
    monkeypatch.setattr(plan, "DENSE_FLEX_MIN", 8)
    model = _tiny("mpt")
    ids = torch.randint(0, 128, (2, 40), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[0, :9] = 0
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
        out, sites, _ = _compiled(model, fast, ids, attention_mask=mask)
    assert [(s.rewritten, s.target) for s in sites] == [(True, "sdpa")] * 2, sites
    assert_close_outputs(out.logits, ref)


class RowAndMaskInputs(nn.Module):
    """scores + a row along the keys + an additive mask, both graph inputs."""

    def forward(self, q, k, v, row, mask):
        return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + row + mask, dim=-1) @ v


@pytest.mark.parametrize("slope,fill,split", [
    (0.5, torch.finfo(torch.float32).min, True),
    (80.0, -1100.0, False),           # rows spanning 1200: a hidden key up to 100 above a visible one in eager
], ids=["alibi_finfo_min", "row_outweighs_the_fill"])
def test_run_time_split_reads_the_rows_span(split_at_run_time, slope, fill, split):
    """The run-time verdict of the rest clears the rows' span, read from the rows' values at run time: a causal fill
    of -1100 masks alone, not once rows spanning 1200 are added; the general graph then keeps the whole sum."""
    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(1, 2, 16, 16, generator=g) for _ in range(3))
    row = (torch.arange(16.0) * slope).expand(1, 2, 1, 16).contiguous()
    mask = torch.zeros(1, 1, 16, 16).masked_fill(torch.ones(16, 16, dtype=torch.bool).triu(1), fill)
    graphs = []

    def downstream(gm, example_inputs):
        graphs.append((gm, example_inputs))
        return gm.forward

    model = RowAndMaskInputs()
    torch._dynamo.reset()
    with torch.no_grad():
        ref = model(q, k, v, row, mask)
        out = torch.compile(model, backend="sdpa_rewrite", options={"downstream": downstream, "strict": True})(
            q, k, v, row, mask)
    assert_close_outputs(out, ref)
    targets = [[c["target"] for c in sdpa_calls_of([gr])] for gr in graphs]
    assert targets == ([["sdpa"], ["flex"]] if split else [["sdpa"]]), targets
