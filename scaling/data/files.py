"""Part of the `scaling` (one run) layer: real data read from files.
Owns ManifestClips (JSONL manifest of video/audio/caption clips, decoded with PyAV) and ImageFolderDataset."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

try:  # PyAV is only needed to decode manifests; machines that never read files can lack it
    import av
except ImportError:  # pragma: no cover - exercised only where PyAV is absent
    av = None
import numpy as np
import torch
from PIL import Image

from scaling.data.text import encode_caption
from scaling.validate import integer, number

MANIFEST_KEYS = ("video", "audio", "captions", "label")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# Frames within this many seconds of a sampling instant count as "at" it: container timestamps
# are rationals, and 3/10 s rarely round-trips to exactly 0.3.
_TIME_TOLERANCE_S = 1e-3


def resize_crop_box(width: int, height: int, resolution: int) -> tuple[int, int, int, int]:
    """(resized_w, resized_h, left, top): scale the short side to `resolution`, then centre-crop."""
    scale = resolution / min(width, height)
    resized_w, resized_h = max(resolution, round(width * scale)), max(resolution, round(height * scale))
    return resized_w, resized_h, (resized_w - resolution) // 2, (resized_h - resolution) // 2


@dataclass(frozen=True)
class ManifestEntry:
    line: int
    video: Path
    audio: Path | None
    captions: tuple[str, ...]
    label: int


def _parse_entry(record, line: int, where: str, folder: Path) -> ManifestEntry:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: line {line} must be a JSON object with keys {list(MANIFEST_KEYS)}")
    unknown = sorted(set(record) - set(MANIFEST_KEYS))
    if unknown:
        # Strict keys: a typo such as "lable" would otherwise silently become "no label".
        raise ValueError(f"{where}: line {line} has unknown field(s) {unknown}; allowed: {list(MANIFEST_KEYS)}")
    files = {}
    for field in ("video", "audio"):
        value = record.get(field)
        if value is None and field == "audio":
            files[field] = None
            continue
        if not isinstance(value, str) or not value:
            problem = "is missing" if value is None else "must be a non-empty path string"
            raise ValueError(f"{where}: line {line}: field '{field}' {problem}")
        path = Path(value) if Path(value).is_absolute() else folder / value
        if not path.is_file():
            raise FileNotFoundError(f"{where}: line {line}: {field} file not found: {path}")
        files[field] = path
    captions = record.get("captions")
    if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
        raise ValueError(f"{where}: line {line}: field 'captions' must be a non-empty list of strings, "
                         f"got {captions!r}")
    label = integer(f"{where}: line {line}: field 'label'", record.get("label", -1), minimum=-1,
                    note="a class index; -1 or absent: unlabelled")
    return ManifestEntry(line, files["video"], files["audio"], tuple(captions), label)


class ManifestClips(torch.utils.data.Dataset):
    """Clips listed in a JSONL manifest; lines are checked at construction, media decoded on access.

    Each line: {"video": path, "audio": path (optional), "captions": [str, ...], "label": int (optional)};
    relative paths are relative to the manifest's folder.
    """

    def __init__(self, manifest_path, *, frames=8, resolution=64, audio_samples=4096, sample_rate=16000,
                 fps=10.0, captions=4, max_words=16, vocab_size=65536):
        self.manifest_path = Path(manifest_path)
        if not self.manifest_path.is_file():
            raise FileNotFoundError(f"manifest not found: {self.manifest_path}")
        for name, value in (("frames", frames), ("resolution", resolution), ("audio_samples", audio_samples),
                            ("sample_rate", sample_rate), ("captions", captions)):
            integer(name, value, minimum=1)
        self.frames, self.resolution, self.fps = frames, resolution, number("fps", fps, exclusive_minimum=0)
        self.audio_samples, self.sample_rate = audio_samples, sample_rate
        self.captions, self.max_words, self.vocab_size = captions, max_words, vocab_size
        encode_caption("", max_words, vocab_size)  # fail now, not in a worker, on bad text settings

        where = str(self.manifest_path)
        self.entries: list[ManifestEntry] = []
        with self.manifest_path.open(encoding="utf-8") as lines:
            for line_no, text in enumerate(lines, start=1):
                if not text.strip():
                    continue  # blank lines (e.g. a trailing newline) carry no clip
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as err:
                    raise ValueError(
                        f"{where}: line {line_no}: malformed JSON ({err.msg} at column {err.colno})") from None
                self.entries.append(_parse_entry(record, line_no, where, self.manifest_path.parent))
        if not self.entries:
            raise ValueError(f"{where}: manifest lists no clips (expected one JSON object per line)")

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for manifest {self.manifest_path} of {len(self)} clips")
        index = index % len(self)
        entry = self.entries[index]
        if av is None:
            raise ImportError("decoding manifest clips needs PyAV: pip install av")
        # Fewer captions than asked for are cycled so every clip yields the same (captions, max_words).
        chosen = [entry.captions[k % len(entry.captions)] for k in range(self.captions)]
        return {
            "video": self._decode_video(entry.video),
            "audio": self._decode_audio(entry),
            "text": torch.stack([encode_caption(c, self.max_words, self.vocab_size) for c in chosen]),
            "label": torch.tensor(entry.label, dtype=torch.int64),
            "index": index,
        }

    def _decode_video(self, path: Path) -> torch.Tensor:
        """(3, frames, R, R) uint8 pixels: frames at k / fps seconds from the first frame. They stay
        uint8 until they are on the device (a quarter of fp32's bytes through the loader and PCIe)."""
        targets = [k / self.fps for k in range(self.frames)]
        picked: list[av.VideoFrame] = []
        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise ValueError(f"{path}: no video stream")
                stream = container.streams.video[0]
                previous, first_time = None, None
                # Frames without timestamps are placed by their count at the stream's nominal rate.
                nominal_rate = float(stream.average_rate or self.fps)
                for count, frame in enumerate(container.decode(stream)):
                    seconds = frame.time if frame.time is not None else count / nominal_rate
                    first_time = seconds if first_time is None else first_time
                    # Each sampling instant takes the last frame shown at or before it.
                    while (len(picked) < self.frames
                           and targets[len(picked)] + _TIME_TOLERANCE_S < seconds - first_time):
                        picked.append(previous if previous is not None else frame)
                    if len(picked) == self.frames:
                        break
                    previous = frame
                if previous is None:
                    raise ValueError(f"{path}: video stream has no decodable frames")
                # A clip shorter than frames / fps holds its last frame rather than failing.
                picked += [previous] * (self.frames - len(picked))
                images = [self._frame_rgb(frame) for frame in picked]
        except av.error.FFmpegError as err:
            raise ValueError(f"cannot decode video {path}: {err}") from None
        video = torch.from_numpy(np.stack(images))  # (T, R, R, 3) uint8
        return video.permute(3, 0, 1, 2).contiguous()

    def _frame_rgb(self, frame) -> np.ndarray:
        resized_w, resized_h, left, top = resize_crop_box(frame.width, frame.height, self.resolution)
        rgb = frame.to_ndarray(format="rgb24", width=resized_w, height=resized_h)
        return rgb[top:top + self.resolution, left:left + self.resolution]

    def _decode_audio(self, entry: ManifestEntry) -> torch.Tensor:
        """(audio_samples,) mono float in [-1, 1] at sample_rate, zero-padded if the track is short."""
        path = entry.audio or entry.video
        chunks, total = [], 0
        try:
            with av.open(str(path)) as container:
                if not container.streams.audio:
                    raise ValueError(f"{path}: no audio stream, and manifest line {entry.line} names no 'audio' "
                                     f"file ({self.manifest_path})")
                resampler = av.AudioResampler(format="flt", layout="mono", rate=self.sample_rate)
                for frame in container.decode(container.streams.audio[0]):
                    for out in resampler.resample(frame):
                        chunks.append(out.to_ndarray().reshape(-1))
                        total += chunks[-1].size
                    if total >= self.audio_samples:
                        break
                else:
                    chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
        except av.error.FFmpegError as err:
            raise ValueError(f"cannot decode audio {path}: {err}") from None
        audio = torch.zeros(self.audio_samples)
        if chunks:
            samples = torch.from_numpy(np.concatenate(chunks)[:self.audio_samples].astype(np.float32))
            audio[:len(samples)] = samples
        return audio.clamp_(-1.0, 1.0)


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
