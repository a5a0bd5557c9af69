"""The standard suites of `python -m bench`: the configurations RESULTS.md measures, the backend beside its best
alternative in the same process, sized so that the whole run fits 10 minutes on one H100 / H200 from cold caches.

Each case calls the suite script's own row function (bench/models.py's `forward`, training.py's `step_rows`, ...),
so its rows mean what that script's rows mean; they all go to one JSON file as they come. `--tiny` runs one case
per suite on 2-layer width-64 models, on the CPU when there is no GPU, with Dynamo's eager backend where a script
asks for Inductor (and the rewrite's downstream eager): a check of the suites' code, the rewrite's sites and its
numbers in seconds, not of the speed (Inductor's compile of those graphs is what the tests and the GPU run cover).
A case whose cold-cache estimate no longer fits the budget is skipped, and a case still running when the budget
ends is stopped, so the table and the JSON come back either way.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import threading
import time
from typing import Callable

import torch

from bench import decode, flex_models, models, regional, training

WHOLE_MODEL = ["inductor_sdpa", "backend_inductor"]      # Inductor on transformers' sdpa model, then the backend


@dataclasses.dataclass
class Run:
    """What a case needs: where it runs, how big, where its rows go, until when."""
    device: str
    tiny: bool
    record: object                 # bench.timing.Record
    deadline: float                # time.perf_counter() at which the budget ends

    def rows(self, suite: str):
        return _Rows(self.record, suite)


class _Rows:
    """A script's `record.add(table, row)` into the run's record: the suite's rows under the suite's name, each
    with the script's own table name when it is not the suite's main one (`steps` of regional, `failed` of decode)."""

    def __init__(self, record, suite: str):
        self.record, self.suite = record, suite

    def add(self, table: str, row: dict) -> dict:
        main = {"forward": "forward", "training": "steps", "decode": "decode", "flex": "forward",
                "regional": "forward"}[self.suite]
        return self.record.add(self.suite, row if table == main else {**row, "part": table})


@dataclasses.dataclass(frozen=True)
class Case:
    suite: str
    title: str
    estimate_s: float              # from a cold cache on an H100 (RESULTS.md's compile times, plus the timing)
    run: Callable[[Run], None]
    tiny: bool = True              # one case per suite is the --tiny check


def _forward(name, shape, forms=("eager", *WHOLE_MODEL)):
    def run(r: Run):
        b, s = (2, 64) if r.tiny else shape
        models.forward(name, b, s, list(forms), padded=False, device=r.device, tiny=r.tiny, reps=3 if r.tiny else 20,
                       record=r.rows("forward"))
    return run


def _training(name, shape):
    def run(r: Run):
        b, s = (2, 64) if r.tiny else shape
        training.step_rows(name, b, s, WHOLE_MODEL, device=r.device, tiny=r.tiny, reps=2 if r.tiny else 10,
                           record=r.rows("training"))
    return run


def _decode(name, batch, prompt, new=256):
    def run(r: Run):
        torch._dynamo.config.recompile_limit = 64                      # as decode.py sets it
        p = 16 if r.tiny else prompt
        a = argparse.Namespace(tiny=r.tiny, new=4 if r.tiny else new, reps=2 if r.tiny else 5, window=1024,
                               profile=False, check_tokens=False, profiled=(batch, p))
        decode.configuration(name, "static", batch, p, a, r.device, r.rows("decode"))
    return run


def _flex(name, shape, forms=("flex_inductor", "backend")):
    def run(r: Run):
        torch._dynamo.config.recompile_limit = 64                      # as flex_models.py sets it
        b, s = (1, 64) if r.tiny else shape
        flex_models.forward_rows(name, b, s, list(forms), device=r.device, tiny=r.tiny, reps=3 if r.tiny else 10,
                                 record=r.rows("flex"), deadline=r.deadline)
    return run


def _regional(name, shape, train_shape):
    def run(r: Run):
        torch._dynamo.config.recompile_limit = 256                     # as regional.py sets them
        torch._dynamo.config.accumulated_recompile_limit = 4096
        (b, s), (tb, ts) = ((2, 64), (2, 64)) if r.tiny else (shape, train_shape)
        rows, reps = r.rows("regional"), 3 if r.tiny else 20
        regional.forward_rows(name, b, s, WHOLE_MODEL, device=r.device, tiny=r.tiny, padded=None, fsdp2=False,
                              reps=reps, record=rows, verdicts=regional.Verdicts())
        regional.train_rows(name, tb, ts, WHOLE_MODEL, device=r.device, tiny=r.tiny, padded=None, fsdp2=False,
                            reps=max(2, reps // 2), record=rows)
    return run


# In order of priority: each suite's first case comes before any suite's second.
CASES = [
    Case("forward", "gpt2 B8 S1024", 45, _forward("gpt2", (8, 1024))),
    Case("training", "gpt2 B8 S1024", 90, _training("gpt2", (8, 1024))),
    Case("decode", "llama8 static cache B1, prompt 128 + 256", 45, _decode("llama8", 1, 128)),
    Case("regional", "llama8 forward B4 S2048, step B4 S1024", 60, _regional("llama8", (4, 2048), (4, 1024))),
    Case("flex", "gemma2w forward B1 S8192", 180, _flex("gemma2w", (1, 8192))),
    Case("forward", "llama8 B4 S2048", 50, _forward("llama8", (4, 2048)), tiny=False),
    Case("decode", "llama8 static cache B8, prompt 128 + 256", 45, _decode("llama8", 8, 128), tiny=False),
]

# The row each suite compares: the measure, whether lower is better, the alternative form and the backend's.
COMPARED = {
    "forward": ("ms", True, "inductor_sdpa", "backend_inductor"),
    "training": ("step_ms", True, "inductor_sdpa", "backend_inductor"),
    "decode": ("tokens_per_s", False, "native_static", "backend_static"),
    "flex": ("ms", True, "flex_inductor", "backend"),
    "regional": (None, True, "inductor_sdpa", "backend_inductor"),       # ms (forward) or step_ms (training)
}


@contextlib.contextmanager
def without_inductor():
    """torch.compile with Dynamo's eager backend where Inductor was asked for (transformers' static-cache compile,
    `layer.compile()`, the forms' own), and the rewrite with its downstream eager: --tiny's checks without
    Inductor's minutes of CPU compiles. transformers' lone flex_attention compile is left alone: it is a
    process-wide singleton that later compiles would inherit (and Dynamo traces through it anyway)."""
    original = torch.compile

    def compile(model=None, **kwargs):
        backend = kwargs.get("backend") or "inductor"
        if getattr(model, "__name__", "") != "flex_attention":
            if backend == "inductor":
                kwargs.update(backend="eager", mode=None, options=None)
            elif backend == "sdpa_rewrite":
                kwargs.update(mode=None, options={**(kwargs.get("options") or {}), "downstream": "eager"})
        return original(model, **kwargs)

    torch.compile = compile
    try:
        yield
    finally:
        torch.compile = original


class OutOfTime(BaseException):
    """Raised into the running case when the budget ends (a BaseException: the scripts' `except Exception`
    around a form must not swallow it)."""


def cases(suites: list, tiny: bool) -> list:
    return [c for c in CASES if c.suite in suites and (c.tiny or not tiny)]


def run_cases(chosen: list, run: Run) -> None:
    """Each case in turn, skipped when its estimate no longer fits the budget (full size only), stopped when the
    budget ends."""
    def out_of_time(*_):
        raise OutOfTime

    timed = threading.current_thread() is threading.main_thread()     # signals reach the main thread only
    if timed:
        previous = signal.signal(signal.SIGALRM, out_of_time)
        signal.setitimer(signal.ITIMER_REAL, max(run.deadline - time.perf_counter(), 0.001))
    try:
        for n, case in enumerate(chosen):
            left = run.deadline - time.perf_counter()
            named = {"suite": case.suite, "case": case.title}
            if left < (0 if run.tiny else case.estimate_s):
                why = f"{left:.0f} s of the budget left, the case takes ~{case.estimate_s} s"
                run.record.add("skipped", {**named, "why": why})
                continue
            print(f"\n== {case.suite}: {case.title}" + (" (tiny models, small shapes)" if run.tiny else ""), flush=True)
            start = time.perf_counter()
            try:
                case.run(run)
                run.record.add("cases", {**named, "seconds": round(time.perf_counter() - start, 1)})
            except OutOfTime:
                why = f"stopped after {time.perf_counter() - start:.0f} s: budget spent"
                run.record.add("skipped", {**named, "why": why})
                for rest in chosen[n + 1:]:
                    run.record.add("skipped", {"suite": rest.suite, "case": rest.title, "why": "budget spent"})
                break
            except Exception as e:             # one case failing does not lose the others
                first = str(e).splitlines()[0][:300] if str(e) else ""
                run.record.add("failed", {**named, "error": f"{type(e).__name__}: {first}"})
    except OutOfTime:                          # between two cases
        pass
    finally:
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def summary(tables: dict) -> list:
    """One row per workload: the backend beside the alternative measured in the same process."""
    out = []
    for suite, (measure, lower, alt_form, form) in COMPARED.items():
        groups: dict = {}
        for r in tables.get(suite, []):
            if r.get("form") in (alt_form, form) and "error" not in r and "skipped" not in r:
                kind = "step" if "step_ms" in r else "forward"
                groups.setdefault((r["model"], r.get("shape"), kind), {})[r["form"]] = r
        for (model, shape, kind), rows in groups.items():
            key = measure or ("step_ms" if kind == "step" else "ms")
            alt, ours = rows.get(alt_form, {}), rows.get(form, {})
            a, b = alt.get(key), ours.get(key)
            ratio = (a / b if lower else b / a) if a and b else None
            step = " step" if kind == "step" and suite == "regional" else ""
            out.append({
                "suite": suite, "workload": f"{model} {shape}{step}",
                "measure": key, "alternative": alt_form, "alt": a, "backend": b,
                "speedup": None if ratio is None else round(ratio, 3),
                "peak_mib": f"{_get(alt, 'peak_mib')} / {_get(ours, 'peak_mib')}",
                "compile_s": f"{_first(alt)} / {_first(ours)}",
                "sites": ours.get("sites") or "", "check": _check(alt, ours)})
    return out


def _get(row: dict, key: str):
    value = row.get(key)
    return "—" if value is None else value


def _first(row: dict):
    return _get(row, next((k for k in ("compile_s", "first_step_s", "first_call_s") if k in row), "compile_s"))


def _check(alt: dict, ours: dict) -> str:
    """How the backend's numbers compare: relative error (against the case's first form, or the fp32 eager model
    for flex), the share of greedy tokens equal to the uncompiled model's, or the first losses side by side."""
    if ours.get("rel_err") is not None:
        return f"rel_err {ours['rel_err']:.1e} vs {ours.get('err_vs', 'fp32 eager')}"
    if ours.get("same_tokens") is not None:
        return f"same tokens {ours['same_tokens']:.0%}"
    if ours.get("first_loss") is not None:
        return f"first loss {_get(alt, 'first_loss')} / {ours['first_loss']}"
    return ""


def plot(tables: dict, rows: list, title: str, out_dir: str, json_path: str | None) -> list:
    """The run's figures in `out_dir`: the backend's speedup and memory against the alternative per workload,
    and plot_models.py's forward / training figures from the same rows. Nothing without matplotlib."""
    import os

    try:
        import matplotlib
    except ImportError:
        print("no plots: matplotlib is not installed")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    drawn = [r for r in rows if r["speedup"]]
    if not drawn:
        return []
    labels = [f"{r['suite']}: {r['workload']}" for r in drawn]
    memory = [_ratio(r["peak_mib"]) for r in drawn]
    panels = 2 if any(memory) else 1                      # peak memory is measured on CUDA only
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 0.45 * len(drawn) + 1.6), sharey=True, squeeze=False)
    left = axes[0][0]
    left.barh(labels, [r["speedup"] for r in drawn], color="#e6550d")
    left.axvline(1.0, color="black", lw=0.8)
    left.set_xlabel("backend speedup over the alternative (higher is better)")
    left.invert_yaxis()
    if panels == 2:
        right = axes[0][1]
        right.barh(labels, [m or 0 for m in memory], color="#3182bd")
        right.axvline(1.0, color="black", lw=0.8)
        right.set_xlabel("backend peak memory / the alternative's (lower is better)")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    paths = [os.path.join(out_dir, "bench_summary.png")]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)
    if json_path and tables.get("forward"):
        import sys

        from bench import plot_models

        saved = sys.argv
        sys.argv = ["plot_models.py", json_path, "--out", out_dir]
        try:
            plot_models.main()                 # the forward rows against the eager model
        finally:
            sys.argv = saved
        paths.append(os.path.join(out_dir, "models_forward.png"))
    return paths


def _ratio(pair: str):
    a, _, b = pair.partition(" / ")
    try:
        return float(b) / float(a)
    except ValueError:
        return None
