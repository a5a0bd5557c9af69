"""Decoding with transformers' `generate()`: the backend against transformers' own compiled paths, every form of a
configuration built in one process and timed in turn (A B A B ...), so no form gets a quieter slot:

    PYTHONPATH=. python bench/decode.py [--models llama8,gpt2,mistralw,gemma2w] [--batches 1,8,32]
                                        [--prompts 128,2048] [--caches static,dynamic] [--new 256] [--reps 10]
                                        [--window 1024] [--profile-shape 1x128] [--check-tokens] [--mask-control]
                                        [--compiled-forward]
                                        [--budget-s 540] [--json out.json] [--tiny]

Forms, per cache:

    static   native_static      sdpa model (eager where transformers has no sdpa path: Gemma2's soft-capping),
                                static cache: transformers compiles the decode step with its default
                                CompileConfig (Inductor, mode="reduce-overhead": CUDA graphs)
             native_flex_static the same with attn_implementation="flex_attention" (windowed / soft-capped models)
             sdpa_eager_mask_static  with `--mask-control`: transformers' sdpa attention fed the float mask that
                                transformers builds for eager models (`eager_mask`, registered as the attention
                                implementation "sdpa_eager_mask"), same CompileConfig as native: the host work of
                                the eager model outside the compiled step, with hand-written SDPA inside it
             backend_static     eager model, static cache, `CompileConfig(backend="sdpa_rewrite")`: the same
                                default mode, handed to the backend by torch.compile
             backend_forward_static  with `--compiled-forward`: the eager model, static cache, `forward` compiled
                                by the backend in its default mode: the prompt's forward (which transformers runs
                                uncompiled on the static path) goes through the backend too, and so do the decode
                                steps, without CUDA graphs (transformers' auto-compile of the step finds `forward`
                                compiled, and Dynamo runs that compiled code)
    dynamic  native_dynamic     sdpa model, dynamic cache, `model.forward = torch.compile(model.forward)`
             backend_dynamic    eager model, dynamic cache, `torch.compile(model.forward, backend="sdpa_rewrite")`

Models: bench/zoo.py's llama8 (bf16, GQA 16/4) and gpt2 (fp16), and the windowed Mistral-like and soft-capped
Gemma2-like ones (bf16) with their window set to `--window` so that a 2048-token prompt crosses it; those run the
static forms, with transformers' flex path beside its sdpa one. GPT-2's prompts are cut to its 2048 positions.

Every configuration (model, cache, batch, prompt) starts from `torch._dynamo.reset()`: each form compiles (three
warm-up calls), untimed rounds call every form once in turn until a round records no CUDA graph (the forms share the
device's CUDA-graph tree, and switching between them records again for a few rounds; `settle_rounds` in the rows, and
`settle_events`: whether those recordings were roots of the tree or children of another graph, and which invariant a
recorded graph failed), then `--reps` timed rounds call every form once in turn. A call is greedy `generate()` of
exactly `--new` tokens, timed on the wall clock with the device synchronised at both ends (prefill included:
transformers runs the prompt uncompiled on the static path). Per form: the median call, tokens/s (batch · new /
median), the spread ((slowest − fastest) / median, and the interquartile range / median), `paired` (median over rounds
of the first form's call / this form's), the prefill alone on the static path (the prompt's forward as the form runs
it: uncompiled, so eager attention for the eager model, unless `forward` is compiled), `step_ms` and `step_paired`
(the same with that prefill taken off each call and the rest divided by the new tokens: the decode steps, which are
what the compiled step and its host code decide), and `same_tokens`, the fraction of new tokens equal to the
uncompiled sdpa model's in the same dtype (random weights in half precision tie often, so native forms are the
yardstick there; `--check-tokens` compares again in fp32). Every timed call's time is kept, with the Dynamo and
Inductor counters that moved in it (recompiles, graphs, CUDA-graph recordings and skips, the tree's roots and failed
invariants) and the recompile log's reasons.

Why a form is slower shows in one profiled call per form, at `--profile-shape`: CUDA-graph replays, recordings and
eager warm-up runs of Inductor's CUDA-graph trees, kernel launches outside graphs, host synchronisations and
`cudaMemcpyAsync` calls per decode step, each with the ops it came from, and the device time of a step (all its
kernels; each kernel's launches and time a step, most first) beside the step's wall time. Rows are saved to `--json`
as they come; a configuration that would start after `--budget-s` is recorded as skipped. `--tiny` (2-layer models)
checks the script on a CPU.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import logging
import statistics
import time

import torch
from tabulate import tabulate

import sdpa_rewrite
from bench import zoo
from bench.models import site_counts
from bench.timing import Record, versions

FORMS = {"static": ["native_static", "backend_static"], "dynamic": ["native_dynamic", "backend_dynamic"]}
WINDOWED = ("mistralw", "gemma2w")          # static forms with transformers' flex path beside its sdpa one
SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")


MASK_CONTROL = "sdpa_eager_mask"


def forms_of(model: str, cache: str, mask_control: bool = False, compiled_forward: bool = False) -> list:
    if cache != "static":
        return FORMS[cache]
    forms = ["native_static", "native_flex_static", "backend_static"] if model in WINDOWED else list(FORMS[cache])
    if mask_control and native_impl(model) == "sdpa":
        forms.insert(1, "sdpa_eager_mask_static")
    if compiled_forward:
        forms.append("backend_forward_static")
    return forms


def register_mask_control() -> None:
    """The attention implementation "sdpa_eager_mask": transformers' sdpa attention with the mask function of its
    eager models, so that a form differs from the eager model only inside the compiled step."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import eager_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    AttentionInterface.register(MASK_CONTROL, ALL_ATTENTION_FUNCTIONS["sdpa"])
    AttentionMaskInterface.register(MASK_CONTROL, eager_mask)


def overrides(name: str, tiny: bool, window: int) -> dict:
    return {"sliding_window": window} if name in WINDOWED and not tiny else {}


def native_impl(name: str) -> str:
    """transformers' own non-flex path: sdpa, or eager where the model has no sdpa path (soft-capping)."""
    return "eager" if name == "gemma2w" else "sdpa"


def build(name: str, form: str, device: str, tiny: bool, window: int):
    dtype = (torch.float16 if name == "gpt2" else torch.bfloat16) if device == "cuda" else torch.float32
    impl = ("eager" if form.startswith("backend") else "flex_attention" if "flex" in form
            else MASK_CONTROL if form.startswith(MASK_CONTROL) else native_impl(name))
    if impl == MASK_CONTROL:
        register_mask_control()
    model = zoo.build(name, impl, device=device, dtype=dtype, tiny=tiny, **overrides(name, tiny, window))
    if form.endswith("static"):
        from transformers import CompileConfig

        config = CompileConfig(backend="sdpa_rewrite") if form.startswith("backend") else CompileConfig()
        if device != "cuda":
            config._compile_all_devices = True     # transformers auto-compiles the decode step on accelerators only
        model.generation_config.compile_config = config
        if form == "backend_forward_static":
            model.forward = torch.compile(model.forward, backend="sdpa_rewrite")
    elif form == "native_dynamic":
        model.forward = torch.compile(model.forward)
    elif form == "backend_dynamic":
        model.forward = torch.compile(model.forward, backend="sdpa_rewrite")
    return model


def generate_kwargs(form: str, new: int) -> dict:
    kwargs = {"max_new_tokens": new, "min_new_tokens": new, "do_sample": False, "pad_token_id": 0}
    if form.endswith("static"):
        kwargs["cache_implementation"] = "static"
    return kwargs


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_call(model, ids, kwargs: dict, device: str) -> tuple:
    """One generate() call, with Python's cyclic garbage collector run before it and kept out of it (as timeit
    does): a batch-1 decode step is host-bound, and a collection landing in one call but not the next is spread."""
    gc.collect()
    sync(device)
    gc.disable()
    try:
        start = time.perf_counter()
        out = model.generate(ids, **kwargs)
        sync(device)
        return (time.perf_counter() - start) * 1e3, out
    finally:
        gc.enable()


class GraphTreeCounts:
    """Counts what Inductor's CUDA-graph trees do per call: replays of recorded graphs, new recordings, and
    eager warm-up runs (a graph is run eagerly before it is recorded)."""

    def __init__(self):
        self.counts = collections.Counter()
        self._patched = []
        try:
            from torch._inductor import cudagraph_trees as trees
        except ImportError:
            return
        manager = trees.CUDAGraphTreeManager
        for method, key in (("execute_node", "replays"), ("run_eager", "eager_runs")):
            self._patch(manager, method, self._counting, key)
        self._patch(manager, "record_function", self._placing)
        self._patch(trees.CUDAGraphNode, "check_invariants", self._refusing)

    def _patch(self, owner, method, wrap, *args) -> None:
        original = getattr(owner, method, None)
        if original is not None:
            self._patched.append((owner, method, original))
            setattr(owner, method, wrap(original, *args))

    def _counting(self, original, key):
        counts = self.counts

        def counted(*args, **kwargs):
            counts[key] += 1
            return original(*args, **kwargs)
        return counted

    def _placing(self, original):
        """Recordings, and where each goes: a root of the tree, or a child of another recorded graph (the tree
        could not end the path it was on, so the same function is recorded again under it)."""
        counts = self.counts

        def placed(manager, *args, **kwargs):
            counts["recordings"] += 1
            counts["recorded_as_root" if manager.current_node is None else "recorded_as_child"] += 1
            return original(manager, *args, **kwargs)
        return placed

    def _refusing(self, original):
        """Why a recorded graph was not replayed: the invariant it failed (static input moved, an output of an
        earlier graph still alive, ...)."""
        counts = self.counts

        def checked(node, *args, **kwargs):
            result = original(node, *args, **kwargs)
            status = result[0] if isinstance(result, tuple) else result
            if getattr(status, "name", "SUCCESS") != "SUCCESS" and status is not True:
                counts[f"not_replayed:{getattr(status, 'name', status)}"] += 1
            return result
        return checked

    def restore(self) -> None:
        for owner, method, original in self._patched:
            setattr(owner, method, original)


class Recompiles(logging.Handler):
    """The messages of torch's `recompiles` log (why Dynamo compiled again)."""

    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage().splitlines()[0][:200])


@contextlib.contextmanager
def listening():
    """The recompile log, kept here and not printed: its reasons go into the rows."""
    handler, logger = Recompiles(), logging.getLogger("torch._dynamo.guards.__recompiles")
    torch._logging.set_logs(recompiles=True)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        torch._logging.set_logs()


def dynamo_counts() -> collections.Counter:
    from torch._dynamo.utils import counters

    out = collections.Counter()
    for group in ("stats", "inductor", "recompiles"):
        for key, value in counters[group].items():
            if isinstance(value, int):
                out[f"{group}.{key}"] = value
    return out


def tree_counts(trees: GraphTreeCounts) -> collections.Counter:
    """The CUDA-graph tree's recordings, where they went, and why recorded graphs were not replayed."""
    return collections.Counter({f"cudagraph_trees.{k}": v for k, v in trees.counts.items()
                                if k.startswith(("recorded_as", "not_replayed"))})


def profile_call(model, ids, kwargs: dict, device: str, trees: GraphTreeCounts) -> dict:
    """One more call under torch.profiler: per decode step, graph replays and recordings, launches outside graphs,
    host syncs and memcpy calls (with the ops they came from)."""
    from torch.profiler import ProfilerActivity, profile

    before = collections.Counter(trees.counts)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities, with_stack=True) as prof:
        ms, _ = timed_call(model, ids, kwargs, device)
    steps = kwargs["max_new_tokens"] - 1             # decode steps; the prompt's forward gives the first token
    names, origins = collections.Counter(), collections.Counter()
    kernel_us, kernel_n = collections.Counter(), collections.Counter()
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CPU:
            names[e.name] += 1
            if e.name in SYNCS or e.name == "cudaMemcpyAsync":
                origins[f"{e.name} from {_origin(e)}"] += 1
        else:
            names["<kernel>"] += 1
            kernel_us[e.name[:80]] += e.time_range.elapsed_us()
            kernel_n[e.name[:80]] += 1
    tree = {k: trees.counts[k] - before[k] for k in ("replays", "recordings", "eager_runs")}
    return {"graph_replays_per_step": round(tree["replays"] / steps, 2),
            "graph_launches_per_step": round(names["cudaGraphLaunch"] / steps, 2),
            "recordings": tree["recordings"], "eager_runs": tree["eager_runs"],
            "launches_per_step": round(sum(names[n] for n in LAUNCHES) / steps, 1),
            "kernels_per_step": round(names["<kernel>"] / steps, 1),
            "syncs_per_step": round(sum(names[n] for n in SYNCS) / steps, 2),
            "memcpy_per_step": round(names["cudaMemcpyAsync"] / steps, 2),
            "profiled_ms": round(ms, 1), "device_us_per_step": round(sum(kernel_us.values()) / steps, 1),
            "kernels_us_per_step": {k: [round(kernel_n[k] / steps, 2), round(us / steps, 2)]
                                    for k, us in kernel_us.most_common()},
            "sync_origins": {k: round(v / steps, 2) for k, v in origins.most_common(6)}}


def _origin(event) -> str:
    """The ops that called a runtime event, innermost first, and the nearest Python frames outside torch."""
    names, stack, parent = [], [], event.cpu_parent
    while parent is not None:
        if len(names) < 3:
            names.append(parent.name)
        if not stack and parent.stack:
            stack = [f for f in parent.stack if "/torch/" not in f][:2]
        parent = parent.cpu_parent
    return " < ".join(names) + (" @ " + " | ".join(stack) if stack else "")


SETTLE_ROUNDS = 8


def settle(models: dict, forms: list, ids, new: int, device: str, trees: GraphTreeCounts) -> int:
    """Untimed rounds, every form once in turn, until a round records no CUDA graph (at most SETTLE_ROUNDS): the
    forms share the device's CUDA-graph tree, and switching between them has recorded graphs again for the first
    few rounds at B8 and B32. Returns the rounds run."""
    def recorded() -> tuple:
        return trees.counts["recordings"], dynamo_counts()["inductor.cudagraph_recorded_non_static_inputs"]

    for rounds in range(1, SETTLE_ROUNDS + 1):
        before = recorded()
        for form in forms:
            timed_call(models[form], ids, generate_kwargs(form, new), device)
        if recorded() == before:
            return rounds
    return SETTLE_ROUNDS


def fp32_tokens(name: str, forms: list, ids, a, device: str) -> dict:
    """Each form rebuilt and cast to fp32 (the weights rounded to the timed dtype first, as every form's are), TF32
    off: its new tokens against the uncompiled model's, cast the same way (half-precision greedy tokens of random
    weights flip on rounding ties)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    out = {}
    try:
        reference = build(name, "uncompiled", device, a.tiny, a.window).float()   # the same rounded weights
        want = reference.generate(ids, **generate_kwargs("uncompiled", a.new))[:, -a.new:]
        del reference
        for form in forms:
            model = build(name, form, device, a.tiny, a.window).float()
            got = model.generate(ids, **generate_kwargs(form, a.new))[:, -a.new:]
            out[form] = round((got == want).float().mean().item(), 3)
            del model
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    return out


def prefill_ms(model, ids, device: str, reps: int = 3) -> float:
    """The prompt's forward as generate's static path runs it (uncompiled), logits of the last position only."""
    forward, times = model.forward, []
    with torch.no_grad():
        for _ in range(reps + 1):
            sync(device)
            start = time.perf_counter()
            forward(ids, use_cache=False, logits_to_keep=1)
            sync(device)
            times.append((time.perf_counter() - start) * 1e3)
    return round(statistics.median(times[1:]), 2)


def configuration(name: str, cache: str, batch: int, prompt: int, a, device: str, record: Record) -> None:
    forms = forms_of(name, cache, getattr(a, "mask_control", False), getattr(a, "compiled_forward", False))
    torch._dynamo.reset()
    ids = zoo.inputs(name, batch, prompt, device=device)["input_ids"]
    shape = f"B{batch} P{prompt}+{a.new}"
    reference = build(name, "uncompiled", device, a.tiny, a.window)
    with torch.no_grad():
        ref_tokens = reference.generate(ids, **generate_kwargs("uncompiled", a.new))[:, -a.new:]
    del reference
    models, reports, first_s, prefill, tokens, warmup_log = {}, {}, {}, {}, {}, {}
    times = {form: [] for form in forms}
    during = {form: collections.Counter() for form in forms}
    timed_log = {form: set() for form in forms}
    events = {form: [] for form in forms}             # (timed call, counters that moved in it)
    tokens_fp32 = {}
    profiles = {}
    settle_rounds, settle_events = 0, {}
    trees = GraphTreeCounts()
    with listening() as log, torch.no_grad():
        try:
            for form in list(forms):            # build and compile every form (three calls: compile, record, replay)
                seen = len(log.messages)
                models[form] = build(name, form, device, a.tiny, a.window)
                kwargs = generate_kwargs(form, a.new)
                prefill[form] = prefill_ms(models[form], ids, device) if cache == "static" else None
                try:
                    with sdpa_rewrite.collect_reports() as reports[form]:
                        ms, out = timed_call(models[form], ids, kwargs, device)
                        for _ in range(2):
                            timed_call(models[form], ids, kwargs, device)
                except Exception as e:          # recorded, and the other forms go on
                    record.add("failed", {"model": name, "cache": cache, "shape": shape, "form": form,
                                          "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"})
                    forms.remove(form)
                    del models[form]
                    continue
                first_s[form], tokens[form] = round(ms / 1e3, 1), out[:, -a.new:]
                warmup_log[form] = sorted(set(log.messages[seen:]))
            before = tree_counts(trees)
            settle_rounds = settle(models, forms, ids, a.new, device, trees)
            settle_events = dict(tree_counts(trees) - before)
            for _ in range(a.reps):             # the timed rounds: every form once in turn
                for form in forms:
                    before, seen = dynamo_counts() + tree_counts(trees), len(log.messages)
                    times[form].append(timed_call(models[form], ids, generate_kwargs(form, a.new), device)[0])
                    moved = dynamo_counts() + tree_counts(trees) - before
                    during[form] += moved
                    if moved:
                        events[form].append((len(times[form]) - 1, dict(moved)))
                    timed_log[form].update(log.messages[seen:])
            if a.check_tokens and (batch, prompt) == a.profiled:
                tokens_fp32 = fp32_tokens(name, forms, ids, a, device)
            if a.profile and (batch, prompt) == a.profiled:
                for form in forms:
                    profiles[form] = profile_call(models[form], ids, generate_kwargs(form, a.new), device, trees)
        finally:
            trees.restore()
    for form in forms:
        t = sorted(times[form])
        median = statistics.median(t)
        paired = [x / y for x, y in zip(times[forms[0]], times[form])]    # the first form's call / this form's
        steps = decode_steps(times, prefill, forms[0], form, a.new)
        q = statistics.quantiles(t, n=4) if len(t) > 1 else [t[0]] * 3
        done, found, _ = site_counts(reports[form])
        record.add("decode", {
            "model": name, "cache": cache, "shape": shape, "form": form,
            "tokens_per_s": round(batch * a.new / median * 1e3, 1), "ms": round(median, 1),
            "best_ms": round(t[0], 1), "spread_pct": round((t[-1] - t[0]) / median * 100, 1),
            "iqr_pct": round((q[2] - q[0]) / median * 100, 1),
            "paired": round(statistics.median(paired), 3) if paired else None,
            "paired_wins": f"{sum(r > 1 for r in paired)}/{len(paired)}", "prefill_ms": prefill[form], **steps,
            "first_call_s": first_s[form], "same_tokens": round((tokens[form] == ref_tokens).float().mean().item(), 3),
            "same_tokens_fp32": tokens_fp32.get(form),
            "sites": f"{done}/{found}" if found else "", "reps": len(t), "settle_rounds": settle_rounds,
            "settle_events": settle_events or None,
            **profiles.get(form, {}),
            "calls_ms": [round(x, 1) for x in times[form]], "calls_with_events": events[form] or None,
            "during_timed_calls": {k: v for k, v in during[form].items() if v} or None,
            "timed_log": sorted(timed_log[form])[:6] or None, "warmup_log": warmup_log[form][:6] or None})
    del models
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def decode_steps(times: dict, prefill: dict, first: str, form: str, new: int) -> dict:
    """A form's decode steps alone: each call less the form's prefill, over the new tokens (the static path only,
    where transformers runs the prompt outside the compiled step), and the first form's / this form's, round by
    round."""
    if prefill.get(form) is None or prefill.get(first) is None or not times[form]:
        return {"step_ms": None, "step_paired": None}
    per_step = {f: [(ms - prefill[f]) / new for ms in times[f]] for f in (first, form)}
    return {"step_ms": round(statistics.median(per_step[form]), 3),
            "step_paired": round(statistics.median([x / y for x, y in zip(per_step[first], per_step[form])]), 3)}


COLUMNS = ("model", "cache", "shape", "form", "tokens_per_s", "ms", "spread_pct", "iqr_pct", "paired", "prefill_ms",
           "step_ms", "step_paired",
           "same_tokens", "sites", "graph_replays_per_step", "recordings", "launches_per_step", "syncs_per_step",
           "device_us_per_step")


def table(rows: list) -> str:
    out, base = [], {}
    for r in rows:
        key = (r["model"], r["cache"], r["shape"])
        base.setdefault(key, r)
        ratio = r["tokens_per_s"] / base[key]["tokens_per_s"] if base[key]["tokens_per_s"] else float("nan")
        out.append({**{c: r.get(c, "") for c in COLUMNS}, "vs_first": f"{ratio:.2f}x"})
    return tabulate(out, headers="keys", tablefmt="github")


def kernel_differences(rows: list, floor_us: float = 0.5) -> str:
    """Per profiled configuration, the kernels whose launches or device time a step differ between the first form
    and each other one by more than `floor_us`: where one form's step does GPU work the other does not."""
    out, base = [], {}
    for r in rows:
        if "kernels_us_per_step" not in r:
            continue
        key = (r["model"], r["cache"], r["shape"])
        first = base.setdefault(key, r)
        if first is r:
            continue
        a, b = first["kernels_us_per_step"], r["kernels_us_per_step"]
        for name in set(a) | set(b):
            (n0, us0), (n1, us1) = a.get(name, (0, 0.0)), b.get(name, (0, 0.0))
            if abs(us1 - us0) > floor_us or abs(n1 - n0) >= 1:
                out.append({"shape": r["shape"], "kernel": name[:70], first["form"]: f"{n0} × / {us0} us",
                            r["form"]: f"{n1} × / {us1} us", "delta_us": round(us1 - us0, 2)})
    out.sort(key=lambda x: -abs(x["delta_us"]))
    return tabulate(out, headers="keys", tablefmt="github") if out else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="llama8,gpt2")
    ap.add_argument("--caches", default="static,dynamic")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--prompts", default="128,2048")
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--window", type=int, default=1024, help="the windowed models' sliding window")
    ap.add_argument("--no-profile", dest="profile", action="store_false")
    ap.add_argument("--profile-shape", default="1x128", help="BxP: the configuration profiled (one call per form)")
    ap.add_argument("--check-tokens", action="store_true",
                    help="at --profile-shape, every form again in fp32: new tokens against uncompiled fp32")
    ap.add_argument("--mask-control", action="store_true",
                    help="add the sdpa_eager_mask_static form to the static configurations of sdpa models")
    ap.add_argument("--compiled-forward", action="store_true",
                    help="add the backend_forward_static form: forward compiled by the backend, static cache")
    ap.add_argument("--budget-s", type=float, default=float("inf"))
    ap.add_argument("--json")
    ap.add_argument("--tiny", action="store_true")
    a = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.tiny:
        a.new = min(a.new, 8)
    batch, prompt = (int(v) for v in a.profile_shape.split("x"))
    a.profiled = (batch, min(prompt, 16) if a.tiny else prompt)
    torch._dynamo.config.recompile_limit = 64
    record, start = Record(a.json), time.perf_counter()
    for name in a.models.split(","):
        positions = zoo.config(name, "eager", a.tiny).max_position_embeddings
        for cache in a.caches.split(","):
            if name in WINDOWED and cache != "static":
                continue
            for prompt in (int(p) for p in a.prompts.split(",")):
                if a.tiny:
                    prompt = min(prompt, 16)
                if prompt + a.new > positions:
                    prompt = positions - a.new
                for batch in (int(b) for b in a.batches.split(",")):
                    if time.perf_counter() - start > a.budget_s:
                        record.add("skipped", {"model": name, "cache": cache, "shape": f"B{batch} P{prompt}",
                                               "why": f"past --budget-s {a.budget_s}"})
                        continue
                    configuration(name, cache, batch, prompt, a, device, record)
    print(versions())
    print(table(record.tables.get("decode", [])))
    differences = kernel_differences(record.tables.get("decode", []))
    if differences:
        print("kernels a decode step runs differently (per step, in the profiled call):")
        print(differences)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
