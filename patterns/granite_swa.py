"""Attention sinks applied after the ·V product (Granite SWA): the model reads `lse = logsumexp(S, -1)` beside
`softmax(S)` and scales the output by sigmoid(lse − sink), which is the gpt-oss sink column in another order. SDPA
returns no log-sum-exp, so the site becomes FlexAttention asked for it: the kernel's lse serves the model's
logsumexp, and the sink arithmetic after it stays the model's own. A row that may see no key (a padded batch) is
refused: there the kernel's log-sum-exp is that of the row as the empty-row treatment hands it over, not eager's.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import Entry, Expect, Heads


class GraniteSinkScale(Heads):
    """transformers models/granite_swa/modeling_granite_swa.py: eager_attention_forward (sinks as post-attention
    LSE scaling, forced fp32 softmax and sink scale)."""

    def __init__(self, dim=64, heads=4):
        super().__init__(dim, heads)
        self.scaling = self.head_dim ** -0.5
        self.sinks = nn.Parameter(torch.randn(heads, generator=torch.Generator().manual_seed(11)))

    def attend(self, x, attention_mask):
        q, k, v = self.qkv(x)
        attn_weights = torch.matmul(q, k.transpose(2, 3)) * self.scaling
        attn_weights = attn_weights + attention_mask
        lse = torch.logsumexp(attn_weights, dim=-1)
        sink_scale = (lse - self.sinks.view(1, -1, 1)).to(torch.float32).sigmoid()
        attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(q.dtype)
        attn_weights = F.dropout(attn_weights, p=0.0, training=self.training)
        out = torch.matmul(attn_weights, v)
        out = out * sink_scale.unsqueeze(-1).to(out.dtype)
        return self.out(out)

    def forward(self, x):
        l = x.shape[1]
        causal = torch.full((l, l), torch.finfo(x.dtype).min, device=x.device).triu(1)
        return self.attend(x, causal[None, None])


class GraniteSinkScalePadded(GraniteSinkScale):
    """The same with a padded batch's mask as an input: padding queries see no key."""

    def forward(self, x, attention_mask):
        return self.attend(x, attention_mask)


def _padded():
    g = torch.Generator().manual_seed(12)
    x = torch.randn(2, 12, 64, generator=g)
    keep = torch.ones(2, 12, dtype=torch.bool)
    keep[1, :4] = False
    visible = torch.ones(12, 12, dtype=torch.bool).tril()[None] & keep[:, None, :]
    return x, torch.zeros(2, 1, 12, 12).masked_fill(~visible[:, None], torch.finfo(torch.float32).min)


ENTRIES = [
    Entry("granite_swa/sink_scale_causal",
          "transformers models/granite_swa/modeling_granite_swa.py: eager_attention_forward",
          GraniteSinkScale, lambda: (torch.randn(2, 12, 64, generator=torch.Generator().manual_seed(13)),),
          (Expect(scale=16 ** -0.5, is_causal=True, verdict="causal", target="flex"),), traceable=False),
    Entry("granite_swa/sink_scale_padded", "granite_swa eager_attention_forward with a padded batch's mask",
          GraniteSinkScalePadded, _padded, None, reason="a row may see no key"),
]
