"""T5 / mT5 (huggingface/transformers: models/t5/modeling_t5.py, T5Attention).

T5 never scales Q·Kᵀ (Mesh-TF folds 1/sqrt(d) into the initialisation), so every site has scale=1.0.
The learned relative position bias (an nn.Embedding over log-spaced buckets) is added to the scores,
together with the extended additive mask. The 4.x spelling adds in place (`scores += position_bias_masked`)
and upcasts around the softmax (`softmax(scores.float()).type_as(scores)`); the 5.x spelling goes through
`eager_attention_forward` with `scaling=1.0` (a literal `* 1.0`).
"""
import math

import torch
import torch.nn as nn

from . import Entry, Expect, hidden, padding_mask


def relative_position_bucket(relative_position, bidirectional=True, num_buckets=32, max_distance=128):
    """T5Attention._relative_position_bucket, written out again."""
    buckets = 0
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).to(torch.long) * num_buckets
        relative_position = torch.abs(relative_position)
    else:
        relative_position = -torch.min(relative_position, torch.zeros_like(relative_position))
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    large = max_exact + (torch.log(relative_position.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).to(torch.long)
    large = torch.min(large, torch.full_like(large, num_buckets - 1))
    buckets += torch.where(is_small, relative_position, large)
    return buckets


class T5AttentionV4(nn.Module):
    """transformers 4.x T5Attention.forward (no cache): `scores += position_bias_masked`, fp32 softmax."""

    def __init__(self, d_model=64, n_heads=4, d_kv=16, has_relative_attention_bias=True, dropout=0.0,
                 num_buckets=32, max_distance=128):
        super().__init__()
        self.n_heads, self.key_value_proj_dim = n_heads, d_kv
        self.inner_dim = n_heads * d_kv
        self.dropout = dropout
        self.has_relative_attention_bias = has_relative_attention_bias
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.q = nn.Linear(d_model, self.inner_dim, bias=False)
        self.k = nn.Linear(d_model, self.inner_dim, bias=False)
        self.v = nn.Linear(d_model, self.inner_dim, bias=False)
        self.o = nn.Linear(self.inner_dim, d_model, bias=False)
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(num_buckets, n_heads)
            with torch.no_grad():
                self.relative_attention_bias.weight.normal_(0.0, 1.0)

    def compute_bias(self, query_length, key_length):
        device = self.relative_attention_bias.weight.device            # T5Attention.compute_bias(device=...)
        context_position = torch.arange(query_length, dtype=torch.long, device=device)[:, None]
        memory_position = torch.arange(key_length, dtype=torch.long, device=device)[None, :]
        relative_position = memory_position - context_position
        bucket = relative_position_bucket(relative_position, bidirectional=True, num_buckets=self.num_buckets,
                                          max_distance=self.max_distance)
        values = self.relative_attention_bias(bucket)          # (q, k, heads)
        return values.permute([2, 0, 1]).unsqueeze(0)          # (1, heads, q, k)

    def forward(self, hidden_states, mask):
        return self.attend(hidden_states, mask, None)

    def attend(self, hidden_states, mask, key_value_states):
        batch_size, seq_length = hidden_states.shape[:2]
        key_length = seq_length if key_value_states is None else key_value_states.shape[1]

        def shape(states):
            return states.view(batch_size, -1, self.n_heads, self.key_value_proj_dim).transpose(1, 2)

        def unshape(states):
            return states.transpose(1, 2).contiguous().view(batch_size, -1, self.inner_dim)

        kv = hidden_states if key_value_states is None else key_value_states
        query_states = shape(self.q(hidden_states))
        key_states = shape(self.k(kv))
        value_states = shape(self.v(kv))

        scores = torch.matmul(query_states, key_states.transpose(3, 2))
        if not self.has_relative_attention_bias:
            position_bias = torch.zeros((1, self.n_heads, seq_length, key_length), device=scores.device,
                                        dtype=scores.dtype)
        else:
            position_bias = self.compute_bias(seq_length, key_length)
        if mask is not None:
            position_bias = position_bias + mask
        position_bias_masked = position_bias
        scores += position_bias_masked
        attn_weights = nn.functional.softmax(scores.float(), dim=-1).type_as(scores)
        attn_weights = nn.functional.dropout(attn_weights, p=self.dropout, training=self.training)
        attn_output = unshape(torch.matmul(attn_weights, value_states))
        return self.o(attn_output)


class T5AttentionV5(nn.Module):
    """transformers 5.x T5Attention + t5 eager_attention_forward(scaling=1.0, position_bias=...)."""

    def __init__(self, d_model=64, n_heads=4, d_kv=16, num_buckets=32, max_distance=128):
        super().__init__()
        self.n_heads, self.key_value_proj_dim = n_heads, d_kv
        self.scaling = 1.0
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.q = nn.Linear(d_model, n_heads * d_kv, bias=False)
        self.k = nn.Linear(d_model, n_heads * d_kv, bias=False)
        self.v = nn.Linear(d_model, n_heads * d_kv, bias=False)
        self.o = nn.Linear(n_heads * d_kv, d_model, bias=False)
        self.relative_attention_bias = nn.Embedding(num_buckets, n_heads)
        with torch.no_grad():
            self.relative_attention_bias.weight.normal_(0.0, 1.0)

    def compute_bias(self, query_length, key_length):
        device = self.relative_attention_bias.weight.device            # T5Attention.compute_bias(device=...)
        context_position = torch.arange(query_length, dtype=torch.long, device=device)[:, None]
        memory_position = torch.arange(key_length, dtype=torch.long, device=device)[None, :]
        bucket = relative_position_bucket(memory_position - context_position, True, self.num_buckets,
                                          self.max_distance)
        return self.relative_attention_bias(bucket).permute([2, 0, 1]).unsqueeze(0)

    def forward(self, hidden_states, mask):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.key_value_proj_dim)
        query = self.q(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v(hidden_states).view(hidden_shape).transpose(1, 2)
        position_bias = self.compute_bias(input_shape[1], key.shape[-2])
        # eager_attention_forward
        attn_weights = torch.matmul(query, key.transpose(2, 3)) * self.scaling
        attn_weights = attn_weights + position_bias
        attn_weights = attn_weights + mask
        attn_weights = nn.functional.softmax(attn_weights, dim=-1)
        attn_weights = nn.functional.dropout(attn_weights, p=0.0, training=self.training)
        attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o(attn_output)


class T5CrossAttention(T5AttentionV4):
    """T5LayerCrossAttention.EncDecAttention: no relative bias (zeros), encoder padding mask, L != S."""

    def __init__(self, **kw):
        super().__init__(has_relative_attention_bias=False, **kw)

    def forward(self, hidden_states, encoder_hidden_states, encoder_mask):
        return self.attend(hidden_states, encoder_mask, encoder_hidden_states)


class T5SelfNoMask(T5AttentionV4):
    """Unpadded encoder: the extended mask is None, only the learned position bias is added."""

    def forward(self, hidden_states):
        return self.attend(hidden_states, None, None)


def _cross_inputs():
    g = torch.Generator().manual_seed(3)
    return (hidden(2, 8, 64, seed=1)[0], torch.randn(2, 12, 64, generator=g), padding_mask(2, 1, 12))


SRC = "huggingface/transformers: models/t5/modeling_t5.py"
ENTRIES = [
    Entry("t5/attention_v4_relative_bias", f"{SRC} (4.x): T5Attention.forward, has_relative_attention_bias",
          lambda: T5AttentionV4().eval(), lambda: (hidden(2, 8, 64)[0], padding_mask(2, 1, 8)),
          (Expect(scale=1.0, mask="float"),),
          notes="scores += position_bias + mask; softmax(scores.float()).type_as(scores)"),
    Entry("t5/attention_v4_bias_no_mask", f"{SRC} (4.x): T5Attention.forward, unpadded encoder (mask=None)",
          lambda: T5SelfNoMask().eval(), lambda: hidden(2, 8, 64, seed=2),
          (Expect(scale=1.0, mask="float"),),
          notes="the only additive term is the learned bias (depends on a parameter, not on input data)"),
    Entry("t5/cross_attention_v4", f"{SRC} (4.x): T5LayerCrossAttention -> T5Attention(key_value_states)",
          lambda: T5CrossAttention().eval(), _cross_inputs,
          (Expect(scale=1.0, mask="float"),), notes="L=8, S=12; zeros position bias + encoder padding mask"),
    Entry("t5/attention_v5_eager", f"{SRC} (5.x): T5Attention.forward + eager_attention_forward(scaling=1.0)",
          lambda: T5AttentionV5().eval(), lambda: (hidden(2, 8, 64, seed=4)[0], padding_mask(2, 1, 8)),
          (Expect(scale=1.0, mask="float"),), traceable=False,
          notes="hidden_shape = (*input_shape, -1, d_kv) cannot be symbolically traced"),
    Entry("t5/attention_v4_train", f"{SRC} (4.x): T5Attention.forward in training, dropout_rate=0.1",
          lambda: T5AttentionV4(dropout=0.1).train(), lambda: (hidden(2, 8, 64)[0], padding_mask(2, 1, 8)),
          (Expect(scale=1.0, mask="float", dropout_p=0.1),), training=True),
]
