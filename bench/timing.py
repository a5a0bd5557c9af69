"""One way to time and weigh a call, shared by the bench scripts, so every table measures the same thing.

`measure(fn)` runs `fn` a few times to warm up (compiles, autotuning, allocator), then times about `reps` calls
with the standard tools, `triton.testing.do_bench` on CUDA (a CUDA-event pair around each call, L2 flushed before
it) and `torch.utils.benchmark.Timer.blocked_autorange` elsewhere, and returns the median and the interquartile
spread in ms, and the peak memory one further call allocates above what was allocated before it (activations,
outputs, gradients and optimizer state created inside the call; not weights or inputs that already exist).
`measure_calls(fn)` times exactly `reps` calls one by one, the device synchronised after each: for a call that is
itself the unit (a `generate()`), and for attention alone, whose inputs stay in L2 from one call to the next.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable

import torch


@dataclasses.dataclass(frozen=True)
class Timing:
    ms: float            # median
    spread_ms: float     # interquartile range of the timed calls
    peak_mib: float      # peak allocated during one call, above what was allocated before it (CUDA only)
    best_ms: float = float("nan")   # fastest timed call: for host-bound work (decode), the least disturbed one


def _cuda(device: torch.device | str | None) -> bool:
    return torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")


def measure(fn: Callable[[], object], *, warmup: int = 3, reps: int = 20, device=None) -> Timing:
    """Median latency of `fn()` over about `reps` calls after `warmup` calls, and its peak memory."""
    cuda = _cuda(device)
    for _ in range(warmup):
        fn()
    one_ms = measure_calls(fn, warmup=0, reps=1, device=device, peak=False).ms   # sizes the tools' runs
    times = _do_bench(fn, reps, one_ms) if cuda else _blocked_autorange(fn, reps, one_ms)
    return _timing(times, peak_mib(fn) if cuda else float("nan"), "inclusive" if cuda else "exclusive")


def _do_bench(fn, reps: int, one_ms: float) -> list:
    """triton's do_bench over per-call CUDA events, as its quantiles 0, ¼, ½, ¾, 1 (every triton version returns
    quantiles): their median, inclusive quartiles and minimum are the calls'. torch.utils.benchmark where triton
    is missing."""
    try:
        from triton.testing import do_bench
    except ImportError:
        return _blocked_autorange(fn, reps, one_ms)
    return do_bench(fn, warmup=one_ms, rep=reps * one_ms, quantiles=[0.0, 0.25, 0.5, 0.75, 1.0])


def _blocked_autorange(fn, reps: int, one_ms: float) -> list:
    """Per-call times of torch.utils.benchmark's blocks (a block's time over its calls), on the threads torch
    already uses (Timer's default is one)."""
    from torch.utils.benchmark import Timer

    timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return [t * 1e3 for t in timer.blocked_autorange(min_run_time=reps * one_ms / 1e3).times]


def _timing(times: list, peak: float, method: str = "exclusive") -> Timing:
    quartiles = statistics.quantiles(times, n=4, method=method) if len(times) > 1 else [times[0]] * 3
    return Timing(statistics.median(times), quartiles[2] - quartiles[0], peak, min(times))


def measure_calls(fn: Callable[[], object], *, warmup: int = 3, reps: int = 20, device=None,
                  peak: bool = True) -> Timing:
    """Median latency of exactly `reps` calls of `fn()`, each timed alone (CUDA events, the wall clock off
    CUDA) after `warmup` calls, and its peak memory."""
    cuda = _cuda(device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            sync()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return _timing(times, peak_mib(fn) if cuda and peak else float("nan"))


def peak_mib(fn: Callable[[], object]) -> float:
    """Peak CUDA memory one call of `fn` allocates above what is allocated before it, in MiB."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    del out
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def profiled(fn: Callable[[], object], calls: int, device=None):
    """torch.profiler's per-operator averages over `calls` calls of `fn`, CUDA kernels included on CUDA (the
    device is synchronised before the profile ends, so every launched kernel is counted)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = _cuda(device)
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for _ in range(calls):
            fn()
        if cuda:
            torch.cuda.synchronize()
    return prof.key_averages()


def kernel_totals(events) -> tuple:
    """(launches, self device time in ms) of the device kernels among `profiled`'s events."""
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    return sum(e.count for e in kernels), sum(e.self_device_time_total for e in kernels) / 1e3


def versions() -> str:
    """The line every result carries: device and software versions."""
    import transformers

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    cuda = f", CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}" if torch.cuda.is_available() else ""
    return f"{device} · torch {torch.__version__}{cuda} · transformers {transformers.__version__}"


class Record:
    """Rows printed and saved as they come, so a run cut short by the device's time limit keeps what it
    measured: `add(table, row)` rewrites the JSON file (`{"versions": ..., **header, table: [rows]}`) every time."""

    def __init__(self, path: str | None = None, header: dict | None = None):
        self.path, self.header, self.tables = path, header or {}, {}

    def add(self, table: str, row: dict) -> dict:
        self.tables.setdefault(table, []).append(row)
        print(row, flush=True)
        self.save()
        return row

    def save(self) -> None:
        import json

        if self.path:
            with open(self.path, "w") as f:
                json.dump({"versions": versions(), **self.header, **self.tables}, f, indent=1)
