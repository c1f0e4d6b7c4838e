"""Part of the `scaling` (one run) layer: decoding windows of real media files.
Owns the two decoders (torchcodec, PyAV) behind one interface: probe a file, seek to the keyframe
before a window and decode its frames (resized in the decoder) and its audio (resampled to mono).

Both decoders answer the same questions the same way: frame k of a window is the frame *shown* at
time t_k (the last one whose timestamp is at or before t_k), resized so its short side is the
requested size (bilinear, in FFmpeg's scaler), as uint8 RGB; audio is mono float32 in [-1, 1] at
the requested rate, starting at the requested time, zero-padded where the track has no samples.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2.functional import resize

from scaling.config import DECODERS

# Frames within this many seconds of a sampling instant count as "at" it: container timestamps
# are rationals, and 3/10 s rarely round-trips to exactly 0.3.
TIME_TOLERANCE_S = 1e-3
INSTALL_HINTS = {
    "torchcodec": "pip install torchcodec (it needs FFmpeg's shared libraries: apt-get install ffmpeg)",
    "pyav": "pip install av",
}


class DecodeError(Exception):
    """A file that cannot be decoded (missing, corrupt, or without the stream asked for)."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


@dataclass(frozen=True)
class MediaInfo:
    """What a file holds, read from its headers (no frame is decoded)."""

    duration: float                 # seconds: the video stream's, else the audio's, else the container's
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    frames: int | None = None
    video_codec: str | None = None
    audio_rate: int | None = None
    audio_channels: int | None = None
    audio_codec: str | None = None

    @property
    def has_video(self) -> bool:
        return self.width is not None

    @property
    def has_audio(self) -> bool:
        return self.audio_rate is not None

    def streams(self) -> dict:
        """The manifest's `streams` record: each stream's facts, None for a missing one."""
        video = ({"codec": self.video_codec, "width": self.width, "height": self.height, "fps": self.fps,
                  "frames": self.frames} if self.has_video else None)
        audio = ({"codec": self.audio_codec, "sample_rate": self.audio_rate, "channels": self.audio_channels}
                 if self.has_audio else None)
        return {"video": video, "audio": audio}


def require(decoder: str) -> None:
    """Raise ImportError with the install hint when `decoder` is not installed (or cannot load)."""
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {list(DECODERS)}")
    try:
        if decoder == "torchcodec":
            import torchcodec.decoders  # noqa: F401  (loads FFmpeg's libraries: fails here if absent)
        else:
            import av  # noqa: F401
    except (ImportError, OSError, RuntimeError) as err:
        raise ImportError(f"data.decoder={decoder!r} is not usable here ({err}); install it: "
                          f"{INSTALL_HINTS[decoder]}") from None


def short_side_size(width: int, height: int, short: int) -> tuple[int, int]:
    """(w, h) with the short side `short` and the aspect ratio kept (rounded, never below `short`)."""
    scale = short / min(width, height)
    return max(short, round(width * scale)), max(short, round(height * scale))


class Media:
    """An open file: `info`, `frames(times, short_side)`, `audio(start, count, rate)`. Use as a context manager."""

    info: MediaInfo

    @property
    def duration(self) -> float:
        """Seconds: the video stream's, else the audio's, else the container's."""
        return self.info.duration

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass

    def frames(self, times: Sequence[float], short_side: int) -> torch.Tensor:
        """(T, 3, H, W) uint8: the frame shown at each of `times` (seconds, ascending), its short side
        resized to `short_side` (bilinear with antialiasing, the same code for both decoders)."""
        native = self._native_frames(times)  # (T, 3, H0, W0) uint8
        width, height = short_side_size(native.shape[-1], native.shape[-2], short_side)
        if (width, height) == (native.shape[-1], native.shape[-2]):
            return native
        return resize(native, [height, width], antialias=True)

    def _native_frames(self, times: Sequence[float]) -> torch.Tensor:
        raise NotImplementedError

    def audio(self, start: float, count: int, rate: int) -> torch.Tensor:
        """(count,) float32 mono samples at `rate` from `start` seconds on, zero where the track has none."""
        raise NotImplementedError


def open_media(source, decoder: str, *, name: str | None = None) -> Media:
    """`source` (a path, or a file's bytes, e.g. a shard member called `name`) opened with `decoder`;
    any failure (missing file, not media) is a DecodeError naming it."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        path, source = Path(name or "<bytes>"), bytes(source)
    else:
        path = source = Path(source)
        if not path.is_file():
            raise DecodeError(path, "file not found")
    require(decoder)
    try:
        return _TorchCodecMedia(path, source) if decoder == "torchcodec" else _PyAVMedia(path, source)
    except DecodeError:
        raise
    except Exception as err:  # decoders raise many types for a broken file; all mean "cannot open it"
        raise DecodeError(path, f"cannot open: {err}") from None


def probe(path, decoder: str = "pyav") -> MediaInfo:
    """The file's streams and duration, from its headers."""
    with open_media(path, decoder) as media:
        return media.info


def _fit_audio(samples: np.ndarray, first_time: float, start: float, count: int, rate: int) -> torch.Tensor:
    """`count` samples from `start`, given `samples` whose first is at `first_time`: trimmed in front,
    zero-padded at either end, clamped to [-1, 1]."""
    offset = round((start - first_time) * rate)
    out = np.zeros(count, np.float32)
    src = samples[max(offset, 0):max(offset, 0) + count - max(-offset, 0)]
    out[max(-offset, 0):max(-offset, 0) + len(src)] = src
    return torch.from_numpy(out).clamp_(-1.0, 1.0)


# ----------------------------------------------------------------------------- PyAV

# AAC (and most audio codecs) reconstruct a frame from its predecessor's overlap: decoding from
# this far before the window lets the first sample that counts come out whole.
_AUDIO_PREROLL_S = 0.1


class _PyAVMedia(Media):
    def __init__(self, path: Path, source):
        import av

        self.path, self._av = path, av
        self.container = av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source))
        video = self.container.streams.video[0] if self.container.streams.video else None
        audio = self.container.streams.audio[0] if self.container.streams.audio else None
        for stream in (video, audio):
            if stream is not None:
                stream.thread_type, stream.codec_context.thread_count = "SLICE", 1  # one core per worker
        self.video, self.audio_stream = video, audio
        self.info = self._info()

    def _info(self) -> MediaInfo:
        def seconds(stream):
            if stream is not None and stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            return None

        video, audio = self.video, self.audio_stream
        if video is None and audio is None:
            raise DecodeError(self.path, "no video or audio stream")
        duration = seconds(video) or seconds(audio) or (self.container.duration or 0) / 1e6
        return MediaInfo(
            duration=duration,
            width=video.codec_context.width if video else None, height=video.codec_context.height if video else None,
            fps=float(video.average_rate) if video is not None and video.average_rate else None,
            frames=(video.frames or None) if video is not None else None,
            video_codec=video.codec_context.name if video else None,
            audio_rate=audio.codec_context.sample_rate if audio else None,
            audio_channels=audio.codec_context.channels if audio else None,
            audio_codec=audio.codec_context.name if audio else None)

    def close(self) -> None:
        self.container.close()

    def _native_frames(self, times: Sequence[float]) -> torch.Tensor:
        if self.video is None:
            raise DecodeError(self.path, "no video stream")
        stream, av = self.video, self._av
        picked: list = []
        previous = None
        try:
            # Seek to the keyframe at or before the first instant, then decode forward from it.
            self.container.seek(max(0, int(times[0] / stream.time_base)), stream=stream, backward=True)
            for frame in self.container.decode(stream):
                if frame.time is None:
                    continue
                # Each instant takes the last frame shown at or before it.
                while len(picked) < len(times) and times[len(picked)] + TIME_TOLERANCE_S < frame.time:
                    picked.append(previous if previous is not None else frame)
                if len(picked) == len(times):
                    break
                previous = frame
            if previous is None and not picked:
                raise DecodeError(self.path, "video stream has no decodable frames")
            picked += [previous] * (len(times) - len(picked))  # past the last frame: it stays on screen
            rgb = np.stack([frame.to_ndarray(format="rgb24") for frame in picked])
        except av.error.FFmpegError as err:
            raise DecodeError(self.path, f"cannot decode video: {err}") from None
        return torch.from_numpy(rgb).permute(0, 3, 1, 2)

    def audio(self, start: float, count: int, rate: int) -> torch.Tensor:
        if self.audio_stream is None:
            raise DecodeError(self.path, "no audio stream")
        stream, av = self.audio_stream, self._av
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks, total, first_time = [], 0, None
        try:
            # Not clamped at 0: AAC's priming frame has a negative timestamp, and a seek to 0 skips it,
            # so the first frame would decode without its overlap (its first ~500 samples wrong).
            self.container.seek(int((start - _AUDIO_PREROLL_S) / stream.time_base), stream=stream, backward=True)
            for frame in self.container.decode(stream):
                if first_time is None:
                    first_time = frame.time if frame.time is not None else 0.0
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    total += chunks[-1].size
                if first_time + total / rate >= start + count / rate:
                    break
            else:
                chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
        except av.error.FFmpegError as err:
            raise DecodeError(self.path, f"cannot decode audio: {err}") from None
        samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        return _fit_audio(samples, first_time or 0.0, start, count, rate)


# ----------------------------------------------------------------------------- torchcodec


class _TorchCodecMedia(Media):
    """Opening costs one video decoder; the audio track is opened only when asked for (by `audio`,
    or by `info`'s audio facts), since each open of a file costs as much as decoding a small window."""

    def __init__(self, path: Path, source):
        from torchcodec.decoders import AudioDecoder, VideoDecoder

        self.path, self._audio_decoder = path, AudioDecoder
        self.source = source if isinstance(source, bytes) else str(source)
        self._info_cache: MediaInfo | None = None
        self._audio_cache: list = []
        try:
            # Approximate seeking reads only the headers; exact mode would scan the whole file first.
            self.video = VideoDecoder(self.source, seek_mode="approximate", num_ffmpeg_threads=1)
        except (RuntimeError, ValueError):
            self.video = None
            if self._audio_meta is None:
                raise DecodeError(self.path, "no video or audio stream") from None

    @property
    def _audio_meta(self):
        if not self._audio_cache:
            try:
                self._audio_cache.append(self._audio_decoder(self.source).metadata)
            except (RuntimeError, ValueError):
                self._audio_cache.append(None)
        return self._audio_cache[0]

    @property
    def duration(self) -> float:
        if self.video is not None:
            meta = self.video.metadata
            return float(meta.duration_seconds or meta.end_stream_seconds or 0.0)
        return self.info.duration

    @property
    def info(self) -> MediaInfo:
        if self._info_cache is None:
            self._info_cache = self._info()
        return self._info_cache

    def _info(self) -> MediaInfo:
        video = self.video.metadata if self.video is not None else None
        audio = self._audio_meta
        duration = (video.duration_seconds or video.end_stream_seconds) if video is not None else None
        if duration is None and audio is not None:
            duration = audio.duration_seconds_from_header
        return MediaInfo(
            duration=float(duration or 0.0),
            width=video.width if video else None, height=video.height if video else None,
            fps=float(video.average_fps) if video is not None and video.average_fps else None,
            frames=video.num_frames if video else None, video_codec=video.codec if video else None,
            audio_rate=audio.sample_rate if audio else None, audio_channels=audio.num_channels if audio else None,
            audio_codec=audio.codec if audio else None)

    def _native_frames(self, times: Sequence[float]) -> torch.Tensor:
        if self.video is None:
            raise DecodeError(self.path, "no video stream")
        meta = self.video.metadata
        begin = meta.begin_stream_seconds or 0.0
        end = meta.end_stream_seconds or self.duration
        # The decoder refuses instants outside the stream; before it the first frame, after it the
        # last frame is what is shown. Within the tolerance an instant is at a frame (as for PyAV).
        last = max(begin, end - TIME_TOLERANCE_S)
        clamped = [min(max(t + TIME_TOLERANCE_S, begin), last) for t in times]
        try:
            return self.video.get_frames_played_at(clamped).data
        except (RuntimeError, IndexError, ValueError) as err:
            raise DecodeError(self.path, f"cannot decode video: {err}") from None

    def audio(self, start: float, count: int, rate: int) -> torch.Tensor:
        try:
            decoder = self._audio_decoder(self.source, sample_rate=rate, num_channels=1)
        except (RuntimeError, ValueError) as err:
            if self._audio_meta is None:
                raise DecodeError(self.path, "no audio stream") from None
            raise DecodeError(self.path, f"cannot decode audio: {err}") from None
        try:
            begin = decoder.metadata.begin_stream_seconds_from_header or 0.0
            stop = start + count / rate
            if decoder.metadata.duration_seconds_from_header:
                stop = min(stop, begin + decoder.metadata.duration_seconds_from_header)
            if stop <= max(start, begin):
                return torch.zeros(count)
            samples = decoder.get_samples_played_in_range(max(start, begin), stop)
        except (RuntimeError, IndexError, ValueError) as err:
            raise DecodeError(self.path, f"cannot decode audio: {err}") from None
        return _fit_audio(samples.data.reshape(-1).numpy(), float(samples.pts_seconds), start, count, rate)
