"""Part of the `scaling` (one run) layer: a manifest's files packed into WebDataset tar shards.
Owns `write_shards` (a manifest -> DIR/{prefix}-000000.tar, ... and DIR/{prefix}-shards.json) and
`parse_size` (the --shard-size values).

On a cluster's parallel file system, reading a million small files is slow and hard on the
metadata servers; a few hundred 1 GB tar files are read sequentially. The sample layout is
video2dataset's, which webdataset, OpenCLIP and the suite's reader take: for each manifest entry, in
manifest order, a key KEY (its zero-padded running index, "000000042") and the members

    KEY.mp4     the video file's bytes, unchanged (never re-encoded). Every container the suite
                indexes (.mp4 .mkv .webm .avi .mov .m4v) is stored under this one name, as readers look
                for it: the decoders read the container from the bytes, not from the name, and "source"
                in KEY.json keeps the file's own name
    KEY.json    the entry's metadata: "caption" (the first caption's text), "captions" (as in the
                manifest: strings or {"text", "start", "end"}), "start", "end", "label", "class",
                "duration", "streams" when the line has them, "source" (the video's path as the
                manifest names it: relative to the manifest's folder when inside it), "audio_source"
                (the same for a separate audio file) and "line" (the manifest line)
    KEY.txt     the first caption (entries with captions)
    KEY.cls     the label as text (labelled entries: label >= 0)
    KEY.m4a     a separate audio file's bytes, unchanged, by its extension (.wav, .m4a, .mp3, .flac,
                .ogg, .aac)

A shard is closed before the sample that would take its file past the size limit (a sample larger
than the limit is a shard of its own). Beside the shards, {prefix}-shards.json records the brace
pattern, each shard's sample count and size, the total and the source manifest: the reader takes the
epoch length and an exact resume point from it.

Everything is checked before a byte is written (the manifest, every file it names, the folder, the
free space), and the shards are written into a temporary folder inside DIR and moved in only when all
are complete: a refusal or a failure leaves DIR as it was.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from scaling.data.corpus import VIDEO_EXTENSIONS, manifest_path_of
from scaling.validate import ConfigError, integer

VIDEO_MEMBER = "mp4"   # every video's member, whatever its container (the bytes say which it is)
AUDIO_EXTENSIONS = (".wav", ".m4a", ".mp3", ".flac", ".ogg", ".aac")   # kept as the audio member's name
KEY_DIGITS = 9      # "000000042": room for a billion samples (more widen it)
SHARD_DIGITS = 6    # train-000000.tar
MTIME = 0           # every member's mtime: the same manifest gives byte-identical shards
SHOWN = 5           # problems named one by one in a refusal

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


@dataclass(frozen=True)
class ShardReport:
    """What `write_shards` wrote."""

    manifest: Path
    out_dir: Path
    pattern: str                          # DIR-relative brace pattern: train-{000000..000012}.tar
    sidecar: Path                         # DIR/{prefix}-shards.json
    shards: tuple[tuple[str, int, int], ...]   # (file name, samples, bytes), in order
    removed: tuple[str, ...] = ()         # the prior shards and sidecar of this prefix --force replaced

    @property
    def samples(self) -> int:
        return sum(n for _, n, _ in self.shards)

    @property
    def bytes(self) -> int:
        return sum(b for _, _, b in self.shards)

    @property
    def size(self) -> str:
        """The shards' total bytes, for people: "1.25 GB", "12.3 MB"."""
        return f"{self.bytes / 1e9:.2f} GB" if self.bytes >= 10**9 else f"{self.bytes / 1e6:.1f} MB"

    @property
    def data_path(self) -> str:
        """The value of data.path that reads these shards: the absolute brace pattern."""
        return os.path.join(os.path.abspath(self.out_dir), self.pattern)


def parse_size(text, field: str = "--shard-size") -> int:
    """Bytes of a size such as "500MB", "1GB" (powers of 1000), "1.5GiB" (powers of 1024) or "123456"."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*", str(text))
    if match is None or match.group(2).lower() not in _UNITS:
        raise ConfigError(field, f"got {text!r}; must be a size such as 500MB, 1GB, 1.5GiB (KB, MB, GB, TB: "
                                 "powers of 1000; KiB, MiB, GiB, TiB: of 1024) or a number of bytes")
    try:
        value = int(Decimal(match.group(1)) * _UNITS[match.group(2).lower()])
    except InvalidOperation:  # pragma: no cover - the pattern admits decimal numbers only
        raise ConfigError(field, f"got {text!r}; not a number") from None
    if value < 1:
        raise ConfigError(field, f"got {text!r} ({value} bytes); must be at least 1 byte")
    return value


def shard_name(prefix: str, index: int, digits: int = SHARD_DIGITS) -> str:
    return f"{prefix}-{index:0{digits}d}.tar"


def prior_files(out_dir: Path, prefix: str) -> list[Path]:
    """The shards ({prefix}-<digits>.tar) and the sidecar of `prefix` in `out_dir`: what --force
    replaces. Another prefix's files ("train-extra-000000.tar" for prefix "train") are not matched."""
    if not out_dir.is_dir():
        return []
    shard = re.compile(re.escape(prefix) + r"-\d+\.tar")
    return sorted(p for p in out_dir.iterdir()
                  if (shard.fullmatch(p.name) and p.is_file()) or p.name == f"{prefix}-shards.json")


def _blocks(size: int) -> int:
    """Bytes one tar member of `size` bytes takes: its 512-byte header and its data in 512-byte blocks."""
    return tarfile.BLOCKSIZE + math.ceil(size / tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _tar_bytes(members: int) -> int:
    """A tar file's size from its members' bytes: tarfile ends it with two zero blocks and pads it to
    a whole record."""
    return math.ceil((members + 2 * tarfile.BLOCKSIZE) / tarfile.RECORDSIZE) * tarfile.RECORDSIZE


@dataclass(frozen=True)
class _Sample:
    key: str
    line: int
    files: tuple[tuple[str, Path], ...]   # (member extension, source file), bytes copied unchanged
    meta: dict                            # KEY.json and the .txt and .cls members
    size: int                             # the sample's bytes in a tar (headers and padding included)


def _plan(manifest: Path) -> list[_Sample]:
    """Every entry of `manifest` as a sample, checked: ConfigError("MANIFEST") naming the file and the
    lines of a manifest that cannot be read or that names missing files or unknown extensions."""
    from scaling.data.manifest import ManifestError, read_manifest

    try:
        entries = read_manifest(manifest)
    except (FileNotFoundError, ManifestError) as err:
        raise ConfigError("MANIFEST", str(err)) from None
    with manifest.open(encoding="utf-8") as lines:
        raw = {number: text for number, text in enumerate(lines, start=1)}
    digits = max(KEY_DIGITS, len(str(len(entries) - 1)))
    samples, problems = [], []
    for index, entry in enumerate(entries):
        record = json.loads(raw[entry.line])
        files = []
        for what, path, known in (("video", entry.video, VIDEO_EXTENSIONS), ("audio", entry.audio, AUDIO_EXTENSIONS)):
            if path is None:
                continue
            ext = path.suffix.lower()
            if ext not in known:
                hint = ("; remux it: ffmpeg -i IN -c copy OUT.mp4" if what == "video"
                        else " (an audio-only .mp4: rename it .m4a)" if ext == ".mp4" else "")
                problems.append(f"line {entry.line}: {what} file {path} has extension {ext or '(none)'!r}; shards hold "
                                f"{what} as one of {' '.join(known)}{hint}")
            elif not path.is_file():
                problems.append(f"line {entry.line}: {what} file {path} "
                                + ("is not a file" if path.exists() else "not found"))
            else:
                files.append((VIDEO_MEMBER if what == "video" else ext[1:], path))
        if len(files) < 1 + (entry.audio is not None):
            continue
        meta = {}
        if entry.captions:
            meta["caption"], meta["captions"] = entry.captions[0].text, record["captions"]
        for key in ("start", "end", "label", "class", "duration", "streams"):
            if record.get(key) is not None:
                meta[key] = record[key]
        meta["source"] = manifest_path_of(entry.video, manifest.parent)
        if entry.audio is not None:
            meta["audio_source"] = manifest_path_of(entry.audio, manifest.parent)
        meta["line"] = entry.line
        size = sum(_blocks(path.stat().st_size) for _, path in files) + sum(_blocks(len(b)) for b in _texts(meta).values())
        samples.append(_Sample(f"{index:0{digits}d}", entry.line, tuple(files), meta, size))
    if problems:
        shown = "; ".join(problems[:SHOWN]) + (f"; ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else "")
        raise ConfigError("MANIFEST", f"{manifest}: {len(problems)} problem(s) with the files its entries name "
                                      f"(nothing was written): {shown}")
    return samples


def _texts(meta: dict) -> dict[str, bytes]:
    """A sample's members written from its metadata: .json, and .txt and .cls where they apply."""
    out = {"json": json.dumps(meta, ensure_ascii=False).encode("utf-8")}
    if "caption" in meta:
        out["txt"] = meta["caption"].encode("utf-8")
    if meta.get("label", -1) >= 0:
        out["cls"] = str(meta["label"]).encode("ascii")
    return out


def _pack(samples: list[_Sample], limit: int) -> list[list[_Sample]]:
    """Consecutive runs of `samples` (manifest order), each run's tar file at most `limit` bytes
    unless the run is a single sample larger than it."""
    shards, current, used = [], [], 0
    for sample in samples:
        if current and _tar_bytes(used + sample.size) > limit:
            shards.append(current)
            current, used = [], 0
        current.append(sample)
        used += sample.size
    return shards + [current]


def write_shards(manifest, out_dir, *, shard_size_bytes: int, prefix: str = "train", force: bool = False,
                 progress: bool = True) -> ShardReport:
    """Pack the files `manifest` names into DIR/{prefix}-000000.tar, ... (at most `shard_size_bytes`
    each, in manifest order) and write DIR/{prefix}-shards.json; the layout is the module docstring's.

    Refuses with a ConfigError naming the argument, and writes nothing: a bad size or prefix, a
    manifest that cannot be read (the file and line), entries whose files are missing (their lines),
    an --out that is a file, a non-empty --out without `force`, and too little free space. With
    `force`, the prior shards and sidecar of `prefix` in DIR are replaced; other files are left alone.
    """
    from tqdm import tqdm

    manifest, out_dir = Path(manifest), Path(out_dir)
    limit = integer("--shard-size", shard_size_bytes, minimum=1, note="bytes")
    if not isinstance(prefix, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", prefix):
        raise ConfigError("--prefix", f"got {prefix!r}; must be a file name prefix of letters, digits, '.', '_' "
                                      "and '-' (e.g. train)")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError("--out", f"{out_dir} is not a folder")
    if out_dir.is_dir() and not force and any(out_dir.iterdir()):
        raise ConfigError("--out", f"{out_dir} is not empty; pass --force to replace its {prefix!r} shards and "
                                   f"{prefix}-shards.json (its other files are left alone), or give an empty folder")
    samples = _plan(manifest)
    shards = _pack(samples, limit)
    total = sum(_tar_bytes(sum(s.size for s in shard)) for shard in shards)
    probe = out_dir if out_dir.exists() else next(p for p in out_dir.absolute().parents if p.exists())
    free = shutil.disk_usage(probe).free
    if total > free:
        raise ConfigError("--out", f"the {len(shards)} shards need {total / 1e9:.2f} GB; {probe} has "
                                   f"{free / 1e9:.2f} GB free")

    import webdataset  # noqa: F401  (it imports torch: seconds, better spent before the bar starts)

    created = out_dir.absolute()  # the outermost folder this call creates, removed again on a failure
    while not created.parent.exists():
        created = created.parent
    created = None if out_dir.exists() else created
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{prefix}-shards.", suffix=".tmp", dir=out_dir))
    digits = max(SHARD_DIGITS, len(str(len(shards) - 1)))
    written, done = [], False
    try:
        with tqdm(total=sum(p.stat().st_size for s in samples for _, p in s.files), desc="shard", unit="B",
                  unit_scale=True, unit_divisor=1024, file=sys.stderr, disable=not progress, dynamic_ncols=True,
                  mininterval=0.5) as bar:
            for number, shard in enumerate(shards):
                name = shard_name(prefix, number, digits)
                bar.set_postfix_str(name, refresh=False)
                _write_shard(staging / name, shard, manifest, bar)
                written.append((name, len(shard), (staging / name).stat().st_size))
        pattern = f"{prefix}-{{{0:0{digits}d}..{len(shards) - 1:0{digits}d}}}.tar"
        sidecar = out_dir / f"{prefix}-shards.json"
        index = {"pattern": pattern, "shards": [{"name": n, "samples": k, "bytes": b} for n, k, b in written],
                 "samples": len(samples), "manifest": os.path.abspath(manifest)}
        _write_file(staging / sidecar.name, (json.dumps(index, indent=1) + "\n").encode("utf-8"))
        # Every shard is complete: move them in, drop the prior ones they do not overwrite, the index last.
        prior = prior_files(out_dir, prefix)
        for name, _, _ in written:
            os.replace(staging / name, out_dir / name)
        new = {name for name, _, _ in written} | {sidecar.name}
        for path in prior:
            if path.name not in new:
                path.unlink()
        os.replace(staging / sidecar.name, sidecar)
        done = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created is not None and not done:
            shutil.rmtree(created, ignore_errors=True)  # it held nothing before: leave no empty folder behind
    return ShardReport(manifest=manifest, out_dir=out_dir, pattern=pattern, sidecar=sidecar, shards=tuple(written),
                       removed=tuple(p.name for p in prior))


def _write_shard(path: Path, shard: list[_Sample], manifest: Path, bar) -> None:
    """One tar file of `shard`'s samples, with webdataset's TarWriter (no encoding: the bytes go in as
    they are), flushed to disk."""
    from webdataset import TarWriter

    try:
        stream = path.open("wb")
    except OSError as err:
        raise ConfigError("--out", f"cannot write {path}: {err.strerror or err}") from None
    with stream:
        writer = TarWriter(stream, encoder=False, mtime=MTIME)
        try:
            for sample in shard:
                member = {"__key__": sample.key, **_texts(sample.meta)}
                for ext, source in sample.files:
                    try:
                        member[ext] = source.read_bytes()
                    except OSError as err:
                        raise ConfigError("MANIFEST", f"{manifest}: line {sample.line}: cannot read {source}: "
                                                      f"{err.strerror or err} (nothing was written)") from None
                try:
                    writer.write(member)
                except OSError as err:
                    raise ConfigError("--out", f"cannot write {path}: {err.strerror or err} "
                                               "(nothing was written)") from None
                bar.update(sum(len(member[ext]) for ext, _ in sample.files))
        except BaseException:
            try:
                writer.close()  # while the file is open: the tar stream must not flush into a closed file later
            except Exception:
                pass
            raise
        try:
            writer.close()
            stream.flush()
            os.fsync(stream.fileno())
        except OSError as err:
            raise ConfigError("--out", f"cannot write {path}: {err.strerror or err} (nothing was written)") from None


def _write_file(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
