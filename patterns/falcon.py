"""Falcon (huggingface/transformers: models/falcon/modeling_falcon.py, FalconAttention.forward, eager branches).

- rotary branch (alibi=None): `scores = q @ k.transpose(-1, -2)`, in-place `scores /= math.sqrt(head_dim)`,
  `F.softmax(scores + mask, dim=-1, dtype=hidden_states.dtype)`, `scores @ v`. With multi_query=True there is
  one k/v head, (B, 1, S, E), broadcast against the q heads inside both matmuls.
- new_decoder_architecture (Falcon-40B): kv groups broadcast with `torch.broadcast_to` in (B, S, G, n_rep, E)
  and flattened to (B, S, H, E) before the head transpose.
- alibi branch: `(q @ k.T).view(B, H, L, S) + alibi.view(B, H, 1, -1)`, in-place `*= inv_norm_factor`, then
  `F.softmax(logits + mask, dim=-1, dtype=...)`, `attention_dropout`, `(probs @ v).flatten(0, 1)`.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import Entry, Expect, hidden, padding_mask
from .llama import apply_rotary_pos_emb, rope

B, L, D, H, E = 2, 8, 64, 4, 16


def causal_padding_mask(b=B, l=L, s=L):
    m = padding_mask(b, l, s)
    return m.masked_fill(torch.ones(l, s, dtype=torch.bool).triu(1), torch.finfo(torch.float32).min)


def alibi_tensor(b=B, h=H, s=L):
    """build_alibi_tensor for an all-ones attention mask: (b*h, 1, s), slopes 2^(-8i/h)."""
    slopes = torch.tensor([2.0 ** (-8.0 * (i + 1) / h) for i in range(h)])
    arange = torch.arange(s, dtype=torch.float32)[None, None, :].expand(b, 1, s)
    return (slopes[None, :, None] * arange).reshape(b * h, 1, s)


class FalconAttention(nn.Module):
    def __init__(self, hidden_size=D, num_heads=H, multi_query=True, new_decoder_architecture=False,
                 num_kv_heads=None, alibi=False, attention_dropout=0.0):
        super().__init__()
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.head_dim = hidden_size // num_heads
        self.multi_query = multi_query
        self.new_decoder_architecture = new_decoder_architecture
        self.num_kv_heads = num_kv_heads if (new_decoder_architecture or not multi_query) else 1
        if self.num_kv_heads is None:
            self.num_kv_heads = num_heads
        self.use_alibi = alibi
        self.inv_norm_factor = 1.0 / math.sqrt(self.head_dim)
        if new_decoder_architecture:
            qkv_out_dim = (self.num_kv_heads * 2 + num_heads) * self.head_dim
        elif multi_query:
            qkv_out_dim = hidden_size + 2 * self.head_dim
        else:
            qkv_out_dim = 3 * hidden_size
        self.query_key_value = nn.Linear(hidden_size, qkv_out_dim, bias=False)
        self.dense = nn.Linear(hidden_size, hidden_size, bias=False)
        self.attention_dropout = nn.Dropout(attention_dropout)

    def _split_heads(self, fused_qkv):
        if self.new_decoder_architecture:
            batch, seq_len = fused_qkv.shape[0], fused_qkv.shape[1]
            qkv = fused_qkv.view(batch, seq_len, -1, self.num_heads // self.num_kv_heads + 2, self.head_dim)
            query = qkv[:, :, :, :-2]
            key = qkv[:, :, :, [-2]]
            value = qkv[:, :, :, [-1]]
            key = torch.broadcast_to(key, query.shape)
            value = torch.broadcast_to(value, query.shape)
            query, key, value = [x.flatten(2, 3) for x in (query, key, value)]
            return query, key, value
        elif not self.multi_query:
            batch_size, seq_length = fused_qkv.shape[0], fused_qkv.shape[1]
            fused_qkv = fused_qkv.view(batch_size, seq_length, self.num_heads, 3, self.head_dim)
            return fused_qkv[..., 0, :], fused_qkv[..., 1, :], fused_qkv[..., 2, :]
        else:
            batch_size, seq_length = fused_qkv.shape[0], fused_qkv.shape[1]
            fused_qkv = fused_qkv.view(batch_size, seq_length, self.num_heads + 2, self.head_dim)
            return fused_qkv[..., :-2, :], fused_qkv[..., [-2], :], fused_qkv[..., [-1], :]

    def _merge_heads(self, x):
        batch_size_and_num_heads, seq_length = x.shape[0], x.shape[1]
        batch_size = batch_size_and_num_heads // self.num_heads
        x = x.view(batch_size, self.num_heads, seq_length, self.head_dim)
        x = x.permute(0, 2, 1, 3)
        return x.reshape(batch_size, seq_length, self.num_heads * self.head_dim)

    def attend(self, hidden_states, alibi, attention_mask, cos=None, sin=None):
        fused_qkv = self.query_key_value(hidden_states)
        num_kv_heads = self.num_heads if self.new_decoder_architecture else self.num_kv_heads
        (query_layer, key_layer, value_layer) = self._split_heads(fused_qkv)
        batch_size, query_length = query_layer.shape[0], query_layer.shape[1]
        query_layer = query_layer.transpose(1, 2).reshape(batch_size, self.num_heads, query_length, self.head_dim)
        key_layer = key_layer.transpose(1, 2).reshape(batch_size, num_kv_heads, query_length, self.head_dim)
        value_layer = value_layer.transpose(1, 2).reshape(batch_size, num_kv_heads, query_length, self.head_dim)
        if alibi is None:
            query_layer, key_layer = apply_rotary_pos_emb(query_layer, key_layer, cos, sin)
        kv_length = key_layer.shape[-2]

        if alibi is None:
            attention_scores = query_layer @ key_layer.transpose(-1, -2)
            attention_scores /= math.sqrt(self.head_dim)
            attention_scores = F.softmax(attention_scores + attention_mask, dim=-1, dtype=hidden_states.dtype)
            attn_output = attention_scores @ value_layer
            attn_output = attn_output.view(batch_size, self.num_heads, query_length, self.head_dim)
            attn_output = attn_output.permute(0, 2, 1, 3)
            attn_output = attn_output.reshape(batch_size, query_length, self.num_heads * self.head_dim)
            return self.dense(attn_output)

        matmul_result = query_layer @ key_layer.transpose(-1, -2)
        attention_scores = matmul_result.view(batch_size, self.num_heads, query_length, kv_length)
        attention_logits = attention_scores + alibi.view(batch_size, self.num_heads, 1, -1)
        attention_logits *= self.inv_norm_factor
        attention_probs = F.softmax(attention_logits + attention_mask, dim=-1, dtype=hidden_states.dtype)
        attention_probs = self.attention_dropout(attention_probs)
        attention_probs_reshaped = attention_probs.view(batch_size, self.num_heads, query_length, kv_length)
        attn_output = (attention_probs_reshaped @ value_layer).flatten(0, 1)
        attn_output = self._merge_heads(attn_output)
        return self.dense(attn_output)


class FalconRotary(FalconAttention):
    def forward(self, hidden_states, cos, sin, attention_mask):
        return self.attend(hidden_states, None, attention_mask, cos, sin)


class FalconAlibi(FalconAttention):
    def forward(self, hidden_states, alibi, attention_mask):
        return self.attend(hidden_states, alibi, attention_mask)


def _x_rotary(seed):
    return lambda: hidden(B, L, D, seed=seed) + rope() + (causal_padding_mask(),)


def _x_alibi(seed):
    return lambda: hidden(B, L, D, seed=seed) + (alibi_tensor(), causal_padding_mask())


SRC = "huggingface/transformers: src/transformers/models/falcon/modeling_falcon.py: FalconAttention.forward"
ENTRIES = [
    Entry("falcon/rotary_multi_query",
          SRC + " (alibi=None, multi_query=True): one k/v head broadcast in the matmuls, `/=` sqrt(d), "
          "softmax(s + mask, dtype=...)",
          lambda: FalconRotary(multi_query=True).eval(), _x_rotary(31),
          (Expect(scale=0.25, mask="float", enable_gqa=True),)),
    Entry("falcon/rotary_multi_head",
          SRC + " (alibi=None, multi_query=False): 4 k/v heads, `/=` sqrt(d)",
          lambda: FalconRotary(multi_query=False).eval(), _x_rotary(32),
          (Expect(scale=0.25, mask="float"),)),
    Entry("falcon/new_decoder_architecture_broadcast_kv",
          SRC + " (new_decoder_architecture=True, 2 kv groups): torch.broadcast_to in (B,S,G,n_rep,E) + "
          "flatten(2, 3) before the head transpose",
          lambda: FalconRotary(multi_query=False, new_decoder_architecture=True, num_kv_heads=2).eval(),
          _x_rotary(33),
          (Expect(scale=0.25, mask="float", enable_gqa=False),),
          notes="k/v heads are a grouped repeat (head h reads group h // n_rep), as repeat_kv; the repeat in "
                "this (B,S,G,R,E) layout is not recognised yet, so SDPA gets the repeated k/v (exact, "
                "not copy-free: the GQA issue)"),
    Entry("falcon/alibi",
          SRC + " (alibi branch, multi_query=False): (q·kᵀ + alibi) *= inv_norm_factor, softmax(s + mask)",
          lambda: FalconAlibi(multi_query=False, alibi=True).eval(), _x_alibi(34),
          (Expect(scale=0.25, mask="float"),),
          notes="alibi is added before the scale: the float mask is alibi*0.25 + mask"),
    Entry("falcon/alibi_train",
          SRC + " (alibi branch) with attention_dropout 0.1 in training",
          lambda: FalconAlibi(multi_query=False, alibi=True, attention_dropout=0.1).train(), _x_alibi(35),
          (Expect(scale=0.25, mask="float", dropout_p=0.1),), training=True),
]
