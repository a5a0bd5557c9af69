"""Greedy generation with a KV cache: the same tokens with and without the backend, decode steps included."""
import pytest
import torch

import sdpa_rewrite

transformers = pytest.importorskip("transformers")

from test_transformers import gpt2, llama  # noqa: E402


@pytest.mark.parametrize("build", [gpt2, llama], ids=["gpt2", "llama"])
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
def test_greedy_generate_same_tokens_decode_step_rewritten(build, padded):
    model = build()
    ids = torch.randint(1, 128, (2, 6), generator=torch.Generator().manual_seed(0))
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    if padded:
        mask = torch.ones_like(ids)
        mask[0, :2] = 0
        ids[0, :2] = 0
        kwargs["attention_mask"] = mask
    ref = model.generate(ids, **kwargs)
    reports = []
    model.forward = torch.compile(model.forward, backend="sdpa_rewrite",
                                  options={"downstream": "eager", "report": reports.append, "strict": True})
    out = model.generate(ids, **kwargs)
    assert torch.equal(out, ref)
    sites = [s for r in reports for s in r.sites]
    assert sites and all(s.rewritten for s in sites), "\n".join(map(str, reports))
    prefill = [s for s in sites if s.q[-2] == 6]
    decode = [s for s in sites if s.q[-2] == 1]
    assert prefill and decode, [s.q for s in sites]
    if not padded:
        assert all(s.causal == "top-left" for s in prefill)          # no padding: the prefill mask folds
        # every decode step, the one compiled with the cache length symbolic included, attends without a mask
        symbolic = [s for s in decode if not isinstance(s.k[-2], int)]
        assert symbolic and all(s.mask.startswith("none") for s in decode), [(s.k, s.mask) for s in decode]
    else:
        assert all(s.mask.startswith("input mask") for s in decode), [s.mask for s in decode]


@pytest.mark.slow
def test_transformers_auto_compile_of_generate_takes_the_backend():
    """transformers compiles the decode step itself when the cache is static: `CompileConfig(backend="sdpa_rewrite")`.
    Its default `mode="reduce-overhead"` beside `options=` is refused by torch.compile, so the mode travels as an
    option (`mode=None, options={"mode": ...}`). Same tokens as eager, every decode site rewritten."""
    from transformers import CompileConfig

    model = llama()
    ids = torch.randint(3, 128, (2, 6), generator=torch.Generator().manual_seed(0))
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, cache_implementation="static")
    ref = model.generate(ids, **kwargs)
    reports = []
    config = CompileConfig(backend="sdpa_rewrite", mode=None, fullgraph=False,
                           options={"mode": "default", "downstream": "inductor", "report": reports.append})
    config._compile_all_devices = True            # transformers auto-compiles on accelerators only; the CPU for the test
    model.generation_config.compile_config = config
    assert torch.equal(model.generate(ids, **kwargs), ref)
    sites = [s for r in reports for s in r.sites]
    assert sites and all(s.rewritten for s in sites) and all(s.q[-2] == 1 for s in sites), sites


def _static_generate_with(config, model, ids, **extra):
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, cache_implementation="static", **extra)
    ref = model.generate(ids, **kwargs)
    config._compile_all_devices = True            # transformers auto-compiles on accelerators only; the CPU for the test
    model.generation_config.compile_config = config
    with sdpa_rewrite.collect_reports() as reports:
        out = model.generate(ids, **kwargs)
    return out, ref, [s for r in reports for s in r.sites]


def test_compile_config_with_its_default_mode_takes_the_backend():
    """The simplest route: `CompileConfig(backend="sdpa_rewrite")` keeps transformers' default mode
    ("reduce-overhead"), which torch.compile hands to the backend; the reports come from `collect_reports()`."""
    from transformers import CompileConfig

    config = CompileConfig(backend="sdpa_rewrite")
    assert config.mode == "reduce-overhead" and config.options is None
    ids = torch.randint(3, 128, (2, 6), generator=torch.Generator().manual_seed(0))
    out, ref, sites = _static_generate_with(config, llama(), ids)
    assert torch.equal(out, ref)
    assert sites and all(s.rewritten for s in sites) and all(s.q[-2] == 1 for s in sites), sites


def _downstream_modes(monkeypatch) -> list:
    """The Inductor mode of every compile the backend hands downstream, in order."""
    import sdpa_rewrite.backend as backend

    modes = []
    real = backend.compile_downstream

    def spy(downstream, gm, inputs, mode=None, config=None):
        modes.append(mode)
        return real(downstream, gm, inputs, mode=mode, config=config)

    monkeypatch.setattr(backend, "compile_downstream", spy)
    return modes


def test_compiled_forward_beside_compile_config_takes_the_prompt_and_the_steps(monkeypatch):
    """With `forward` compiled by the backend as well, the prompt (which transformers runs uncompiled on the static
    path) goes through the backend, and so does every decode step, in the forward's own mode: transformers'
    auto-compile of the step finds `forward` compiled and Dynamo runs that code (no CUDA graphs; docs/integrations.md
    says so)."""
    from transformers import CompileConfig

    modes = _downstream_modes(monkeypatch)
    model = llama()
    ids = torch.randint(3, 128, (2, 6), generator=torch.Generator().manual_seed(0))
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, cache_implementation="static")
    ref = model.generate(ids, **kwargs)
    config = CompileConfig(backend="sdpa_rewrite")
    config._compile_all_devices = True            # transformers auto-compiles on accelerators only
    model.generation_config.compile_config = config
    model.forward = torch.compile(model.forward, backend="sdpa_rewrite", options={"downstream": "eager"})
    with sdpa_rewrite.collect_reports() as reports:
        out = model.generate(ids, **kwargs)
    sites = [s for r in reports for s in r.sites]
    assert torch.equal(out, ref)
    assert sites and all(s.rewritten for s in sites), sites
    assert {s.q[-2] for s in sites} == {6, 1}                      # the prompt's sites and the decode step's
    assert modes and all(m is None for m in modes), modes          # the forward's compile, not reduce-overhead


@pytest.mark.slow
def test_reduce_overhead_mode_reaches_inductor_with_cuda_graphs(monkeypatch):
    """`torch.compile(fn, backend="sdpa_rewrite", mode="reduce-overhead")`: the mode reaches Inductor as its CUDA-graph
    config, and run-time verdicts (a host sync per new mask) are off under it."""
    import sdpa_rewrite.backend as backend

    modes = _downstream_modes(monkeypatch)
    model = llama()
    ids = torch.randint(3, 128, (1, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits
        with sdpa_rewrite.collect_reports() as reports:
            out = torch.compile(model.forward, backend="sdpa_rewrite", mode="reduce-overhead")(ids).logits
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert modes and modes[-1] == "reduce-overhead"
    assert backend._cuda_graphs("inductor", "reduce-overhead", {})
    assert reports and all(s.rewritten for r in reports for s in r.sites)


@pytest.mark.slow
def test_soft_capped_decode_with_a_static_cache():
    """Gemma 2's decode step with a static cache: transformers builds the sliding and full masks outside the compiled
    step, so they are graph inputs of different key lengths. With Inductor on the CPU the sites stay eager with the
    reason (its flex kernel takes no epilogue, and input masks may leave a row without keys); without Inductor they
    run on flex. Same tokens both ways."""
    from transformers import CompileConfig

    from test_flex import gemma2

    ids = torch.randint(3, 128, (1, 9), generator=torch.Generator().manual_seed(0))
    out, ref, sites = _static_generate_with(CompileConfig(backend="sdpa_rewrite"), gemma2(), ids)
    assert torch.equal(out, ref)
    assert sites and all(not s.rewritten and "takes no epilogue" in s.reason for s in sites), sites
    config = CompileConfig(backend="sdpa_rewrite", mode=None, options={"downstream": "aot_eager"})
    out, ref, sites = _static_generate_with(config, gemma2(), ids)
    assert torch.equal(out, ref)
    assert sites and all(s.rewritten and s.target == "flex" for s in sites), sites
