"""Part of the `scaling` (one run) layer: where in a video a sample's window lies.
Owns the random training window, the evaluation views (temporal and spatial), the aligned audio
window and the deterministic choice of a replacement for a clip that failed to decode.

Every draw is a pure function of (seed, epoch, index[, attempt]): a resumed run draws exactly what
the uninterrupted one would have.
"""

from __future__ import annotations

import numpy as np

from scaling.data.decode import TIME_TOLERANCE_S


def mix_seed(*parts: int) -> int:
    """One 63-bit seed from several integers (a run seed, an epoch, a rank, ...)."""
    # Hashing (seed, epoch) rather than adding them keeps (seed=1, epoch=0) and (seed=0, epoch=1)
    # from sharing a permutation.
    state = np.random.SeedSequence([int(p) % 2**63 for p in parts])
    return int(state.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(p) % 2**63 for p in parts]))


def segment_bounds(start: float, end: float | None, duration: float) -> tuple[float, float]:
    """The usable [start, end) of a segment inside a file of `duration` seconds."""
    stop = duration if end is None else min(end, duration) if duration > 0 else end
    return start, max(stop, start)


def train_start(seed: int, epoch: int, index: int, seg_start: float, seg_end: float, window_s: float,
                draw: int = 0) -> float:
    """A uniformly random window start inside the segment (its start, when the window is longer);
    `draw` numbers the independent windows repeated sampling cuts from one video (0: the only one)."""
    slack = max(0.0, seg_end - seg_start - window_s)
    rng = _rng(seed, epoch, index) if draw == 0 else _rng(seed, epoch, index, draw, 2)
    return seg_start + float(rng.random()) * slack


def view_starts(views: int, seg_start: float, seg_end: float, window_s: float) -> list[float]:
    """`views` window starts evenly spaced over the segment, first to last (one view: the centre)."""
    slack = max(0.0, seg_end - seg_start - window_s)
    if views == 1:
        return [seg_start + slack / 2]
    return [seg_start + slack * k / (views - 1) for k in range(views)]


def frame_times(start: float, frames: int, fps: float, seg_start: float, seg_end: float) -> list[float]:
    """The instants of a window's frames, kept inside the segment (past its end the last frame holds)."""
    last = max(seg_start, seg_end - TIME_TOLERANCE_S)
    return [min(max(start + k / fps, seg_start), last) for k in range(frames)]


def audio_start(video_start: float, window_s: float, audio_s: float, seg_start: float) -> float:
    """The audio window centred on the video window, so the two are synchronous (VATT's positives)."""
    return max(seg_start, video_start + (window_s - audio_s) / 2)


def decode_runs(starts: list[float], span_s: float, gap_s: float) -> list[list[int]]:
    """The windows of one video (their `starts`, each `span_s` long) grouped into runs that one seek
    and one forward decode serve: sorted by start, a window joins the run before it when it begins at
    most `gap_s` after that run's end (decoding through a short gap costs less than a new seek back to
    a keyframe). Each run lists window positions in `starts`, in time order."""
    runs: list[list[int]] = []
    end = float("-inf")
    for i in sorted(range(len(starts)), key=starts.__getitem__):
        if not runs or starts[i] - end > gap_s:
            runs.append([])
        runs[-1].append(i)
        end = max(end, starts[i] + span_s)
    return runs


def spatial_offsets(views: int, long_side: int, crop: int) -> list[int]:
    """Crop offsets along the long side: the centre for one view, else evenly from one end to the other."""
    slack = max(0, long_side - crop)
    if views == 1:
        return [slack // 2]
    return [round(slack * k / (views - 1)) for k in range(views)]


def replacement(seed: int, epoch: int, index: int, attempt: int, length: int) -> int:
    """The clip that stands in for `index` on its `attempt`-th failure (never `index` itself)."""
    if length < 2:
        return index
    other = int(_rng(seed, epoch, index, attempt, 1).integers(length - 1))
    return other + (other >= index)
