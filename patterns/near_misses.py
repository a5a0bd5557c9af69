"""Near-misses: softmax sites that look like attention but are not `softmax(α·QKᵀ + mask)·V`; they must stay eager.

Each entry names the reason the engine must give (a substring of it).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import Entry, Heads, hidden, qkv


class OutputAttentions(Heads):
    """transformers eager_attention_forward with output_attentions=True: the weights are returned as well."""

    def forward(self, x):
        q, k, v = self.qkv(x)
        attn_weights = torch.matmul(q, k.transpose(2, 3)) * self.head_dim ** -0.5
        attn_weights = F.softmax(attn_weights, dim=-1)
        return self.out(torch.matmul(attn_weights, v)), attn_weights


class SlotAttentionStep(nn.Module):
    """lucidrains/slot-attention: slot_attention/slot_attention.py: SlotAttention.forward (one iteration):
    the softmax normalises over the slots (dim=1), not over the inputs."""

    def __init__(self, num_slots=4, dim=64, eps=1e-8):
        super().__init__()
        self.eps = eps
        self.scale = dim ** -0.5
        g = torch.Generator().manual_seed(30)
        self.slots = nn.Parameter(torch.randn(1, num_slots, dim, generator=g))
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)

    def forward(self, inputs):
        slots = self.slots.expand(inputs.shape[0], -1, -1)
        k, v = self.to_k(inputs), self.to_v(inputs)
        q = self.to_q(slots)
        dots = torch.einsum("bid,bjd->bij", q, k) * self.scale
        attn = dots.softmax(dim=1) + self.eps
        attn = attn / attn.sum(dim=-1, keepdim=True)
        return torch.einsum("bjd,bij->bid", v, attn)


class ClassifierHead(nn.Module):
    """A classification head: softmax(linear(pooled)) (e.g. transformers *ForSequenceClassification + probs)."""

    def __init__(self, dim=64, num_labels=5):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, num_labels)

    def forward(self, hidden_states):
        pooled = torch.tanh(self.dense(hidden_states[:, 0]))
        logits = self.out_proj(pooled)
        return torch.softmax(logits, dim=-1)


class TalkingHeadAttn(nn.Module):
    """huggingface/pytorch-image-models: timm/models/cait.py: TalkingHeadAttn.forward (linear mixing across
    heads before and after the softmax)."""

    def __init__(self, dim=64, num_heads=4):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_l = nn.Linear(num_heads, num_heads)
        self.proj_w = nn.Linear(num_heads, num_heads)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)
        attn = self.proj_l(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        attn = attn.softmax(dim=-1)
        attn = self.proj_w(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        attn = self.attn_drop(attn)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


ENTRIES = [
    Entry("near_misses/output_attentions",
          "huggingface/transformers: models/bert/modeling_bert.py: eager_attention_forward, output_attentions=True",
          lambda: OutputAttentions().eval(), lambda: hidden(2, 8, 64, seed=41),
          None, reason="used outside the ·V product"),
    Entry("near_misses/slot_attention_softmax_over_slots",
          "lucidrains/slot-attention: slot_attention/slot_attention.py: SlotAttention.forward (softmax(dim=1))",
          lambda: SlotAttentionStep().eval(), lambda: hidden(2, 8, 64, seed=42),
          None, reason="not the key (last) dim"),
    Entry("near_misses/classifier_head",
          "huggingface/transformers: models/roberta/modeling_roberta.py: RobertaClassificationHead + softmax",
          lambda: ClassifierHead().eval(), lambda: hidden(2, 8, 64, seed=43),
          None, reason="not attention"),
    Entry("near_misses/cait_talking_heads",
          "huggingface/pytorch-image-models: timm/models/cait.py: TalkingHeadAttn.forward",
          lambda: TalkingHeadAttn().eval(), lambda: hidden(2, 8, 64, seed=44),
          None, reason="not a ·V matmul"),
]


class PseudoInverseWeights(nn.Module):
    """nystrom-attention: the landmark kernel softmax(q̃·k̃ᵀ) is inverted by Moore-Penrose iterations, not multiplied
    by a value; its weights are read by abs, a transpose and matmuls."""

    def forward(self, q, k, v):
        kernel = (q @ k.transpose(-1, -2) * 0.25).softmax(-1)
        z = kernel.transpose(-1, -2) / (kernel.abs().sum(-1).amax() * kernel.abs().sum(-2).amax())
        return (kernel @ z) @ v


ENTRIES.append(Entry("near_misses/nystrom_pseudo_inverse", "lucidrains/nystrom-attention: nystrom_attention.py: "
                     "moore_penrose_iter_pinv", PseudoInverseWeights, lambda: qkv(seed=208), None,
                     reason="used outside the ·V product"))


class ConvTalkingHeads(nn.Module):
    """lucidrains/x-transformers Attend (pre_talking_heads): a 1x1 convolution over the heads dim of the scores
    before the softmax: each head's weights depend on every head's scores."""

    def __init__(self, heads=4):
        super().__init__()
        self.mix = nn.Conv2d(heads, heads, 1, bias=False)

    def forward(self, q, k, v):
        sim = self.mix(q @ k.transpose(-1, -2) * 0.25)
        return sim.softmax(-1) @ v


ENTRIES.append(Entry("near_misses/x_transformers_pre_softmax_talking_heads",
                     "lucidrains/x-transformers: x_transformers/attend.py: Attend (pre_talking_heads)",
                     ConvTalkingHeads, lambda: qkv(seed=209), None, reason="mixes the scores across heads"))
