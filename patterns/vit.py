"""Vision transformers: timm (huggingface/pytorch-image-models), HF ViT and CLIP, LeViT.

timm scales q right before the matmul (`q = q * self.scale`) after splitting a fused qkv with
reshape/permute(2, 0, 3, 1, 4)/unbind; older timm scaled the scores. CLIP folds heads into the batch and
uses 3-D `torch.bmm`, with the scale inside the q projection (so scale=1.0). LeViT keeps the key already
transposed (permute(0, 2, 3, 1)), adds a learned per-head positional bias and has wider value heads.
"""
import math

import torch
import torch.nn as nn

from . import Entry, Expect, hidden


class TimmAttention(nn.Module):
    """timm: timm/models/vision_transformer.py: Attention.forward, the non-fused branch (timm >= 0.9)."""

    def __init__(self, dim=64, num_heads=4, qkv_bias=True, attn_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.Identity()
        self.k_norm = nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        attn = attn.softmax(dim=-1)
        attn = self.attn_drop(attn)
        x = attn @ v
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class TimmAttentionLegacy(TimmAttention):
    """timm 0.4-0.6 Attention.forward: qkv[0], qkv[1], qkv[2] ("make torchscript happy"), scale on the scores."""

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        attn = self.attn_drop(attn)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class TimmAttentionMT(TimmAttention):
    """The same block written with `Tensor.mT` for the key transpose."""

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q * self.scale) @ k.mT
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class PermuteKeyAttention(TimmAttention):
    """The key transpose spelled `k.permute(0, 1, 3, 2)`, scale divided on the scores."""

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn = torch.matmul(q, k.permute(0, 1, 3, 2)) / math.sqrt(self.head_dim)
        attn = torch.softmax(attn, dim=-1)
        x = torch.matmul(attn, v).permute(0, 2, 1, 3).reshape(B, N, C)
        return self.proj(x)


class HFViTSelfAttentionV4(nn.Module):
    """transformers 4.x models/vit/modeling_vit.py: ViTSelfAttention.forward (no mask)."""

    def __init__(self, hidden_size=64, num_attention_heads=4, attention_probs_dropout_prob=0.0):
        super().__init__()
        self.num_attention_heads = num_attention_heads
        self.attention_head_size = hidden_size // num_attention_heads
        self.all_head_size = hidden_size
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(attention_probs_dropout_prob)

    def transpose_for_scores(self, x):
        new_x_shape = x.size()[:-1] + (self.num_attention_heads, self.attention_head_size)
        return x.view(new_x_shape).permute(0, 2, 1, 3)

    def forward(self, hidden_states):
        query_layer = self.transpose_for_scores(self.query(hidden_states))
        key_layer = self.transpose_for_scores(self.key(hidden_states))
        value_layer = self.transpose_for_scores(self.value(hidden_states))
        attention_scores = torch.matmul(query_layer, key_layer.transpose(-1, -2))
        attention_scores = attention_scores / math.sqrt(self.attention_head_size)
        attention_probs = nn.functional.softmax(attention_scores, dim=-1)
        attention_probs = self.dropout(attention_probs)
        context_layer = torch.matmul(attention_probs, value_layer)
        context_layer = context_layer.permute(0, 2, 1, 3).contiguous()
        new_context_layer_shape = context_layer.size()[:-2] + (self.all_head_size,)
        return context_layer.view(new_context_layer_shape)


class CLIPAttentionV4(nn.Module):
    """transformers 4.x models/clip/modeling_clip.py: CLIPAttention.forward, vision tower (no masks)."""

    def __init__(self, embed_dim=64, num_heads=4):
        super().__init__()
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.dropout = 0.0
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def _shape(self, tensor, seq_len, bsz):
        return tensor.view(bsz, seq_len, self.num_heads, self.head_dim).transpose(1, 2).contiguous()

    def forward(self, hidden_states):
        bsz, tgt_len, embed_dim = hidden_states.size()
        query_states = self.q_proj(hidden_states) * self.scale
        key_states = self._shape(self.k_proj(hidden_states), -1, bsz)
        value_states = self._shape(self.v_proj(hidden_states), -1, bsz)
        proj_shape = (bsz * self.num_heads, -1, self.head_dim)
        query_states = self._shape(query_states, tgt_len, bsz).view(*proj_shape)
        key_states = key_states.view(*proj_shape)
        value_states = value_states.view(*proj_shape)
        attn_weights = torch.bmm(query_states, key_states.transpose(1, 2))
        attn_weights = nn.functional.softmax(attn_weights, dim=-1)
        attn_probs = nn.functional.dropout(attn_weights, p=self.dropout, training=self.training)
        attn_output = torch.bmm(attn_probs, value_states)
        attn_output = attn_output.view(bsz, self.num_heads, tgt_len, self.head_dim)
        attn_output = attn_output.transpose(1, 2)
        attn_output = attn_output.reshape(bsz, tgt_len, embed_dim)
        return self.out_proj(attn_output)


class LeViTAttention(nn.Module):
    """timm: timm/models/levit.py: Attention.forward (training-mode bias lookup), key kept transposed."""

    def __init__(self, dim=64, key_dim=16, num_heads=4, attn_ratio=2.0, resolution=3):
        super().__init__()
        self.num_heads, self.key_dim = num_heads, key_dim
        self.scale = key_dim ** -0.5
        self.val_dim = int(attn_ratio * key_dim)
        self.val_attn_dim = self.val_dim * num_heads
        self.qkv = nn.Linear(dim, self.val_attn_dim + key_dim * num_heads * 2)
        self.proj = nn.Sequential(nn.Hardswish(), nn.Linear(self.val_attn_dim, dim))
        pos = torch.stack(torch.meshgrid(torch.arange(resolution), torch.arange(resolution), indexing="ij")).flatten(1)
        rel_pos = (pos[..., :, None] - pos[..., None, :]).abs()
        rel_pos = (rel_pos[0] * resolution) + rel_pos[1]
        g = torch.Generator().manual_seed(13)
        self.attention_biases = nn.Parameter(torch.randn(num_heads, resolution ** 2, generator=g))
        self.register_buffer("attention_bias_idxs", rel_pos, persistent=False)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, self.num_heads, -1).split([self.key_dim, self.key_dim, self.val_dim], dim=3)
        q = q.permute(0, 2, 1, 3)
        k = k.permute(0, 2, 3, 1)
        v = v.permute(0, 2, 1, 3)
        attn = q @ k * self.scale + self.attention_biases[:, self.attention_bias_idxs]
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, self.val_attn_dim)
        return self.proj(x)


TIMM = "huggingface/pytorch-image-models: timm/models/vision_transformer.py"
ENTRIES = [
    Entry("vit/timm_attention", f"{TIMM}: Attention.forward (fused_attn=False: q = q * self.scale)",
          lambda: TimmAttention().eval(), lambda: hidden(2, 8, 64),
          (Expect(scale=0.25),)),
    Entry("vit/timm_attention_legacy", f"{TIMM} (timm 0.4-0.6): Attention.forward ((q @ k.T) * scale, qkv[0..2])",
          lambda: TimmAttentionLegacy().eval(), lambda: hidden(2, 8, 64, seed=1),
          (Expect(scale=0.25),)),
    Entry("vit/mT_key", f"variant of {TIMM}: Attention with `(q * scale) @ k.mT`",
          lambda: TimmAttentionMT().eval(), lambda: hidden(2, 8, 64, seed=2),
          (Expect(scale=0.25),)),
    Entry("vit/permute_key", f"variant of {TIMM}: key transpose as k.permute(0, 1, 3, 2), / math.sqrt(d)",
          lambda: PermuteKeyAttention().eval(), lambda: hidden(2, 8, 64, seed=3),
          (Expect(scale=0.25),)),
    Entry("vit/hf_vit_self_attention_v4_train",
          "huggingface/transformers: models/vit/modeling_vit.py (4.x): ViTSelfAttention.forward, "
          "attention_probs_dropout_prob=0.1 in training",
          lambda: HFViTSelfAttentionV4(attention_probs_dropout_prob=0.1).train(), lambda: hidden(2, 8, 64, seed=4),
          (Expect(scale=0.25, dropout_p=0.1),), training=True),
    Entry("vit/clip_attention_v4_bmm",
          "huggingface/transformers: models/clip/modeling_clip.py (4.x): CLIPAttention.forward (vision, 3-D bmm, "
          "q_proj(x) * scale)",
          lambda: CLIPAttentionV4().eval(), lambda: hidden(2, 8, 64, seed=5),
          (Expect(scale=1.0),), notes="scale applied in the projection, before view/transpose: part of q"),
    Entry("vit/levit_key_pretransposed",
          "huggingface/pytorch-image-models: timm/models/levit.py: Attention.forward (k.permute(0, 2, 3, 1), "
          "q @ k * scale + attention_biases[:, idxs], value dim 2x key dim)",
          lambda: LeViTAttention().eval(), lambda: hidden(2, 9, 64, seed=6),
          (Expect(scale=0.25, mask="float"),), notes="9 tokens = 3x3 grid; learned bias is a parameter"),
]
