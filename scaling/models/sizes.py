"""One-run layer: the named transformer sizes shared by every backbone.

VATT's four sizes (Akbari et al. 2021, Table 9) plus three CPU-sized ones below them,
so that a local scaling curve has enough points.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Size:
    layers: int
    width: int
    heads: int
    mlp: int


SIZES: dict[str, Size] = {
    "nano": Size(layers=2, width=128, heads=2, mlp=512),
    "micro": Size(layers=4, width=192, heads=3, mlp=768),
    "tiny": Size(layers=6, width=256, heads=4, mlp=1024),
    "small": Size(layers=6, width=512, heads=8, mlp=2048),
    "base": Size(layers=12, width=768, heads=12, mlp=3072),
    "medium": Size(layers=12, width=1024, heads=16, mlp=4096),
    "large": Size(layers=24, width=1024, heads=16, mlp=4096),
}

# Backbone parameter counts VATT reports (video voxel tokenizer included).
VATT_PUBLISHED_PARAMS = {"small": 20.9e6, "base": 87.9e6, "medium": 155.0e6, "large": 306.1e6}
