"""OPT / BART / Whisper style attention (huggingface/transformers): q is scaled by `self.scaling` right
after its projection (before the head view/transpose), so the attention itself runs with `scaling=1.0`.

- OPTAttention.forward + eager_attention_forward (5.x): 4-D, `matmul(q, k.T) * 1.0`, additive mask,
  `softmax(dim=-1, dtype=float32).to(q.dtype)`.
- BartAttention / OPTAttention.forward (4.2x): 3-D `(B*H, L, E)` tensors, `torch.bmm`, mask added on a 4-D
  view and viewed back, `F.dropout(p, training)`, `torch.bmm` with v.
"""
import torch
import torch.nn as nn

from . import Entry, Expect, hidden, padding_mask

B, L, D, H, E = 2, 8, 64, 4, 16


def causal_padding_mask(b=B, l=L, s=L):
    m = padding_mask(b, l, s)
    return m.masked_fill(torch.ones(l, s, dtype=torch.bool).triu(1), torch.finfo(torch.float32).min)


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0):
    attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value)
    attn_output = attn_output.transpose(1, 2).contiguous()
    return attn_output, attn_weights


class OPTAttention(nn.Module):
    """transformers 5.x OPTAttention.forward (self-attention, no cache)."""

    def __init__(self, embed_dim=D, num_heads=H, dropout=0.0):
        super().__init__()
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.scaling = self.head_dim ** -0.5
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, hidden_states, attention_mask=None):
        bsz, tgt_len = hidden_states.shape[0], hidden_states.shape[1]
        # original order of scaling: q is scaled in the projection, the attention call gets scaling=1.0
        query_states = self.q_proj(hidden_states) * self.scaling
        query_states = query_states.view(bsz, -1, self.num_heads, self.head_dim).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(bsz, -1, self.num_heads, self.head_dim).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(bsz, -1, self.num_heads, self.head_dim).transpose(1, 2)
        attn_output, _ = eager_attention_forward(
            self, query_states, key_states, value_states, attention_mask,
            dropout=0.0 if not self.training else self.dropout, scaling=1.0)
        attn_output = attn_output.reshape(bsz, tgt_len, -1).contiguous()
        return self.out_proj(attn_output)


class BartAttention3D(nn.Module):
    """transformers 4.2x BartAttention.forward / OPTAttention.forward: (B*H, L, E) tensors and torch.bmm."""

    def __init__(self, embed_dim=D, num_heads=H, dropout=0.0, bias=True):
        super().__init__()
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.scaling = self.head_dim ** -0.5
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def _shape(self, tensor, seq_len, bsz):
        return tensor.view(bsz, seq_len, self.num_heads, self.head_dim).transpose(1, 2).contiguous()

    def forward(self, hidden_states, attention_mask=None):
        bsz, tgt_len = hidden_states.size(0), hidden_states.size(1)  # upstream: bsz, tgt_len, _ = .size()
        query_states = self.q_proj(hidden_states) * self.scaling
        key_states = self._shape(self.k_proj(hidden_states), -1, bsz)
        value_states = self._shape(self.v_proj(hidden_states), -1, bsz)

        proj_shape = (bsz * self.num_heads, -1, self.head_dim)
        query_states = self._shape(query_states, tgt_len, bsz).view(*proj_shape)
        key_states = key_states.view(*proj_shape)
        value_states = value_states.view(*proj_shape)

        src_len = key_states.size(1)
        attn_weights = torch.bmm(query_states, key_states.transpose(1, 2))

        if attention_mask is not None:
            attn_weights = attn_weights.view(bsz, self.num_heads, tgt_len, src_len) + attention_mask
            attn_weights = attn_weights.view(bsz * self.num_heads, tgt_len, src_len)

        attn_weights = nn.functional.softmax(attn_weights, dim=-1)
        attn_probs = nn.functional.dropout(attn_weights, p=self.dropout, training=self.training)
        attn_output = torch.bmm(attn_probs, value_states)

        attn_output = attn_output.view(bsz, self.num_heads, tgt_len, self.head_dim)
        attn_output = attn_output.transpose(1, 2)
        attn_output = attn_output.reshape(bsz, tgt_len, self.embed_dim)
        return self.out_proj(attn_output)


class BartEncoderAttention3D(BartAttention3D):
    """BartAttention3D called without a mask (unpadded encoder batch: transformers passes None)."""

    def forward(self, hidden_states):
        return super().forward(hidden_states, None)


def _x_mask():
    return hidden(B, L, D, seed=11) + (causal_padding_mask(),)


def _x_pad():
    return hidden(B, L, D, seed=12) + (padding_mask(B, L, L),)


def _x():
    return hidden(B, L, D, seed=13)


SRC = "huggingface/transformers: src/transformers/models/"
ENTRIES = [
    Entry("opt/eager_attention_forward",
          SRC + "opt/modeling_opt.py: OPTAttention.forward + eager_attention_forward (5.x): "
          "q_proj(x) * scaling, scaling=1.0, fp32 softmax",
          lambda: OPTAttention().eval(), _x_mask,
          (Expect(scale=1.0, mask="float"),),
          notes="the scale is applied to the projection output before the head view: it is part of q"),
    Entry("opt/eager_attention_forward_train",
          SRC + "opt/modeling_opt.py: OPTAttention.forward, attention dropout 0.1 in training",
          lambda: OPTAttention(dropout=0.1).train(), _x_mask,
          (Expect(scale=1.0, mask="float", dropout_p=0.1),), training=True),
    Entry("opt/bmm_3d",
          SRC + "bart/modeling_bart.py + opt/modeling_opt.py (4.2x): BartAttention.forward, (B*H, L, E) torch.bmm, "
          "mask added on a 4-D view",
          lambda: BartAttention3D().eval(), _x_mask,
          (Expect(scale=1.0, mask="float"),),
          notes="OPT 4.2x also clamps with torch.max(w, finfo.min) after the mask add, left out here"),
    Entry("opt/bmm_3d_no_mask",
          SRC + "bart/modeling_bart.py (4.2x): BartAttention.forward in an unpadded encoder (attention_mask=None)",
          lambda: BartEncoderAttention3D(bias=False).eval(), _x,
          (Expect(scale=1.0, mask="none"),)),
    Entry("opt/bmm_3d_train",
          SRC + "bart/modeling_bart.py (4.2x): BartAttention.forward, dropout 0.1 in training",
          lambda: BartAttention3D(dropout=0.1).train(), _x_pad,
          (Expect(scale=1.0, mask="float", dropout_p=0.1),), training=True),
]
