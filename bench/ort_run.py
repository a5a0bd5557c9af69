"""One ONNX model run by ONNX Runtime on the CPU, in a process that imports neither torch nor transformers, so that
its peak resident memory is the runtime's: the model's weights, its arena and the run's buffers.

    python -m bench.ort_run MODEL.onnx FOLDER REPS      (FOLDER holds inputs.npz and reference.npy)

Prints one JSON line: the median and interquartile range of REPS timed runs after one warm-up, the peak resident
memory, the part of it above the process before the session was made, and the error against the reference.
"""
import json
import os
import statistics
import sys
import time

import numpy as np


def memory_mib(field: str) -> float:
    """VmHWM (peak) or VmRSS (now) of this process from /proc: unlike getrusage's ru_maxrss, which a child inherits
    from the process that forked it, these belong to this program's own memory map."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(path: str, folder: str, reps: int) -> dict:
    import onnxruntime

    given = dict(np.load(os.path.join(folder, "inputs.npz")))
    before = memory_mib("VmRSS")
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    feed = {i.name: given[i.name] for i in session.get_inputs()}
    out = session.run(None, feed)[0]
    error = float(np.abs(out.astype(np.float32) - np.load(os.path.join(folder, "reference.npy"))).max())
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - started) * 1e3)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"ms": round(statistics.median(times), 3), "iqr_ms": round(q[2] - q[0], 3),
            "peak_rss_mib": round(memory_mib("VmHWM"), 1), "model_and_run_mib": round(memory_mib("VmHWM") - before, 1),
            "max_abs_err": error}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
