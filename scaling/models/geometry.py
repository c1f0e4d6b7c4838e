"""One-run layer: the token geometry of VATT's raw-signal tokenizers, without torch.

The voxel and waveform patch shapes and DropToken's kept-token count, shared by the tokenizers
(`scaling.models.tokenizers`, which re-exports them) and by the analytic costs (`scaling.describe`),
which must not load torch to count.
"""
from __future__ import annotations

VOXEL = (4, 16, 16)        # frames x pixels x pixels per video token
AUDIO_PATCH = 128          # waveform samples per audio token


def kept_tokens(n: int, drop_rate: float) -> int:
    """Tokens left after dropping `drop_rate` of n (at least one)."""
    return max(1, n - int(round(n * drop_rate)))
