"""Part of the `scaling` (one run) layer: a real corpus on disk, turned into a manifest and checked.
Owns `index_corpus` (a folder of videos -> a JSONL manifest), `check_manifest` (decode every entry
once; a bad list and a cleaned manifest) and `check_paths` (a config's corpus files exist).

Both scans run over the cores in forked worker processes, with a progress bar on stderr. One broken
file never ends a scan: it is counted, named and set aside (a corpus of a million files always
holds some). The module imports no torch until a scan starts, so the command line starts fast.
"""
from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaling.config import DECODERS
from scaling.validate import ConfigError, choice, integer

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")
LAYOUTS = ("kinetics", "flat")   # kinetics: DIR/<class>/<video>, labelled; flat: any videos under DIR


@dataclass(frozen=True)
class IndexReport:
    """What `index_corpus` wrote and what it set aside."""

    manifest: Path
    indexed: int                          # lines in the manifest
    classes: tuple[str, ...]              # label k is classes[k]; () for the flat layout
    empty_classes: tuple[str, ...]        # class folders without a video (their labels are kept)
    without_audio: tuple[str, ...]        # manifest paths of files with no audio track (VATT needs one)
    bad: tuple[tuple[str, str], ...]      # (path, why) of the files that could not be probed: not indexed
    bad_list: Path | None                 # where `bad` is written (<out stem>.unreadable.jsonl), one object a line
    stray: tuple[str, ...] = ()           # kinetics layout: videos directly in DIR, in no class: skipped


@dataclass(frozen=True)
class CheckReport:
    """What `check_manifest` decoded, and the two files it wrote."""

    manifest: Path
    total: int
    bad: tuple[tuple[int, str, str], ...]  # (manifest line, video as the line names it, the error)
    bad_list: Path
    clean: Path
    uncaptioned: int = 0                   # entries without captions (VATT's video-text loss needs them)

    @property
    def good(self) -> int:
        return self.total - len(self.bad)


def default_workers() -> int:
    """The cores this process may use (a SLURM allocation's, not the node's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------- index
def find_videos(root: Path, layout: str) -> tuple[list[tuple[Path, int, str | None]], list[str], list[Path]]:
    """([(file, label, class name)], class names, stray files), sorted by path. Hidden files and
    folders (".x", macOS's "._x.mp4") are not videos. Labels are the sorted class folder names'
    positions, counting empty folders too: two splits with the same class folders get the same labels."""
    def videos(folder: Path) -> list[Path]:
        return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS
                      and not any(part.startswith(".") for part in p.relative_to(root).parts))

    if layout == "flat":
        return [(p, -1, None) for p in videos(root)], [], []
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    found = [(p, label, name) for label, name in enumerate(classes) for p in videos(root / name)]
    stray = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS
                   and not p.name.startswith("."))
    return found, classes, stray


def manifest_path_of(video: Path, folder: Path) -> str:
    """`video` as a manifest in `folder` names it: relative when it lies inside the folder (the
    corpus and its manifest move together), else absolute."""
    video, folder = Path(os.path.abspath(video)), Path(os.path.abspath(folder))
    try:
        return video.relative_to(folder).as_posix()
    except ValueError:
        return str(video)


def index_corpus(root, out, *, layout: str, decoder: str = "pyav", workers: int | None = None,
                 force: bool = False, progress: bool = True) -> IndexReport:
    """Write the manifest of the videos under `root` to `out`: one line per file with its label (the
    kinetics layout), duration and streams, read from the headers only.

    Refuses, with a ConfigError naming the argument and writing nothing, a `root` that is missing or
    holds no videos, a kinetics `root` without class folders, and an `out` that exists (unless
    `force`). Files that cannot be probed go to `<out stem>.unreadable.jsonl`, not to the manifest.
    """
    root, out = Path(root), Path(out)
    choice("--layout", layout, LAYOUTS)
    choice("--decoder", decoder, DECODERS)
    workers = integer("--workers", default_workers() if workers is None else workers, minimum=1)
    if not root.is_dir():
        raise ConfigError("DIR", f"{root}: no such folder" if not root.exists() else f"{root}: not a folder")
    if out.is_dir():
        raise ConfigError("--out", f"{out} is a folder; give the manifest's file name (e.g. {out / 'train.jsonl'})")
    if out.exists() and not force:
        raise ConfigError("--out", f"{out} exists; pass --force to replace it")
    found, classes, stray = find_videos(root, layout)
    accepted = " ".join(VIDEO_EXTENSIONS)
    if layout == "kinetics" and not classes:
        raise ConfigError("DIR", f"{root}: no class folders; --layout kinetics reads {root}/<class>/<video> "
                                 "(use --layout flat for videos without classes)")
    if not found:
        where = "its class folders hold" if layout == "kinetics" else "it holds"
        raise ConfigError("DIR", f"{root}: {where} no video files (extensions {accepted})")
    _require(decoder)

    results = _parallel(_probe_one, [(str(p), decoder) for p, _, _ in found], workers=workers, progress=progress,
                        desc="index", unit="file")
    lines, bad, without_audio, per_class = [], [], [], dict.fromkeys(classes, 0)
    for (path, label, name), (info, error) in zip(found, results):
        if error is not None:
            bad.append((str(path), error))
            continue
        record: dict[str, Any] = {"video": manifest_path_of(path, out.parent)}
        if name is not None:
            record["label"], record["class"] = label, name
            per_class[name] += 1
        record["duration"], record["streams"] = info["duration"], info["streams"]
        if info["streams"]["audio"] is None:
            without_audio.append(record["video"])
        lines.append(json.dumps(record))
    if not lines:
        raise ConfigError("DIR", f"{root}: none of its {len(found)} video files could be probed; the first: "
                                 + "; ".join(f"{p}: {why}" for p, why in bad[:3]))
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_lines(out, lines)
    bad_list = out.with_name(f"{out.stem}.unreadable.jsonl")
    if bad:
        _write_lines(bad_list, [json.dumps({"video": p, "error": why}) for p, why in bad])
    elif bad_list.exists():
        bad_list.unlink()  # a stale list from an earlier index would name files that are fine now
    return IndexReport(manifest=out, indexed=len(lines), classes=tuple(classes),
                       empty_classes=tuple(n for n in classes if not per_class[n]),
                       without_audio=tuple(without_audio), bad=tuple(bad), bad_list=bad_list if bad else None,
                       stray=tuple(str(p) for p in stray))


def _probe_one(item: tuple[str, str]) -> tuple[dict | None, str | None]:
    """(the file's duration and streams, None) or (None, why it cannot be indexed)."""
    from scaling.data.decode import DecodeError, probe

    path, decoder = item
    try:
        info = probe(path, decoder)
    except DecodeError as err:
        return None, err.reason
    except Exception as err:  # a decoder's own crash on one file must not end the scan
        return None, f"{type(err).__name__}: {err}"
    if not info.has_video:
        return None, "no video stream"
    if not info.duration or info.duration <= 0:
        # A window is placed inside the duration; without one every sample would be the first frame.
        return None, "no duration in its headers (remux it: ffmpeg -i IN -c copy OUT.mp4)"
    return {"duration": round(info.duration, 6), "streams": info.streams()}, None


# ----------------------------------------------------------------------------- check
def check_manifest(manifest, *, out_dir=None, workers: int | None = None, progress: bool = True,
                   **clip_options) -> CheckReport:
    """Decode every entry's training window once (epoch 0, `clip_options` as ManifestClips takes
    them: frames, resolution, fps, audio_samples, sample_rate, decoder, modalities, seed).

    Writes `<stem>.bad.jsonl` (line, video, error per bad entry) and `<stem>.clean.jsonl` (the good
    lines, in order) into `out_dir` (default: the manifest's folder). The clean lines are verbatim
    there; in another folder their relative file paths are made absolute, so they still point at
    the files. A manifest that cannot be read raises ConfigError naming the file and the line.
    """
    from scaling.data.files import ManifestClips
    from scaling.data.manifest import ManifestError

    manifest = Path(manifest)
    workers = integer("--workers", default_workers() if workers is None else workers, minimum=1)
    out_dir = Path(out_dir) if out_dir is not None else manifest.parent
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError("--out-dir", f"{out_dir} is not a folder")
    if "decoder" in clip_options:
        _require(clip_options["decoder"])
    try:
        clips = ManifestClips(manifest, **clip_options, require_captions=False)
    except FileNotFoundError as err:
        raise ConfigError("MANIFEST", str(err)) from None
    except ManifestError as err:
        raise ConfigError("MANIFEST", str(err)) from None
    except ConfigError as err:  # a ManifestClips argument: name it by its data.* field
        raise ConfigError(f"data.{err.field}", err.message) from None

    try:
        results = _parallel(_check_one, list(range(len(clips))), workers=workers, progress=progress, desc="check",
                            unit="clip", initializer=_set_clips, initargs=(clips,))
    finally:
        _set_clips(None)
    raw = _raw_lines(manifest)
    same_folder = os.path.abspath(out_dir) == os.path.abspath(manifest.parent)
    bad, clean = [], []
    for entry, error in zip(clips.entries, results):
        text = raw[entry.line]
        if error is None:
            clean.append(text if same_folder else _absolute_paths(text, manifest.parent))
        else:
            bad.append((entry.line, str(json.loads(text).get("video")), error))
    out_dir.mkdir(parents=True, exist_ok=True)
    bad_list, clean_path = out_dir / f"{manifest.stem}.bad.jsonl", out_dir / f"{manifest.stem}.clean.jsonl"
    _write_lines(bad_list, [json.dumps({"line": line, "video": video, "error": error}) for line, video, error in bad])
    _write_lines(clean_path, clean)
    return CheckReport(manifest=manifest, total=len(clips), bad=tuple(bad), bad_list=bad_list, clean=clean_path,
                       uncaptioned=sum(not e.captions for e in clips.entries))


_CLIPS = None  # the ManifestClips a check worker decodes from (set once per process)


def _set_clips(clips) -> None:
    global _CLIPS
    _CLIPS = clips
    if multiprocessing.parent_process() is not None:
        import torch

        torch.set_num_threads(1)  # one core per worker, as the decoders' own threads


def _check_one(index: int) -> str | None:
    """None when entry `index` decodes, else the error."""
    from scaling.data.decode import DecodeError

    try:
        _CLIPS.load(index, epoch=0)
    except DecodeError as err:
        return str(err)
    except Exception as err:  # anything else one file does wrong is that file's fault, not the scan's
        return f"{type(err).__name__}: {err}"
    return None


def _raw_lines(path: Path) -> dict[int, str]:
    with path.open(encoding="utf-8") as lines:
        return {number: text.rstrip("\r\n") for number, text in enumerate(lines, start=1)}


def _absolute_paths(text: str, folder: Path) -> str:
    record = json.loads(text)
    for key in ("video", "audio"):
        if isinstance(record.get(key), str) and not Path(record[key]).is_absolute():
            record[key] = os.path.abspath(folder / record[key])
    return json.dumps(record)


# ----------------------------------------------------------------------------- corpus paths of a config
def check_paths(data_cfg, splits=("train", "eval")) -> None:
    """Refuse, before any compute, a config whose real corpus is not there: ConfigError naming
    data.path or data.eval_path (of `splits`) and the file. Cheap: it only asks whether the paths
    exist (what they hold is checked by `scaling data check`, and when a run starts)."""
    source = data_cfg.source
    if source == "synthetic":
        return
    kind = {"manifest": "manifest", "webdataset": "shard set", "images": "image folder"}[source]
    for field, split, value in (("data.path", "train", data_cfg.path), ("data.eval_path", "eval", data_cfg.eval_path)):
        if split not in splits:
            continue
        if not value:
            raise ConfigError(field, f"data.source={source!r} reads the {split} split from a {kind}: set {field}")
        path = Path(value)
        if source == "manifest" and not path.is_file():
            what = "is a folder, not a manifest file" if path.is_dir() else "no such manifest"
            raise ConfigError(field, f"{path}: {what} (write one with `scaling data index DIR --out {path}`, "
                                     f"or point {field} at yours)")
        if source == "images" and not path.is_dir():
            raise ConfigError(field, f"{path}: no such image folder (expected {path}/<class>/<image>)")
        if source == "webdataset":
            _check_shards(field, value)


def _check_shards(field: str, value: str) -> None:
    """The shards a webdataset path names all exist (a brace pattern, or a -shards.json sidecar)."""
    from webdataset.shardlists import expand_urls

    if value.endswith(".json"):
        if not Path(value).is_file():
            raise ConfigError(field, f"{value}: no such shard list (write shards with `scaling data shard MANIFEST "
                                     "--out DIR`; it writes DIR/PREFIX-shards.json)")
        return
    shards = expand_urls(value)
    missing = [s for s in shards if not Path(s).is_file()]
    if missing:
        raise ConfigError(field, f"{value}: {len(missing)} of {len(shards)} shards not found, first {missing[0]} "
                                 "(write shards with `scaling data shard MANIFEST --out DIR`)")


# ----------------------------------------------------------------------------- helpers
def _require(decoder: str) -> None:
    from scaling.data.decode import require

    try:
        require(decoder)
    except ImportError as err:
        raise ConfigError("--decoder", str(err)) from None


def _parallel(fn: Callable, items: Sequence, *, workers: int, progress: bool, desc: str, unit: str,
              initializer: Callable | None = None, initargs: tuple = ()) -> list:
    """[fn(item) for item in items], in order, over `workers` processes, with a progress bar.

    The workers are forked: they inherit what this process imported (torch and the decoders take
    seconds to import) instead of importing it again. They are all started before the bar's
    monitor thread exists. An interrupt cancels what is queued instead of finishing it."""
    from tqdm import tqdm

    def bar():
        return tqdm(total=len(items), desc=desc, unit=unit, file=sys.stderr, disable=not progress,
                    dynamic_ncols=True, mininterval=0.5)

    if workers == 1 or len(items) < 2:
        if initializer is not None:
            initializer(*initargs)
        out = []
        with bar() as shown:
            for item in items:
                out.append(fn(item))
                shown.update()
        return out
    context = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
    workers = min(workers, len(items))
    chunk = max(1, min(16, len(items) // (workers * 8)))
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=initializer,
                                                  initargs=initargs)
    try:
        results, out = pool.map(fn, items, chunksize=chunk), []
        with bar() as shown:
            for result in results:
                out.append(result)
                shown.update()
    except concurrent.futures.process.BrokenProcessPool:
        pool.shutdown(wait=False, cancel_futures=True)
        raise RuntimeError(f"a {desc} worker process died (a decoder crashed on a file?); "
                           "the files it had were not scanned") from None
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return out


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    """`lines` to `path` atomically: a reader sees the old file or the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
