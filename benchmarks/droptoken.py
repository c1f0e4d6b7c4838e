"""Benchmark 2: DropToken. The training-step time ratio t(r)/t(0) at drop rates r = 0.25, 0.5, 0.75
for VATT at sizes tiny and base, against the analytic FLOP ratio `describe` reports.

The step is a real VATT step outside DeepSpeed: zero_grad, `build_objective(cfg).loss` (the video
augmentation, the video, audio and text towers, the FAC heads, NCE + MIL-NCE), backward, and the
run's AdamW (`scaling.optim.make_optimizer`: `param_groups`, betas (0.9, 0.999), fused, as the
engine builds it). One batch of `SyntheticClips` is rendered before
timing. One model and optimizer per size serve every rate: a case sets the video and audio
encoders' `drop_rate` (text is never dropped) and runs the step; rounds run every rate once, the
order reversed every other round, and the ratio is the median over rounds of t(r) / t(0) within a
round. The AdamW step's and the video augmentation's own times are recorded inside each step, to show
how much of the gap to the FLOP ratio is those fixed costs (no drop rate shrinks them).

Geometry: 8 frames at 112 px (2 x 7 x 7 = 98 voxel tokens), 12,800 audio samples (100 tokens),
one caption of 8 words, so the dropped modalities hold 198 of the 206 tokens of a sample.
"""
from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.backbone import paired_ratio, rounds_of
from benchmarks.core import Result, check_scale

NAME = "droptoken"
TITLE = "DropToken: step time vs FLOPs"
FACTOR = 1.05
GOAL = f"measured step-time ratio t(r)/t(0) <= {FACTOR} x the analytic FLOP ratio, r = 0.25 / 0.5 / 0.75, VATT tiny and base"
RATES = (0.25, 0.5, 0.75)

COLUMNS = ["size", "drop_rate", "batch", "video tokens", "audio tokens", "t(r) s", "t(r)/t(0)", "FLOP ratio",
           "measured / FLOP", f"goal <= {FACTOR}", "AdamW + aug s", "model-only t(r)/t(0)", "model-only / FLOP"]

GEOMETRY = {
    "full": dict(frames=8, resolution=112, audio_samples=12800, captions=1, max_words=8),
    "smoke": dict(frames=4, resolution=32, audio_samples=512, captions=1, max_words=4),
}
# size -> (micro batch, rounds, warmup) per scale and device
PLAN: dict[str, dict[str, dict[str, tuple[int, int, int]]]] = {
    "full": {"cpu": {"tiny": (8, 5, 1), "base": (2, 3, 1)},
             "cuda": {"tiny": (64, 10, 2), "base": (16, 10, 2)}},
    "smoke": {"cpu": {"nano": (2, 1, 0)}, "cuda": {"nano": (2, 1, 0)}},
}


def make_config(size: str, batch: int, geometry: dict[str, int], drop_rate: float = 0.0):
    from scaling.config import RunConfig

    overrides = ["method=vatt", f"size={size}", f"drop_rate={drop_rate}", f"global_batch={batch}",
                 f"micro_batch={batch}", "steps=1", "drop_path=0.0", f"data.train_size={max(batch, 8)}",
                 "data.num_workers=0"] + [f"data.{k}={v}" for k, v in geometry.items()]
    return RunConfig.load(None, overrides)


def make_step(cfg, device: str) -> tuple[Callable[[float], Callable[[], None]], list[float], torch.nn.Module]:
    """(case(rate) -> a closure running one step at that drop rate, the seconds of each step spent in
    AdamW and the video augmentation, model)."""
    from benchmarks.steps import sample_batch
    from scaling.models import build_model
    from scaling.objectives import build_objective
    from scaling.optim import make_optimizer

    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device).train()
    objective = build_objective(cfg)
    optimizer = make_optimizer(cfg, model)
    for group in optimizer.param_groups:
        group["weight_decay"] = cfg.weight_decay if group["apply_decay"] else 0.0
    raw = sample_batch(cfg, cfg.micro_batch)  # the run's own data set, as the loader collates it
    batch = {k: raw[k].to(device) for k in ("video", "audio", "text")}
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fixed_seconds: list[float] = []  # per step: AdamW + the video augmentation, which no drop rate shrinks
    augment_seconds: list[float] = []
    augment = objective.augment

    def timed_augment(*args, **kwargs):
        sync()
        t0 = time.perf_counter()
        out = augment(*args, **kwargs)
        sync()
        augment_seconds.append(time.perf_counter() - t0)
        return out

    objective.augment = timed_augment

    def case(rate: float) -> Callable[[], None]:
        def step() -> None:
            model.video.drop_rate = rate
            model.audio.drop_rate = rate
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss, _ = objective.loss(model, batch, 0, generator)
            loss.backward()
            sync()
            t0 = time.perf_counter()
            optimizer.step()
            sync()
            fixed_seconds.append(time.perf_counter() - t0 + augment_seconds[-1])
        return step

    return case, fixed_seconds, model


def measure_size(size: str, batch: int, rounds: int, warmup: int, geometry: dict[str, int],
                 device: str) -> tuple[list[dict[str, Any]], str]:
    """One size: a row per drop rate of RATES, and the note of its fixed costs at r = 0."""
    from scaling.describe import describe, human

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    cfg = make_config(size, batch, geometry)
    base_flops = describe(cfg, device)
    case, adam_seconds, model = make_step(cfg, device)
    rates = (0.0,) + RATES
    cases = {r: case(r) for r in rates}
    # The AdamW time of each timed step, by rate: every round runs each rate once, in the
    # order rounds_of runs them; read the split back by wrapping the closures.
    per_rate_adam: dict[float, list[float]] = {r: [] for r in rates}

    def tracked(r: float, fn: Callable[[], None]) -> Callable[[], None]:
        def run_once() -> None:
            fn()
            per_rate_adam[r].append(adam_seconds[-1])
        return run_once

    times = rounds_of({r: tracked(r, fn) for r, fn in cases.items()}, rounds, warmup, sync)
    # Drop the warm-up steps' AdamW times (the first allocates the optimizer state).
    adam = {r: statistics.median(v[warmup:]) for r, v in per_rate_adam.items()}
    t0 = statistics.median(times[0.0])
    share = (f"{size}: AdamW + augmentation {adam[0.0]:.3g} s of a {t0:.3g} s step at r=0 "
             f"({100 * adam[0.0] / t0:.0f}%), {human(base_flops['params']['trainable'])} trainable parameters, "
             f"{human(base_flops['flops_per_sample'], 'FLOPs')} per sample at r=0")
    rows = []
    for r in RATES:
        d = describe(cfg.replace(drop_rate=r), device)
        flop_ratio = d["flops_per_sample"] / base_flops["flops_per_sample"]
        measured = paired_ratio(times, r, 0.0)
        no_adam = statistics.median((a - pa) / (b - pb) for a, pa, b, pb in
                                    zip(times[r], per_rate_adam[r][warmup:], times[0.0], per_rate_adam[0.0][warmup:]))
        rows.append({"size": size, "drop_rate": r, "batch": batch,
                     "video tokens": f"{d['tokens']['video']} / {d['tokens']['video_full']}",
                     "audio tokens": f"{d['tokens']['audio']} / {d['tokens']['audio_full']}",
                     "t(r) s": statistics.median(times[r]), "t(r)/t(0)": measured, "FLOP ratio": flop_ratio,
                     "measured / FLOP": measured / flop_ratio, f"goal <= {FACTOR}": measured <= FACTOR * flop_ratio,
                     "AdamW + aug s": adam[r], "model-only t(r)/t(0)": no_adam,
                     "model-only / FLOP": no_adam / flop_ratio})
    del case, cases, model, times
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows, share


def run(scale: str) -> Result:
    """Every size of the plan; what the columns mean is in BENCHMARKS.md ("How the benchmarks measure")."""
    check_scale(scale)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    geometry = GEOMETRY[scale]
    rows: list[dict[str, Any]] = []
    adam_share: list[str] = []
    for size, (batch, rounds, warmup) in PLAN[scale][device].items():
        size_rows, share = measure_size(size, batch, rounds, warmup, geometry, device)
        rows += size_rows
        adam_share.append(share)
    g = geometry
    notes = [
        f"Geometry: {g['frames']} frames x {g['resolution']}^2 px, {g['audio_samples']} audio samples, "
        f"{g['captions']} caption(s) of {g['max_words']} words; {device}, "
        f"{'bf16 autocast' if device == 'cuda' else 'fp32'}.",
    ] + adam_share
    if scale == "smoke":
        notes.append("smoke scale: size nano on a 4-token clip; the numbers mean nothing.")
    met = all(r[f"goal <= {FACTOR}"] for r in rows) if scale == "full" else None
    return Result(NAME, TITLE, GOAL, COLUMNS, rows, met, notes=notes)
