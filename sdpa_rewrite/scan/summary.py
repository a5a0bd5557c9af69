"""Words and numbers about a list of ScanResults: the verdict line, the summary table, the totals and
the skip reasons grouped — shared by the command line and the coverage page, so both say the same."""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from tabulate import tabulate

# a skipped site whose reason names one of these is attention SDPA cannot compute (or no attention at
# all); any other skip is a site the matcher could still learn, and counts against full coverage
INEXPRESSIBLE = (
    "soft-capping",                       # tanh(s/c)·c between Q·Kᵀ and the softmax
    "used outside the ·V product",        # output_attentions, weights returned or reused
    "never used",
    "not attention",
    "softmax over dim",                   # not the key dim
    "not a ·V matmul",
    "mixes the scores across heads",      # talking heads: a learned map over the heads before the softmax
)
TOLERATED = ("ok", "graph break")         # statuses whose numbers agree with eager


def short_reason(reason: str, limit: int = 90) -> str:
    """A reason without its node names, so equal reasons from different layers group together."""
    text = re.sub(r"\s*\((?:[a-z_][a-z0-9_]*_)?\d+\)|\s*\([a-z_][a-z0-9_]*\)(?=\s+(?:lies|is|are|mixes))", "",
                  reason)  # (attn_weights_2), (conv2d_1)
    text = re.sub(r"`([A-Za-z_.]+?)(?:_\d+)?`", r"`\1`", text)                                  # `softmax_3` -> `softmax`
    return text if len(text) <= limit else text[: limit - 3] + "..."


def expressible_misses(result) -> list:
    """Skip reasons of `result` that SDPA could express: sites the matcher missed."""
    return [r for r in result.skipped if not any(k in r for k in INEXPRESSIBLE)]


def fully_rewritten(result) -> bool:
    """Every site SDPA can express was rewritten, and the numbers agree with eager."""
    return result.status in TOLERATED and result.sites > 0 and not expressible_misses(result)


def grouped(reasons) -> str:
    counts = Counter(short_reason(r) for r in reasons)
    return "; ".join(f"{r} (x{n})" if n > 1 else r for r, n in counts.most_common())


def verdict(result) -> str:
    """One line: status, sites rewritten of those found, graphs, error against eager, time."""
    parts = [f"{result.name}: {result.status}"]
    if result.status in ("could not build", "no attention") or (result.status == "error" and not result.graphs):
        parts.append(f"- {result.note}" if result.note else "")
        return " ".join(p for p in parts if p) + f" ({result.seconds:.1f} s)"
    parts.append(f"- {result.rewritten}/{result.sites} attention sites rewritten")
    if result.skipped:
        parts.append(f"({len(result.skipped)} skipped: {grouped(result.skipped)})")
    if result.graphs:
        parts.append(f"in {result.graphs} graph{'s' if result.graphs > 1 else ''},")
    err = "n/a" if result.max_rel_err is None else f"{result.max_rel_err:.2e}"
    parts.append(f"max relative error vs eager {err} (fp32), {result.seconds:.1f} s")
    line = " ".join(parts)
    return f"{line}; {result.note}" if result.note and result.status != "ok" else line


def table(results, fmt: str = "simple", note_limit: int = 120) -> str:
    rows = []
    for r in results:
        err = "" if r.max_rel_err is None else f"{r.max_rel_err:.1e}"
        note = r.note if len(r.note) <= note_limit else r.note[: note_limit - 3] + "..."
        rows.append([r.name, r.status, r.sites, r.rewritten, grouped(r.skipped), err, note])
    if fmt == "github":                   # a '|' inside a cell would end it
        rows = [[c.replace("|", "\\|") if isinstance(c, str) else c for c in row] for row in rows]
    headers = ["model_type", "status", "sites found", "rewritten", "skipped (reason)", "max rel err", "note"]
    return tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)


@dataclass
class Totals:
    attempted: int
    built: int
    with_attention: int
    fully_rewritten: int
    sites_found: int
    sites_rewritten: int
    sites_missed: int
    wrong_results: int
    graph_breaks: int
    errors: int
    no_attention: int
    not_built: int
    seconds: float

    @classmethod
    def of(cls, results) -> "Totals":
        status = Counter(r.status for r in results)
        return cls(
            attempted=len(results), built=len(results) - status["could not build"],
            with_attention=sum(1 for r in results if r.sites > 0),
            fully_rewritten=sum(1 for r in results if fully_rewritten(r)),
            sites_found=sum(r.sites for r in results), sites_rewritten=sum(r.rewritten for r in results),
            sites_missed=sum(len(expressible_misses(r)) for r in results),
            wrong_results=status["wrong result"], graph_breaks=status["graph break"], errors=status["error"],
            no_attention=status["no attention"], not_built=status["could not build"],
            seconds=round(sum(r.seconds for r in results), 1))

    def lines(self) -> list:
        return [
            f"architectures attempted: {self.attempted}",
            f"built and run eagerly: {self.built} (could not build: {self.not_built})",
            f"with attention: {self.with_attention} (no attention softmax: {self.no_attention})",
            f"every expressible site rewritten, numbers equal to eager: {self.fully_rewritten} of {self.with_attention}",
            f"sites rewritten / sites found: {self.sites_rewritten} / {self.sites_found}",
            f"sites SDPA could express left eager: {self.sites_missed}",
            f"wrong results: {self.wrong_results}",
            f"graph breaks: {self.graph_breaks}",
            f"errors: {self.errors}",
            f"time: {self.seconds:.0f} s",
        ]


def common_reasons(results, top: int = 15) -> list:
    """(shortened reason, sites, architectures) for the most frequent skip reasons."""
    sites, archs = Counter(), Counter()
    for r in results:
        shortened = [short_reason(x) for x in r.skipped]
        sites.update(shortened)
        archs.update(set(shortened))
    return [(reason, n, archs[reason]) for reason, n in sites.most_common(top)]
