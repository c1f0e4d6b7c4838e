"""Part of the `scaling` (one run) layer: real data read from files.
Owns ManifestClips (windows of the videos a JSONL manifest lists, with their aligned audio and
captions) and ImageFolderDataset."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from scaling.data import windows
from scaling.data.decode import DECODERS, DecodeError, open_media, require, short_side_size
from scaling.data.manifest import ManifestEntry, nearest_captions, read_manifest
from scaling.data.text import encode_caption
from scaling.validate import choice, integer, number

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
MODALITIES = ("video", "audio", "text")
# A clip that fails is replaced by another; a sample gives up after this many failures in a row.
MAX_ATTEMPTS = 8
# Windows of one video less than this far apart are decoded in one pass, not with a seek each:
# typical keyframe intervals are 2-10 s, so a seek lands on average a few seconds before its window.
RUN_GAP_S = 4.0
log = logging.getLogger(__name__)


def resize_crop_box(width: int, height: int, resolution: int) -> tuple[int, int, int, int]:
    """(resized_w, resized_h, left, top): scale the short side to `resolution`, then centre-crop."""
    resized_w, resized_h = short_side_size(width, height, resolution)
    return resized_w, resized_h, (resized_w - resolution) // 2, (resized_h - resolution) // 2


class ClipReader:
    """The clip geometry, what to decode and how: one manifest entry's window (or evaluation views),
    its synchronous audio and its captions, from its files or from bytes (a shard's members).

    Training (`views=None`): a random window of `frames` frames at `fps` inside the entry's segment,
    a pure function of (seed, epoch, index). Evaluation (`views=(temporal, spatial)`): the temporal
    windows evenly spaced over the segment, each cut at `spatial` crops along the long side; the
    video is then (views, 3, T, R, R), or (3, T, R, R) for a single view. Audio is the window
    centred on the video's, so the two are synchronous; timed captions are the ones nearest the window.
    Repeated sampling (`repeats` K > 1, training): K independent windows (draws 0..K-1) of the one
    opened video, each with its own audio and captions, as a leading dimension of every tensor; the
    loader's collation makes them K consecutive samples of one micro-batch.
    """

    def __init__(self, *, frames=8, resolution=64, audio_samples=4096, sample_rate=16000, fps=10.0, captions=4,
                 max_words=16, vocab_size=65536, decoder="torchcodec", modalities=MODALITIES, seed=0, views=None,
                 require_captions=True, repeats=1):
        for name, value in (("frames", frames), ("resolution", resolution), ("audio_samples", audio_samples),
                            ("sample_rate", sample_rate), ("captions", captions)):
            integer(name, value, minimum=1)
        self.frames, self.resolution, self.fps = frames, resolution, number("fps", fps, exclusive_minimum=0)
        self.audio_samples, self.sample_rate = audio_samples, sample_rate
        self.captions, self.max_words, self.vocab_size = captions, max_words, vocab_size
        self.decoder = choice("decoder", decoder, DECODERS)
        self.modalities = tuple(modalities)
        for m in self.modalities:
            choice("modalities", m, MODALITIES)
        self.seed = integer("seed", seed, minimum=0)
        if views is not None:
            views = (integer("temporal_views", views[0], minimum=1), integer("spatial_views", views[1], minimum=1))
        self.views = views
        self.repeats = integer("repeats", repeats, minimum=1)
        if views is not None and repeats > 1:
            raise ValueError("repeated sampling is for training windows; evaluation views come one set per video")
        self.require_captions = require_captions
        encode_caption("", max_words, vocab_size)  # fail now, not in a worker, on bad text settings

    @property
    def window_s(self) -> float:
        return self.frames / self.fps

    def check_captions(self, entries, where) -> None:
        """Refuse entries without captions when the method's text loss needs them."""
        if "text" in self.modalities and self.require_captions:
            uncaptioned = [e.line for e in entries if not e.captions]
            if uncaptioned:
                raise ValueError(f"{where}: line {uncaptioned[0]} has no 'captions' "
                                 f"({len(uncaptioned)} line(s) without); VATT's video-text loss needs them "
                                 "(set vatt.vt_weight=0 to train on video and audio only)")

    def decode(self, entry: ManifestEntry, epoch: int, index: int, video=None, audio=None) -> dict:
        """The sample of `entry` (drawn for `epoch` and `index`), from `video` and `audio` (paths or
        bytes; by default the entry's files). DecodeError if any of them fails. With `repeats` K > 1
        (training) every tensor has a leading dimension of K windows, all from this one decode."""
        require(self.decoder)
        video = entry.video if video is None else video
        audio = entry.audio if audio is None else audio
        with open_media(video, self.decoder, name=str(entry.video)) as media:
            seg_start, seg_end = windows.segment_bounds(entry.start, entry.end, entry.duration or media.duration)
            if self.views is None:
                starts = [windows.train_start(self.seed, epoch, index, seg_start, seg_end, self.window_s, draw)
                          for draw in range(self.repeats)]
            else:
                starts = windows.view_starts(self.views[0], seg_start, seg_end, self.window_s)
            drawn = starts if self.views is None else starts[:1]  # audio and captions: of the training windows
            out: dict = {"label": self._stacked([torch.tensor(entry.label, dtype=torch.int64)] * len(drawn))}
            if "video" in self.modalities:
                out["video"] = self._video(media, starts, seg_start, seg_end)
            if "audio" in self.modalities:
                if audio is None:
                    out["audio"] = self._audio(media, drawn, seg_start)
                else:
                    with open_media(audio, self.decoder, name=f"{entry.video} (audio)") as track:
                        out["audio"] = self._audio(track, drawn, seg_start)
        if "text" in self.modalities:
            out["text"] = self._stacked([
                torch.stack([encode_caption(c, self.max_words, self.vocab_size)
                             for c in nearest_captions(entry.captions, s, s + self.window_s, self.captions)])
                for s in drawn])
        return out

    def mark(self, sample: dict, index: int, bad: list[int]) -> dict:
        """A decoded sample's identity (the drawn index, once per window) and the clips that failed before it."""
        sample["index"] = index if self.repeats == 1 or self.views is not None else torch.full((self.repeats,), index)
        sample["bad"] = bad_marks(bad)
        return sample

    @staticmethod
    def _stacked(items: list[torch.Tensor]) -> torch.Tensor:
        return items[0] if len(items) == 1 else torch.stack(items)

    def _video(self, media, starts: list[float], seg_start: float, seg_end: float) -> torch.Tensor:
        """(3, T, R, R) uint8, or (windows, 3, T, R, R) for several (evaluation views, repeated
        sampling). Windows close together are decoded in one pass (`windows.decode_runs`). Pixels
        stay uint8 until they are on the device (a quarter of fp32's bytes through the loader and PCIe)."""
        r = self.resolution
        spatial = 1 if self.views is None else self.views[1]
        times = [windows.frame_times(s, self.frames, self.fps, seg_start, seg_end) for s in starts]
        clips: list = [None] * len(starts)
        for run in windows.decode_runs(starts, self.window_s, RUN_GAP_S):
            instants = sorted({t for i in run for t in times[i]})
            decoded = media.frames(instants, r)
            position = {t: k for k, t in enumerate(instants)}
            for i in run:
                clips[i] = decoded[[position[t] for t in times[i]]]
        views = []
        for frames in clips:
            height, width = frames.shape[-2:]
            for offset in windows.spatial_offsets(spatial, max(height, width), r):
                top, left = (offset, (width - r) // 2) if height > width else ((height - r) // 2, offset)
                views.append(frames[:, :, top:top + r, left:left + r].permute(1, 0, 2, 3).contiguous())
        return self._stacked(views)

    def _audio(self, track, starts: list[float], seg_start: float) -> torch.Tensor:
        """(samples,), or (windows, samples): the audio centred on each video window, the windows of a
        run decoded as one span and cut on the target rate's sample grid."""
        n, rate = self.audio_samples, self.sample_rate
        a_starts = [windows.audio_start(s, self.window_s, n / rate, seg_start) for s in starts]
        out: list = [None] * len(starts)
        for run in windows.decode_runs(a_starts, n / rate, RUN_GAP_S):
            first = a_starts[run[0]]
            offsets = {i: round((a_starts[i] - first) * rate) for i in run}
            span = track.audio(first, max(offsets.values()) + n, rate)
            for i in run:
                out[i] = span[offsets[i]:offsets[i] + n]
        return self._stacked(out)


def bad_marks(bad: list[int]) -> torch.Tensor:
    """A sample's "bad" entry: the ids of the clips that failed before it, -1 padded to MAX_ATTEMPTS."""
    return torch.tensor(bad + [-1] * (MAX_ATTEMPTS - len(bad)), dtype=torch.int64)


class ManifestClips(ClipReader, torch.utils.data.Dataset):
    """The clips a JSONL manifest lists (see scaling.data.manifest for the format), each read as
    ClipReader says; the sampler passes (epoch, index) keys, so each epoch draws fresh windows.

    A clip that fails to decode is replaced by another, chosen deterministically from (seed, epoch,
    index, attempt); the sample's "bad" lists the failed indices (-1 padded) for the loop to count.
    """

    per_epoch_draws = True  # the sampler yields (epoch, index) keys

    def __init__(self, manifest_path, **reader):
        super().__init__(**reader)
        self.manifest_path = Path(manifest_path)
        self.entries: list[ManifestEntry] = read_manifest(self.manifest_path)
        self.check_captions(self.entries, self.manifest_path)

    def __len__(self) -> int:
        return len(self.entries)

    def describe_clip(self, index: int) -> str:
        return f"{self.entries[index].video} (line {self.entries[index].line})"

    def __getitem__(self, key) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for manifest {self.manifest_path} of {len(self)} clips")
        index = index % len(self)
        bad, clip, errors = [], index, []
        while True:
            try:
                sample = self.load(clip, epoch)
                break
            except DecodeError as err:
                bad.append(clip)
                errors.append(f"{err} (manifest line {self.entries[clip].line})")
                log.warning("skipping a clip that does not decode: %s", errors[-1])
                if len(bad) == MAX_ATTEMPTS or len(bad) == len(self):
                    raise DecodeError(self.manifest_path, f"{len(bad)} clips in a row failed to decode: "
                                      + "; ".join(errors)) from None
                clip = windows.replacement(self.seed, epoch, index, len(bad), len(self))
        return self.mark(sample, index, bad)  # its identity stays the drawn one (evaluation dedupes on it)

    def load(self, index: int, epoch: int = 0) -> dict:
        """Clip `index` decoded (no replacement): DecodeError if any of its files fails."""
        return self.decode(self.entries[index], epoch, index)


class ImageFolderDataset(torch.utils.data.Dataset):
    """root/<class>/<image>: sorted class folder names give labels 0..C-1; images are found recursively."""

    def __init__(self, root, *, resolution=64):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder root not found: {self.root}")
        self.resolution = integer("resolution", resolution, minimum=1)
        self.classes = sorted(entry.name for entry in self.root.iterdir() if entry.is_dir())
        accepted = ", ".join(IMAGE_EXTENSIONS)
        if not self.classes:
            raise ValueError(f"{self.root}: no class folders; expected {self.root}/<class>/<image> "
                             f"with extensions {accepted}")
        self.samples: list[tuple[Path, int]] = []
        for label, name in enumerate(self.classes):
            images = sorted(p for p in (self.root / name).rglob("*")
                            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not images:
                # An empty class would shift every later label, so it is an error, not a skip.
                raise ValueError(f"{self.root / name}: class folder has no images with extensions {accepted}")
            self.samples += [(path, label) for path in images]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for image folder {self.root} of {len(self)} images")
        index = index % len(self)
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except OSError as err:
            raise ValueError(f"cannot decode image {path}: {err}") from None
        resized_w, resized_h, left, top = resize_crop_box(rgb.width, rgb.height, self.resolution)
        rgb = rgb.resize((resized_w, resized_h), Image.BILINEAR)
        rgb = rgb.crop((left, top, left + self.resolution, top + self.resolution))
        image = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).contiguous()  # uint8, as video clips
        return {"image": image, "label": torch.tensor(label, dtype=torch.int64), "index": index}
