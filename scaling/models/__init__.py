"""One-run layer: model construction from a RunConfig.

`build_model(cfg)` returns a VATT or DINO module, by `MODEL_BUILDERS` (one builder per method of
`scaling.config.METHODS`; any other method is refused); the image ViT factories match DINO's checkpoints.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

from scaling.models.sizes import SIZES

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "DINO",
    "MODEL_BUILDERS",
    "SIZES",
    "VATT",
    "DINOHead",
    "MultiCropWrapper",
    "VisionTransformer",
    "build_model",
    "by_method",
    "crop_geometry",
    "video_encoder",
    "vit_base",
    "vit_small",
    "vit_tiny",
]

T = TypeVar("T")

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
        patch = cfg.dino.patch_size
        local_res = cfg.dino.local_resolution or max(patch, int(round(d.resolution * 96 / 224 / patch)) * patch)
        local_frames = 1
    return {"global_resolution": d.resolution, "global_frames": d.frames if cfg.dino.input == "video" else 1,
            "local_resolution": local_res, "local_frames": local_frames}


def by_method(table: Mapping[str, T], method: str) -> T:
    """`table[method]`, or ConfigError("method", ...) naming the allowed values.

    RunConfig refuses an unknown method, but a config changed past its checks (dataclasses.replace
    or object.__setattr__ on the frozen dataclass) must not silently get another method's part."""
    if method not in table:
        from scaling.config import ConfigError  # here: scaling.config imports this package's sizes

        raise ConfigError("method", f"got {method!r}; allowed values: {', '.join(map(repr, table))}")
    return table[method]


def build_model(cfg) -> nn.Module:
    """The VATT or DINO module a RunConfig describes (weights freshly initialised from torch's RNG)."""
    from scaling.models.vit import Transformer

    model = by_method(MODEL_BUILDERS, cfg.method)(cfg)
    # Every transformer: VATT's three (or its shared one), DINO's student and teacher backbones
    # (the teacher runs under no_grad, where checkpointing is skipped anyway).
    for module in model.modules():
        if isinstance(module, Transformer):
            module.activation_checkpointing = cfg.activation_checkpointing
    return model


def _build_vatt(cfg) -> nn.Module:
    from scaling.models.vatt import VATT

    d, v = cfg.data, cfg.vatt
    return VATT(size=cfg.size, audio_size=v.audio_size, text_size=v.text_size,
                shared_backbone=v.shared_backbone, frames=d.frames, resolution=d.resolution,
                audio_samples=d.audio_samples, vocab_size=d.vocab_size, word_dim=v.word_dim,
                max_words=d.max_words, freeze_word_embeddings=v.freeze_word_embeddings,
                va_dim=v.va_dim, vt_dim=v.vt_dim, drop_rate=cfg.drop_rate, drop_path=cfg.drop_path,
                dropout=cfg.dropout, sigmoid_loss=v.loss == "sigmoid")


def _build_dino(cfg) -> nn.Module:
    from scaling.models.dino import DINO
    from scaling.models.vatt import video_encoder
    from scaling.models.vit import VisionTransformer

    s, d, c = SIZES[cfg.size], cfg.data, cfg.dino
    if c.input == "video":
        backbone = video_encoder(cfg.size, d.frames, d.resolution, cfg.drop_rate, cfg.drop_path, dropout=cfg.dropout)
    else:
        backbone = VisionTransformer(patch_size=c.patch_size, img_size=d.resolution, dim=s.width,
                                     depth=s.layers, heads=s.heads, mlp_ratio=s.mlp / s.width,
                                     drop_path=cfg.drop_path, dropout=cfg.dropout)
    return DINO(backbone, s.width, out_dim=c.out_dim, hidden_dim=c.hidden_dim,
                bottleneck_dim=c.bottleneck_dim, norm_last_layer=c.norm_last_layer,
                fp32_last_layer=c.fp32_last_layer)


def _build_simclr(cfg) -> nn.Module:
    from scaling.models.simclr import SimCLR
    from scaling.models.vatt import video_encoder

    d = cfg.data
    backbone = video_encoder(cfg.size, d.frames, d.resolution, cfg.drop_rate, cfg.drop_path, dropout=cfg.dropout)
    return SimCLR(backbone, SIZES[cfg.size].width, proj_dim=cfg.simclr.proj_dim, proj_hidden=cfg.simclr.proj_hidden)


# The model of each method of scaling.config.METHODS (the objectives' table, scaling.objectives.OBJECTIVES,
# has the same keys; tests/models/test_method_dispatch.py checks both against METHODS).
MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {"vatt": _build_vatt, "dino": _build_dino,
                                                        "simclr": _build_simclr}
