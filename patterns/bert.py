"""BERT / RoBERTa / ALBERT / DistilBERT encoders (huggingface/transformers, 4.x spellings).

BertSelfAttention divides the scores by `math.sqrt(self.attention_head_size)` and adds the extended mask
that BertModel.get_extended_attention_mask built from the tokenizer's 0/1 mask (`(1.0 - mask) * -10000.0`
in the 2.x-4.2x releases, `* finfo.min` later). DistilBERT divides q *before* the matmul and fills with
`torch.finfo(scores.dtype).min`.
"""
import math

import torch
import torch.nn as nn

from . import Entry, Expect, hidden, padding_mask


def token_mask(b=2, s=8):
    """The tokenizer's attention_mask: 1 = token, 0 = padding (last 3 of batch 1), int64."""
    m = torch.ones(b, s, dtype=torch.long)
    m[1, s - 3:] = 0
    return m


class BertSelfAttentionV4(nn.Module):
    """transformers 4.x BertSelfAttention.forward (absolute or relative_key), from BertModel's extended mask."""

    def __init__(self, hidden_size=64, num_attention_heads=4, dropout=0.0, position_embedding_type="absolute",
                 max_position_embeddings=16, softmax_module=False):
        super().__init__()
        self.num_attention_heads = num_attention_heads
        self.attention_head_size = hidden_size // num_attention_heads
        self.all_head_size = num_attention_heads * self.attention_head_size
        self.query = nn.Linear(hidden_size, self.all_head_size)
        self.key = nn.Linear(hidden_size, self.all_head_size)
        self.value = nn.Linear(hidden_size, self.all_head_size)
        self.dropout = nn.Dropout(dropout)
        self.position_embedding_type = position_embedding_type
        self.max_position_embeddings = max_position_embeddings
        if position_embedding_type == "relative_key":
            self.distance_embedding = nn.Embedding(2 * max_position_embeddings - 1, self.attention_head_size)

    def transpose_for_scores(self, x):
        new_x_shape = x.size()[:-1] + (self.num_attention_heads, self.attention_head_size)
        x = x.view(new_x_shape)
        return x.permute(0, 2, 1, 3)

    def forward(self, hidden_states, attention_mask):
        # BertModel.get_extended_attention_mask (transformers <= 4.2x)
        extended_attention_mask = attention_mask[:, None, None, :]
        extended_attention_mask = extended_attention_mask.to(dtype=next(self.parameters()).dtype)  # self.dtype
        extended_attention_mask = (1.0 - extended_attention_mask) * -10000.0

        query_layer = self.transpose_for_scores(self.query(hidden_states))
        key_layer = self.transpose_for_scores(self.key(hidden_states))
        value_layer = self.transpose_for_scores(self.value(hidden_states))

        attention_scores = torch.matmul(query_layer, key_layer.transpose(-1, -2))
        if self.position_embedding_type == "relative_key":
            query_length, key_length = query_layer.shape[2], key_layer.shape[2]
            position_ids_l = torch.arange(query_length, dtype=torch.long, device=hidden_states.device).view(-1, 1)
            position_ids_r = torch.arange(key_length, dtype=torch.long, device=hidden_states.device).view(1, -1)
            distance = position_ids_l - position_ids_r
            positional_embedding = self.distance_embedding(distance + self.max_position_embeddings - 1)
            positional_embedding = positional_embedding.to(dtype=query_layer.dtype)
            relative_position_scores = torch.einsum("bhld,lrd->bhlr", query_layer, positional_embedding)
            attention_scores = attention_scores + relative_position_scores

        attention_scores = attention_scores / math.sqrt(self.attention_head_size)
        attention_scores = attention_scores + extended_attention_mask
        attention_probs = nn.functional.softmax(attention_scores, dim=-1)
        attention_probs = self.dropout(attention_probs)
        context_layer = torch.matmul(attention_probs, value_layer)
        context_layer = context_layer.permute(0, 2, 1, 3).contiguous()
        new_context_layer_shape = context_layer.size()[:-2] + (self.all_head_size,)
        return context_layer.view(new_context_layer_shape)


class AlbertAttentionV4(nn.Module):
    """ALBERT-style AlbertAttention.forward, with the `nn.Softmax(dim=-1)` module of the 3.x/early-4.x BERT code."""

    def __init__(self, hidden_size=64, num_attention_heads=4):
        super().__init__()
        self.num_attention_heads = num_attention_heads
        self.attention_head_size = hidden_size // num_attention_heads
        self.all_head_size = hidden_size
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.softmax = nn.Softmax(dim=-1)
        self.attention_dropout = nn.Dropout(0.0)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size)

    def transpose_for_scores(self, x):
        new_x_shape = x.size()[:-1] + (self.num_attention_heads, self.attention_head_size)
        return x.view(new_x_shape).permute(0, 2, 1, 3)

    def forward(self, hidden_states, attention_mask):
        query_layer = self.transpose_for_scores(self.query(hidden_states))
        key_layer = self.transpose_for_scores(self.key(hidden_states))
        value_layer = self.transpose_for_scores(self.value(hidden_states))
        attention_scores = torch.matmul(query_layer, key_layer.transpose(-1, -2))
        attention_scores = attention_scores / math.sqrt(self.attention_head_size)
        attention_scores = attention_scores + attention_mask
        attention_probs = self.softmax(attention_scores)
        attention_probs = self.attention_dropout(attention_probs)
        context_layer = torch.matmul(attention_probs, value_layer)
        context_layer = context_layer.transpose(2, 1).flatten(2)
        projected_context_layer = self.dense(context_layer)
        return self.LayerNorm(hidden_states + projected_context_layer)


class DistilBertMHSAV4(nn.Module):
    """transformers 4.x distilbert MultiHeadSelfAttention.forward (query = key = value = x)."""

    def __init__(self, dim=64, n_heads=4, dropout=0.0):
        super().__init__()
        self.n_heads, self.dim = n_heads, dim
        self.dropout = nn.Dropout(p=dropout)
        self.q_lin = nn.Linear(dim, dim)
        self.k_lin = nn.Linear(dim, dim)
        self.v_lin = nn.Linear(dim, dim)
        self.out_lin = nn.Linear(dim, dim)

    def forward(self, x, mask):
        query = key = value = x
        bs, q_length, dim = query.size()
        k_length = key.size(1)
        dim_per_head = self.dim // self.n_heads
        mask_reshp = (bs, 1, 1, k_length)

        def shape(t):
            return t.view(bs, -1, self.n_heads, dim_per_head).transpose(1, 2)

        def unshape(t):
            return t.transpose(1, 2).contiguous().view(bs, -1, self.n_heads * dim_per_head)

        q = shape(self.q_lin(query))
        k = shape(self.k_lin(key))
        v = shape(self.v_lin(value))
        q = q / math.sqrt(dim_per_head)
        scores = torch.matmul(q, k.transpose(2, 3))
        mask = (mask == 0).view(mask_reshp).expand_as(scores)
        scores = scores.masked_fill(mask, torch.tensor(torch.finfo(scores.dtype).min))
        weights = nn.functional.softmax(scores, dim=-1)
        weights = self.dropout(weights)
        context = unshape(torch.matmul(weights, v))
        return self.out_lin(context)


class WideValueAttention(nn.Module):
    """BERT-style attention whose value heads (32) are wider than query/key heads (16); finite -1e4 fill."""

    def __init__(self, hidden_size=64, heads=4, qk_head=16, v_head=32):
        super().__init__()
        self.heads, self.qk_head, self.v_head = heads, qk_head, v_head
        self.query = nn.Linear(hidden_size, heads * qk_head)
        self.key = nn.Linear(hidden_size, heads * qk_head)
        self.value = nn.Linear(hidden_size, heads * v_head)
        self.out = nn.Linear(heads * v_head, hidden_size)

    def forward(self, hidden_states, pad):
        b, l = hidden_states.shape[0], hidden_states.shape[1]
        q = self.query(hidden_states).view(b, l, self.heads, self.qk_head).permute(0, 2, 1, 3)
        k = self.key(hidden_states).view(b, l, self.heads, self.qk_head).permute(0, 2, 1, 3)
        v = self.value(hidden_states).view(b, l, self.heads, self.v_head).permute(0, 2, 1, 3)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.qk_head)
        scores = scores.masked_fill(pad, -10000.0)
        probs = nn.functional.softmax(scores, dim=-1)
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).reshape(b, l, self.heads * self.v_head)
        return self.out(ctx)


def bool_pad(b=2, s=8):
    """(b,1,1,s) bool, True = padded key (last 3 of batch 1)."""
    return (token_mask(b, s) == 0)[:, None, None, :]


SRC = "huggingface/transformers: models/bert/modeling_bert.py (4.x)"
ENTRIES = [
    Entry("bert/self_attention_v4", f"{SRC}: BertSelfAttention.forward + get_extended_attention_mask "
          "((1.0 - mask) * -10000.0)",
          lambda: BertSelfAttentionV4().eval(), lambda: (hidden(2, 8, 64)[0], token_mask()),
          (Expect(scale=0.25, mask="float"),)),
    Entry("bert/self_attention_relative_key", f"{SRC}: BertSelfAttention.forward, position_embedding_type="
          "'relative_key' (einsum('bhld,lrd->bhlr') added before the division)",
          lambda: BertSelfAttentionV4(position_embedding_type="relative_key").eval(),
          lambda: (hidden(2, 8, 64, seed=9)[0], token_mask()),
          (Expect(scale=0.25, mask="float"),),
          notes="the additive term depends on q; it is added before / sqrt(d), so it is scaled too"),
    Entry("bert/self_attention_v4_train", f"{SRC}: BertSelfAttention in training, attention_probs_dropout_prob=0.1",
          lambda: BertSelfAttentionV4(dropout=0.1).train(), lambda: (hidden(2, 8, 64)[0], token_mask()),
          (Expect(scale=0.25, mask="float", dropout_p=0.1),), training=True),
    Entry("bert/albert_attention_softmax_module",
          "huggingface/transformers: models/albert/modeling_albert.py (4.x): AlbertAttention.forward, "
          "with nn.Softmax(dim=-1) as in transformers 3.x BertSelfAttention",
          lambda: AlbertAttentionV4().eval(), lambda: (hidden(2, 8, 64, seed=10)[0], padding_mask(2, 1, 8)),
          (Expect(scale=0.25, mask="float"),)),
    Entry("bert/distilbert_mhsa_v4",
          "huggingface/transformers: models/distilbert/modeling_distilbert.py (4.x): MultiHeadSelfAttention.forward "
          "(q / sqrt(d) before the matmul; masked_fill(mask, tensor(finfo(scores.dtype).min)))",
          lambda: DistilBertMHSAV4().eval(), lambda: (hidden(2, 8, 64, seed=11)[0], token_mask()),
          (Expect(scale=0.25, mask="float"),), traceable=False,
          notes="fill finfo(float32).min (|fill| >= 2**44) and no additive term -> float mask; "
                "size() unpacking and finfo(scores.dtype) stop symbolic_trace"),
    Entry("bert/value_head_dim_differs",
          "variant of BertSelfAttention: value head dim 32 != query/key head dim 16 (as in LeViT, DeepSeek MLA), "
          "masked_fill with a finite -10000.0",
          lambda: WideValueAttention().eval(), lambda: (hidden(2, 8, 64, seed=12)[0], bool_pad()),
          (Expect(scale=0.25, mask="bool"),)),
]
