"""Run-time verdicts for masks the graph cannot see: a mask that reaches the graph as an input.

A layer compiled on its own (regional compile, FSDP2 blocks, a graph break in the layer loop) gets the
causal mask the model built outside it as an input, so the fold (fold.py) cannot prove it causal. For each
such mask, `probes()` copies the few nodes that compute it from the graph's inputs into a small program;
`MaskProbe.kind(args)` runs it on the real inputs and classifies the pattern on the device
(masks.runtime_kind: none / causal / causal lower-right / mask) with one host sync.

Verdicts are cached per input tensor, so every layer that reads one mask pays one classification per
forward. A cached verdict is reused only for the very same tensor object (a weak reference: a new tensor
at a freed address is a new key) at the same version counter (an in-place write is a new key), shape,
strides, dtype and device. Tensors without a version counter (made under `torch.inference_mode`) are never
classified, nor is anything while a CUDA graph is being captured: they keep the mask, which is always exact.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.fx as fx

from .find import Attention, find
from .fold import _RANDOM, Folder
from .masks import mask_nodes, runtime_kind
from .view import is_inplace, meta_value, target_name

DROPPING = ("none", "causal", "causal lower-right")   # the verdicts a variant is compiled for
_CACHE_SIZE = 16
_verdicts: "OrderedDict[tuple, tuple]" = OrderedDict()  # key -> (weak refs to the tensors read, verdict)


@dataclass(frozen=True)
class MaskProbe:
    key: tuple                   # masks.runtime_key: names the mask in every copy of the graph
    program: fx.GraphModule      # the graph's inputs it reads -> the mask node values
    positions: tuple             # which graph inputs the program reads
    roots: tuple                 # the mask nodes, in the program's output order
    scores: object               # the site's Scores (terms, fills, layout) for masks.runtime_kind
    top_shape: tuple
    sites: tuple                 # locations of the sites that read this mask
    input_name: str

    def kind(self, args: Sequence) -> str:
        """The verdict of this mask for these inputs; "mask" when it cannot be taken without a stale risk."""
        inputs = [args[i] for i in self.positions]
        if _capturing() or any(isinstance(x, torch.Tensor) and x.is_inference() for x in inputs):
            return "mask"
        key = (self.program.code, self.key[1], tuple(_identity(x) for x in inputs))
        hit = _verdicts.get(key)
        if hit is not None and all(ref() is x for ref, x in zip(hit[0], inputs) if ref is not None):
            _verdicts.move_to_end(key)
            return hit[1]
        with torch.no_grad():
            values = self.program(*inputs)
            verdict = runtime_kind(self.scores, self.top_shape, dict(zip(self.roots, values)))
        refs = tuple(weakref.ref(x) if isinstance(x, torch.Tensor) else None for x in inputs)
        _verdicts[key] = (refs, verdict)
        while len(_verdicts) > _CACHE_SIZE:
            _verdicts.popitem(last=False)
        return verdict


def probes(gm: fx.GraphModule, example_inputs: Optional[Sequence] = None, fold_buffers: bool = True) -> list:
    """One probe per distinct graph-input mask whose verdict can be taken at run time: static L > 1, no
    gradient into the mask, nothing written into it in the graph, computed from the graph's inputs alone."""
    folder = Folder(gm, example_inputs, fold_buffers=fold_buffers)
    findings = [f for f in find(gm, folder) if isinstance(f, Attention)]
    found = []
    for key, (sc, top_shape, reader, verdict) in folder.input_masks.items():
        sites = tuple(f.location for f in findings if f.verdict is verdict)
        L, S = top_shape[-2:]
        if not sites or not (isinstance(L, int) and isinstance(S, int)) or L == 1:
            continue                     # symbolic lengths; a decode step pays no sync (its mask is cheap)
        if any(f.factors_after for f in sc.fills):
            continue
        roots = tuple(dict.fromkeys(mask_nodes(sc)))
        if any(not isinstance(r, fx.Node) or folder.mutated(r, reader) for r in roots):
            continue
        cone = _cone(roots)
        if cone is None:
            continue
        program, positions = _program(gm, roots, cone)
        found.append(MaskProbe(key, program, positions, roots, sc, top_shape, sites, folder.input_read(roots[0])))
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


def _identity(x) -> tuple:
    if not isinstance(x, torch.Tensor):
        return ("value", x)
    return (id(x), x._version, x.data_ptr(), tuple(x.shape), x.stride(), x.dtype, x.device)


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
