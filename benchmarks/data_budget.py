"""Benchmark 7, continued (`scaling bench data_real` runs it after its decoder comparison): what it
takes to feed a GPU from real files.

5. Manifest vs shards: one corpus of N generated clips (2,000 at full scale: 8 encoded clips, each
   copied to N/8 files), read once through the training path as a file list (ManifestClips, in the
   sampler's shuffled order) and as WebDataset shards written from the same manifest by `scaling data
   shard` (ShardClips' stream), each pass from a cold page cache (sync, then posix_fadvise DONTNEED
   on every file; how much of the files left the cache, by util-linux's fincore, is reported).
   Clips/s over wall time, and per CPU second. Decoding only, in this process, one torch thread.
6. Repeated sampling at VATT's geometry (32x224^2 at 10 fps, 3.2 s of 48 kHz audio): data.repeats
   1, 2 and 4 (each clip opened and decoded once for its K windows), on two versions of the same
   content: as a Kinetics-like corpus ships (320x240, 25 fps, ffmpeg's default GOP) and re-encoded
   for training (10 fps, a keyframe every second), as video2dataset's ffmpeg subsamplers or a plain
   `ffmpeg -r 10 -g 10` produce. Windows/s per core (CPU seconds, rounds interleaved) and cores per
   GPU for VATT-Base, DropToken 0.5, at 40% of an H100's bf16 peak.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from scaling.data.budget import PLANNED_MFU, PLANNED_PEAK_TFLOPS

CORES_GOAL = 8
REPEATS = (1, 2, 4)
SOURCES = {  # name: (fps, keyint frames or None for ffmpeg's default)
    "as shipped (25 fps, default GOP)": (25, None),
    "re-encoded (10 fps, keyframe every 1 s)": (10, 10),
}
PLAN = {  # clips in the corpus, base clips, their seconds and size; windows per timed call; rounds
    "full": dict(clips=2000, base=8, seconds=2, size=(160, 120), windows=24, reps=6, files=8, file_s=10),
    "smoke": dict(clips=16, base=2, seconds=1, size=(64, 48), windows=4, reps=1, files=2, file_s=2),
}


def cached_kb(paths: list[Path]) -> int:
    """The kB of `paths` resident in the page cache now, from util-linux's fincore (the files' own
    pages, whatever else the machine reads or writes meanwhile)."""
    total, names = 0, [str(p) for p in paths]
    for k in range(0, len(names), 500):
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", *names[k:k + 500]],
                             check=True, capture_output=True, text=True).stdout
        total += sum(int(line) for line in out.split())
    return total >> 10


def drop_cache(paths: list[Path]) -> int:
    """Evict `paths` from the page cache (written back first); the kB of theirs that left it."""
    before = cached_kb(paths)
    os.sync()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return before - cached_kb(paths)


def io_corpus(root: Path, plan: dict, audio_rate: int) -> tuple[Path, list[Path]]:
    """N clip files (copies of a few encoded ones) and their manifest."""
    from scaling.data.encode import write_video

    root.mkdir(parents=True, exist_ok=True)
    base = [write_video(root / f"base{k}.mp4", seconds=plan["seconds"], fps=25, size=plan["size"], audio=True,
                        sample_rate=audio_rate, lossless=False, pattern="texture") for k in range(plan["base"])]
    (root / "clips").mkdir()
    files, lines = [], []
    for k in range(plan["clips"]):
        path = root / "clips" / f"{k:05d}.mp4"
        shutil.copyfile(base[k % len(base)], path)
        files.append(path)
        lines.append(json.dumps({"video": f"clips/{path.name}", "captions": [f"clip {k}"], "label": k % 4}))
    manifest = root / "io.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, files


def one_pass(dataset, count: int) -> dict[str, float]:
    """Wall and CPU seconds to take `count` training samples from `dataset` (a manifest in the
    sampler's epoch-0 order, or a shard stream)."""
    import torch

    from scaling.data.loader import ShardedEpochSampler

    if isinstance(dataset, torch.utils.data.IterableDataset):
        dataset.place(0, 1, micro_batch=1, workers=0)
        stream = iter(dataset)
        take = lambda _: next(stream)  # noqa: E731
    else:
        order = list(ShardedEpochSampler(len(dataset), shuffle=True, seed=0, epoch_keys=True))
        take = lambda k: dataset[order[k]]  # noqa: E731
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for k in range(count):
        take(k)
    return {"wall": time.perf_counter() - wall0, "cpu": time.process_time() - cpu0}


def manifest_vs_shards(root: Path, plan: dict, geometry: dict[str, Any], name: str,
                       audio_rate: int) -> tuple[list[dict], list[str]]:
    from scaling.data.files import ManifestClips
    from scaling.data.shards import write_shards
    from scaling.data.stream import ShardClips

    manifest, files = io_corpus(root, plan, audio_rate)
    report = write_shards(manifest, root / "shards", shard_size_bytes=16_000_000, progress=False)
    shards = [root / "shards" / name for name, _, _ in report.shards]
    total_mb = sum(f.stat().st_size for f in files) / 1e6
    sets = {"manifest": (ManifestClips(manifest, decoder="torchcodec", **geometry), files),
            "shards": (ShardClips(report.data_path, decoder="torchcodec", shuffle_buffer=100, **geometry), shards)}
    rows, dropped = [], {}
    for kind, (dataset, paths) in sets.items():
        dropped[kind] = drop_cache(paths)
        t = one_pass(dataset, plan["clips"])
        rows.append({"decoder": "torchcodec", "geometry": name,
                     "case": f"{kind}: {plan['clips']:,} clips, cold", "clips/s per core": plan["clips"] / t["cpu"],
                     "wall clips/s": plan["clips"] / t["wall"]})
    ratio = rows[1]["wall clips/s"] / rows[0]["wall clips/s"]
    notes = [f"5. Manifest vs shards: {plan['clips']:,} clips ({plan['base']} encoded clips of {plan['seconds']} s, "
             f"{plan['size'][0]}x{plan['size'][1]}, 25 fps, copied; {total_mb:.0f} MB) as {len(files):,} files and as "
             f"{len(shards)} shards of <= 16 MB (scaling data shard); one pass each, torchcodec, demo geometry, one "
             f"process; cold: page cache dropped before each pass (sync + posix_fadvise DONTNEED: "
             + ", ".join(f"{n} {kb / 1e3:.0f} MB evicted" for n, kb in dropped.items())
             + f"). Shards / manifest wall clips/s: {ratio:.2f}."]
    return rows, notes


def repeated_sampling(root: Path, plan: dict, geometry: dict[str, Any], name: str, flops: float, size: str, timed,
                      audio_rate: int) -> tuple[list[dict], list[str], bool]:
    from scaling.data.encode import write_video
    from scaling.data.files import ManifestClips

    gpu_rate = PLANNED_MFU * PLANNED_PEAK_TFLOPS * 1e12 / flops
    cases, windows = {}, plan["windows"]
    for source, (fps, keyint) in SOURCES.items():
        folder = root / f"src{fps}"
        folder.mkdir()
        lines = []
        for k in range(plan["files"]):
            write_video(folder / f"c{k}.mp4", seconds=plan["file_s"], fps=fps, keyint=keyint, size=(320, 240),
                        audio=True, sample_rate=audio_rate, lossless=False, pattern="texture")
            lines.append(json.dumps({"video": f"c{k}.mp4", "captions": [f"clip {k}"], "label": k % 4}))
        (folder / "m.jsonl").write_text("\n".join(lines) + "\n")
        for repeats in REPEATS:
            clips = ManifestClips(folder / "m.jsonl", decoder="torchcodec", repeats=repeats, **geometry)
            cases[(source, repeats)] = _windows_case(clips, max(1, windows // repeats))
    t = timed(cases, reps=plan["reps"])
    rows = []
    for (source, repeats), times in t.items():
        n = max(1, windows // repeats) * repeats * len(times["cpu"])
        per_core = n / sum(times["cpu"])
        rows.append({"decoder": "torchcodec", "geometry": name, "case": f"{source}, data.repeats={repeats}",
                     "clips/s per core": per_core,
                     "wall clips/s": n / sum(times["wall"]), "cores per GPU": gpu_rate / per_core})
    best = min(rows, key=lambda r: r["cores per GPU"])
    met = best["cores per GPU"] <= CORES_GOAL
    notes = [f"6. Repeated sampling, VATT-{size} at {name}, DropToken 0.5: a GPU at {PLANNED_MFU:.0%} of "
             f"{PLANNED_PEAK_TFLOPS:g} TFLOP/s trains on {gpu_rate:.0f} windows/s; {plan['files']} files of "
             f"{plan['file_s']} s, 320x240, per source; {windows} windows per case and round (clips = windows / "
             f"repeats), {plan['reps']} interleaved rounds; 'clips/s per core' counts windows. Goal <= {CORES_GOAL} "
             f"cores per GPU: {'met' if met else 'not met'} on the CPU; the fewest: {best['case']}, "
             f"{best['cores per GPU']:.1f} cores per GPU."]
    return rows, notes, met


def _windows_case(clips, count: int):
    """Each call decodes the next `count` clips (each with its `repeats` windows)."""
    state = {"next": 0}

    def run():
        for w in range(state["next"], state["next"] + count):
            epoch, index = divmod(w, len(clips))
            clips.load(index, epoch)
        state["next"] += count
    return run
