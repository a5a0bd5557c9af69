"""Where a training step's memory goes, per form: what the forward leaves alive for the backward, the forward's
and the backward's own peaks, and the live blocks after the forward grouped by the line that allocated them
(CUDA). Written to explain a peak-memory difference between two forms of bench/training.py.

    PYTHONPATH=. python bench/step_memory.py opt --shape 8x1024 --forms inductor_sdpa,backend_inductor [--top 12]

`--at-peak` (CUDA) instead replays the allocator's trace of one whole step (forward, backward, optimizer) and lists
the blocks live at its peak that the step allocated, grouped the same way: where two forms' peaks differ by a
transient, this names it.

`--saved` (any device; `--tiny` and `--padding N` for a CPU check) instead sums the unique storages the forward
saves for the backward, as autograd's saved-tensor hooks see them.
"""
from __future__ import annotations

import argparse
import collections
import gc
import linecache

import torch

from bench import zoo
from bench.training import Trainer
from bench.timing import versions


def _mib(n: int) -> float:
    return round(n / 2**20, 1)


def step_memory(trainer: Trainer, args: dict, top: int) -> dict:
    for _ in range(2):                                  # compile, optimizer state, allocator warm
        trainer.step(args)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.memory._record_memory_history(max_entries=200_000, stacks="python")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = trainer.forward(**args, use_cache=False).loss
    torch.cuda.synchronize()
    saved = torch.cuda.memory_allocated() - base
    forward_peak = torch.cuda.max_memory_allocated() - base
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    torch.cuda.reset_peak_memory_stats()
    loss.backward()
    torch.cuda.synchronize()
    backward_peak = torch.cuda.max_memory_allocated() - base
    trainer.opt.zero_grad(set_to_none=True)
    del loss
    print(f"-- {trainer.form}: live after forward by allocating line (blocks >= 1 MiB)")
    groups = _by_line(b for segment in snapshot["segments"] for b in segment["blocks"]
                      if b["state"] == "active_allocated")
    _print_top(groups, top)
    return {"form": trainer.form, "saved_mib": _mib(saved), "forward_peak_mib": _mib(forward_peak),
            "backward_peak_mib": _mib(backward_peak), "live_blocks_mib": _mib(sum(s * c for (_, s), c in groups.items()))}


def step_peak(trainer: Trainer, args: dict, top: int) -> dict:
    """The blocks of at least 1 MiB that one step (after two warm-up steps) allocated and holds at its peak."""
    for _ in range(2):
        trainer.step(args)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.memory._record_memory_history(max_entries=1_000_000, stacks="python")
    trainer.step(args)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    events = [e for trace in torch.cuda.memory._snapshot()["device_traces"] for e in trace
              if e["action"] in ("alloc", "free_completed")]
    torch.cuda.memory._record_memory_history(enabled=None)
    at_peak = _replay(events, stop=None)
    live = _replay(events, stop=at_peak["index"])["live"]
    print(f"-- {trainer.form}: step peak {_mib(peak)} MiB above the step's start (trace: {_mib(at_peak['high'])}); "
          f"the allocation that reached it: {_where(events[at_peak['index']].get('frames', []))}")
    _print_top(_by_line(live.values()), top)
    return {"form": trainer.form, "step_peak_mib": _mib(peak), "trace_peak_mib": _mib(at_peak["high"]),
            "live_at_peak_mib": _mib(sum(e["size"] for e in live.values())), "live_at_peak_blocks": len(live)}


def _by_line(blocks) -> collections.Counter:
    """{(allocating line, size): count} of the blocks of at least 1 MiB (snapshot blocks or trace events)."""
    return collections.Counter((_where(b.get("frames", [])), b["size"]) for b in blocks if b["size"] >= 2**20)


def _print_top(groups: collections.Counter, top: int) -> None:
    for (where, size), count in sorted(groups.items(), key=lambda kv: -kv[0][1] * kv[1])[:top]:
        print(f"   {count:3d} x {_mib(size):8.1f} MiB  {where}")


def _replay(events: list, stop: int | None) -> dict:
    """Allocated bytes through the trace (relative to its start): the index of the event at the highest point, and
    the blocks allocated in the trace that are live after event `stop`."""
    live, now, high, index = {}, 0, 0, 0
    for i, e in enumerate(events):
        if e["action"] == "alloc":
            live[e["addr"]] = e
            now += e["size"]
        else:
            live.pop(e["addr"], None)
            now -= e["size"]
        if now > high:
            high, index = now, i
        if i == stop:
            break
    return {"high": high, "index": index, "live": live}


def saved_mib(trainer: Trainer, args: dict) -> dict:
    """The unique storages one forward saves for the backward (after a warm-up step), in MiB."""
    trainer.step(args)
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast(trainer.device, dtype=torch.bfloat16):
            loss = trainer.forward(**args, use_cache=False).loss
    loss.backward()
    trainer.opt.zero_grad(set_to_none=True)
    return {"form": trainer.form, "saved_mib": round(sum(storages.values()) / 2**20, 3), "storages": len(storages)}


def _where(frames: list) -> str:
    """The innermost frame in generated Inductor code or in transformers, with its source line."""
    for f in frames:
        name = f.get("filename", "")
        if "torchinductor" in name or "transformers" in name or "sdpa_rewrite" in name:
            code = linecache.getline(name, f.get("line", 0)).strip()
            return f"{name.rsplit('/', 1)[-1]}:{f.get('line')} {code[:110]}"
    return frames[0]["filename"].rsplit("/", 1)[-1] + f":{frames[0].get('line')}" if frames else "?"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", choices=sorted(zoo.MODELS))
    ap.add_argument("--shape", default="8x1024")
    ap.add_argument("--forms", default="inductor_sdpa,backend_inductor")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--at-peak", action="store_true", help="the blocks live at a whole step's peak (CUDA)")
    ap.add_argument("--saved", action="store_true", help="only the storages saved for the backward (any device)")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--padding", type=int, default=0, help="left padding of batch row 1 (an attention_mask input)")
    args = ap.parse_args()
    batch, seq = map(int, args.shape.split("x"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(versions())
    rows = []
    for form in args.forms.split(","):
        trainer = Trainer(args.model, form, device=device, tiny=args.tiny)
        inputs = zoo.inputs(args.model, batch, seq, device=device, labels=True)
        if args.padding:
            inputs["attention_mask"] = torch.ones(batch, seq, dtype=torch.long, device=device)
            inputs["attention_mask"][1, :args.padding] = 0
        if args.saved or device != "cuda":
            rows.append(saved_mib(trainer, inputs))
        else:
            rows.append((step_peak if args.at_peak else step_memory)(trainer, inputs, args.top))
        del trainer
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    for r in rows:
        print(r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
