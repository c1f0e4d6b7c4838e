"""One-run layer: VATT (Akbari et al. 2021): video, audio and text transformers on raw signals,
modality-specific or modality-agnostic (one shared encoder), and the FAC projection heads.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from scaling.distributed import SyncBatchNorm1d
from scaling.models.sizes import SIZES
from scaling.models.tokenizers import AUDIO_PATCH, VOXEL, VoxelTokenizer, WaveformTokenizer, WordTokenizer
from scaling.models.vit import Transformer

# SigLIP's initialisation (Zhai et al. 2023): logit scale exp(t') with t' = log 10, bias -10.
SIGMOID_LOG_SCALE_INIT = math.log(10.0)
SIGMOID_BIAS_INIT = -10.0


def transformer_of(size: str, drop_path: float = 0.0, dropout: float = 0.0, cls_token: bool = True) -> Transformer:
    s = SIZES[size]
    return Transformer(s.layers, s.width, s.heads, s.mlp, drop_path, dropout, cls_token)


class ModalityEncoder(nn.Module):
    """Tokenizer + transformer -> the pooled (aggregation-token) feature.

    DropToken applies only in training mode; evaluation always sees every token.

    Over a transformer shared by the modalities (`shared`, the modality-agnostic VATT), the
    encoder keeps what the official uvatt.py keeps per modality: its own aggregation token (the
    shared transformer has none), and a post-transformer projection (Dense of the width + GELU) of
    the pooled feature; its tokenizer carries the pre-transformer projection.
    """

    def __init__(self, tokenizer: nn.Module, transformer: Transformer, drop_rate: float = 0.0,
                 shared: bool = False):
        super().__init__()
        self.tokenizer = tokenizer
        self.transformer = transformer
        self.drop_rate = drop_rate
        self.width = transformer.dim
        self.agg_token = None
        self.post_proj = nn.Identity()
        if shared:
            self.agg_token = nn.Parameter(torch.zeros(1, 1, self.width))
            nn.init.trunc_normal_(self.agg_token, std=0.02)
            self.post_proj = nn.Sequential(nn.Linear(self.width, self.width), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, pad = self.tokenizer(x, self.drop_rate if self.training else 0.0)
        return self.post_proj(self.transformer.pool(tokens, pad, cls=self.agg_token))


def video_encoder(size: str, frames: int, resolution: int, drop_rate: float = 0.0,
                  drop_path: float = 0.0, transformer: Transformer | None = None,
                  dropout: float = 0.0) -> ModalityEncoder:
    """The video backbone shared by VATT and video DINO: voxel tokenizer + transformer (a
    transformer given here is shared with other modalities: see ModalityEncoder)."""
    grid = (frames // VOXEL[0], resolution // VOXEL[1], resolution // VOXEL[2])
    shared = transformer is not None
    tx = transformer or transformer_of(size, drop_path, dropout)
    return ModalityEncoder(VoxelTokenizer(tx.dim, grid, pre_projection=shared), tx, drop_rate, shared)


class FACHeads(nn.Module):
    """Fine and coarse spaces: video-audio (va_dim) then video-text (vt_dim) built on top of it.

    video -> va: Linear -> BN -> ReLU -> Linear -> BN;  audio -> va: Linear;
    video va -> vt: ReLU -> Linear -> BN;               text -> vt: Linear.
    The BNs are synchronised across ranks, so head statistics are those of the global batch.
    """

    def __init__(self, video_dim: int, audio_dim: int, text_dim: int, va_dim: int = 512, vt_dim: int = 256):
        super().__init__()
        self.video_to_va = nn.Sequential(
            nn.Linear(video_dim, va_dim), SyncBatchNorm1d(va_dim), nn.ReLU(),
            nn.Linear(va_dim, va_dim), SyncBatchNorm1d(va_dim))
        self.audio_to_va = nn.Linear(audio_dim, va_dim)
        self.va_to_vt = nn.Sequential(nn.ReLU(), nn.Linear(va_dim, vt_dim), SyncBatchNorm1d(vt_dim))
        self.text_to_vt = nn.Linear(text_dim, vt_dim)


class VATT(nn.Module):
    def __init__(self, *, size: str, audio_size: str | None = None, text_size: str | None = None,
                 shared_backbone: bool = False, frames: int = 8, resolution: int = 64,
                 audio_samples: int = 4096, vocab_size: int = 65536, word_dim: int = 300, max_words: int = 16,
                 freeze_word_embeddings: bool = True, va_dim: int = 512, vt_dim: int = 256,
                 drop_rate: float = 0.0, drop_path: float = 0.0, dropout: float = 0.0,
                 sigmoid_loss: bool = False):
        super().__init__()
        audio_size = audio_size or size
        text_size = text_size or size
        if shared_backbone and not (audio_size == text_size == size):
            raise ValueError("the modality-agnostic VATT shares one encoder, so audio_size and text_size "
                             f"must equal size={size!r} (got {audio_size!r}, {text_size!r})")
        shared = transformer_of(size, drop_path, dropout, cls_token=False) if shared_backbone else None
        self.shared_backbone = shared_backbone
        self.video = video_encoder(size, frames, resolution, drop_rate, drop_path, shared, dropout)
        audio_tx = shared or transformer_of(audio_size, drop_path, dropout)
        self.audio = ModalityEncoder(WaveformTokenizer(audio_tx.dim, audio_samples // AUDIO_PATCH, shared_backbone),
                                     audio_tx, drop_rate, shared_backbone)
        text_tx = shared or transformer_of(text_size, drop_path, dropout)
        self.text = ModalityEncoder(
            WordTokenizer(text_tx.dim, vocab_size, word_dim, max_words, freeze_word_embeddings, shared_backbone),
            text_tx, shared=shared_backbone)
        self.heads = FACHeads(self.video.width, self.audio.width, self.text.width, va_dim, vt_dim)
        # vatt.loss=sigmoid: SigLIP's learnable log logit scale and bias, one pair per common space.
        self.sigmoid = nn.ParameterDict({
            name: nn.Parameter(torch.full((1,), init))
            for space in ("va", "vt") for name, init in ((f"{space}_log_scale", SIGMOID_LOG_SCALE_INIT),
                                                         (f"{space}_bias", SIGMOID_BIAS_INIT))
        }) if sigmoid_loss else None

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """The backbone feature used for evaluation (k-NN, linear probe)."""
        return self.video(video)

    def video_text_embeddings(self, video: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Video and first-caption embeddings in the video-text space, for retrieval evaluation."""
        return self.video_text_embeddings_from(self.video(video), text)

    def video_text_embeddings_from(self, video_feature: torch.Tensor,
                                   text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`video_text_embeddings` from the pooled video feature that `encode_video` returned, so
        evaluation runs the video encoder once per batch for both its probes and retrieval."""
        video_vt = self.heads.va_to_vt(self.heads.video_to_va(video_feature))
        return video_vt, self.heads.text_to_vt(self.text(text[:, 0]))

    def forward(self, video: torch.Tensor, audio: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        """video (B,3,T,H,W), audio (B,S), text (B,K,W) -> embeddings in the two common spaces.

        Returns video_va (B, va), audio_va (B, va), video_vt (B, vt), text_vt (B, K, vt).
        """
        b, k, w = text.shape
        video_va = self.heads.video_to_va(self.video(video))
        audio_va = self.heads.audio_to_va(self.audio(audio))
        video_vt = self.heads.va_to_vt(video_va)
        # Captions go caption by caption (row c * b + j is sample j's caption c): each random draw then
        # covers whole views of the micro-batch, so it is keyed by the global sample (scaling.draws).
        text_vt = self.heads.text_to_vt(self.text(text.transpose(0, 1).reshape(k * b, w)))
        text_vt = text_vt.reshape(k, b, -1).transpose(0, 1)
        out = {"video_va": video_va, "audio_va": audio_va, "video_vt": video_vt, "text_vt": text_vt}
        if self.sigmoid is not None:  # read in the forward, where ZeRO-3 has gathered them
            out.update({name: p * 1 for name, p in self.sigmoid.items()})
        return out
