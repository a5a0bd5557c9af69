"""Build any transformers architecture offline, by its `model_type`, tiny and with random weights.

One generic shrinking rule (`RULE`) applied to every config and, recursively, to its sub-configs, so a
new architecture needs no code here; `OVERRIDES` holds the few architectures the rule alone cannot build.
Attention is always "eager": the hand-written attention the rewrite is meant to find.
"""
from __future__ import annotations

import torch

# (standard attribute names, tiny value); a config's `attribute_map` redirects a name to its own spelling
RULE = (
    (("num_hidden_layers", "n_layer", "num_layers", "encoder_layers", "decoder_layers"), 2),
    (("hidden_size", "d_model", "n_embd"), 64),
    (("num_attention_heads", "encoder_attention_heads", "decoder_attention_heads", "n_head"), 4),
    (("num_key_value_heads",), 2),
    (("intermediate_size", "ffn_dim", "encoder_ffn_dim", "decoder_ffn_dim", "d_ff", "n_inner"), 128),
    (("head_dim",), 16),
    (("rotary_dim",), 8),                   # partial rotary (GPT-J, CodeGen): half of the 16-wide head
    (("vocab_size",), 128),
    # mixture-of-experts sizes: 256 experts of a 2048-wide MLP would dominate the build time
    (("num_experts", "num_local_experts", "n_routed_experts"), 4),
    (("num_experts_per_tok",), 2),
    (("moe_intermediate_size", "shared_expert_intermediate_size"), 128),
    # vision and audio inputs: a 32x32 image in 8x8 patches, 128 mel frames (64 after the conv stride)
    (("image_size",), 32),
    (("patch_size",), 8),
    (("max_source_positions",), 64),
)
NEVER_NONE = {"num_key_value_heads"}        # None there means "as many as query heads": keep that meaning
MIN_POSITIONS = 64                          # inputs.py's sequences must fit the position tables
TOKENS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 0}
SPECIAL = 3                                 # any other *_token_id / *_token_index that a 128-token vocab cuts off

# model_type -> config kwargs, only where the generic rule cannot build the model
OVERRIDES: dict = {
    "gpt_neo": {"attention_types": [[["global", "local"], 1]]},     # a per-layer pattern sized for 24 layers
}


def tiny_config(model_type: str, **overrides):
    """The config of `model_type`, shrunk by RULE (sub-configs too), with eager attention."""
    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[model_type]
    kwargs = shrink(cls())
    kwargs.update(OVERRIDES.get(model_type, {}))
    kwargs.update(overrides)
    return cls(attn_implementation="eager", **kwargs)


def shrink(config) -> dict:
    """Constructor kwargs that make `config` tiny: RULE on the attributes it has, special token ids in
    range, position tables long enough, and every sub-config rebuilt the same way."""
    from transformers import PreTrainedConfig

    amap = type(config).attribute_map
    kwargs = {}
    for names, value in RULE:
        for name in names:
            real = amap.get(name, name)
            if not hasattr(config, real) or _read_only(type(config), real):
                continue
            current = getattr(config, real)
            if isinstance(current, (list, tuple)) and name in ("image_size", "patch_size"):
                kwargs[real] = type(current)(value for _ in current)
            elif _is_size(current) or (current is None and name not in NEVER_NONE):
                kwargs[real] = value
    for name in ("max_position_embeddings", "n_positions", "max_target_positions"):
        real = amap.get(name, name)
        if _is_size(getattr(config, real, None)) and getattr(config, real) < MIN_POSITIONS:
            kwargs[real] = MIN_POSITIONS
    kwargs.update(_token_ids(config))
    for key in getattr(type(config), "sub_configs", {}) or {}:
        sub = getattr(config, key, None)
        if isinstance(sub, PreTrainedConfig):
            spec = type(config).sub_configs_defaults.get(key)
            base = {k: v for k, v in (spec.init_kwargs if spec else {}).items() if k != "model_type"}
            kwargs[key] = type(sub)(**{**base, **shrink(sub)})
    return kwargs


def _token_ids(config) -> dict:
    ids = {}
    for name in dir(config):
        if not (name.endswith("_token_id") or name.endswith("_token_index")) or name.startswith("_"):
            continue
        try:
            value = getattr(config, name)
        except Exception:
            continue
        if name in TOKENS and (value is not None or name == "pad_token_id"):
            ids[name] = [TOKENS[name]] if isinstance(value, list) else TOKENS[name]
        elif _is_size(value) and value >= SPECIAL:
            ids[name] = SPECIAL
    return ids


def _read_only(cls, name: str) -> bool:
    """A property without a setter is derived from other attributes (Falcon's head_dim): leave it."""
    attr = getattr(cls, name, None)
    return isinstance(attr, property) and attr.fset is None


def _is_size(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def model_class(config):
    """The class to build: a generation head when the config maps to one (seq2seq first for
    encoder-decoders, so whisper/bart are built whole; no causal-LM head on an encoder such as BERT,
    whose config says `is_decoder=False`), else the bare AutoModel."""
    import transformers
    from transformers.models.auto import modeling_auto as auto

    heads = ()
    if getattr(config, "is_encoder_decoder", False):
        heads += (auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES, auto.MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES)
    elif getattr(config, "is_decoder", True):
        heads += (auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,)
    heads += (auto.MODEL_MAPPING_NAMES,)
    for mapping in heads:
        name = mapping.get(config.model_type)
        if isinstance(name, (list, tuple)):
            name = name[0]
        if name and hasattr(transformers, name):
            return getattr(transformers, name)
    raise LookupError(f"no model class maps to model_type {config.model_type!r}")


def build(model_type: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny `model_type` model, random weights (seeded), eval mode."""
    config = tiny_config(model_type, **overrides)
    torch.manual_seed(seed)
    return model_class(config)(config).eval()
