"""Which fused kernel SDPA will pick for a rewritten site on CUDA — asked of torch, not guessed.

`torch._fused_sdp_choice` is the dispatcher SDPA itself runs; it is asked with stand-in tensors of the
site's dtype, heads, lengths and mask form (batch 1). When it is not flash, torch's
`can_use_flash_attention(..., debug=True)` warning says why, and that reason goes in the report.
On a graph whose tensors are not on CUDA nothing is asked and the answer is "".
"""
from __future__ import annotations

import warnings

import torch

_NAMES = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}


def cuda_kernel(att) -> str:
    """'flash', 'cudnn', 'efficient (flash: <why not>)', ... for an `Attention` on CUDA, else ''."""
    device = getattr(_meta(att.q.node), "device", None)
    if device is None or device.type != "cuda" or not torch.cuda.is_available():
        return ""
    try:
        sizes = _hints((*att.top_shape[-2:], att.q_shape[-1], att.v_shape[-1], *att.batch[-1:]))
    except Exception as e:  # the report must never fail a rewrite
        return f"unknown ({type(e).__name__})"
    if sizes is None:
        return ""
    drop = att.dropout is not None and att.dropout.may_drop and att.dropout.p_hint
    dt = dtype_at_call(att, device)
    key = (device, sizes, att.gqa, dt, att.mask_kind, att.causal, drop)
    if key not in _ASKED:                   # every layer of a model asks the same question: ask torch once
        try:
            _ASKED[key] = _ask(att, device, sizes, dt)
        except Exception as e:
            _ASKED[key] = f"unknown ({type(e).__name__})"
    return _ASKED[key]


def _hints(sizes: tuple):
    """Plain ints for the stand-ins; a symbolic size (dynamic shapes) by the value this compile traced with.
    None when a size has no such value (data-dependent)."""
    out = []
    for s in sizes:
        if isinstance(s, torch.SymInt):
            s = s.node.hint
        if not isinstance(s, int):
            return None
        out.append(s)
    return tuple(out)


_ASKED: dict = {}


def dtype_at_call(att, device: torch.device) -> torch.dtype:
    """The dtype SDPA runs in: autocast, when on for the device (in the graph, else around the compile), casts an
    fp32 call to its lower precision, as it does the matmuls of eager attention (Llama's RoPE leaves q in fp32)."""
    if att.compute_dtype != torch.float32:
        return att.compute_dtype
    state = None
    for node in att.output.graph.nodes:        # autocast regions Dynamo kept in the graph, up to the site
        if node is att.output:
            break
        if node.op == "call_function" and node.target is torch.amp.autocast_mode._enter_autocast:
            state = (state, node, node.args)
        elif node.op == "call_function" and node.target is torch.amp.autocast_mode._exit_autocast and state:
            state = state[0]
    while state is not None and state[2][0] != device.type:
        state = state[0]
    if state is not None:
        args = state[2]
        enabled = args[2] if len(args) > 2 else True
        low = args[1] if len(args) > 1 and args[1] is not None else torch.get_autocast_dtype(device.type)
    else:
        enabled, low = torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type)
    return low if enabled else att.compute_dtype


def _ask(att, device, sizes: tuple, dt: torch.dtype) -> str:
    L, S, E, Ev, *last = sizes
    heads = last[0] if len(att.batch) >= 2 else 1
    kv_heads = heads // att.gqa
    q = torch.empty(1, heads, L, E, device=device, dtype=dt)
    k = torch.empty(1, kv_heads, S, E, device=device, dtype=dt)
    v = torch.empty(1, kv_heads, S, Ev, device=device, dtype=dt)
    mask, causal = None, att.causal == "top-left"
    if att.causal == "lower-right":
        from torch.backends.cuda import SDPAParams, can_use_flash_attention

        flash = att.gqa == 1 and E % 8 == 0 and can_use_flash_attention(SDPAParams(q, k, v, None, 0.0, False, False))
        return "flash (lower-right)" if flash else "explicit mask: " + _choice(q, k, v, _bool_mask(L, S, device), False, att)
    if att.mask_kind != "none":
        mask = _bool_mask(L, S, device) if att.mask_kind.startswith("bool") else torch.zeros(1, 1, L, S, device=device, dtype=dt)
    return _choice(q, k, v, mask, causal, att)


def _choice(q, k, v, mask, causal, att) -> str:
    drop = att.dropout.p_hint if att.dropout is not None and att.dropout.may_drop else 0.0
    name = _NAMES.get(int(torch._fused_sdp_choice(q, k, v, attn_mask=mask, dropout_p=drop, is_causal=causal,
                                                  enable_gqa=att.gqa > 1)), "?")
    if name in ("flash", "cudnn"):
        return name
    from torch.backends.cuda import SDPAParams, can_use_flash_attention

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        can_use_flash_attention(SDPAParams(q, k, v, mask, drop, causal, att.gqa > 1), True)
    why = [str(w.message).split(" (Triggered")[0] for w in caught if "not used because" not in str(w.message)]
    return f"{name} (flash: {why[-1]})" if why else name


def _bool_mask(L: int, S: int, device) -> torch.Tensor:
    return torch.ones(1, 1, L, S, device=device, dtype=torch.bool)


def _meta(node):
    from .view import meta_value

    return meta_value(node)
