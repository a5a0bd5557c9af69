"""Stage 6, report: one `Site` per softmax — rewritten, or skipped with a reason a person can act on —
printed as a table and serialisable as JSON. It neither matches nor mutates graphs."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

from tabulate import tabulate

from .find import Miss
from .kernel import cuda_kernel


@dataclass(frozen=True)
class Site:
    location: str
    status: str                   # "rewritten" | "skipped" | "failed"
    reason: str = ""
    q: Optional[tuple] = None
    k: Optional[tuple] = None
    v: Optional[tuple] = None
    dtype: str = ""
    scale: Optional[float] = None
    scale_source: str = ""
    mask: str = ""
    dropout: str = ""
    causal: str = ""              # "top-left" (is_causal=True) | "lower-right" (causal_lower_right) | ""
    gqa_groups: int = 1
    kernel: str = ""              # the kernel SDPA picks on CUDA (kernel.py); "" off CUDA
    graph: int = 0
    runtime_verdict: bool = False  # a graph-input mask whose verdict is taken at run time (dispatch.py)
    target: str = ""              # "sdpa" | "flex": what the site calls (plan.py)
    target_reason: str = ""       # why, when it is not plain SDPA (soft-capping, sinks, a sliding window)

    @property
    def rewritten(self) -> bool:
        return self.status == "rewritten"

    @classmethod
    def from_finding(cls, f, graph: int = 0, status: Optional[str] = None, reason: str = "", plan=None) -> "Site":
        if isinstance(f, Miss):
            return cls(f.location, status or "skipped", reason or f.reason, graph=graph)
        d = f.dropout
        drop = "" if d is None else (f"p={d.p:g} (module: when training)" if d.module else
                                     f"p={d.p_hint:g} (a graph input: dynamic=True)" if d.training and d.may_drop
                                     and not isinstance(d.p, (int, float)) else
                                     f"p={d.p:g}" if d.training and d.p else "off")
        return cls(
            f.location, status or "rewritten", reason, q=_dims(f.q_shape), k=_dims(f.k_shape),
            v=_dims(f.v_shape), dtype=str(f.compute_dtype).replace("torch.", ""), scale=f.scale,
            scale_source=", ".join(f.scale_notes) + (f"; then {_cap_text(f)}·tanh (soft-cap)" if f.cap is not None else ""),
            mask=_mask_text(f, plan) + (" + sink logits" if f.sink is not None else ""), dropout=drop, causal=f.causal,
            gqa_groups=f.gqa, kernel=cuda_kernel(f) if plan is None or plan.target == "sdpa" else "flex",
            graph=graph, target=plan.target if plan is not None else "sdpa",
            target_reason=plan.reason if plan is not None else "")


def _cap_text(f) -> str:
    """The soft-cap as a number, with the symbolic scalars (dynamic=True) it also takes by name."""
    parts = [f"{f.cap:g}"] + [f"{'×' if kind == 'mul' else '÷'}{t.name}" for kind, t in f.cap_factors]
    return "".join(parts)


def _dims(shape) -> tuple:
    """Sizes as ints, symbolic ones (dynamic=True) as their names: the report stays JSON."""
    return tuple(d if isinstance(d, int) else str(d) for d in shape)


def _mask_text(f, plan=None) -> str:
    """What the mask is (the verdict), in which form SDPA still gets it, and whether the site pays the
    check for rows with no visible key: a cost a person can see here and remove with empty_rows='kernel'."""
    if f.verdict is None:
        return "none"
    if plan is not None and plan.key_rows:
        band = f" + {f.key_rows.band.kind} BlockMask" if f.key_rows.has_band else ""
        return f"{f.verdict} -> rows along the keys{band}"
    if plan is not None and plan.band:
        return f"{f.verdict} -> BlockMask"
    if f.causal or f.mask_kind == "none":
        return str(f.verdict)
    check = " + empty-row check" if f.empty_rows or f.uniform_rows else ""
    tiles = " + BlockMask of its visible tiles" if plan is not None and plan.dense else ""
    return f"{f.verdict} -> {f.mask_kind}{tiles}{check}"


@dataclass
class Report:
    sites: list = field(default_factory=list)
    notes: list = field(default_factory=list)   # graph-level notes (graph breaks, missing shapes, errors)
    seconds: float = 0.0                        # time spent in the pass (find, fold, emit, lint)

    @property
    def rewritten(self) -> list:
        return [s for s in self.sites if s.rewritten]

    @property
    def skipped(self) -> list:
        return [s for s in self.sites if not s.rewritten]

    def extend(self, other: "Report") -> None:
        self.sites.extend(other.sites)
        self.notes.extend(other.notes)
        self.seconds += other.seconds

    def to_dict(self) -> dict:
        return {
            "sites": [{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(s).items()} for s in self.sites],
            "rewritten": len(self.rewritten),
            "skipped": len(self.skipped),
            "notes": list(self.notes),
            "seconds": self.seconds,
        }

    def table(self) -> str:
        rows = []
        for s in self.sites:
            shapes = "" if s.q is None else f"q{list(s.q)} k{list(s.k)} v{list(s.v)}"
            scale = "" if s.scale is None else f"{s.scale:.4g} ({s.scale_source})"
            gqa = f"{s.gqa_groups}" if s.gqa_groups > 1 else ""
            reason = "; ".join(r for r in (s.target_reason, s.reason) if r)
            rows.append([s.location, s.status, s.target if s.rewritten else "", shapes, s.dtype, scale, s.mask,
                         s.dropout, s.causal, gqa, s.kernel, reason])
        headers = ["site", "status", "target", "shapes", "dtype", "scale", "mask", "dropout", "causal", "gqa",
                   "cuda kernel", "reason"]
        if not any(s.kernel for s in self.sites):
            rows = [r[:10] + r[11:] for r in rows]
            headers = headers[:10] + headers[11:]
        return tabulate(rows, headers=headers, tablefmt="simple")

    def __str__(self) -> str:
        flex = sum(s.target == "flex" for s in self.rewritten)
        to = f"SDPA ({flex} to FlexAttention)" if flex else "SDPA"
        head = f"sdpa_rewrite: {len(self.rewritten)} of {len(self.sites)} softmax sites rewritten to {to}"
        if self.seconds:
            head += f" ({self.seconds * 1e3:.0f} ms)"
        body = [head]
        if self.sites:
            body.append(self.table())
        body.extend(f"note: {n}" for n in self.notes)
        return "\n".join(body)

    __repr__ = __str__
