"""Masks the graph cannot see: each block compiled alone gets the mask as an input, and its verdict is taken at
run time (runtime.py, dispatch.py). Same numbers as eager, the fast SDPA call when the mask allows it, and never
a stale verdict."""
import math

import pytest
import torch

from support import RecordSDPA, assert_close_outputs, assert_same_grads, clone_model, flat

import sdpa_rewrite.runtime as runtime
from sdpa_rewrite.emit import causal_lower_right_attention

MIN = torch.finfo(torch.float32).min


class Block(torch.nn.Module):
    """One attention layer that adds the mask it is given, as transformers' eager layers do."""

    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(16, 48)

    def forward(self, x, mask):
        L = x.size(1)
        q, k, v = self.qkv(x).view(2, L, 3, 2, 8).permute(2, 0, 3, 1, 4)
        w = (q @ k.transpose(-1, -2) / math.sqrt(8) + mask).softmax(-1)
        return x + (w @ v).transpose(1, 2).reshape(2, L, 16)


class BoolBlock(Block):
    """The nanoGPT spelling with the keep-mask handed in: masked_fill(~keep, -inf)."""

    def forward(self, x, keep):
        L = x.size(1)
        q, k, v = self.qkv(x).view(2, L, 3, 2, 8).permute(2, 0, 3, 1, 4)
        w = (q @ k.transpose(-1, -2) / math.sqrt(8)).masked_fill(~keep, float("-inf")).softmax(-1)
        return x + (w @ v).transpose(1, 2).reshape(2, L, 16)


def causal(L=8, S=8):
    return torch.zeros(L, S).masked_fill(torch.ones(L, S, dtype=torch.bool).tril(S - L).logical_not(), MIN)


def stack(block=Block, layers=3):
    torch.manual_seed(0)
    return torch.nn.ModuleList(block() for _ in range(layers))


def compiled(blocks, graphs=None, **options):
    def downstream(gm, example_inputs):
        if graphs is not None:
            graphs.append(gm)
        return gm.forward

    options = {"downstream": downstream, "strict": True, **options}
    return [torch.compile(b, backend="sdpa_rewrite", options=options) for b in blocks]


def run(blocks, x, mask):
    for b in blocks:
        x = b(x, mask)
    return x


@pytest.fixture
def classified(monkeypatch):
    """Counts the run-time classifications (each one is a host sync)."""
    seen = []
    kind = runtime.runtime_kind
    monkeypatch.setattr(runtime, "runtime_kind", lambda *a: seen.append(kind(*a)) or seen[-1])
    return seen


def recorded(blocks, x, mask):
    with torch.no_grad(), RecordSDPA() as rec:
        out = run(blocks, x, mask)
    return out, rec.calls


def test_causal_input_mask_is_classified_once_per_forward_and_reaches_is_causal(classified):
    blocks, x, mask = stack(), torch.randn(2, 8, 16), causal()
    fast = compiled(blocks)
    with torch.no_grad():
        run(fast, x, mask)                          # compiles each layer
    assert classified == ["causal"]                 # three layers, one mask: one classification
    out, calls = recorded(fast, x, mask)
    assert classified == ["causal"]                 # the same tensor again: the cached verdict
    assert [(c["mask"], c["is_causal"]) for c in calls] == [("none", True)] * 3
    assert_close_outputs(out, run(blocks, x, mask))


@pytest.mark.parametrize("mask,expect", [
    (torch.zeros(8, 8), ("none", False)),
    (causal().masked_fill(torch.eye(8, dtype=torch.bool).roll(1, 0), MIN), ("float", False)),   # not causal
    (causal() * 1e-35, ("none", True)),          # a fill of -3.4e3 still masks: the causal pattern
    (causal() * 1e-36, ("float", False)),         # -340 does not: a bias
], ids=["all-visible", "causal-with-a-hole", "small-fill", "bias-sized-fill"])
def test_each_pattern_gets_its_own_call(mask, expect):
    blocks, x = stack(), torch.randn(2, 8, 16)
    out, calls = recorded(compiled(blocks), x, mask)
    assert {(c["mask"], c["is_causal"]) for c in calls} == {expect}, calls
    assert_close_outputs(out, run(blocks, x, mask))


def test_a_bias_that_is_not_a_mask_stays_a_mask(classified):
    blocks, x = stack(), torch.randn(2, 8, 16)
    bias = causal().clamp_min(-5.0)              # -5 is not masking: a bias, every key keeps some weight
    out, calls = recorded(compiled(blocks), x, bias)
    assert classified == ["mask"] and {c["mask"] for c in calls} == {"float"}
    assert_close_outputs(out, run(blocks, x, bias))


def test_mask_changed_in_place_is_classified_again(classified):
    blocks, x, mask = stack(), torch.randn(2, 8, 16), causal()
    fast = compiled(blocks)
    with torch.no_grad():
        run(fast, x, mask)
        mask[3, :2] = MIN                        # padding written into the same tensor
    assert_classified_again_and_kept(fast, blocks, x, mask, classified)


def assert_classified_again_and_kept(fast, blocks, x, mask, classified):
    """The second mask got its own verdict (not causal), so the graph that keeps the mask ran: eager's numbers."""
    out, calls = recorded(fast, x, mask)
    assert classified == ["causal", "mask"]
    assert {c["mask"] for c in calls} == {"float"}
    assert_close_outputs(out, run(blocks, x, mask))


@pytest.mark.parametrize("same_key", [False, True], ids=["allocator", "same-id-and-address"])
def test_new_tensor_at_a_freed_address_is_classified_again(classified, monkeypatch, same_key):
    """A new tensor where a freed one was: the allocator may hand out the same address, and Python the same id.
    `same-id-and-address` makes every tensor of this shape look alike to the cache key, so only the weak
    reference to the tensor the verdict was taken on stands between the new mask and a stale verdict."""
    if same_key:
        monkeypatch.setattr(runtime, "_identity", lambda t: tuple(t.shape))
    blocks, x = stack(), torch.randn(2, 8, 16)
    fast = compiled(blocks)
    mask = causal()
    with torch.no_grad():
        run(fast, x, mask)
    address, shape = mask.data_ptr(), mask.shape
    del mask
    reused = None
    for _ in range(64):                          # the allocator hands the freed block out again
        candidate = torch.empty(shape)
        if candidate.data_ptr() == address:
            reused = candidate
            break
    other = reused if reused is not None else torch.empty(shape)
    other.copy_(torch.zeros(shape).masked_fill(torch.eye(8, dtype=torch.bool).logical_not(), MIN))  # diagonal only
    assert_classified_again_and_kept(fast, blocks, x, other, classified)


def test_different_mask_of_the_same_shape(classified):
    blocks, x = stack(), torch.randn(2, 8, 16)
    fast = compiled(blocks)
    first, second = causal(), causal()
    second[:, 1] = MIN
    second[1, 1] = 0.0
    with torch.no_grad():
        run(fast, x, first)
    out, calls = recorded(fast, x, second)
    assert classified == ["causal", "mask"]
    assert_close_outputs(out, run(blocks, x, second))
    out, calls = recorded(fast, x, first)                # the first one again: still cached, still causal
    assert classified == ["causal", "mask"] and {c["is_causal"] for c in calls} == {True}


def test_inference_tensors_keep_the_mask(classified):
    """No version counter, so an in-place write could not be seen: such a mask is never classified."""
    blocks, x = stack(), torch.randn(2, 8, 16)
    with torch.inference_mode():
        mask = causal()
    out, calls = recorded(compiled(blocks), x, mask)
    assert classified == [] and {c["mask"] for c in calls} == {"float"}
    assert_close_outputs(out, run(blocks, x, mask))


def test_off_by_option(classified):
    blocks, x, mask = stack(), torch.randn(2, 8, 16), causal()
    out, calls = recorded(compiled(blocks, runtime_verdicts=False), x, mask)
    assert classified == [] and {c["mask"] for c in calls} == {"float"}


def test_bool_keep_mask_input():
    blocks, x = stack(BoolBlock), torch.randn(2, 8, 16)
    keep = torch.ones(8, 8, dtype=torch.bool).tril()
    out, calls = recorded(compiled(blocks), x, keep)
    assert [(c["mask"], c["is_causal"]) for c in calls] == [("none", True)] * 3
    assert_close_outputs(out, run(blocks, x, keep))


def test_queries_offset_into_the_keys_get_lower_right_causal():
    """Four new queries against eight keys (a chunk after a cache): the lower-right pattern."""

    class Chunk(Block):
        def forward(self, x, mask):
            q = self.qkv(x[:, 4:]).view(2, 4, 3, 2, 8).permute(2, 0, 3, 1, 4)[0]
            _, k, v = self.qkv(x).view(2, 8, 3, 2, 8).permute(2, 0, 3, 1, 4)
            w = (q @ k.transpose(-1, -2) / math.sqrt(8) + mask).softmax(-1)
            return (w @ v).transpose(1, 2).reshape(2, 4, 16)

    torch.manual_seed(0)
    block, x, mask, graphs = Chunk(), torch.randn(2, 8, 16), causal(4, 8), []
    with torch.no_grad():
        out = compiled([block], graphs)[0](x, mask)
    assert_close_outputs(out, block(x, mask))
    assert any(n.target is causal_lower_right_attention for g in graphs for n in g.graph.nodes)


def test_gradients_through_the_causal_variant():
    blocks, x, mask = stack(), torch.randn(2, 8, 16, requires_grad=True), causal()
    reference = clone_model(blocks)
    fast = compiled(blocks)
    out = run(fast, x, mask)
    x_ref = x.detach().clone().requires_grad_(True)
    ref = run(reference, x_ref, mask)
    assert_close_outputs(out, ref)
    assert_same_grads(blocks, (x,), out, reference, (x_ref,), ref)


# ---- transformers, each decoder / encoder layer compiled on its own --------------------------------------------

transformers = pytest.importorskip("transformers")
from test_transformers import bert, gpt2, llama  # noqa: E402


def layers_of(model):
    for path in ("model.layers", "transformer.h", "encoder.layer"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if obj is not None:
            return obj
    raise AssertionError(type(model))


def compile_layers(model, reports, downstream="eager"):
    for layer in layers_of(model):
        layer.compile(backend="sdpa_rewrite",
                      options={"downstream": downstream, "strict": True, "report": reports.append})


def padded_inputs(side: str):
    ids = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 12, dtype=torch.long)
    if side == "left":
        mask[0, :4] = 0
    elif side == "right":
        mask[0, -4:] = 0
    return ids, mask


@pytest.mark.parametrize("build", [gpt2, llama, bert], ids=["gpt2", "llama", "bert"])
@pytest.mark.parametrize("side", ["unpadded", "left", "right"])
def test_regional_compile_equals_eager(build, side, classified):
    model = build()
    reference = clone_model(model)
    ids, mask = padded_inputs(side)
    reports = []
    compile_layers(model, reports)
    with torch.no_grad():
        model(ids, attention_mask=mask)                    # compiles every layer
        sites = [s for r in reports for s in r.sites]
        verdicts = list(classified)
        ref = reference(ids, attention_mask=mask)
        with RecordSDPA() as rec:
            out = model(ids, attention_mask=mask)
    assert sites and all(s.rewritten for s in sites), "\n".join(map(str, reports))
    assert_close_outputs(flat(out)[0], flat(ref)[0])
    if side == "unpadded" and build is bert:               # transformers passes no mask to an unpadded encoder
        assert [(c["mask"], c["is_causal"]) for c in rec.calls] == [("none", False)] * 2
    elif side == "unpadded":
        assert all(s.runtime_verdict and "; verdict taken at run time)" in s.mask for s in sites), [s.mask for s in sites]
        assert [(c["mask"], c["is_causal"]) for c in rec.calls] == [("none", True)] * 2
        assert verdicts == ["causal"]                      # one verdict for both layers
    else:
        assert {c["mask"] for c in rec.calls} == {"float"}


@pytest.mark.parametrize("build", [gpt2, llama], ids=["gpt2", "llama"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_regional_compile_never_attends_a_hidden_key(build, side):
    """Other tokens under the padding change nothing at the positions that see no padding."""
    model = build()
    ids, mask = padded_inputs(side)
    compile_layers(model, [])
    other = ids.clone()
    other[mask == 0] = 5
    with torch.no_grad():
        a = model(ids, attention_mask=mask).logits
        b = model(other, attention_mask=mask).logits
    keep = mask.bool()
    assert torch.equal(a[keep], b[keep])


@pytest.mark.parametrize("build", [gpt2, llama], ids=["gpt2", "llama"])
def test_regional_training_loss_and_gradients_equal_eager(build):
    model = build().train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    reference = clone_model(model)
    ids, _ = padded_inputs("unpadded")
    reports = []
    compile_layers(model, reports, downstream="aot_eager")
    loss = model(input_ids=ids, labels=ids).loss
    ref = reference(input_ids=ids, labels=ids).loss
    assert all(s.runtime_verdict for r in reports for s in r.sites)
    assert_close_outputs(loss, ref)
    loss.backward()
    ref.backward()
    scale = max(p.grad.abs().max().item() for p in reference.parameters() if p.grad is not None)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        if q.grad is not None:
            err = ((p.grad - q.grad).abs().max() / max(q.grad.abs().max().item(), 0.1 * scale)).item()
            assert err <= 1e-4, f"{name}: gradient relative error {err:.2e}"


@pytest.mark.parametrize("side", ["unpadded", "left"])
def test_regional_generate_same_tokens(side):
    model = llama()
    ids, mask = padded_inputs(side)
    kwargs = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    ref = model.generate(ids, **kwargs)
    compile_layers(model, [])
    assert torch.equal(model.generate(ids, **kwargs), ref)


def test_compiled_check_gives_the_eager_flags():
    """On CUDA the check runs compiled (its passes fused into one); it must say what the eager one says."""
    from sdpa_rewrite.masks import MaskForm

    form = MaskForm(terms=((0, 1.0, (), None),), fills=())
    shape = (2, 1, 8, 8)
    compiled = runtime._flags_function(form, shape, compiled=True)
    hole = causal()
    hole[5, 2] = MIN
    for mask in (causal(), torch.zeros(8, 8), hole, causal().clamp_min(-5.0), causal(8, 8).fill_(float("nan"))):
        mask = mask.expand(2, 1, 8, 8)
        assert torch.equal(compiled(mask), runtime.pattern_flags(form, shape, mask)), mask


def _near_causal_masks():
    """Masks a check of fewer than all elements could take for causal: every causal pattern at several (L, S), one
    element flipped at each corner, diagonal and boundary, sliding windows (constant along diagonals, like causal),
    a band above the diagonal, the transpose, a per-batch difference, and values that are not a mask."""
    for L, S in [(1, 1), (1, 6), (6, 1), (5, 5), (4, 7), (7, 4)]:
        for offset in {0, S - L}:
            keep = torch.ones(L, S, dtype=torch.bool).tril(offset)
            yield keep
            middle = L // 2
            for i, j in {(0, 0), (0, S - 1), (L - 1, 0), (L - 1, S - 1), (middle, min(S - 1, max(0, middle + offset))),
                         (middle, min(S - 1, max(0, middle + offset + 1)))}:
                flipped = keep.clone()
                flipped[i, j] = ~flipped[i, j]
                yield flipped
            for window in (1, 2, 3):
                yield keep & ~torch.ones(L, S, dtype=torch.bool).tril(offset - window)
            yield torch.ones(L, S, dtype=torch.bool).triu(offset)
            yield torch.ones(L, S, dtype=torch.bool)
            yield keep.T.contiguous() if L == S else keep
            yield torch.stack([keep, keep.clone().fill_(True)])


def _reference_flags(mask: torch.Tensor) -> list:
    """What runtime.pattern_flags must say, element by element."""
    L, S = mask.shape[-2:]
    visible = mask == 0
    i, j = torch.arange(L)[:, None], torch.arange(S)[None, :]
    return [bool(((mask == 0) | (mask <= -1000)).all()), bool(visible.all()), bool((visible == (j <= i)).all()),
            L > S or bool((visible == (j <= i + S - L)).all())]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_pattern_flags_equal_the_element_by_element_definition(compiled):
    """The check reads a causal pattern off its diagonals, first row and first column; it must say exactly what
    comparing every element with the causal pattern says (lower-right where it is read: L <= S)."""
    from sdpa_rewrite.masks import MaskForm

    form = MaskForm(terms=((0, 1.0, (), None),), fills=())
    seen = 0
    for keep in _near_causal_masks():
        for masking in (MIN, float("-inf")):
            mask = torch.zeros(keep.shape).masked_fill(~keep, masking)
            shape = (2, 1) + tuple(keep.shape[-2:]) if keep.dim() == 3 else (1, 1) + tuple(keep.shape)
            mask = mask.view(shape[0], 1, *shape[2:])
            flags = runtime._flags_function(form, shape, compiled=compiled)(mask).tolist()
            expect = _reference_flags(mask)
            if shape[-2] > shape[-1]:
                flags[3] = expect[3]       # lower-right is read only when L < S
            assert flags == expect, (keep, flags, expect)
            seen += expect[2]
    assert seen > 10


def test_explain_marks_the_masks_whose_verdict_is_taken_at_run_time():
    """explain() says what the backend would do: an attention_mask of ones is input data, classified at run time."""
    import sdpa_rewrite

    model = llama()
    ids, mask = padded_inputs("unpadded")
    report = sdpa_rewrite.explain(model, ids, attention_mask=mask)
    assert len(report.rewritten) == 2 and all(s.runtime_verdict for s in report.sites), report
    assert any("verdict is taken at run time" in n for n in report.notes), report.notes


class AnyBatchBlock(Block):
    def forward(self, x, mask):
        B, L = x.shape[:2]
        q, k, v = self.qkv(x).view(B, L, 3, 2, 8).permute(2, 0, 3, 1, 4)
        w = (q @ k.transpose(-1, -2) / math.sqrt(8) + mask).softmax(-1)
        return x + (w @ v).transpose(1, 2).reshape(B, L, 16)


def test_a_symbolic_batch_gets_a_variant_per_size(classified):
    """Dynamo makes the batch symbolic after a second size; a variant is compiled with the sizes of the call that
    first needs it (aot_eager traces them in), so each new size gets its own variant rather than another's (which
    fails on the next size without this)."""
    torch.manual_seed(0)
    blocks = torch.nn.ModuleList(AnyBatchBlock() for _ in range(2))
    fast = compiled(blocks, downstream="aot_eager")
    for batch in (2, 3, 4, 3):
        x, mask = torch.randn(batch, 8, 16), causal()[None, None].expand(batch, 1, 8, 8)
        with torch.no_grad():
            assert_close_outputs(run(fast, x, mask), run(blocks, x, mask))
    assert classified == ["causal"] * 4                 # one verdict per forward, each run on a causal variant
