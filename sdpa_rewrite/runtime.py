"""Run-time verdicts for masks the graph cannot see: a mask that reaches the graph as an input.

A layer compiled on its own (regional compile, FSDP2 blocks, a graph break in the layer loop) gets the
causal mask the model built outside it as an input, so the fold (fold.py) cannot prove it causal. For each
such mask, `probes()` copies the few nodes that compute it from the graph's inputs into a small program;
`MaskProbe.kind(args)` runs it on the real inputs and classifies the pattern on the device
(`runtime_kind`: none / causal / causal lower-right / mask) with one host sync.

Verdicts are cached per input tensor, so every layer that reads one mask pays one classification per
forward. A cached verdict is reused only for the very same tensor object (a weak reference: a new tensor
at a freed address is a new key) at the same version counter (an in-place write is a new key), shape,
strides, dtype and device. A write through `.data` bypasses the version counter and is not seen (code that
rewrites its mask that way passes runtime_verdicts=False). Tensors without a version counter (made under
`torch.inference_mode`) are never classified, nor is anything while a CUDA graph is being captured: they keep
the mask, which is always exact.
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.fx as fx

from .find import Attention, find
from .fold import _RANDOM, Folder
from .masks import MaskForm, mask_form, visible_pattern
from .rewrite import snapshot
from .view import hashable, is_inplace, meta_value, same_batch, target_name

_CACHE_SIZE = 16
_verdicts: "OrderedDict[tuple, tuple]" = OrderedDict()  # key -> (weak refs to the tensors read, verdict)


@dataclass(frozen=True)
class MaskProbe:
    key: tuple                   # masks.runtime_key: names the mask in every copy of the graph
    program: fx.GraphModule      # the graph's inputs it reads -> the mask's tensors, in the form's slot order
    positions: tuple             # which graph inputs the program reads
    form: MaskForm               # how those tensors make the mask
    top_shape: tuple
    sites: tuple                 # locations of the sites that read this mask
    input_name: str

    def kind(self, args: Sequence) -> str:
        """The verdict of this mask for these inputs; "mask" when it cannot be taken without a stale risk."""
        inputs = [args[i] for i in self.positions]
        if _capturing() or any(isinstance(x, torch.Tensor) and (x.is_inference() or _traced(x)) for x in inputs):
            return "mask"
        key = (self.program.code, self.form, self.top_shape, tuple(_identity(x) for x in inputs))
        hit = _verdicts.get(key)
        if hit is not None and all(ref() is x for ref, x in zip(hit[0], inputs) if ref is not None):
            _verdicts.move_to_end(key)
            return hit[1]
        try:
            with torch.no_grad():
                values = self.program(*inputs)
                verdict = runtime_kind(self.form, self.top_shape, values)
        except Exception as e:           # keeping the mask is always exact: a failed check never fails the model
            _warn_once(f"sdpa_rewrite: a run-time mask check failed ({type(e).__name__}: {e}); the mask is kept")
            verdict = "mask"
        refs = tuple(weakref.ref(x) if isinstance(x, torch.Tensor) else None for x in inputs)
        _verdicts[key] = (refs, verdict)
        while len(_verdicts) > _CACHE_SIZE:
            _verdicts.popitem(last=False)
        return verdict


def _traced(x: torch.Tensor) -> bool:
    """A value without data: the graph is being traced, not run (DDPOptimizer propagates fake tensors through the
    compiled pieces of a split graph; an outer make_fx or export traces through them). The general graph serves.
    Every such value is a tensor subclass (FakeTensor, FunctionalTensor, ...)."""
    return type(x) not in (torch.Tensor, torch.nn.Parameter)


def runtime_kind(form: MaskForm, top_shape: tuple, values: Sequence) -> str:
    """none, causal, causal lower-right or mask: `masks.classify`'s tests for these three patterns, computed on the
    values' device (compiled for a large mask) and read back with one host sync."""
    if not values or not all(isinstance(v, torch.Tensor) for v in values):
        return "mask"
    large = max(v.numel() for v in values) >= _COMPILE_FROM
    flags = _flags_function(form, top_shape, large)(*values).tolist()
    L, S = top_shape[-2:]
    if not flags[0]:
        return "mask"
    if flags[1]:
        return "none"
    if flags[2]:
        return "causal"
    return "causal lower-right" if L < S and flags[3] else "mask"


def pattern_flags(form: MaskForm, top_shape: tuple, *values) -> torch.Tensor:
    """[is a 0 / masking pattern, all visible, top-left causal, lower-right causal] as one bool tensor, no sync.

    Both causal patterns make visibility a function of j - i alone (constant along each diagonal), and such a
    matrix is fixed by its first row and first column. So "causal" is: every element equals its upper-left
    neighbour, every row sees key 0, and the first row is the pattern's first row (lower-right: exact for L <= S,
    the only case runtime_kind reads it). Every reduction is taken over the same three pieces (the block past the
    first row and column, the first row, the first column), so compiled they are one pass over the mask: a mask
    that the model has just built is read from memory once."""
    L, S = top_shape[-2:]
    pattern = visible_pattern(form, top_shape, values)
    if pattern is None:
        return torch.zeros(4, dtype=torch.bool, device=values[0].device)
    visible, is_mask = pattern
    visible = torch.broadcast_to(visible, tuple(visible.shape[:-2]) + (L, S)) if visible.dim() >= 2 else \
        torch.broadcast_to(visible, (L, S))
    is_mask = torch.broadcast_to(is_mask, visible.shape)
    diagonal = (visible[..., 1:, 1:] == visible[..., :-1, :-1]).all() & visible[..., :, 0].all()
    first_row, keys = visible[..., 0, :], torch.arange(S, device=visible.device)
    return torch.stack([_all(is_mask), _all(visible), diagonal & (first_row == (keys <= 0)).all(),
                        diagonal & (first_row == (keys <= S - L)).all()])


def _all(x: torch.Tensor) -> torch.Tensor:
    """x.all(), read as the block past the first row and column, the first row and the first column."""
    return x[..., 1:, 1:].all() & x[..., 0, :].all() & x[..., :, 0].all()


_compiled: dict = {}
_COMPILE_FROM = 2 ** 20        # mask elements: from here the eager passes cost more than a compiled call (CPU:
                               # 7.3 against 0.3 ms at 2048² in the cache); below, eager costs less than compiling


def _flags_function(form: MaskForm, top_shape: tuple, compiled: bool):
    """`pattern_flags` for this form; for a large mask compiled (Inductor fuses its passes over the mask into one),
    once per form and shape, shared by every graph that reads such a mask. Eager for small masks,
    and where compiling fails."""
    eager = functools.partial(pattern_flags, form, top_shape)
    if not compiled:
        return eager
    key = (form, top_shape)
    if key not in _compiled:
        fn = torch.compile(eager, dynamic=False)

        def guarded(*values):
            try:
                return fn(*values)
            except Exception:            # the compiled check is only a speed-up: the eager one is the same test
                _compiled[key] = eager
                return eager(*values)

        _compiled[key] = guarded
    return _compiled[key]


def probes_for(report, owner: fx.GraphModule, graph: fx.Graph, example_inputs: Optional[Sequence] = None,
               fold_buffers: bool = True, flex: bool = True) -> list:
    """The probes of `graph` (unrewritten; `owner` holds its submodules) whose rewrite gave `report`, with the
    report's sites marked and a note saying what the run-time verdict costs. Nothing is searched without input masks."""
    if not any(s.mask.startswith("input mask") for s in report.rewritten):
        return []
    found = probes(fx.GraphModule(owner, snapshot(graph)), example_inputs, fold_buffers, flex)
    sites = {loc for p in found for loc in p.sites}
    if not sites:
        return found
    report.sites[:] = [dataclasses.replace(s, mask=s.mask.replace(")", "; verdict taken at run time)", 1),
                                           runtime_verdict=True) if s.location in sites else s for s in report.sites]
    report.notes.append(
        f"{len(sites)} sites read a mask that is a graph input ({', '.join(sorted({p.input_name for p in found}))}): "
        "its verdict is taken at run time, once per distinct mask tensor (one host sync), and a causal or "
        "all-visible mask reaches SDPA as is_causal or no mask" +
        ("; a causal mask beside rows along the keys (ALiBi) reaches flex as the rows and a BlockMask"
         if any(p.form.rows for p in found) else "") + ". options={'runtime_verdicts': False} turns it off")
    return found


def probes(gm: fx.GraphModule, example_inputs: Optional[Sequence] = None, fold_buffers: bool = True,
           flex: bool = True) -> list:
    """One probe per distinct graph-input mask whose verdict can be taken at run time: static L > 1, no
    gradient into the mask, nothing written into it in the graph, computed from the graph's inputs alone. The rest
    of a mask split from its rows (key_rows.py) only where flex may run: the split serves nothing else."""
    folder = Folder(gm, example_inputs, fold_buffers=fold_buffers)
    findings = [f for f in find(gm, folder) if isinstance(f, Attention)]
    found = []
    for key, (sc, top_shape, reader, verdict, rows) in folder.input_masks.items():
        if rows and not flex:
            continue
        sites = tuple(f.location for f in findings if f.verdict is verdict)
        L, S = top_shape[-2:]
        if not sites or not (isinstance(L, int) and isinstance(S, int)) or L == 1:
            continue                     # symbolic lengths; a decode step pays no sync (its mask is cheap)
        if any(f.factors_after for f in sc.fills):
            continue
        form, roots = mask_form(sc, rows)
        top_shape = hashable(top_shape)    # a symbolic batch by name: only L and S are read, unless a term regroups
        if not all(isinstance(d, int) for d in top_shape) and \
                not all(same_batch(at, top_shape) for at in [t[3] for t in form.terms] + [f[4] for f in form.fills]):
            continue
        if any(not isinstance(r, fx.Node) or folder.mutated(r, reader) for r in roots):
            continue
        cone = _cone(roots)
        if cone is None:
            continue
        program, positions = _program(gm, roots, cone)
        found.append(MaskProbe(key, program, positions, form, top_shape, sites, folder.input_read(roots[0])))
    return found


def _cone(roots: tuple) -> Optional[list]:
    """The nodes the mask is computed from, back to graph inputs; None if any is not a pure tensor function
    of inputs (a parameter, a module call, an in-place or random op, a value that requires grad)."""
    seen, stack = set(), list(roots)
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        value = meta_value(n)
        if isinstance(value, torch.Tensor) and value.requires_grad:
            return None
        if n.op == "placeholder":
            continue
        if n.op not in ("call_function", "call_method") or is_inplace(n) or any(r in target_name(n) for r in _RANDOM):
            return None
        stack.extend(n.all_input_nodes)
    return [n for n in roots[0].graph.nodes if n in seen]


def _program(gm: fx.GraphModule, roots: tuple, cone: list) -> tuple:
    g = fx.Graph()
    env, positions = {}, []
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for n in cone:
        if n.op == "placeholder":
            env[n] = g.placeholder(n.name)
            positions.append(placeholders.index(n))
        else:
            env[n] = g.node_copy(n, lambda a: env[a])
    g.output(tuple(env[r] for r in roots))
    return fx.GraphModule(torch.nn.Module(), g), tuple(positions)


_warned: set = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)


def _identity(x) -> tuple:
    if not isinstance(x, torch.Tensor):
        return ("value", x)
    return (id(x), x._version, x.data_ptr(), tuple(x.shape), x.stride(), x.dtype, x.device)


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
