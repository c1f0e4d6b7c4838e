"""Part of the `scaling` (one run) layer: real H.264/AAC files written with PyAV's encoders.
Owns the corpus the tests and `scaling bench data_real` decode: nothing is downloaded.

Each file says where in it a decoder landed. Frame k is one solid colour, `frame_colour(k)`, which
`frame_index` reads back; second s of the audio is a sine of `second_hz(s)` Hz, which
`dominant_hz` measures. The video is lossless (x264 at qp 0), so colours survive the round trip.

`pattern="texture"` instead makes frames that cost what real video costs to decode (for the
benchmarks): a band of `frame_colour(k)` on top (rows 0-15, so `frame_index(frame[:, :16])` still
reads k back) over a drifting, moving texture with fresh grain every frame, encoded as web video
is (x264 preset veryfast: High profile, CABAC, B-frames); use it with lossless=False.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

# Colour steps large enough to survive RGB -> YUV 4:2:0 -> RGB (off by up to 3 levels): 20 levels
# per channel, 8000 distinct frames.
_STEP, _LEVELS = 12, 20


def frame_colour(k: int) -> tuple[int, int, int]:
    return tuple(_STEP * (k // _LEVELS**c % _LEVELS) for c in range(3))


def frame_index(rgb) -> int:
    """The frame number a decoded (3, H, W) or (H, W, 3) uint8 frame of `write_video` shows."""
    pixels = np.asarray(rgb, dtype=np.float64)
    channels = pixels.reshape(3, -1).mean(axis=1) if pixels.shape[0] == 3 else pixels.reshape(-1, 3).mean(axis=0)
    return sum(int(round(channels[c] / _STEP)) * _LEVELS**c for c in range(3))


def second_hz(second: int) -> float:
    return 300.0 + 100.0 * (second % 30)


def dominant_hz(audio, sample_rate: int) -> float:
    samples = np.asarray(audio, dtype=np.float64)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum[1:]) + 1) * sample_rate / len(samples)


PATTERNS = ("solid", "texture")
BAND_ROWS = 16  # the texture pattern's frame-index band (one macroblock row)


class _Texture:
    """Frames of the "texture" pattern: smooth waves and a grid of soft blobs, drifting (camera
    motion), a bright disk crossing it (object motion) and fresh grain every frame (sigma ~10
    levels: about 600 kbit/s at 320x240, 25 fps, like Kinetics' files); deterministic."""

    _GRAINS = 7  # grain fields, cycled with a shift (longer than x264's reference window)

    def __init__(self, width: int, height: int, fps: int):
        self.width, self.height, self.fps = width, height, fps
        y, x = np.mgrid[0:2 * height, 0:2 * width].astype(np.float32)
        waves = (np.sin(x / 9.0) * np.cos(y / 13.0) + 0.5 * np.sin((x + 2 * y) / 23.0)
                 + 0.5 * np.cos(np.hypot(x % 64 - 32, y % 48 - 24) / 5.0))
        self.base = np.stack([110 + 45 * waves, 120 + 40 * np.roll(waves, 17, axis=1),
                              100 + 50 * np.roll(waves, 11, axis=0)], axis=-1).astype(np.int16)
        rng = np.random.default_rng(0)
        self.grain = rng.normal(0.0, 10.0, (self._GRAINS, height, width, 3)).round().astype(np.int16)
        r = max(2, round(0.16 * min(width, height)))
        dy, dx = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float32)
        blob = np.exp(-(dx ** 2 + dy ** 2) / (2 * (r / 2) ** 2))
        self.disk = (blob[..., None] * np.array([90.0, 60.0, -40.0], np.float32)).astype(np.int16)

    def __call__(self, k: int) -> np.ndarray:
        t, w, h = k / self.fps, self.width, self.height
        dx, dy = int(20 * t) % w, int(7 * t + 5 * np.sin(t)) % h
        frame = self.base[dy:dy + h, dx:dx + w] + np.roll(self.grain[k % self._GRAINS], 3 * (k // self._GRAINS), axis=1)
        size = self.disk.shape[0]
        cx, cy = round((0.5 + 0.35 * np.sin(0.7 * t)) * (w - size)), round((0.5 + 0.35 * np.cos(0.9 * t)) * (h - size))
        frame[max(cy, 0):cy + size, max(cx, 0):cx + size] += self.disk[max(-cy, 0):h - cy, max(-cx, 0):w - cx]
        frame = np.clip(frame, 0, 255).astype(np.uint8)
        frame[:BAND_ROWS] = frame_colour(k)
        return frame


def write_video(path, *, seconds: float, fps: int = 10, size: tuple[int, int] = (64, 48), keyint: int | None = None,
                audio: bool = True, sample_rate: int = 16000, lossless: bool = True, pattern: str = "solid") -> Path:
    """An H.264 mp4 of `seconds` at `fps` (keyframe every `keyint` frames; x264's default when None),
    with an AAC track of stepped sines when `audio`. `pattern`: "solid" (frame k is `frame_colour(k)`)
    or "texture" (see the module docstring)."""
    import av

    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {list(PATTERNS)}, got {pattern!r}")
    path = Path(path)
    width, height = size
    texture = _Texture(width, height, fps) if pattern == "texture" else None
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        options = {"preset": "ultrafast" if texture is None else "veryfast"}
        if lossless:
            options["qp"] = "0"
        if keyint:
            options.update(g=str(keyint), keyint_min=str(keyint), sc_threshold="0")
        video.options = options
        track = container.add_stream("aac", rate=sample_rate, layout="mono") if audio else None
        for k in range(round(seconds * fps)):
            rgb = np.full((height, width, 3), frame_colour(k), np.uint8) if texture is None else texture(k)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = k
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if track is not None:
            total = round(seconds * sample_rate)
            t = np.arange(total) / sample_rate
            hz = np.array([second_hz(int(s)) for s in t.astype(np.int64)])
            # Phase accumulates so each step is continuous (no click that would smear the spectrum).
            wave = (0.5 * np.sin(2 * math.pi * np.cumsum(hz) / sample_rate)).astype(np.float32)
            for start in range(0, total, 1024):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[None, start:start + 1024]),
                                                   format="fltp", layout="mono")
                frame.sample_rate, frame.pts = sample_rate, start
                container.mux(track.encode(frame))
            container.mux(track.encode(None))
    return path


def write_corrupt(path, source) -> Path:
    """A copy of the mp4 `source` with its last three quarters zeroed: no decoder can read it."""
    data = bytearray(Path(source).read_bytes())
    data[len(data) // 4:] = bytes(len(data) - len(data) // 4)
    Path(path).write_bytes(bytes(data))
    return Path(path)
