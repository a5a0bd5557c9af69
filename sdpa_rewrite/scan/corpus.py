"""The third-party corpus: libraries from the package registry that write attention by hand (or keep an eager
path behind a flag), each built in its smallest real configuration with random weights on the CPU.

`sdpa-rewrite scan --corpus` runs every entry through the backend (scan/run.py) and `--coverage` writes the
third-party table of docs/COVERAGE.md. An entry names the distribution (pinned in the test extras), the field,
the model and a factory returning `(model, inputs)`; nothing here changes how a site is matched: a library that
misses is a rule to write in the engine, not a case to add here.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import sys
import types
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Entry:
    name: str               # short id: library/model
    dist: str               # the distribution's name on the package registry
    field: str
    model: str              # what is built, in the library's words
    build: Callable[[], tuple]

    def version(self) -> str:
        try:
            return importlib.metadata.version(self.dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"


def _ids(n: int = 16, batch: int = 2, vocab: int = 64) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(0))


def _randn(*shape) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


@contextlib.contextmanager
def without_torchvision():
    """Import shim: where torchvision is missing or does not load (the registry's wheel does not load beside the
    CPU torch), stand in an empty module for it while the library imports. Only for libraries whose attention
    path never calls torchvision (segment-anything imports it for its image resizing helpers)."""
    try:
        import torchvision  # noqa: F401
        yield
        return
    except Exception:  # noqa: BLE001 - ImportError, or the registry wheel's RuntimeError at load
        pass
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "torchvision" or k.startswith("torchvision.")}
    stub = types.ModuleType("torchvision")
    stub.transforms = types.ModuleType("torchvision.transforms")
    stub.transforms.functional = types.ModuleType("torchvision.transforms.functional")
    stub.transforms.functional.resize = stub.transforms.functional.to_pil_image = _unavailable
    stub.ops = types.ModuleType("torchvision.ops")
    stub.ops.boxes = types.ModuleType("torchvision.ops.boxes")
    stub.ops.boxes.batched_nms = stub.ops.boxes.box_area = _unavailable
    modules = {"torchvision": stub, "torchvision.transforms": stub.transforms,
               "torchvision.transforms.functional": stub.transforms.functional,
               "torchvision.ops": stub.ops, "torchvision.ops.boxes": stub.ops.boxes}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for k in modules:
            sys.modules.pop(k, None)
        sys.modules.update(saved)


def _unavailable(*args, **kwargs):
    raise RuntimeError("torchvision is not importable here: this helper is outside the attention path")


# --- LLM research -------------------------------------------------------------------------------------------

def x_transformers_decoder():
    from x_transformers import Decoder, TransformerWrapper

    model = TransformerWrapper(num_tokens=64, max_seq_len=32, attn_layers=Decoder(dim=64, depth=2, heads=4))
    return model.eval(), (_ids(),)


def x_transformers_encoder_rel_pos():
    from x_transformers import Encoder, TransformerWrapper

    model = TransformerWrapper(num_tokens=64, max_seq_len=32,
                               attn_layers=Encoder(dim=64, depth=2, heads=4, rel_pos_bias=True))
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[0, 12:] = False
    return model.eval(), {"x": _ids(), "mask": mask}


def x_transformers_alibi_gqa():
    from x_transformers import Decoder, TransformerWrapper

    model = TransformerWrapper(num_tokens=64, max_seq_len=32,
                               attn_layers=Decoder(dim=64, depth=2, heads=4, attn_kv_heads=2, alibi_pos_bias=True))
    return model.eval(), (_ids(),)


def x_transformers_talking_heads():
    from x_transformers import Encoder, TransformerWrapper

    model = TransformerWrapper(num_tokens=64, max_seq_len=32,
                               attn_layers=Encoder(dim=64, depth=2, heads=4, attn_pre_talking_heads=True))
    return model.eval(), (_ids(),)


def megabyte():
    from MEGABYTE_pytorch import MEGABYTE

    model = MEGABYTE(num_tokens=64, dim=(64, 32), depth=(2, 1), max_seq_len=(4, 4), flash_attn=False)
    return model.eval(), (_ids(16),)


# --- vision -------------------------------------------------------------------------------------------------

def monai_vit():
    from monai.networks.nets import ViT

    model = ViT(in_channels=1, img_size=(32, 32), patch_size=(8, 8), hidden_size=64, mlp_dim=128, num_layers=2,
                num_heads=4, spatial_dims=2, classification=True, num_classes=3)
    return model.eval(), (_randn(2, 1, 32, 32),)


def monai_swin_unetr():
    from monai.networks.nets import SwinUNETR

    model = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, spatial_dims=2, depths=(1, 1, 1, 1),
                      num_heads=(1, 2, 2, 4), window_size=4)
    return model.eval(), (_randn(1, 1, 64, 64),)


def segment_anything_encoder():
    with without_torchvision():
        from segment_anything.modeling import ImageEncoderViT

    model = ImageEncoderViT(img_size=64, patch_size=8, embed_dim=64, depth=2, num_heads=4, out_chans=32,
                            use_rel_pos=True, window_size=4, global_attn_indexes=(1,))
    return model.eval(), (_randn(1, 3, 64, 64),)


def segment_anything_decoder():
    with without_torchvision():
        from segment_anything.modeling import MaskDecoder, TwoWayTransformer

    decoder = MaskDecoder(transformer_dim=32, transformer=TwoWayTransformer(depth=2, embedding_dim=32, num_heads=4,
                                                                            mlp_dim=64),
                          num_multimask_outputs=3, iou_head_hidden_dim=32)
    inputs = {"image_embeddings": _randn(1, 32, 8, 8), "image_pe": _randn(1, 32, 8, 8),
              "sparse_prompt_embeddings": _randn(1, 3, 32), "dense_prompt_embeddings": _randn(1, 32, 8, 8),
              "multimask_output": True}
    return decoder.eval(), inputs


def coca():
    from coca_pytorch import CoCa

    model = CoCa(dim=64, num_tokens=64, unimodal_depth=1, multimodal_depth=1, dim_head=16, heads=4,
                 image_dim=32, num_img_queries=8)
    return model.eval(), {"text": _ids(), "image_tokens": _randn(2, 16, 32), "return_embeddings": True}


def perceiver():
    from perceiver_pytorch import Perceiver

    model = Perceiver(input_channels=3, input_axis=2, num_freq_bands=4, max_freq=10.0, depth=2, num_latents=16,
                      latent_dim=64, cross_heads=1, latent_heads=4, cross_dim_head=16, latent_dim_head=16,
                      num_classes=10, self_per_cross_attn=1)
    return model.eval(), (_randn(2, 8, 8, 3),)


def nystromformer():
    from nystrom_attention import Nystromformer

    model = Nystromformer(dim=64, depth=2, dim_head=16, heads=4, num_landmarks=8)
    return model.eval(), (_randn(2, 32, 64),)


def local_transformer():
    from local_attention import LocalTransformer

    model = LocalTransformer(num_tokens=64, max_seq_len=32, dim=64, depth=2, heads=4, dim_head=16, causal=True,
                             local_attn_window_size=8)
    return model.eval(), (_ids(32),)


def segformer():
    from segformer_pytorch import Segformer

    model = Segformer(dims=(16, 32, 48, 64), heads=(1, 2, 3, 4), ff_expansion=(2, 2, 2, 2),
                      reduction_ratio=(8, 4, 2, 1), num_layers=1, decoder_dim=32, num_classes=3)
    return model.eval(), (_randn(1, 3, 64, 64),)


def halonet():
    from halonet_pytorch import HaloAttention

    model = HaloAttention(dim=32, block_size=4, halo_size=1, dim_head=16, heads=2)
    return model.eval(), (_randn(1, 32, 16, 16),)


def timesformer():
    from timesformer_pytorch import TimeSformer

    model = TimeSformer(dim=64, image_size=32, patch_size=8, num_frames=4, num_classes=5, depth=2, heads=4,
                        dim_head=16)
    return model.eval(), (_randn(1, 4, 3, 32, 32),)


# --- speech, audio ------------------------------------------------------------------------------------------

def whisper():
    import whisper.model as wm

    wm.MultiHeadAttention.use_sdpa = False       # the library's own switch to its eager path
    dims = wm.ModelDimensions(n_mels=16, n_audio_ctx=16, n_audio_state=64, n_audio_head=4, n_audio_layer=2,
                              n_vocab=64, n_text_ctx=16, n_text_state=64, n_text_head=4, n_text_layer=2)
    model = wm.Whisper(dims).eval()
    fill_uninitialized(model.decoder.positional_embedding)
    return model, (_randn(2, 16, 32), _ids(8))


def fill_uninitialized(p: torch.Tensor) -> None:
    """A parameter the library allocates with `torch.empty` for a checkpoint to fill (Whisper's text positions): its
    memory may hold anything, NaN included."""
    with torch.no_grad():
        p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.02)


def conformer():
    from conformer import Conformer

    model = Conformer(dim=64, depth=2, dim_head=16, heads=4, conv_kernel_size=7)
    return model.eval(), (_randn(2, 24, 64),)


def a_unet_attention():
    from a_unet.apex import AttentionItem, CrossAttentionItem, ResnetItem, XBlock, XUNet

    unet = XUNet(dim=1, in_channels=2, blocks=[XBlock(channels=8, factor=2, items=[ResnetItem]),
                                               XBlock(channels=16, factor=2,
                                                      items=[ResnetItem, AttentionItem, CrossAttentionItem])],
                 attention_heads=4, attention_features=16, embedding_features=16, resnet_groups=4)
    return unet.eval(), {"x": _randn(2, 2, 64), "embedding": _randn(2, 4, 16)}


# --- protein --------------------------------------------------------------------------------------------------

def esm2():
    import esm

    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    model = esm.ESM2(num_layers=2, embed_dim=64, attention_heads=4, alphabet=alphabet)
    tokens = torch.randint(4, 24, (2, 16), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = alphabet.cls_idx
    return model.eval(), (tokens,)


def esm2_contacts():
    model, (tokens,) = esm2()
    return model, {"tokens": tokens, "return_contacts": True}


def esm_msa():
    import esm

    alphabet = esm.data.Alphabet.from_architecture("msa_transformer")
    args = types.SimpleNamespace(layers=2, embed_dim=64, ffn_embed_dim=128, attention_heads=4, dropout=0.0,
                                 attention_dropout=0.0, activation_dropout=0.0, max_tokens=2 ** 14,
                                 max_positions=64, embed_positions_msa=True)
    model = esm.MSATransformer(args, alphabet)
    tokens = torch.randint(4, 24, (1, 3, 12), generator=torch.Generator().manual_seed(0))
    tokens[..., 0] = alphabet.cls_idx
    return model.eval(), (tokens,)


# --- diffusion ------------------------------------------------------------------------------------------------

def monai_diffusion_unet():
    from monai.networks.nets import DiffusionModelUNet

    model = DiffusionModelUNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(16, 32),
                               attention_levels=(False, True), num_res_blocks=1, num_head_channels=8,
                               norm_num_groups=8, with_conditioning=True, cross_attention_dim=16,
                               transformer_num_layers=1)
    inputs = {"x": _randn(2, 1, 16, 16), "timesteps": torch.tensor([3, 7]), "context": _randn(2, 4, 16)}
    return model.eval(), inputs


def x_unet():
    from x_unet import XUnet

    model = XUnet(dim=16, channels=3, dim_mults=(1, 2), num_blocks_per_stage=(1, 1), num_self_attn_per_stage=(0, 1),
                  nested_unet_depths=(0, 0), attn_heads=2, attn_dim_head=16)
    return model.eval(), (_randn(1, 3, 32, 32),)


ENTRIES = (
    Entry("x-transformers/decoder", "x-transformers", "LLM research", "Decoder, 2 layers", x_transformers_decoder),
    Entry("x-transformers/encoder-rel-pos", "x-transformers", "LLM research",
          "Encoder, T5 relative bias, padding mask", x_transformers_encoder_rel_pos),
    Entry("x-transformers/alibi-gqa", "x-transformers", "LLM research", "Decoder, ALiBi, 2 kv heads",
          x_transformers_alibi_gqa),
    Entry("x-transformers/talking-heads", "x-transformers", "LLM research",
          "Encoder, heads mixed before the softmax (near-miss)", x_transformers_talking_heads),
    Entry("MEGABYTE-pytorch", "MEGABYTE-pytorch", "LLM research", "MEGABYTE, global + local", megabyte),
    Entry("monai/vit", "monai", "vision (medical)", "ViT", monai_vit),
    Entry("monai/swin-unetr", "monai", "segmentation", "SwinUNETR, windows + relative bias", monai_swin_unetr),
    Entry("segment-anything/image-encoder", "segment-anything", "segmentation",
          "ImageEncoderViT, windows + decomposed relative position", segment_anything_encoder),
    Entry("segment-anything/mask-decoder", "segment-anything", "segmentation", "MaskDecoder, two-way transformer",
          segment_anything_decoder),
    Entry("segformer-pytorch", "segformer-pytorch", "segmentation", "Segformer, keys reduced by a strided conv",
          segformer),
    Entry("halonet-pytorch", "halonet-pytorch", "vision", "HaloAttention, blocks + halo, relative position",
          halonet),
    Entry("TimeSformer-pytorch", "TimeSformer-pytorch", "video", "TimeSformer, divided space-time attention",
          timesformer),
    Entry("CoCa-pytorch", "CoCa-pytorch", "CLIP-style towers", "CoCa, text tower + image pooler", coca),
    Entry("perceiver-pytorch", "perceiver-pytorch", "research (single author)", "Perceiver", perceiver),
    Entry("nystrom-attention", "nystrom-attention", "research (single author)", "Nystromformer", nystromformer),
    Entry("local-attention", "local-attention", "research (single author)", "LocalTransformer, window 8",
          local_transformer),
    Entry("openai-whisper", "openai-whisper", "speech recognition", "Whisper, use_sdpa off", whisper),
    Entry("conformer", "conformer", "speech recognition", "Conformer, relative position (Shaw)", conformer),
    Entry("a-unet", "a-unet", "audio generation", "XUNet, 1-d, self- and cross-attention items", a_unet_attention),
    Entry("fair-esm/esm2", "fair-esm", "protein", "ESM-2", esm2),
    Entry("fair-esm/esm2-contacts", "fair-esm", "protein", "ESM-2, return_contacts: weights returned (near-miss)",
          esm2_contacts),
    Entry("fair-esm/msa-transformer", "fair-esm", "protein", "MSA Transformer, row + column attention", esm_msa),
    Entry("x-unet", "x-unet", "diffusion", "XUnet, 2 stages, self-attention", x_unet),
    Entry("monai/diffusion-unet", "monai", "diffusion", "DiffusionModelUNet, cross-attention", monai_diffusion_unet),
)

BY_NAME = {e.name: e for e in ENTRIES}


def factory(entry: Entry) -> Callable[[], tuple]:
    """The entry's factory, named as scan reports it."""
    def build():
        torch.manual_seed(0)
        model, inputs = entry.build()
        _randomize_zeros(model)
        return model, inputs

    build.__name__ = entry.name
    return build


def _randomize_zeros(model: torch.nn.Module) -> None:
    """Diffusion UNets zero their last convolution (and residual gates) at initialisation: every output is then 0
    whatever attention computes, and a comparison with eager proves nothing. Random weights there too."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point() and p.numel() > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.1)


def libraries() -> list:
    return sorted({e.dist for e in ENTRIES})
