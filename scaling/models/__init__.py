"""One-run layer: model construction from a RunConfig.

`build_model(cfg)` returns a VATT or DINO module; the image ViT factories match DINO's checkpoints.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from scaling.models.sizes import SIZES

if TYPE_CHECKING:
    from torch import nn

__all__ = ["DINO", "DINOHead", "MultiCropWrapper", "SIZES", "VATT", "VisionTransformer",
           "build_model", "crop_geometry", "video_encoder", "vit_base", "vit_small", "vit_tiny"]

# The modules import torch; they load on first use, so `scaling.models.sizes` (which the config
# imports) stays cheap for commands that never build a model (sweep plan/status, jobs, fit).
_LAZY = {"DINO": "dino", "DINOHead": "dino", "MultiCropWrapper": "dino", "VATT": "vatt",
         "video_encoder": "vatt", "VisionTransformer": "vit", "vit_base": "vit", "vit_small": "vit",
         "vit_tiny": "vit"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"scaling.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'scaling.models' has no attribute {name!r}")


def crop_geometry(cfg) -> dict[str, int]:
    """DINO crop sizes for this clip geometry: locals are 96/224 of the globals, on the voxel grid."""
    d = cfg.data
    local_res = cfg.dino.local_resolution or max(16, int(round(d.resolution * 96 / 224 / 16)) * 16)
    local_frames = cfg.dino.local_frames or max(4, (d.frames // 2) // 4 * 4)
    if cfg.dino.input == "image":
        local_res = cfg.dino.local_resolution or max(cfg.dino.patch_size,
                                                     int(round(d.resolution * 96 / 224 / cfg.dino.patch_size)) * cfg.dino.patch_size)
        local_frames = 1
    return {"global_resolution": d.resolution, "global_frames": d.frames if cfg.dino.input == "video" else 1,
            "local_resolution": local_res, "local_frames": local_frames}


def build_model(cfg) -> nn.Module:
    """The VATT or DINO module a RunConfig describes (weights freshly initialised from torch's RNG)."""
    from scaling.models.vit import Transformer

    model = _build(cfg)
    # Every transformer: VATT's three (or its shared one), DINO's student and teacher backbones
    # (the teacher runs under no_grad, where checkpointing is skipped anyway).
    for module in model.modules():
        if isinstance(module, Transformer):
            module.activation_checkpointing = cfg.activation_checkpointing
    return model


def _build(cfg) -> nn.Module:
    from scaling.models.dino import DINO
    from scaling.models.vatt import VATT, video_encoder
    from scaling.models.vit import VisionTransformer

    s = SIZES[cfg.size]
    d = cfg.data
    if cfg.method == "vatt":
        v = cfg.vatt
        return VATT(size=cfg.size, audio_size=v.audio_size, text_size=v.text_size,
                    shared_backbone=v.shared_backbone, frames=d.frames, resolution=d.resolution,
                    audio_samples=d.audio_samples, vocab_size=d.vocab_size, word_dim=v.word_dim,
                    max_words=d.max_words, freeze_word_embeddings=v.freeze_word_embeddings,
                    va_dim=v.va_dim, vt_dim=v.vt_dim, drop_rate=cfg.drop_rate, drop_path=cfg.drop_path)
    c = cfg.dino
    if c.input == "video":
        backbone = video_encoder(cfg.size, d.frames, d.resolution, cfg.drop_rate, cfg.drop_path)
    else:
        backbone = VisionTransformer(patch_size=c.patch_size, img_size=d.resolution, dim=s.width,
                                     depth=s.layers, heads=s.heads, mlp_ratio=s.mlp / s.width,
                                     drop_path=cfg.drop_path)
    return DINO(backbone, s.width, out_dim=c.out_dim, hidden_dim=c.hidden_dim,
                bottleneck_dim=c.bottleneck_dim, norm_last_layer=c.norm_last_layer,
                fp32_last_layer=c.fp32_last_layer)
