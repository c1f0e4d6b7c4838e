"""One-run layer: the SimCLR control arm (Chen et al. 2020): the video backbone and SimCLR v1's
projection head, trained with NT-Xent between two augmented views of each clip.

The head is v1's two-layer MLP (Linear, ReLU, Linear to 128-d, hidden = the backbone's width), not
v2's three layers with BatchNorm: batch statistics would make this arm depend on the batch through a
second path, the one thing a small-batch control must not do.
"""
from __future__ import annotations

import torch
from torch import nn

from scaling.models.dino import MultiCropWrapper
from scaling.models.vit import init_weights


class ProjectionHead(nn.Module):
    def __init__(self, width: int, hidden: int, out: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, out))
        self.mlp.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class SimCLR(nn.Module):
    """Backbone + projection head; forward(views) projects each view (the backbone runs once on the
    views together), encode(x) is the backbone feature evaluation uses, as SimCLR evaluates."""

    def __init__(self, backbone: nn.Module, width: int, *, proj_dim: int = 128, proj_hidden: int | None = None):
        super().__init__()
        self.net = MultiCropWrapper(backbone, ProjectionHead(width, proj_hidden or width, proj_dim))

    @property
    def backbone(self) -> nn.Module:
        return self.net.backbone

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        """views: the two augmented views (B, ...) each -> projections (2B, proj_dim), view-major."""
        return self.net(views)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.backbone(x)
