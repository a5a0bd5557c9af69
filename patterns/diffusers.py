"""Diffusion-model attention: diffusers, CompVis latent diffusion, OpenAI guided-diffusion, XCiT/Restormer.

diffusers' AttnProcessor folds heads into the batch and computes the scores with a 3-D
`torch.baddbmm(input, q, kᵀ, beta=beta, alpha=scale)`: beta=0 with an uninitialised `torch.empty` input when
there is no mask, beta=1 with the (b*h, 1, s) additive mask otherwise. Latent diffusion (and xformers-era
diffusers CrossAttention) spells both products as einsums with spaces in the equation. guided-diffusion
applies ch^-1/4 to q and to k. XCiT/Restormer multiply the scores by a learned per-head temperature (h, 1, 1).
"""
import math

import torch
import torch.nn as nn

from . import Entry, Expect, hidden


class DiffusersAttention(nn.Module):
    """diffusers Attention (processor=AttnProcessor): head_to_batch_dim, get_attention_scores, batch_to_head_dim."""

    def __init__(self, query_dim=64, cross_attention_dim=None, heads=4, dim_head=16):
        super().__init__()
        inner_dim = heads * dim_head
        cross_attention_dim = cross_attention_dim or query_dim
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.upcast_attention = False
        self.upcast_softmax = False
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(cross_attention_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(cross_attention_dim, inner_dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, query_dim), nn.Dropout(0.0)])

    def head_to_batch_dim(self, tensor):
        head_size = self.heads
        batch_size, seq_len, dim = tensor.shape
        tensor = tensor.reshape(batch_size, seq_len, head_size, dim // head_size)
        tensor = tensor.permute(0, 2, 1, 3)
        return tensor.reshape(batch_size * head_size, seq_len, dim // head_size)

    def batch_to_head_dim(self, tensor):
        head_size = self.heads
        batch_size, seq_len, dim = tensor.shape
        tensor = tensor.reshape(batch_size // head_size, head_size, seq_len, dim)
        return tensor.permute(0, 2, 1, 3).reshape(batch_size // head_size, seq_len, dim * head_size)

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
        attention_probs = attention_scores.softmax(dim=-1)
        del attention_scores
        return attention_probs.to(dtype)

    def process(self, hidden_states, encoder_hidden_states, attention_mask):
        """AttnProcessor.__call__ (3-D input, no group/spatial norm)."""
        query = self.to_q(hidden_states)
        key = self.to_k(encoder_hidden_states)
        value = self.to_v(encoder_hidden_states)
        query = self.head_to_batch_dim(query)
        key = self.head_to_batch_dim(key)
        value = self.head_to_batch_dim(value)
        attention_probs = self.get_attention_scores(query, key, attention_mask)
        hidden_states = torch.bmm(attention_probs, value)
        hidden_states = self.batch_to_head_dim(hidden_states)
        hidden_states = self.to_out[0](hidden_states)
        return self.to_out[1](hidden_states)


class DiffusersSelfAttention(DiffusersAttention):
    def forward(self, hidden_states):
        return self.process(hidden_states, hidden_states, None)


class DiffusersCrossAttentionMasked(DiffusersAttention):
    """Cross-attention to text states with the UNet's encoder mask: (1 - m) * -10000.0, unsqueeze(1),
    then Attention.prepare_attention_mask's repeat_interleave(heads, dim=0)."""

    def __init__(self):
        super().__init__(query_dim=64, cross_attention_dim=32)

    def forward(self, hidden_states, encoder_hidden_states, encoder_attention_mask):
        # UNet2DConditionModel.forward
        encoder_attention_mask = (1 - encoder_attention_mask.to(hidden_states.dtype)) * -10000.0
        encoder_attention_mask = encoder_attention_mask.unsqueeze(1)
        # Attention.prepare_attention_mask(out_dim=3)
        attention_mask = encoder_attention_mask.repeat_interleave(self.heads, dim=0)
        return self.process(hidden_states, encoder_hidden_states, attention_mask)


def to_heads(t, h):
    """rearrange(t, 'b n (h d) -> (b h) n d', h=h)."""
    b, n, hd = t.shape
    return t.reshape(b, n, h, hd // h).permute(0, 2, 1, 3).reshape(b * h, n, hd // h)


def from_heads(t, h):
    """rearrange(t, '(b h) n d -> b n (h d)', h=h)."""
    bh, n, d = t.shape
    return t.reshape(bh // h, h, n, d).permute(0, 2, 1, 3).reshape(bh // h, n, h * d)


class LDMCrossAttention(nn.Module):
    """CompVis/stable-diffusion: ldm/modules/attention.py: CrossAttention.forward (einsum, * self.scale)."""

    def __init__(self, query_dim=64, context_dim=32, heads=4, dim_head=16):
        super().__init__()
        inner_dim = dim_head * heads
        self.scale = dim_head ** -0.5
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(0.0))

    def forward(self, x, context):
        h = self.heads
        q = self.to_q(x)
        k = self.to_k(context)
        v = self.to_v(context)
        q, k, v = to_heads(q, h), to_heads(k, h), to_heads(v, h)
        sim = torch.einsum("b i d, b j d -> b i j", q, k) * self.scale
        attn = sim.softmax(dim=-1)
        out = torch.einsum("b i j, b j d -> b i d", attn, v)
        return self.to_out(from_heads(out, h))


class LDMCrossAttentionMasked(LDMCrossAttention):
    """The `exists(mask)` branch: masked_fill_(~mask, -finfo(sim.dtype).max), mask repeated per head."""

    def forward(self, x, context, mask):
        h = self.heads
        q, k, v = to_heads(self.to_q(x), h), to_heads(self.to_k(context), h), to_heads(self.to_v(context), h)
        sim = torch.einsum("b i d, b j d -> b i j", q, k) * self.scale
        mask = mask.reshape(mask.shape[0], -1)                       # rearrange(mask, 'b ... -> b (...)')
        max_neg_value = -torch.finfo(sim.dtype).max
        mask = mask[:, None, :].repeat_interleave(h, dim=0)           # repeat(mask, 'b j -> (b h) () j', h=h)
        sim.masked_fill_(~mask, max_neg_value)
        attn = sim.softmax(dim=-1)
        out = torch.einsum("b i j, b j d -> b i d", attn, v)
        return self.to_out(from_heads(out, h))


class QAndScoresScaleAttention(LDMCrossAttention):
    """Scalar factors in two places: q * scale on the matmul operand, then the scores divided by 2.0."""

    def forward(self, x, context):
        h = self.heads
        q, k, v = to_heads(self.to_q(x), h), to_heads(self.to_k(context), h), to_heads(self.to_v(context), h)
        q = q * self.scale
        sim = torch.einsum("b i d, b j d -> b i j", q, k)
        sim = sim / 2.0
        attn = sim.softmax(dim=-1)
        out = torch.einsum("b i j, b j d -> b i d", attn, v)
        return self.to_out(from_heads(out, h))


class TwoScaleAttention(LDMCrossAttention):
    """Two successive scalar factors on the scores: einsum(...) * scale, then / 2.0."""

    def forward(self, x, context):
        h = self.heads
        q, k, v = to_heads(self.to_q(x), h), to_heads(self.to_k(context), h), to_heads(self.to_v(context), h)
        sim = torch.einsum("b i d, b j d -> b i j", q, k) * self.scale
        sim = sim / 2.0
        attn = sim.softmax(dim=-1)
        out = torch.einsum("b i j, b j d -> b i d", attn, v)
        return self.to_out(from_heads(out, h))


class QKVAttentionLegacy(nn.Module):
    """openai/guided-diffusion: guided_diffusion/unet.py: QKVAttentionLegacy.forward (ch^-1/4 on q and on k)."""

    def __init__(self, n_heads=4):
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv):
        bs, width, length = qkv.shape
        ch = width // (3 * self.n_heads)
        q, k, v = qkv.reshape(bs * self.n_heads, ch * 3, length).split(ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)  # More stable with f16 than dividing afterwards
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        a = torch.einsum("bts,bcs->bct", weight, v)
        return a.reshape(bs, -1, length)


class QKVAttention(QKVAttentionLegacy):
    """openai/guided-diffusion: guided_diffusion/unet.py: QKVAttention.forward (scale applied before the view)."""

    def forward(self, qkv):
        bs, width, length = qkv.shape
        ch = width // (3 * self.n_heads)
        q, k, v = qkv.chunk(3, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        weight = torch.einsum("bct,bcs->bts", (q * scale).view(bs * self.n_heads, ch, length),
                              (k * scale).view(bs * self.n_heads, ch, length))
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        a = torch.einsum("bts,bcs->bct", weight, v.reshape(bs * self.n_heads, ch, length))
        return a.reshape(bs, -1, length)


class XCA(nn.Module):
    """huggingface/pytorch-image-models: timm/models/xcit.py: XCA.forward (non-fused); Restormer's
    MDTA is the same product. Cross-covariance attention with a learned temperature of shape (h, 1, 1)."""

    def __init__(self, dim=64, num_heads=4):
        super().__init__()
        self.num_heads = num_heads
        g = torch.Generator().manual_seed(14)
        self.temperature = nn.Parameter(torch.rand(num_heads, 1, 1, generator=g) + 0.5)
        self.qkv = nn.Linear(dim, dim * 3)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 4, 1)
        q, k, v = qkv.unbind(0)                    # (B, h, C/h, N): attention over channels
        q = torch.nn.functional.normalize(q, dim=-1)
        k = torch.nn.functional.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.temperature
        attn = attn.softmax(dim=-1)
        attn = self.attn_drop(attn)
        x = (attn @ v).permute(0, 3, 1, 2).reshape(B, N, C)
        return self.proj(x)


def _cross_inputs(seed=0):
    g = torch.Generator().manual_seed(seed + 100)
    return (hidden(2, 8, 64, seed=seed)[0], torch.randn(2, 12, 32, generator=g))


def _text_mask(b=2, s=12):
    m = torch.ones(b, s)
    m[1, s - 4:] = 0
    return m


def _qkv_channels(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 3 * 4 * 16, 8, generator=g),)


AP = "huggingface/diffusers: src/diffusers/models/attention_processor.py"
GD = "openai/guided-diffusion: guided_diffusion/unet.py"
ENTRIES = [
    Entry("diffusers/attn_processor_self_baddbmm_beta0",
          f"{AP}: AttnProcessor.__call__ + Attention.get_attention_scores (mask None: torch.empty input, beta=0)",
          lambda: DiffusersSelfAttention().eval(), lambda: hidden(2, 8, 64, seed=20),
          (Expect(scale=0.25),), traceable=False,
          notes="baddbmm alpha is the scale; beta=0 ignores the uninitialised input; "
                "torch.empty(proxy sizes) stops symbolic_trace"),
    Entry("diffusers/attn_processor_cross_baddbmm_mask",
          f"{AP}: AttnProcessor.__call__ (encoder_hidden_states, attention_mask: baddbmm beta=1) + "
          "prepare_attention_mask (repeat_interleave over heads); diffusers UNet2DConditionModel mask (1-m)*-10000",
          lambda: DiffusersCrossAttentionMasked().eval(), lambda: (*_cross_inputs(21), _text_mask()),
          (Expect(scale=0.25, mask="float"),), notes="L=8, S=12, cross_attention_dim=32, 3-D (b*h, l, d)"),
    Entry("diffusers/ldm_cross_attention_einsum",
          "CompVis/stable-diffusion: ldm/modules/attention.py: CrossAttention.forward "
          "(einsum('b i d, b j d -> b i j') * scale; also diffusers<=0.11 CrossAttention)",
          lambda: LDMCrossAttention().eval(), lambda: _cross_inputs(22),
          (Expect(scale=0.25),), notes="L=8, S=12"),
    Entry("diffusers/ldm_cross_attention_einsum_masked",
          "CompVis/stable-diffusion: ldm/modules/attention.py: CrossAttention.forward, exists(mask) branch "
          "(sim.masked_fill_(~mask, -finfo(sim.dtype).max))",
          lambda: LDMCrossAttentionMasked().eval(), lambda: (*_cross_inputs(23), _text_mask() > 0),
          (Expect(scale=0.25, mask="float"),), traceable=False,
          notes="fill -finfo(float32).max has |fill| >= 2**44 and no additive term -> float mask; "
                "finfo(sim.dtype) stops symbolic_trace"),
    Entry("diffusers/two_successive_scale_factors",
          "variant of CompVis ldm CrossAttention: einsum(...) * scale, then the scores / 2.0",
          lambda: TwoScaleAttention().eval(), lambda: _cross_inputs(24),
          (Expect(scale=0.125),)),
    Entry("diffusers/q_and_scores_scale_factors",
          "variant of CompVis ldm CrossAttention: q * scale on the einsum operand, then the scores / 2.0",
          lambda: QAndScoresScaleAttention().eval(), lambda: _cross_inputs(28),
          (Expect(scale=0.125),)),
    Entry("diffusers/guided_diffusion_qkv_attention_legacy",
          f"{GD}: QKVAttentionLegacy.forward (einsum('bct,bcs->bts', q * scale, k * scale), scale = ch^-1/4)",
          lambda: QKVAttentionLegacy().eval(), lambda: _qkv_channels(25),
          (Expect(scale=0.25),), notes="(ch^-1/4)^2 = 1/4 for ch=16; channels-first layout, output (b, c, t)"),
    Entry("diffusers/guided_diffusion_qkv_attention",
          f"{GD}: QKVAttention.forward ((q * scale).view(...) inside the einsum)",
          lambda: QKVAttention().eval(), lambda: _qkv_channels(26),
          (Expect(scale=1.0),), notes="the scale is applied before the view: part of q, not folded"),
    Entry("diffusers/xcit_learned_temperature",
          "huggingface/pytorch-image-models: timm/models/xcit.py: XCA.forward (scores * temperature (h,1,1)); "
          "swz30/Restormer: basicsr/models/archs/restormer_arch.py: Attention.forward",
          lambda: XCA().eval(), lambda: hidden(2, 8, 64, seed=27),
          (Expect(scale=1.0),), notes="tensor temperature folded into q; q/k normalised; L=S=16 channels, E=8 tokens"),
]
