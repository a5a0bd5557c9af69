"""Bloom (huggingface/transformers: models/bloom/modeling_bloom.py, BloomAttention.forward) and the 3-D
baddbmm spellings it shares with diffusers.

- 5.x: `alibi.baddbmm(batch1=q, batch2=kᵀ, beta=1.0, alpha=1/sqrt(d))` on (B*H, L, E) tensors, viewed to
  (B, H, L, S), + additive mask, `softmax(dim=-1, dtype=float32).to(q.dtype)`, dropout, view back, `torch.bmm`.
- 4.2x: the same baddbmm, then `torch.masked_fill(scores, bool_mask, finfo(scores.dtype).min)`.
- diffusers models/attention_processor.py Attention.get_attention_scores: `torch.baddbmm(empty, q, kᵀ,
  beta=0, alpha=scale)` without a mask, `baddbmm(mask, q, kᵀ, beta=1, alpha=scale)` with one.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import Entry, Expect, hidden, padding_mask, qkv

B, L, D, H, E = 2, 8, 64, 4, 16


def causal_padding_mask(b=B, l=L, s=L):
    m = padding_mask(b, l, s)
    return m.masked_fill(torch.ones(l, s, dtype=torch.bool).triu(1), torch.finfo(torch.float32).min)


def causal_padding_bool(b=B, l=L, s=L):
    """Bloom 4.2x `_prepare_attn_mask`: True = masked (causal upper triangle or padded key)."""
    return causal_padding_mask(b, l, s) < 0


def alibi_tensor(b=B, h=H, s=L):
    """build_alibi_tensor for an all-ones attention mask: (b*h, 1, s), slopes 2^(-8i/h)."""
    slopes = torch.tensor([2.0 ** (-8.0 * (i + 1) / h) for i in range(h)])
    arange = torch.arange(s, dtype=torch.float32)[None, None, :].expand(b, 1, s)
    return (slopes[None, :, None] * arange).reshape(b * h, 1, s)


class BloomAttention(nn.Module):
    def __init__(self, hidden_size=D, n_head=H, attention_dropout=0.0, legacy_masked_fill=False):
        super().__init__()
        self.hidden_size, self.num_heads = hidden_size, n_head
        self.head_dim = hidden_size // n_head
        self.inv_norm_factor = 1.0 / math.sqrt(self.head_dim)
        self.beta = 1.0
        self.legacy_masked_fill = legacy_masked_fill
        self.query_key_value = nn.Linear(hidden_size, 3 * hidden_size, bias=True)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.attention_dropout = nn.Dropout(attention_dropout)

    def _reshape(self, fused_qkv):
        batch_size, seq_length = fused_qkv.shape[0], fused_qkv.shape[1]
        fused_qkv = fused_qkv.view(batch_size, seq_length, self.num_heads, 3, self.head_dim)
        query_layer = fused_qkv[..., 0, :].transpose(1, 2)
        key_layer = fused_qkv[..., 1, :].transpose(1, 2)
        value_layer = fused_qkv[..., 2, :].transpose(1, 2)
        return query_layer, key_layer, value_layer

    def _merge_heads(self, x):
        batch_size_and_num_heads, seq_length = x.shape[0], x.shape[1]
        batch_size = batch_size_and_num_heads // self.num_heads
        x = x.view(batch_size, self.num_heads, seq_length, self.head_dim)
        x = x.permute(0, 2, 1, 3)
        return x.reshape(batch_size, seq_length, self.num_heads * self.head_dim)

    def forward(self, hidden_states, alibi, attention_mask):
        batch_size, q_length = hidden_states.shape[0], hidden_states.shape[1]
        fused_qkv = self.query_key_value(hidden_states)
        query_layer, key_layer, value_layer = self._reshape(fused_qkv)
        query_layer = query_layer.reshape(batch_size * self.num_heads, -1, self.head_dim)
        key_layer = key_layer.reshape(batch_size * self.num_heads, -1, self.head_dim).transpose(-1, -2)
        value_layer = value_layer.reshape(batch_size * self.num_heads, -1, self.head_dim)

        attention_scores = alibi.baddbmm(batch1=query_layer, batch2=key_layer, beta=self.beta,
                                         alpha=self.inv_norm_factor)
        attn_weights = attention_scores.view(batch_size, self.num_heads, q_length, -1)
        if self.legacy_masked_fill:
            # upstream: torch.finfo(attention_scores.dtype).min (static dtype here so symbolic_trace can read it)
            attn_weights = torch.masked_fill(attn_weights, attention_mask, torch.finfo(torch.float32).min)
        else:
            attn_weights = attn_weights + attention_mask
        attention_probs = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query_layer.dtype)
        attention_probs = self.attention_dropout(attention_probs)
        attention_probs_reshaped = attention_probs.view(batch_size * self.num_heads, q_length, -1)
        context_layer = torch.bmm(attention_probs_reshaped, value_layer)
        context_layer = self._merge_heads(context_layer)
        return self.dense(context_layer)


class DiffusersAttentionScores(nn.Module):
    """diffusers Attention.get_attention_scores + AttnProcessor: q, k, v already (B*H, L, E)."""

    def __init__(self, heads=H, dim_head=E, with_mask=False):
        super().__init__()
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.with_mask = with_mask
        self.upcast_softmax = True

    def get_attention_scores(self, query, key, attention_mask=None):
        dtype = query.dtype
        if attention_mask is None:
            baddbmm_input = torch.empty(query.shape[0], query.shape[1], key.shape[1], dtype=query.dtype,
                                        device=query.device)
            beta = 0
        else:
            baddbmm_input = attention_mask
            beta = 1
        attention_scores = torch.baddbmm(baddbmm_input, query, key.transpose(-1, -2), beta=beta, alpha=self.scale)
        del baddbmm_input
        if self.upcast_softmax:
            attention_scores = attention_scores.float()
        attention_probs = attention_scores.softmax(dim=-1)
        del attention_scores
        attention_probs = attention_probs.to(dtype)
        return attention_probs

    def head_to_batch_dim(self, tensor):
        b, h, s, e = tensor.shape[0], tensor.shape[1], tensor.shape[2], tensor.shape[3]
        return tensor.reshape(b * h, s, e)

    def forward(self, q, k, v, attention_mask=None):
        query, key, value = self.head_to_batch_dim(q), self.head_to_batch_dim(k), self.head_to_batch_dim(v)
        attention_probs = self.get_attention_scores(query, key, attention_mask if self.with_mask else None)
        hidden_states = torch.bmm(attention_probs, value)
        return hidden_states


class DiffusersNoMask(DiffusersAttentionScores):
    def forward(self, q, k, v):
        return super().forward(q, k, v)


def _x_additive(seed):
    return lambda: hidden(B, L, D, seed=seed) + (alibi_tensor(), causal_padding_mask())


def _x_bool(seed):
    return lambda: hidden(B, L, D, seed=seed) + (alibi_tensor(), causal_padding_bool())


def _x_diffusers_mask():
    # diffusers prepare_attention_mask: an additive (B*H, 1, S) mask repeated over heads
    m = padding_mask(B, 1, L).repeat_interleave(H, dim=0).reshape(B * H, 1, L)
    return qkv(B, H, L, seed=55) + (m,)


SRC = "huggingface/transformers: src/transformers/models/bloom/modeling_bloom.py: BloomAttention.forward"
DIFF = "huggingface/diffusers: src/diffusers/models/attention_processor.py: Attention.get_attention_scores"
ENTRIES = [
    Entry("bloom/alibi_baddbmm_additive_mask",
          SRC + " (5.x): alibi.baddbmm(q, kᵀ, beta=1, alpha=1/sqrt(d)) + additive mask, 3-D bmm with v",
          lambda: BloomAttention().eval(), _x_additive(51),
          (Expect(scale=0.25, mask="float"),),
          notes="alibi enters unscaled (beta=1): float mask = alibi + mask"),
    Entry("bloom/alibi_baddbmm_masked_fill",
          SRC + " (4.2x): alibi.baddbmm then masked_fill(bool mask, finfo.min)",
          lambda: BloomAttention(legacy_masked_fill=True).eval(), _x_bool(52),
          (Expect(scale=0.25, mask="float"),),
          notes="additive alibi before a finfo.min fill: float mask"),
    Entry("bloom/alibi_baddbmm_train",
          SRC + " (5.x) with attention_dropout 0.1 in training",
          lambda: BloomAttention(attention_dropout=0.1).train(), _x_additive(53),
          (Expect(scale=0.25, mask="float", dropout_p=0.1),), training=True),
    Entry("bloom/diffusers_baddbmm_beta0",
          DIFF + ": baddbmm(torch.empty(...), q, kᵀ, beta=0, alpha=scale), .float().softmax(dim=-1).to(dtype)",
          lambda: DiffusersNoMask().eval(), lambda: qkv(B, H, L, seed=54),
          (Expect(scale=0.25, mask="none"),), traceable=False,
          notes="beta=0: the uninitialised input is ignored, no mask; torch.empty(proxy sizes) is not "
                "symbolically traceable"),
    Entry("bloom/diffusers_baddbmm_mask_beta1",
          DIFF + ": baddbmm(attention_mask, q, kᵀ, beta=1, alpha=scale)",
          lambda: DiffusersAttentionScores(with_mask=True).eval(), _x_diffusers_mask,
          (Expect(scale=0.25, mask="float"),)),
]
