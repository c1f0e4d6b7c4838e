"""Random draws keyed by the global sample, so that a run is the same computation on any number of ranks.

A training micro-step spans micro_batch x world_size clips (x data.repeats windows each), the same
clips in the same order on any world size: the data order is over the global sample sequence, and
rank r holds the clips at positions r, r + W, r + 2W, ... of the span (ShardedEpochSampler). Every
random op of the micro-step (augmentation, DropToken, stochastic depth, DINO's frame choice) draws
its numbers for the whole span, from streams the loop seeds by (seed, global micro-step), and keeps
the rows of this rank's samples. So a sample gets the same crop, the same kept tokens and the same
dropped blocks whichever rank holds it, and a run resumed on another number of ranks continues the
same computation; a run resumed on the same ranks needs no saved RNG state to do so.

Each rank draws W times the numbers it keeps: for DropToken span x tokens floats, a few MB at a
thousand GPUs, generated on the device in microseconds; the rest is a few numbers per sample.
Dropout needs a number per activation, too many to draw for the whole span: `uniform_like` draws
one key per sample (as above) and hashes it with each element's index, so its cost is that of the
local activations, whatever the world size.

Outside a training micro-step (evaluation, unit tests) `rand` is torch.rand.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Span:
    """This rank's rows of a micro-step: `rows[i]` is the position of local row i among the span's `size` rows."""

    rows: torch.Tensor
    size: int


def span_of(clips: int, rank: int, world: int, repeats: int = 1) -> Span:
    """The span of a micro-step of `clips` clips per rank, each giving `repeats` consecutive windows."""
    positions = world * torch.arange(clips) + rank  # this rank's clips among the span's
    rows = (positions[:, None] * repeats + torch.arange(repeats)).flatten()
    return Span(rows, clips * world * repeats)


_CURRENT: contextvars.ContextVar[Span | None] = contextvars.ContextVar("span", default=None)


@contextlib.contextmanager
def micro_step(span: Span) -> Iterator[None]:
    """Within: every `rand` draws for the whole span and keeps this rank's rows (forward and backward,
    so activation checkpointing's recomputation, which restores torch's RNG state, draws the same)."""
    token = _CURRENT.set(span)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def rand(n: int, *tail: int, generator: torch.Generator | None = None, device=None,
         dtype: torch.dtype | None = None) -> torch.Tensor:
    """torch.rand(n, *tail), whose row i belongs to this rank's sample i % local rows: `n` is a
    multiple m of the local rows (m views stacked view by view, as augmentation and multi-crop do)."""
    span = _CURRENT.get()
    if span is None:
        return torch.rand(n, *tail, generator=generator, device=device, dtype=dtype)
    local = span.rows.numel()
    if n % local:
        raise ValueError(f"a random draw of {n} rows in a micro-step of {local} rows per rank: draws must "
                         "cover whole views of the micro-batch")
    x = torch.rand(n // local, span.size, *tail, generator=generator, device=device, dtype=dtype)
    return x[:, span.rows.to(x.device)].reshape(n, *tail)


_M32 = 0xFFFFFFFF


def uniform_like(x: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) numbers shaped as x (fp32, on x's device), row i a function of sample i's key.

    One key per row comes from `rand` (so per global sample in a micro-step); each element's number
    is a 32-bit integer hash of (key, element index), in int64 arithmetic whose products stay below
    2^63: a multiply-xorshift mix with good avalanche, ample for dropout masks. Deterministic given
    torch's RNG state, so activation checkpointing's replay of that state gives the same numbers.
    """
    rows = x.shape[0]
    keys = (rand(rows, device=x.device, dtype=torch.float64) * 2.0 ** 31).long()
    index = torch.arange(x[0].numel(), device=x.device, dtype=torch.int64)
    h = (keys[:, None] * 1000003 + index[None, :]) & _M32
    for _ in range(2):
        h = h ^ (h >> 16)
        h = (h * 0x45D9F3B) & _M32
    h = h ^ (h >> 16)
    return (h.to(torch.float32) * (1.0 / 2.0 ** 32)).reshape(x.shape)
