"""One AOTInductor package loaded and timed in a process of its own, so that a crash in the package's native code
costs one row, and the peak memory is the package's: its weights and one call, nothing of the model it came from.

    python -m bench.aoti_run PACKAGE MODEL FOLDER REPS SEQ [SEQ ...]

Per length, one JSON line: the median and interquartile range of the calls, the peak memory one call allocates,
the device memory the loaded package holds (weights and constants: AOTInductor allocates them outside torch's
allocator, so they are read from the device's free memory), and the largest difference from
FOLDER/reference_SEQ.pt (the logits of the first form timed; written here when it is missing).
"""
import faulthandler
import json
import os
import sys

import torch

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import zoo  # noqa: E402
from bench.timing import measure  # noqa: E402


def main(path: str, model: str, folder: str, reps: int, seqs: list) -> None:
    import transformers.modeling_outputs  # noqa: F401  (defines the output classes the package's signature names)
    from torch._inductor import aoti_load_package

    device = "cuda" if torch.cuda.is_available() else "cpu"
    free = torch.cuda.mem_get_info()[0] if device == "cuda" else 0
    runner = aoti_load_package(path)
    loaded = (free - torch.cuda.mem_get_info()[0]) / 2 ** 20 if device == "cuda" else float("nan")
    for seq in seqs:
        inputs = {**zoo.inputs(model, 1, seq, device=device), "use_cache": False}
        call = lambda: runner(**inputs)  # noqa: E731
        with torch.no_grad():
            out = call()
            logits = (out["logits"] if isinstance(out, dict) else out[0]).float().cpu()
            timing = measure(call, reps=reps, device=device)
        reference = os.path.join(folder, f"reference_{seq}.pt")
        if not os.path.exists(reference):
            torch.save(logits, reference)
        error = float((logits - torch.load(reference)).abs().max())
        print(json.dumps({"seq": seq, "ms": round(timing.ms, 3), "iqr_ms": round(timing.spread_ms, 3),
                          "peak_mib": round(timing.peak_mib, 1), "loaded_mib": round(loaded, 1),
                          "max_abs_err_vs_first": error}), flush=True)


if __name__ == "__main__":
    faulthandler.enable()
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), [int(s) for s in sys.argv[5:]])
