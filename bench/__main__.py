"""`python -m bench`: the standard benchmark suites on whatever device is there, one table at the end.

    python -m bench                          forward, training, decode, flex, regional (bench/standard.py)
    python -m bench --tiny                   the same code on 2-layer width-64 models: a check, on the CPU in CI
    python -m bench --suite decode           one standard suite (a comma list, or --suite again, for several)
    python -m bench --suite decode --models llama8 --caches static --json out.json
                                             flags bench does not know go to the suite's script: exactly
                                             `python bench/decode.py --models llama8 --caches static --json out.json`
    python -m bench --list                   every suite and its script

A suite with no standard configuration (`--list`) runs its script with the flags given, or its defaults.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time

import torch

from bench import suites

STANDARD = ["forward", "training", "decode", "flex", "regional"]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                 add_help=False, epilog="Flags not listed here go to the suite's script (one suite); "
                                 "--help after one --suite is the script's help.")
    ap.add_argument("-h", "--help", action="store_true", help="this help")
    ap.add_argument("--suite", action="append", default=[], metavar="NAME",
                    help="suite(s) to run, comma-separated or repeated (default: the standard ones)")
    ap.add_argument("--list", action="store_true", help="list the suites")
    ap.add_argument("--tiny", action="store_true", help="2-layer width-64 models, one case per suite")
    ap.add_argument("--json", help="where the rows go, as they come (default: bench/results/bench_<device>.json)")
    ap.add_argument("--plots", help="where the figures go (default: beside the JSON; none without matplotlib)")
    ap.add_argument("--budget-s", type=float, default=540.0,
                    help="skip the cases that no longer fit, stop the one running when it ends (default 540)")
    return ap


def main(argv: list | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args, extra = parser().parse_known_args(argv)
    if args.list:
        print(suites.listing())
        return 0
    names = [n for s in args.suite for n in s.split(",") if n] or STANDARD
    if args.help and len(names) != 1:
        parser().print_help()
        return 0
    unknown = [n for n in names if n not in suites.SUITES]
    if unknown:
        print(f"python -m bench: no suite {', '.join(unknown)}; the suites:\n{suites.listing()}", file=sys.stderr)
        return 2
    through = _without_suite(argv)
    if extra and len(names) != 1:
        print(f"python -m bench: flags for a script ({' '.join(extra)}) need exactly one --suite", file=sys.stderr)
        return 2
    scripted = [n for n in names if extra or args.help or n not in STANDARD]
    status = 0
    for name in scripted:
        status = suites.run_script(name, through) or status
    standard = [n for n in names if n not in scripted]
    if standard:
        status = run_standard(standard, args, argv) or status
    return status


def _without_suite(argv: list) -> list:
    """The command line minus bench's --suite: what the script gets."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--suite":
            skip = True
        elif not a.startswith("--suite="):
            out.append(a)
    return out


def run_standard(names: list, args, argv: list) -> int:
    from tabulate import tabulate

    from bench import standard
    from bench.timing import Record, versions

    device = "cuda" if torch.cuda.is_available() else "cpu"
    env = environment(device)
    name = f"bench_{_slug(env['device'])}{'_tiny' if args.tiny else ''}.json"
    path = args.json or os.path.join(suites.HERE, "results", name)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    header = {"command": " ".join(["python -m bench", *argv]), "environment": env, "budget_s": args.budget_s,
              "compiler": "Dynamo's eager backend in place of Inductor (--tiny)" if args.tiny else "Inductor"}
    record = Record(path, header)
    chosen = standard.cases(names, args.tiny)
    print(f"{versions()}\n{len(chosen)} cases: " + "; ".join(f"{c.suite} {c.title}" for c in chosen), flush=True)
    start = time.perf_counter()
    run = standard.Run(device, args.tiny, record, start + args.budget_s)
    with standard.without_inductor() if args.tiny else contextlib.nullcontext():
        standard.run_cases(chosen, run)
    rows = standard.summary(record.tables)
    record.header["summary"] = rows
    record.header["wall_s"] = round(time.perf_counter() - start, 1)
    record.save()
    print(f"\n{versions()}" + (" · --tiny: 2-layer models, eager backend for Inductor: a check, not a measurement"
                                if args.tiny else ""))
    print(tabulate(rows, headers="keys", tablefmt="github") if rows else "no rows")
    for kind in ("skipped", "failed"):
        for r in record.tables.get(kind, []):
            print(f"{kind}: {r['suite']} {r['case']}: {r.get('why') or r.get('error')}")
    figures = standard.plot(record.tables, rows, versions(), args.plots or path.removesuffix(".json") + "_plots", path)
    print(f"rows: {path}" + "".join(f"\nplot: {f}" for f in figures))
    return 1 if record.tables.get("failed") else 0


def environment(device: str) -> dict:
    """Device and versions, as the results file's first lines say them."""
    import platform

    import transformers

    env = {"device": torch.cuda.get_device_name() if device == "cuda" else "CPU", "torch": torch.__version__,
           "transformers": transformers.__version__, "python": platform.python_version()}
    if device == "cuda":
        env.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    else:
        env["threads"] = torch.get_num_threads()
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        pass
    return env


def _slug(device: str) -> str:
    """"NVIDIA H100 80GB HBM3" -> "h100"; "CPU" -> "cpu"."""
    words = [w for w in re.findall(r"[a-z0-9]+", device.lower()) if w != "nvidia"]
    return next((w for w in words if re.search(r"[a-z]", w) and re.search(r"\d", w)), words[0] if words else "device")


if __name__ == "__main__":
    sys.exit(main())
