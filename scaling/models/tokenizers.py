"""One-run layer: VATT's raw-signal tokenizers (video voxels, audio waveform patches, words),
their learned position embeddings, and DropToken.

DropToken drops raw patches *before* the projection; because the projection is per patch this
equals dropping tokens after it, and it also saves the tokenizer's FLOPs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The token geometry lives in a torch-free module (scaling.describe counts with it); these names stay here too.
from scaling import draws
from scaling.models.geometry import AUDIO_PATCH, VOXEL, kept_tokens

PAD_ID = 0                 # word id used for padding captions


def drop_tokens(patches: torch.Tensor, pos: torch.Tensor, drop_rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep a random subset of patches per sample, with their position embeddings.

    patches: (B, N, P); pos: (N, D). Returns (B, K, P) and (B, K, D) with K = kept_tokens(N, drop_rate).
    """
    b, n, p = patches.shape
    keep = kept_tokens(n, drop_rate)
    idx = draws.rand(b, n, device=patches.device).argsort(dim=1)[:, :keep]  # per sample (scaling.draws)
    kept = torch.gather(patches, 1, idx.unsqueeze(-1).expand(b, keep, p))
    return kept, pos[idx]


def _resize_table(table: torch.Tensor, length: int) -> torch.Tensor:
    """A 1-D learned position table (L, D) resampled to `length` rows (DINO-style interpolation)."""
    if table.shape[0] == length:
        return table
    resized = F.interpolate(table.t().unsqueeze(0).float(), size=length, mode="linear", align_corners=False)
    return resized.squeeze(0).t().to(table.dtype)


def pre_projection_of(dim: int, on: bool) -> nn.Module:
    """The modality-agnostic VATT's per-modality projection into the shared encoder (official
    uvatt.py: a Dense of the width with GELU after the raw projection, before the positions);
    identity for the modality-specific VATT and DINO. Per token, so DropToken still commutes."""
    return nn.Sequential(nn.Linear(dim, dim), nn.GELU()) if on else nn.Identity()


class VoxelTokenizer(nn.Module):
    """Video (B, 3, T, H, W) -> tokens from 4x16x16 voxels, with factorised (t + h + w) positions."""

    def __init__(self, dim: int, grid: tuple[int, int, int], channels: int = 3, pre_projection: bool = False):
        super().__init__()
        self.grid = grid
        self.proj = nn.Linear(channels * VOXEL[0] * VOXEL[1] * VOXEL[2], dim)
        self.pre_proj = pre_projection_of(dim, pre_projection)
        self.pos_t = nn.Parameter(torch.zeros(grid[0], dim))
        self.pos_h = nn.Parameter(torch.zeros(grid[1], dim))
        self.pos_w = nn.Parameter(torch.zeros(grid[2], dim))
        for table in (self.pos_t, self.pos_h, self.pos_w):
            nn.init.trunc_normal_(table, std=0.02)

    @staticmethod
    def patchify(video: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        b, c, t, h, w = video.shape
        pt, ph, pw = VOXEL
        if t % pt or h % ph or w % pw:
            raise ValueError(f"video of {t}x{h}x{w} is not divisible into {pt}x{ph}x{pw} voxels")
        nt, nh, nw = t // pt, h // ph, w // pw
        x = video.reshape(b, c, nt, pt, nh, ph, nw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
        return x.reshape(b, nt * nh * nw, c * pt * ph * pw), (nt, nh, nw)

    def positions(self, nt: int, nh: int, nw: int) -> torch.Tensor:
        t = _resize_table(self.pos_t, nt)[:, None, None]
        h = _resize_table(self.pos_h, nh)[None, :, None]
        w = _resize_table(self.pos_w, nw)[None, None, :]
        return (t + h + w).reshape(nt * nh * nw, -1)

    def forward(self, video: torch.Tensor, drop_rate: float = 0.0):
        patches, grid = self.patchify(video)
        pos = self.positions(*grid)
        if drop_rate > 0:
            patches, pos = drop_tokens(patches, pos, drop_rate)
        return self.pre_proj(self.proj(patches)) + pos, None


class WaveformTokenizer(nn.Module):
    """Raw audio (B, S) -> tokens from 128-sample patches, with learned 1-D positions."""

    def __init__(self, dim: int, num_patches: int, pre_projection: bool = False):
        super().__init__()
        self.proj = nn.Linear(AUDIO_PATCH, dim)
        self.pre_proj = pre_projection_of(dim, pre_projection)
        self.pos = nn.Parameter(torch.zeros(num_patches, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, audio: torch.Tensor, drop_rate: float = 0.0):
        b, s = audio.shape
        if s % AUDIO_PATCH:
            raise ValueError(f"audio of {s} samples is not divisible into {AUDIO_PATCH}-sample patches")
        patches = audio.reshape(b, s // AUDIO_PATCH, AUDIO_PATCH)
        pos = _resize_table(self.pos, patches.shape[1])
        if drop_rate > 0:
            patches, pos = drop_tokens(patches, pos, drop_rate)
        return self.pre_proj(self.proj(patches)) + pos, None


class WordTokenizer(nn.Module):
    """Word ids (B, W) -> word embedding lookup, projection to the width, learned positions.

    The embedding table stands in for VATT's frozen word2vec (300-d); it is frozen by default too.
    Text is never dropped. Padding positions are masked out of attention.
    """

    def __init__(self, dim: int, vocab_size: int, word_dim: int, max_words: int, frozen: bool = True,
                 pre_projection: bool = False):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=PAD_ID)
        self.embed.weight.requires_grad_(not frozen)
        self.proj = nn.Linear(word_dim, dim)
        # The modality-agnostic VATT's text pre-projection is a Dense + GELU on the word embedding:
        # `proj` is that Dense, so only the activation is added.
        self.pre_proj = nn.GELU() if pre_projection else nn.Identity()
        self.pos = nn.Parameter(torch.zeros(max_words, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, ids: torch.Tensor, drop_rate: float = 0.0):
        del drop_rate  # text is never dropped (VATT)
        pad = ids == PAD_ID
        return self.pre_proj(self.proj(self.embed(ids))) + _resize_table(self.pos, ids.shape[1]), pad
