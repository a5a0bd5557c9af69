"""Dummy inputs for a tiny transformers model, decided in one place from its forward signature and config.

Token ids avoid the special ids configs.py pins to 0..3, so no sequence ends early or holds an image
token; `padded` pads the first row of the batch on one side, so the mask is real input data.
"""
from __future__ import annotations

import inspect
from typing import Optional

import torch

BATCH, LENGTH, PAD = 2, 16, 5
FIRST_ID = 4                 # ids 0..3 are the special tokens configs.py sets
AUDIO_SAMPLES = 4000         # raw waveform models (wav2vec2 family): a few conv frames
IMAGE_TOKEN = ("image_token_id", "image_token_index")


def dummy_inputs(model: torch.nn.Module, padded: Optional[str] = None, seed: int = 0) -> dict:
    """Keyword inputs for `model(**inputs)`: input_ids, decoder_input_ids, pixel_values, input_features,
    input_values and attention_mask (only when `padded` is "left" or "right"), as the signature takes them."""
    if padded not in (None, "left", "right"):
        raise ValueError(f"padded must be None, 'left' or 'right', not {padded!r}")
    config = model.config
    params = inspect.signature(model.forward).parameters
    g = torch.Generator().manual_seed(seed)
    inputs = {}
    vocab = _first(config, "vocab_size")
    if "input_ids" in params and vocab:
        inputs["input_ids"] = torch.randint(FIRST_ID, vocab, (BATCH, LENGTH), generator=g)
        if padded and "attention_mask" in params:
            inputs["attention_mask"] = padding_mask(padded)
    if "decoder_input_ids" in params and getattr(config, "is_encoder_decoder", False) and vocab:
        inputs["decoder_input_ids"] = torch.randint(FIRST_ID, vocab, (BATCH, LENGTH), generator=g)
    image = _first(config, "image_size")
    if "pixel_values" in params and image and not _image_tokens(config, inputs):
        side = image if isinstance(image, (list, tuple)) else (image, image)
        channels = _first(config, "num_channels") or 3
        inputs["pixel_values"] = torch.randn(BATCH, channels, *side[:2], generator=g)
    mels = _first(config, "num_mel_bins")
    if "input_features" in params and mels:
        frames = 2 * (_first(config, "max_source_positions") or LENGTH)   # whisper: conv stride 2, exact length
        inputs["input_features"] = torch.randn(BATCH, mels, frames, generator=g)
    if "input_values" in params:
        inputs["input_values"] = torch.randn(BATCH, AUDIO_SAMPLES, generator=g)
    if "use_cache" in params:
        inputs["use_cache"] = False          # one forward pass: no cache objects in the outputs
    return inputs


def _image_tokens(config, inputs: dict) -> bool:
    """A vision-language model places image features at image tokens, as many per image as its own
    processor decides: run it on text only (its vision tower is scanned as its own model_type)."""
    return "input_ids" in inputs and any(_first(config, name) is not None for name in IMAGE_TOKEN)


def padding_mask(side: str, batch: int = BATCH, length: int = LENGTH) -> torch.Tensor:
    """Ones, except the first row's PAD positions on `side`."""
    mask = torch.ones(batch, length, dtype=torch.long)
    if side == "left":
        mask[0, :PAD] = 0
    else:
        mask[0, -PAD:] = 0
    return mask


def _first(config, name: str):
    """`name` from the config or, for composite models, the first sub-config that has it."""
    value = getattr(config, name, None)
    if value is not None:
        return value
    for key in getattr(type(config), "sub_configs", {}) or {}:
        sub = getattr(config, key, None)
        value = getattr(sub, name, None) if sub is not None else None
        if value is not None:
            return value
    return None
