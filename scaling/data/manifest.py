"""Part of the `scaling` (one run) layer: the JSONL manifest of a real corpus, read and checked.
Owns the line format (files, segment times, timed or plain captions, labels, index facts) and its parser.

One JSON object per line; relative paths are relative to the manifest's folder:

    {"video": "a.mp4",                      required
     "audio": "a.wav",                      optional: audio from another file (same timeline)
     "start": 12.0, "end": 22.0,            optional: the segment (seconds) that is one sample
     "captions": ["a dog barks"]            optional: plain strings, or timed ones:
               | [{"text": "...", "start": 12.5, "end": 14.0}, ...]
     "label": 3, "class": "barking",        optional: class index (-1: unlabelled) and its name
     "duration": 300.0, "streams": {...}}   optional: facts `scaling data index` records
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from scaling.validate import integer

MANIFEST_KEYS = ("video", "audio", "start", "end", "captions", "label", "class", "duration", "streams")
CAPTION_KEYS = ("text", "start", "end")


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file and the line."""


@dataclass(frozen=True)
class Caption:
    text: str
    start: float | None = None
    end: float | None = None


@dataclass(frozen=True)
class ManifestEntry:
    line: int
    video: Path
    audio: Path | None
    captions: tuple[Caption, ...]
    label: int
    start: float = 0.0
    end: float | None = None           # None: the end of the file
    duration: float | None = None      # the file's, when the manifest records it


def _seconds(where: str, name: str, value, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise ManifestError(f"{where}: field '{name}' must be a finite number of seconds >= {minimum}, got {value!r}")
    return float(value)


def _captions(where: str, value) -> tuple[Caption, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise ManifestError(f"{where}: field 'captions' must be a non-empty list, got {value!r}")
    if all(isinstance(c, str) for c in value):
        return tuple(Caption(c) for c in value)
    if not all(isinstance(c, dict) for c in value):
        raise ManifestError(f"{where}: field 'captions' must be all strings or all objects {{\"text\", \"start\", "
                            f"\"end\"}}, got {value!r}")
    out = []
    for k, caption in enumerate(value):
        here = f"{where}: captions[{k}]"
        unknown = sorted(set(caption) - set(CAPTION_KEYS))
        missing = [key for key in CAPTION_KEYS if key not in caption]
        if unknown or missing:
            raise ManifestError(f"{here} must have exactly the keys {list(CAPTION_KEYS)}"
                                + (f"; unknown {unknown}" if unknown else "") + (f"; missing {missing}" if missing else ""))
        if not isinstance(caption["text"], str):
            raise ManifestError(f"{here}: 'text' must be a string, got {caption['text']!r}")
        start, end = _seconds(here, "start", caption["start"]), _seconds(here, "end", caption["end"])
        if end < start:
            raise ManifestError(f"{here}: 'end' ({end}) is before 'start' ({start})")
        out.append(Caption(caption["text"], start, end))
    return tuple(out)


def parse_entry(record, line: int, where: str, folder: Path) -> ManifestEntry:
    """One manifest line's object, checked (files are not opened: a missing one is a bad clip later)."""
    here = f"{where}: line {line}"
    if not isinstance(record, dict):
        raise ManifestError(f"{here} must be a JSON object with keys from {list(MANIFEST_KEYS)}")
    unknown = sorted(set(record) - set(MANIFEST_KEYS))
    if unknown:
        # Strict keys: a typo such as "lable" would otherwise silently become "no label".
        raise ManifestError(f"{here} has unknown field(s) {unknown}; allowed: {list(MANIFEST_KEYS)}")
    files = {}
    for field in ("video", "audio"):
        value = record.get(field)
        if value is None and field == "audio":
            files[field] = None
            continue
        if not isinstance(value, str) or not value:
            problem = "is missing" if value is None else "must be a non-empty path string"
            raise ManifestError(f"{here}: field '{field}' {problem}")
        files[field] = Path(value) if Path(value).is_absolute() else folder / value
    start = _seconds(here, "start", record.get("start", 0.0))
    end = None if record.get("end") is None else _seconds(here, "end", record["end"])
    duration = None if record.get("duration") is None else _seconds(here, "duration", record["duration"])
    if end is not None and end <= start:
        raise ManifestError(f"{here}: field 'end' ({end}) must be after 'start' ({start})")
    if duration is not None and start >= duration:
        raise ManifestError(f"{here}: field 'start' ({start}) is not before the file's duration ({duration})")
    try:
        label = integer(f"{here}: field 'label'", record.get("label", -1), minimum=-1,
                        note="a class index; -1 or absent: unlabelled")
    except ValueError as err:
        raise ManifestError(str(err)) from None
    if record.get("class") is not None and not isinstance(record["class"], str):
        raise ManifestError(f"{here}: field 'class' must be a string (the label's name), got {record['class']!r}")
    if record.get("streams") is not None and not isinstance(record["streams"], dict):
        raise ManifestError(f"{here}: field 'streams' must be an object, got {record['streams']!r}")
    return ManifestEntry(line, files["video"], files["audio"], _captions(here, record.get("captions")), label,
                         start, end, duration)


def read_manifest(path) -> list[ManifestEntry]:
    """Every entry of the manifest at `path`; blank lines are skipped. ManifestError names file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    where, entries = str(path), []
    with path.open(encoding="utf-8") as lines:
        for line_no, text in enumerate(lines, start=1):
            if not text.strip():
                continue  # blank lines (e.g. a trailing newline) carry no clip
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                raise ManifestError(f"{where}: line {line_no}: malformed JSON ({err.msg} at column {err.colno})") from None
            entries.append(parse_entry(record, line_no, where, path.parent))
    if not entries:
        raise ManifestError(f"{where}: manifest lists no clips (expected one JSON object per line)")
    return entries


def nearest_captions(captions: tuple[Caption, ...], start: float, end: float, count: int) -> list[str]:
    """`count` caption texts for the window [start, end]: timed captions nearest it first (by the gap
    between the two intervals, then by the distance of their centres), as MIL-NCE and VATT take the
    ASR sentences around a clip; plain captions in their order. Too few are cycled."""
    if not captions:
        return [""] * count
    ranked = list(captions)
    if captions[0].start is not None:
        centre = (start + end) / 2

        def distance(c: Caption):
            return (max(0.0, c.start - end, start - c.end), abs((c.start + c.end) / 2 - centre))

        ranked = sorted(captions, key=distance)[:count]
    return [ranked[k % len(ranked)].text for k in range(count)]
