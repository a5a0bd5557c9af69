"""The transformers models the benchmarks run: random weights from a config, sized like the public checkpoints.

    gpt2    GPT-2 124M            12 layers, d768, 12 heads, vocab 50257
    opt     OPT-350M-sized        24 layers, d1024, 16 heads, ffn 4096, post-LN, queries scaled before Q·Kᵀ
    t5      T5-base-sized         12 + 12 layers, d768, 12 heads, d_kv 64, unscaled scores + position bias
    llama   Llama-1B-sized        16 layers, d2048, 32 heads / 8 kv heads (GQA), ffn 8192, vocab 128256
    llama8  Llama-style           8 layers, d2048, 16 heads / 4 kv heads (GQA), ffn 5632, vocab 32000
                                  (the DESIGN notes' reference rows)
    gemma2w Gemma2-like           4 layers, d2048, 16 heads / 8 kv heads, head dim 128, soft-cap 50, window 4096
                                  on every other layer, vocab 32000
    mistralw Mistral-like         4 layers, d2048, 16 heads / 4 kv heads, window 4096, vocab 32000
    gptossw gpt-oss-like          4 layers, d2048, 32 heads / 8 kv heads, head dim 64, sinks, window 128 on every
                                  other layer, 4 experts all active (no bf16 routing flips), vocab 32000
    bloomw  Bloom-like            4 layers, d2048, 16 heads, ALiBi (one row of key offsets per head), vocab 32000

`tiny=True` shrinks every model to 2 layers and width 64 so a script can be checked on a CPU first.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import transformers


@dataclasses.dataclass(frozen=True)
class Entry:
    label: str
    config: Callable[[str, bool], transformers.PretrainedConfig]   # (attn_implementation, tiny) -> config
    seq2seq: bool
    shapes: tuple                                                    # forward (batch, seq) shapes


def _gpt2(impl, tiny):
    size = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=512) if tiny else dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257)
    return transformers.GPT2Config(**size, n_positions=2048, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                                   attn_implementation=impl)


def _opt(impl, tiny):
    size = (dict(num_hidden_layers=2, hidden_size=64, ffn_dim=128, num_attention_heads=4, word_embed_proj_dim=32, vocab_size=512)
            if tiny else dict(num_hidden_layers=24, hidden_size=1024, ffn_dim=4096, num_attention_heads=16,
                              word_embed_proj_dim=512, vocab_size=50272))
    return transformers.OPTConfig(**size, max_position_embeddings=2048, do_layer_norm_before=False,
                                  bos_token_id=2, eos_token_id=2, pad_token_id=1, attn_implementation=impl)


def _t5(impl, tiny):
    size = (dict(num_layers=2, num_decoder_layers=2, d_model=64, d_ff=128, num_heads=4, d_kv=16, vocab_size=512)
            if tiny else dict(num_layers=12, num_decoder_layers=12, d_model=768, d_ff=3072, num_heads=12, d_kv=64,
                              vocab_size=32128))
    return transformers.T5Config(**size, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, attn_implementation=impl)


def _llama(impl, tiny):
    size = (dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                 vocab_size=512)
            if tiny else dict(num_hidden_layers=16, hidden_size=2048, intermediate_size=8192, num_attention_heads=32,
                              num_key_value_heads=8, vocab_size=128256))
    return transformers.LlamaConfig(**size, max_position_embeddings=4096, rope_theta=500000.0, tie_word_embeddings=True,
                                    bos_token_id=1, eos_token_id=2, pad_token_id=0, attn_implementation=impl)


def _llama8(impl, tiny):
    if tiny:
        return _llama(impl, tiny)
    return transformers.LlamaConfig(num_hidden_layers=8, hidden_size=2048, intermediate_size=5632, num_attention_heads=16,
                                    num_key_value_heads=4, vocab_size=32000, max_position_embeddings=8192,
                                    bos_token_id=1, eos_token_id=2, pad_token_id=0, attn_implementation=impl)


def _gemma2w(impl, tiny):
    size = (dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=512, sliding_window=8) if tiny else
            dict(num_hidden_layers=4, hidden_size=2048, intermediate_size=8192, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, vocab_size=32000, sliding_window=4096))
    return transformers.Gemma2Config(**size, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                                     max_position_embeddings=32768, attn_implementation=impl)


def _mistralw(impl, tiny):
    size = (dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, sliding_window=8) if tiny else
            dict(num_hidden_layers=4, hidden_size=2048, intermediate_size=5632, num_attention_heads=16,
                 num_key_value_heads=4, vocab_size=32000, sliding_window=4096))
    return transformers.MistralConfig(**size, max_position_embeddings=32768, attn_implementation=impl)


def _gptossw(impl, tiny):
    size = (dict(num_hidden_layers=2, hidden_size=64, intermediate_size=64, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=512, sliding_window=8) if tiny else
            dict(num_hidden_layers=4, hidden_size=2048, intermediate_size=2048, num_attention_heads=32,
                 num_key_value_heads=8, head_dim=64, vocab_size=32000, sliding_window=128))
    return transformers.GptOssConfig(**size, num_local_experts=4, num_experts_per_tok=4,
                                     max_position_embeddings=32768, attn_implementation=impl)


def _bloomw(impl, tiny):
    size = (dict(n_layer=2, hidden_size=64, n_head=4, vocab_size=512) if tiny else
            dict(n_layer=4, hidden_size=2048, n_head=16, vocab_size=32000))
    return transformers.BloomConfig(**size, attn_implementation=impl)


MODELS = {
    "gpt2": Entry("GPT-2 124M", _gpt2, False, ((1, 1024), (8, 1024))),
    "opt": Entry("OPT-350M-sized", _opt, False, ((1, 1024), (8, 1024))),
    "t5": Entry("T5-base-sized", _t5, True, ((1, 512), (8, 512))),
    "llama": Entry("Llama-1B-sized, GQA 32/8", _llama, False, ((1, 2048), (4, 2048))),
    "llama8": Entry("Llama-style 8 layers, GQA 16/4", _llama8, False, ((4, 2048),)),
    "gemma2w": Entry("Gemma2-like 4 layers, soft-cap 50, window 4096", _gemma2w, False, ((1, 8192),)),
    "mistralw": Entry("Mistral-like 4 layers, window 4096", _mistralw, False, ((1, 16384),)),
    "gptossw": Entry("gpt-oss-like 4 layers, sinks, window 128", _gptossw, False, ((1, 8192),)),
    "bloomw": Entry("Bloom-like 4 layers, ALiBi", _bloomw, False, ((1, 8192),)),
}


def config(name: str, impl: str, tiny: bool = False, **overrides) -> transformers.PretrainedConfig:
    """The entry's config, with `overrides` set on it (a decode benchmark's shorter sliding window)."""
    cfg = MODELS[name].config(impl, tiny)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def build(name: str, impl: str, *, device: str = "cuda", dtype=None, tiny: bool = False, **overrides):
    """The model with random weights (seed 0, so every form of one model has the same weights); fp16 on CUDA,
    fp32 elsewhere unless `dtype` says."""
    dtype = dtype or (torch.float16 if device == "cuda" else torch.float32)
    entry = MODELS[name]
    torch.manual_seed(0)
    cls = transformers.AutoModelForSeq2SeqLM if entry.seq2seq else transformers.AutoModelForCausalLM
    model = cls.from_config(config(name, impl, tiny, **overrides))
    return model.to(device=device, dtype=dtype).eval()


def inputs(name: str, batch: int, seq: int, *, device: str = "cuda", vocab: int = 500, labels: bool = False) -> dict:
    """Token ids for one forward (T5: encoder and decoder both `seq` long); `labels` adds a training target."""
    g = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(3, vocab, (batch, seq), device=device, generator=g)
    out = {"input_ids": ids}
    if MODELS[name].seq2seq:
        out["decoder_input_ids"] = torch.randint(3, vocab, (batch, seq), device=device, generator=g)
    if labels:
        out["labels"] = out.get("decoder_input_ids", ids).clone()
        if MODELS[name].seq2seq:
            del out["decoder_input_ids"]       # T5 shifts the labels right itself
    return out
