"""Build any transformers architecture offline, by its `model_type`, tiny and with random weights.

One generic shrinking rule (`RULE`) applied to every config and, recursively, to its sub-configs, so a
new architecture needs no code here; `OVERRIDES` holds the few architectures the rule alone cannot build.
Attention is always "eager": the hand-written attention the rewrite is meant to find.
"""
from __future__ import annotations

import torch

HEADS, HEAD_DIM = 4, 16                     # hidden 64 = 4 heads of 16

# (standard attribute names, tiny value); a config's `attribute_map` redirects a name to its own spelling
RULE = (
    (("num_hidden_layers", "n_layer", "num_layers", "encoder_layers", "decoder_layers"), 2),
    (("hidden_size", "d_model", "n_embd"), 64),
    (("num_attention_heads", "encoder_attention_heads", "decoder_attention_heads", "n_head"), HEADS),
    (("num_key_value_heads",), 2),
    (("intermediate_size", "ffn_dim", "encoder_ffn_dim", "decoder_ffn_dim", "d_ff", "n_inner"), 128),
    (("head_dim",), HEAD_DIM),
    (("rotary_dim",), 8),                   # partial rotary (GPT-J, CodeGen): half of the 16-wide head
    # multi-head latent attention (DeepSeek-V2/V3, MiniCPM3): the latent ranks and split head dims
    (("qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"), 16),
    (("kv_lora_rank", "q_lora_rank"), 32),
    (("vocab_size",), 128),
    # mixture-of-experts sizes: 256 experts of a 2048-wide MLP would dominate the build time
    (("num_experts", "num_local_experts", "n_routed_experts"), 4),
    (("num_experts_per_tok",), 2),
    (("n_group", "topk_group"), 1),         # expert groups must divide the 4 experts
    (("moe_intermediate_size", "shared_expert_intermediate_size"), 128),
    # vision and audio inputs: a 32x32 image in 8x8 patches, 128 mel frames (64 after the conv stride)
    (("image_size",), 32),
    (("patch_size",), 8),
    (("max_source_positions",), 64),
)
NEVER_NONE = {"num_key_value_heads", "q_lora_rank"}   # None means "as many as query heads", "no q latent"
MROPE = [16, 24, 24]                        # Qwen2-VL's multimodal rotary sections, when the config names none
MIN_POSITIONS = 64                          # inputs.py's sequences must fit the position tables
TOKENS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 0}
SPECIAL = 3                                 # any other *_token_id / *_token_index that a 128-token vocab cuts off

# model_type -> config kwargs, only where the generic rule cannot build the model
OVERRIDES: dict = {
    "gpt_neo": {"attention_types": [[["global", "local"], 1]]},     # a per-layer pattern sized for 24 layers
    "mistral4": {"head_dim": 32},           # rotary over head_dim * rope/(nope + rope): head_dim is nope + rope
}


def tiny_config(model_type: str, **overrides):
    """The config of `model_type`, shrunk by RULE (sub-configs too), with eager attention."""
    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[model_type]
    kwargs = shrink(cls())
    kwargs.update(OVERRIDES.get(model_type, {}))
    kwargs.update(overrides)
    return construct(cls, kwargs)


def _without_gqa(kwargs: dict) -> dict:
    return {k: HEADS if k == "num_key_value_heads" else v for k, v in kwargs.items()}


def shrink(config) -> dict:
    """Constructor kwargs that make `config` tiny: RULE on the attributes it has, special token ids in
    range, position tables long enough, and every sub-config rebuilt the same way."""
    from transformers import PreTrainedConfig

    amap = type(config).attribute_map
    kwargs = {}
    for names, value in RULE:
        for name in names:
            real = amap.get(name, name)
            current = _read(config, real)
            if current is _MISSING or _read_only(type(config), real):
                continue
            if isinstance(current, (list, tuple)) and name in ("image_size", "patch_size"):
                kwargs[real] = type(current)(value for _ in current)
            elif _is_size(current) or (current is None and name not in NEVER_NONE):
                kwargs[real] = value
    if _is_size(_read(config, "kv_lora_rank")) and "num_key_value_heads" in kwargs:
        kwargs = _without_gqa(kwargs)           # latent attention expands k/v to every query head
    for name in ("max_position_embeddings", "n_positions", "max_target_positions"):
        real = amap.get(name, name)
        if _is_size(getattr(config, real, None)) and getattr(config, real) < MIN_POSITIONS:
            kwargs[real] = MIN_POSITIONS
    kwargs.update(_token_ids(config))
    rope = _read(config, "rope_parameters")
    if isinstance(rope, dict) and ("mrope_section" in rope or "mrope_section" in _rope_extras(config)):
        sections = _sections(rope.get("mrope_section") or MROPE, HEAD_DIM // 2)
        kwargs["rope_parameters"] = {**rope, "mrope_section": sections}
    for key in getattr(type(config), "sub_configs", {}) or {}:
        sub = getattr(config, key, None)
        if isinstance(sub, PreTrainedConfig):
            spec = type(config).sub_configs_defaults.get(key)
            base = {k: v for k, v in (spec.init_kwargs if spec else {}).items() if k != "model_type"}
            kwargs[key] = construct(type(sub), {**base, **shrink(sub)})
    return kwargs


def construct(cls, kwargs: dict):
    """cls(**kwargs) with eager attention; a config whose validation rejects grouped-query attention is
    built again with as many k/v heads as query heads."""
    try:
        return cls(attn_implementation="eager", **kwargs)
    except Exception:  # huggingface_hub's StrictDataclassClassValidationError, or a ValueError
        mha = _without_gqa(kwargs)
        if mha == kwargs:
            raise
        return cls(attn_implementation="eager", **mha)


def _token_ids(config) -> dict:
    ids = {}
    for name in dir(config):
        if not name.endswith(("_token_id", "_token_index")) or name.startswith("_"):
            continue
        value = _read(config, name)
        if value is _MISSING:
            continue
        if name in TOKENS and (value is not None or name == "pad_token_id"):
            ids[name] = [TOKENS[name]] if isinstance(value, list) else TOKENS[name]
        elif _is_size(value) and value >= SPECIAL:
            ids[name] = SPECIAL
    return ids


_MISSING = object()


def _read(config, name: str):
    """config.name, or _MISSING; a per-layer attribute of a heterogeneous config reads its global value."""
    try:
        return getattr(config, name)
    except AttributeError:
        return _MISSING
    except RuntimeError:  # AmbiguousGlobalPerLayerAttributeError: a per-layer attribute of a heterogeneous config
        global_value = getattr(config, "_getattr_without_heterogeneous_validation", None)
        return global_value(name) if global_value else _MISSING


def _rope_extras(config) -> set:
    return set(getattr(type(config), "ignore_keys_at_rope_validation", ()) or ())


def _sections(sections: list, total: int) -> list:
    """Multimodal rotary sections (Qwen2-VL's mrope_section) sum to half the head dim: scale them to `total`."""
    scaled = [max(1, round(x * total / sum(sections))) for x in sections]
    scaled[-1] += total - sum(scaled)
    return scaled


def _read_only(cls, name: str) -> bool:
    """A property without a setter is derived from other attributes (Falcon's head_dim): leave it."""
    attr = getattr(cls, name, None)
    return isinstance(attr, property) and attr.fset is None


def _is_size(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def instantiate(config) -> torch.nn.Module:
    """The model to scan: a generation head when the config maps to one (seq2seq first for encoder-decoders,
    so whisper/bart are built whole; no causal-LM head on an encoder such as BERT, whose config says
    `is_decoder=False`), else the bare AutoModel, else a model class of the config's own package that
    declares this config class (sub-models such as a text or vision tower)."""
    import transformers

    autos = []
    if getattr(config, "is_encoder_decoder", False):
        autos += [transformers.AutoModelForSeq2SeqLM, transformers.AutoModelForSpeechSeq2Seq]
    elif getattr(config, "is_decoder", True):
        autos += [transformers.AutoModelForCausalLM]
    autos += [transformers.AutoModel]
    for auto in autos:
        try:
            return auto.from_config(config)
        except ValueError as e:
            if "Unrecognized configuration class" not in str(e):
                raise
    for cls in _declared_models(type(config)):
        return cls(config)
    raise LookupError(f"no model class maps to model_type {config.model_type!r}")


def _declared_models(config_cls) -> list:
    """Classes of the config's modeling module whose `config_class` is exactly `config_cls`, those named
    ...Model first; the abstract ...PreTrainedModel is left out."""
    import importlib
    import inspect

    package, _, module = config_cls.__module__.rpartition(".")
    try:
        modeling = importlib.import_module(f"{package}.{module.replace('configuration_', 'modeling_', 1)}")
    except ImportError:
        return []
    found = [c for _, c in inspect.getmembers(modeling, inspect.isclass)
             if c.__module__ == modeling.__name__ and getattr(c, "config_class", None) is config_cls
             and not c.__name__.endswith("PreTrainedModel")]
    return sorted(found, key=lambda c: (not c.__name__.endswith("Model"), c.__name__))


def build(model_type: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny `model_type` model, random weights (seeded), eval mode."""
    config = tiny_config(model_type, **overrides)
    torch.manual_seed(seed)
    return instantiate(config).eval()
