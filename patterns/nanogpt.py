"""nanoGPT (karpathy/nanoGPT: model.py, CausalSelfAttention.forward, the non-flash branch)."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import Entry, Expect, hidden


class NanoGPTAttention(nn.Module):
    def __init__(self, n_embd=64, n_head=4, block_size=16, dropout=0.0):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.attn_dropout = nn.Dropout(dropout)
        self.n_head, self.n_embd = n_head, n_embd
        self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        att = self.attn_dropout(att)
        y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


ENTRIES = [
    Entry("nanogpt/causal_self_attention", "karpathy/nanoGPT: model.py: CausalSelfAttention.forward (slow path)",
          lambda: NanoGPTAttention().eval(), lambda: hidden(2, 8, 64),
          (Expect(scale=0.25, mask="none", is_causal=True),), traceable=False),
    Entry("nanogpt/causal_self_attention_train", "karpathy/nanoGPT: model.py, dropout 0.1 in training",
          lambda: NanoGPTAttention(dropout=0.1).train(), lambda: hidden(2, 8, 64),
          (Expect(scale=0.25, mask="none", is_causal=True, dropout_p=0.1),), traceable=False, training=True),
]
