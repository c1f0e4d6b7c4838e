"""Benchmark: what VATT's negatives and losses cost, measured in the real training loop.

1. `vatt.negatives=cached` (GradCache) against `batch` at equal negatives per positive: both runs
   contrast the whole global batch G. `batch` runs one micro-batch of G; `cached` runs micro-batches
   of G/8 with 8 accumulation steps, embeds them all without a graph, then reruns each with one.
   The goal is a step time at most 1.35x (one extra forward is inherent) and a peak memory near
   that of one G/8 micro-batch. A third case runs the same G/8 micro-batches without the cache
   (in-batch negatives under accumulation), to tell GradCache's own cost, the extra forward, from
   that of running small micro-batches at all. A fourth case caches 2 micro-batches of G/2, the
   regime of a micro-batch that fills the device, where accumulation itself costs little.
2. `vatt.loss=sigmoid` (SigLIP) against `nce` on 2 ranks (gloo on a CPU, NCCL on GPUs), with the
   negatives all-gathered in both.

Every case is a real `scaling train` run in a fresh process: DeepSpeed ZeRO-0, the run's data
loader, augmentation, model, loss and AdamW. Its step time is the median of the loop's own
`train/step_time_s` after the first steps. Its peak memory is the loop's `train/memory_gb`:
`torch.cuda.max_memory_allocated` on a GPU, or the process's peak RSS (ru_maxrss) on a CPU, which
also counts the interpreter, the libraries and the model states. Rounds alternate the order of
the two cases, and a ratio is the median over rounds of the ratio within a round.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.core import Result, check_scale

NAME = "negatives"
TITLE = "Negatives and losses: GradCache vs in-batch, sigmoid vs NCE"
FACTOR = 1.35
GOAL = (f"vatt.negatives=cached step time <= {FACTOR}x batch at equal negatives, with less peak memory; "
        "sigmoid vs NCE cost on 2 ranks recorded")
COLUMNS = ["comparison", "case", "ranks", "global batch", "micro-batch", "negatives per positive", "steps timed",
           "step s", "ratio", f"goal <= {FACTOR}", "cached / accumulation", "peak memory GB", "memory kind",
           "memory ratio"]

# (size, global batch, steps, steps skipped, rounds, geometry)
PLAN = {
    "full": dict(size="tiny", batch=64, steps=10, skip=3, rounds=2,
                 geometry=dict(frames=16, resolution=64, audio_samples=4096, captions=2, max_words=8)),
    "smoke": dict(size="nano", batch=16, steps=3, skip=1, rounds=1,
                  geometry=dict(frames=4, resolution=32, audio_samples=512, captions=1, max_words=4)),
}


def _overrides(plan: dict[str, Any], **fields: Any) -> list[str]:
    g = plan["geometry"]
    base = {"method": "vatt", "size": plan["size"], "steps": plan["steps"], "log_every": 1,
            "global_batch": plan["batch"], "micro_batch": plan["batch"], "data.num_workers": 0,
            "data.train_size": max(2 * plan["batch"], 64), "data.eval_size": 32, "eval.random_init": False,
            "eval.linear_probe": False, "checkpoint_every": 0, **{f"data.{k}": v for k, v in g.items()}}
    return [f"{k}={v}" for k, v in {**base, **fields}.items()]


def _run(overrides: list[str], nproc: int, root: Path) -> dict[str, Any]:
    """One `scaling train` run in a fresh process; its step times and peak memory from metrics.jsonl."""
    run_dir = Path(tempfile.mkdtemp(dir=root))
    run_dir.rmdir()  # train creates it
    cmd = [sys.executable, "-m", "scaling.cli", "train", "--run-dir", str(run_dir), "--nproc", str(nproc), *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "train/step_time_s" in r]
    return {"step_times": [r["train/step_time_s"] for r in steps],
            "memory_gb": max(r.get("train/memory_gb", 0.0) for r in steps),
            "negatives": next((r["train/negatives_per_positive"] for r in steps
                               if "train/negatives_per_positive" in r), None)}


def _compare(name: str, cases: dict[str, tuple[list[str], int]], plan: dict[str, Any], root: Path,
             micro: dict[str, int]) -> list[dict[str, Any]]:
    """Every case, `rounds` times in alternating order; one row per case, each after the first with
    its ratios to the first (step time and peak memory; medians over rounds of within-round ratios)."""
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in cases}
    order = list(cases)
    for r in range(plan["rounds"]):
        for key in order if r % 2 == 0 else order[::-1]:
            overrides, nproc = cases[key]
            runs[key].append(_run(overrides, nproc, root))
    skip = plan["skip"]
    step = {k: [statistics.median(run["step_times"][skip:] or run["step_times"]) for run in v] for k, v in runs.items()}
    memory = {k: [run["memory_gb"] for run in v] for k, v in runs.items()}
    import torch

    kind = "max_memory_allocated" if torch.cuda.is_available() else "peak RSS of the process"
    rows = []
    for key in order:
        nproc = cases[key][1]
        row = {"comparison": name, "case": key, "ranks": nproc, "global batch": plan["batch"],
               "micro-batch": micro[key], "negatives per positive": runs[key][0]["negatives"],
               "steps timed": max(0, len(runs[key][0]["step_times"]) - skip) * plan["rounds"],
               "step s": statistics.median(step[key]), "peak memory GB": statistics.median(memory[key]),
               "memory kind": kind}
        if key != order[0]:
            row["ratio"] = statistics.median(b / a for a, b in zip(step[order[0]], step[key]))
            row["memory ratio"] = statistics.median(b / a for a, b in zip(memory[order[0]], memory[key]))
        rows.append(row)
    return rows


def run(scale: str) -> Result:
    plan = PLAN[check_scale(scale)]
    batch = plan["batch"]
    with tempfile.TemporaryDirectory(prefix="bench-negatives-") as tmp:
        root = Path(tmp)
        cached_micro = max(2, batch // 8)
        # The accumulation case (the same micro-batches without the cache, so 1/8 of the negatives)
        # separates GradCache's own cost, the extra forward, from that of running small micro-batches.
        rows = _compare("GradCache at equal negatives", {
            "vatt.negatives=batch": (_overrides(plan), 1),
            "vatt.negatives=cached": (_overrides(plan, **{"vatt.negatives": "cached", "micro_batch": cached_micro}), 1),
            "batch, accumulation": (_overrides(plan, micro_batch=cached_micro), 1),
            "vatt.negatives=cached, 2 micro-batches": (
                _overrides(plan, **{"vatt.negatives": "cached", "micro_batch": batch // 2}), 1),
        }, plan, root, {"vatt.negatives=batch": batch, "vatt.negatives=cached": cached_micro,
                        "batch, accumulation": cached_micro, "vatt.negatives=cached, 2 micro-batches": batch // 2})
        rows[1]["cached / accumulation"] = rows[1]["step s"] / rows[2]["step s"]
        half = batch // 2
        rows += _compare("sigmoid vs NCE, 2 ranks", {
            "vatt.loss=nce": (_overrides(plan, micro_batch=half), 2),
            "vatt.loss=sigmoid": (_overrides(plan, micro_batch=half, **{"vatt.loss": "sigmoid"}), 2),
        }, plan, root, {"vatt.loss=nce": half, "vatt.loss=sigmoid": half})
    cached = rows[1]
    cached[f"goal <= {FACTOR}"] = cached["ratio"] <= FACTOR
    rows[3][f"goal <= {FACTOR}"] = rows[3]["ratio"] <= FACTOR
    met = None if scale == "smoke" else bool(cached["ratio"] <= FACTOR and cached["memory ratio"] < 1.0)
    notes = [f"{scale} scale: VATT {plan['size']}, global batch {batch}, {plan['geometry']}, "
             f"{plan['steps']} steps per run (the first {plan['skip']} not timed), {plan['rounds']} round(s)",
             "step s: the median of the loop's train/step_time_s; ratio: the case over the comparison's first, "
             "median over rounds; cached / accumulation: the cached step over the same micro-batches' step "
             "without the cache (GradCache's own cost, the extra forward)"]
    return Result(name=NAME, title=TITLE, goal=GOAL, columns=COLUMNS, rows=rows, met=met, notes=notes)
