"""BART / Marian / Whisper (huggingface/transformers: models/bart/modeling_bart.py, models/whisper/modeling_whisper.py).

The 4.x BartAttention (copied into Marian, Pegasus, MBart, Whisper, ...) scales q inside its projection
(`self.q_proj(x) * self.scaling`), folds heads into the batch (3-D `torch.bmm`) and views the scores back to
4-D just to add the mask. A scale applied before the view/transpose is part of q, so SDPA gets scale=1.0.
Whisper 5.x keeps that order on purpose and calls eager_attention_forward with `scaling=1.0`.
"""
import torch
import torch.nn as nn

from . import Entry, Expect, hidden, padding_mask


class BartAttentionV4(nn.Module):
    """transformers 4.x BartAttention.forward (self- or cross-attention, no cache)."""

    def __init__(self, embed_dim=64, num_heads=4, dropout=0.0):
        super().__init__()
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim ** -0.5
        self.dropout = dropout
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def _shape(self, tensor, seq_len, bsz):
        return tensor.view(bsz, seq_len, self.num_heads, self.head_dim).transpose(1, 2).contiguous()

    def forward(self, hidden_states, attention_mask):
        bsz, tgt_len, _ = hidden_states.size()
        query_states = self.q_proj(hidden_states) * self.scaling
        key_states = self._shape(self.k_proj(hidden_states), -1, bsz)
        value_states = self._shape(self.v_proj(hidden_states), -1, bsz)

        proj_shape = (bsz * self.num_heads, -1, self.head_dim)
        query_states = self._shape(query_states, tgt_len, bsz).view(*proj_shape)
        key_states = key_states.reshape(*proj_shape)
        value_states = value_states.reshape(*proj_shape)

        src_len = key_states.size(1)
        attn_weights = torch.bmm(query_states, key_states.transpose(1, 2))
        attn_weights = attn_weights.view(bsz, self.num_heads, tgt_len, src_len) + attention_mask
        attn_weights = attn_weights.view(bsz * self.num_heads, tgt_len, src_len)
        attn_weights = nn.functional.softmax(attn_weights, dim=-1)
        attn_probs = nn.functional.dropout(attn_weights, p=self.dropout, training=self.training)
        attn_output = torch.bmm(attn_probs, value_states)

        attn_output = attn_output.view(bsz, self.num_heads, tgt_len, self.head_dim)
        attn_output = attn_output.transpose(1, 2)
        attn_output = attn_output.reshape(bsz, tgt_len, self.embed_dim)
        return self.out_proj(attn_output)


class BartAttentionV5(nn.Module):
    """transformers 5.x BartAttention.forward + bart eager_attention_forward(scaling=head_dim**-0.5)."""

    def __init__(self, embed_dim=64, num_heads=4):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.scaling = self.head_dim ** -0.5
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, hidden_states, attention_mask):
        b, l = hidden_states.shape[0], hidden_states.shape[1]
        query = self.q_proj(hidden_states).view(b, l, -1, self.head_dim).transpose(1, 2)
        key = self.k_proj(hidden_states).view(b, l, -1, self.head_dim).transpose(1, 2)
        value = self.v_proj(hidden_states).view(b, l, -1, self.head_dim).transpose(1, 2)
        # eager_attention_forward
        attn_weights = torch.matmul(query, key.transpose(2, 3)) * self.scaling
        attn_weights = attn_weights + attention_mask
        attn_weights = nn.functional.softmax(attn_weights, dim=-1)
        attn_weights = nn.functional.dropout(attn_weights, p=0.0, training=self.training)
        attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
        return self.out_proj(attn_output.reshape(b, l, -1).contiguous())


class WhisperCrossAttentionV5(nn.Module):
    """transformers 5.x WhisperAttention.forward with key_value_states (decoder -> encoder), scaling=1.0."""

    def __init__(self, embed_dim=64, num_heads=4):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.scaling = self.head_dim ** -0.5
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, hidden_states, key_value_states):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = (self.q_proj(hidden_states) * self.scaling).view(hidden_shape).transpose(1, 2).contiguous()
        kv_shape = (input_shape[0], -1, self.num_heads, self.head_dim)
        key_states = self.k_proj(key_value_states).view(kv_shape).transpose(1, 2).contiguous()
        value_states = self.v_proj(key_value_states).view(kv_shape).transpose(1, 2).contiguous()
        # whisper eager_attention_forward(..., attention_mask=None, scaling=1.0)
        scaling = 1.0
        attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) * scaling
        attn_weights = nn.functional.softmax(attn_weights, dim=-1)
        attn_weights = nn.functional.dropout(attn_weights, p=0.0, training=self.training)
        attn_output = torch.matmul(attn_weights, value_states).transpose(1, 2).contiguous()
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.out_proj(attn_output)


def causal_padding_mask(b=2, l=8):
    """Marian/BART decoder: causal (finfo.min above the diagonal) + padding, additive (b,1,l,l)."""
    m = padding_mask(b, l, l)
    causal = torch.triu(torch.full((l, l), torch.finfo(torch.float32).min), diagonal=1)
    return torch.maximum(m + causal, torch.full_like(m, torch.finfo(torch.float32).min))


def _whisper_inputs():
    g = torch.Generator().manual_seed(5)
    return (hidden(2, 8, 64, seed=6)[0], torch.randn(2, 12, 64, generator=g))


SRC = "huggingface/transformers: models/bart/modeling_bart.py"
ENTRIES = [
    Entry("bart/attention_v4", f"{SRC} (4.x): BartAttention.forward (q_proj(x) * scaling, 3-D bmm)",
          lambda: BartAttentionV4().eval(), lambda: (hidden(2, 8, 64)[0], padding_mask(2, 8, 8)),
          (Expect(scale=1.0, mask="float"),),
          notes="scale inside the projection; mask added through a view back to 4-D"),
    Entry("bart/marian_decoder_self_attention_v4_train",
          "huggingface/transformers: models/marian/modeling_marian.py (4.x): MarianAttention (copied from Bart), "
          "decoder causal+padding mask, training with attention_dropout=0.1",
          lambda: BartAttentionV4(dropout=0.1).train(), lambda: (hidden(2, 8, 64, seed=7)[0], causal_padding_mask()),
          (Expect(scale=1.0, mask="float", dropout_p=0.1),), training=True),
    Entry("bart/attention_v5_eager", f"{SRC} (5.x): BartAttention.forward + eager_attention_forward",
          lambda: BartAttentionV5().eval(), lambda: (hidden(2, 8, 64, seed=8)[0], padding_mask(2, 8, 8)),
          (Expect(scale=0.25, mask="float"),)),
    Entry("bart/whisper_cross_attention_v5",
          "huggingface/transformers: models/whisper/modeling_whisper.py (5.x): WhisperAttention.forward "
          "(key_value_states, (q_proj(x) * scaling).view().transpose(), eager scaling=1.0)",
          lambda: WhisperCrossAttentionV5().eval(), _whisper_inputs,
          (Expect(scale=1.0, mask="none"),), traceable=False,
          notes="L=8 decoder tokens, S=12 encoder frames; (*input_shape, -1, d) cannot be symbolically traced"),
]
