"""Part of the `scaling` (one run) layer: the decode budget, how many CPU cores it takes to feed one GPU.
Owns the probe (`scaling data probe`: the CPU cost of a training window measured on the user's own
files, cached beside the manifest or shards), the stated default when there is no probe, and the
arithmetic `scaling describe` and `scaling sweep plan` print.

Importing it loads no torch; only `measure` does, when called.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from scaling.config import MODALITIES, RunConfig

# The GPU a budget is planned for, unless told otherwise: 40% MFU of an H100 SXM's bf16 dense peak.
PLANNED_MFU = 0.4
PLANNED_PEAK_TFLOPS = 989.0
# Without a probe: CPU seconds per window = DEFAULT_CLIP_S / repeats + frames x DEFAULT_FRAME_S. Fitted to
# `scaling bench data_real` (BENCHMARKS.md, 2026-12-02, one AMD EPYC core): open, seek (5-s keyframe
# intervals), audio and captions per clip; decode, resize and crop per output frame of 320x240, 25-fps
# H.264 sources. Larger sources or longer keyframe intervals cost more: probe your own files.
DEFAULT_CLIP_S = 0.049
DEFAULT_FRAME_S = 0.0015
PROBE_WINDOWS = 32
FILE_BACKED = ("manifest", "webdataset")


def probe_file(data_path: str | os.PathLike) -> Path:
    """Where the probe of `data_path` is cached: train.jsonl -> train.probe.json beside it; shards
    (train-{000000..000127}.tar or train-shards.json) -> train-probe.json in their folder."""
    path = Path(str(data_path))
    name = path.name
    if name.endswith(".jsonl"):
        return path.with_name(name[:-len(".jsonl")] + ".probe.json")
    if name.endswith("-shards.json"):
        return path.with_name(name[:-len("-shards.json")] + "-probe.json")
    if "{" in name:
        return path.with_name(name.split("{", 1)[0].rstrip("-_.") + "-probe.json")
    return path.with_name(name + ".probe.json")


def probe_key(cfg: RunConfig) -> dict[str, Any]:
    """What a window's decoding cost depends on; a cached probe serves only the same key."""
    d = cfg.data
    modalities = list(MODALITIES[cfg.method][0])
    key: dict[str, Any] = {"source": d.source, "decoder": d.decoder, "frames": d.frames, "fps": float(d.fps),
                           "resolution": d.resolution, "repeats": d.repeats, "modalities": modalities}
    if "audio" in modalities:
        key.update(audio_samples=d.audio_samples, sample_rate=d.sample_rate)
    return key


def read_probe(cfg: RunConfig) -> dict[str, Any] | None:
    """The cached probe of cfg.data.path at cfg's geometry, or None (no file, another geometry, unreadable)."""
    if cfg.data.source not in FILE_BACKED or not cfg.data.path:
        return None
    file, key = probe_file(cfg.data.path), probe_key(cfg)
    try:
        record = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    for probe in record.get("probes", []) if isinstance(record, dict) else []:
        if isinstance(probe, dict) and probe.get("key") == key:
            return {**probe, "file": str(file)}
    return None


def write_probe(file: Path, probe: dict[str, Any]) -> None:
    """Add `probe` to the cache `file`, replacing an earlier one of the same key (written whole, then renamed)."""
    try:
        record = json.loads(file.read_text())
        probes = [p for p in record.get("probes", []) if isinstance(p, dict) and p.get("key") != probe["key"]]
    except (OSError, ValueError, AttributeError):
        probes = []
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(json.dumps({"probes": [*probes, probe]}, indent=2) + "\n")
    tmp.replace(file)


@dataclass(frozen=True)
class DecodeBudget:
    """One GPU's appetite for windows and the CPU it takes to decode them."""

    gpu_windows_per_s: float   # training windows (samples) one GPU consumes at the planned MFU
    cpu_s_per_window: float    # CPU seconds to decode one window at this geometry
    cores_per_gpu: float       # the product: cores decoding full time to keep one GPU fed
    basis: str                 # where cpu_s_per_window comes from
    mfu: float
    peak_tflops: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def text(self) -> str:
        return (f"decode budget at {self.mfu:.0%} MFU of {self.peak_tflops:g} TFLOP/s: one GPU consumes "
                f"{self.gpu_windows_per_s:,.0f} windows/s; decoding one costs {self.cpu_s_per_window * 1e3:.1f} ms "
                f"of CPU ({self.basis}) -> {self.cores_per_gpu:.1f} CPU cores per GPU")


def default_cost(cfg: RunConfig) -> float:
    return DEFAULT_CLIP_S / cfg.data.repeats + cfg.data.frames * DEFAULT_FRAME_S


def decode_budget(cfg: RunConfig, flops_per_sample: float, *, mfu: float = PLANNED_MFU,
                  peak_tflops: float = PLANNED_PEAK_TFLOPS) -> DecodeBudget | None:
    """The budget of a file-backed run (None for synthetic clips and images): windows/s one GPU
    trains on at `mfu` of `peak_tflops` (flops_per_sample: describe's training FLOPs per window), and
    the decode cost per window from the probe cached beside data.path, else the stated default."""
    if cfg.data.source not in FILE_BACKED:
        return None
    probe = read_probe(cfg)
    if probe is not None:
        cost = float(probe["cpu_s_per_window"])
        basis = f"probe {probe['file']}: {probe['windows']} windows, {probe['measured_at'][:10]}"
    else:
        cost = default_cost(cfg)
        basis = (f"default {DEFAULT_CLIP_S * 1e3:g} ms per clip / {cfg.data.repeats} + {DEFAULT_FRAME_S * 1e3:g} ms "
                 f"x {cfg.data.frames} frames; measure yours: scaling data probe {cfg.data.path}")
    windows = mfu * peak_tflops * 1e12 / flops_per_sample
    return DecodeBudget(gpu_windows_per_s=windows, cpu_s_per_window=cost, cores_per_gpu=windows * cost, basis=basis,
                        mfu=mfu, peak_tflops=peak_tflops)


# ----------------------------------------------------------------------------- the probe itself
def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(cfg: RunConfig, windows: int = PROBE_WINDOWS) -> dict[str, Any]:
    """Decode about `windows` training windows of cfg.data.path as a loader worker does (one torch and
    one decoder thread, in this process), after one untimed clip; returns the probe record: CPU and
    wall seconds per window. Clips are drawn in epoch 0's training order (a manifest's shuffled
    order; a shard stream's first samples, unshuffled): `repeats` windows from each."""
    import torch

    from scaling.data.loader import ShardedEpochSampler, build_dataset
    from scaling.objectives import dataset_options

    torch.set_num_threads(1)
    data = cfg.replace(**{"data.shuffle_buffer": 0}).data  # a probe need not fill a shuffle buffer first
    dataset = build_dataset(data, "train", **dataset_options(cfg, evaluation=False))
    clips = max(1, math.ceil(windows / cfg.data.repeats))
    if isinstance(dataset, torch.utils.data.IterableDataset):
        dataset.place(0, 1, micro_batch=1, workers=0, order_seed=cfg.seed + cfg.data.seed)
        stream = iter(dataset)
        draw = lambda _: next(stream)  # noqa: E731
    else:
        order = list(ShardedEpochSampler(len(dataset), shuffle=True, seed=cfg.seed + cfg.data.seed, epoch_keys=True))
        draw = lambda k: dataset[order[k % len(order)]]  # noqa: E731
    failed = int((draw(0)["bad"] >= 0).sum())  # untimed: opens the codecs, warms the caches
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for k in range(1, clips + 1):
        failed += int((draw(k)["bad"] >= 0).sum())
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    n = clips * cfg.data.repeats
    return {"key": probe_key(cfg), "cpu_s_per_window": cpu / n, "wall_s_per_window": wall / n, "windows": n,
            "clips": clips, "failed": failed, "cpu": _cpu_name(), "measured_at": datetime.now(timezone.utc).isoformat()}
