"""Benchmark 5: can the data keep up? Synthetic clips/s through the configured DataLoader against
what one training rank consumes, at each (method, size) of the demo sweep."""
from __future__ import annotations

import time

import torch

from benchmarks.core import Result, check_scale, interleaved
from benchmarks.steps import sample_batch, train_step
from scaling.data.loader import build_dataset, build_loader

NAME = "data_pipeline"
TITLE = "Data pipeline: synthetic clips/s vs the training step's consumption"
GOAL = ">= 5x the clips/s one training rank consumes, at every demo size"
HEADROOM_GOAL = 5.0


def demo_configs(spec_name: str = "demo"):
    """One RunConfig per (method, size) of the demo sweep (DropToken 0, its largest batch)."""
    from sweeps.spec import load_spec

    spec = load_spec(spec_name, check_storage=False)
    chosen = {}
    for point in spec.grid:
        cfg = spec.run_config(point)
        if cfg.drop_rate:
            continue
        key = (cfg.method, cfg.size)
        if key not in chosen or cfg.global_batch > chosen[key].global_batch:
            chosen[key] = cfg
    return [chosen[k] for k in sorted(chosen, key=lambda k: (k[1] != "nano", k))]


def loader_rate(cfg, batches: int) -> float:
    """Clips/s through the run's own DataLoader (its num_workers, its micro-batch), after the
    workers have started."""
    loader = build_loader(build_dataset(cfg.data, "train"), cfg.micro_batch, shuffle=True, seed=cfg.seed,
                          num_workers=cfg.data.num_workers)
    it = iter(loader)
    next(it)  # worker start-up is a one-off cost, not a rate
    t0 = time.perf_counter()
    clips = 0
    for _ in range(batches):
        clips += len(next(it)["video"])
    rate = clips / (time.perf_counter() - t0)
    del it, loader
    return rate


def run(scale: str) -> Result:
    """What `supplied` and `consumed` measure is in BENCHMARKS.md ("How the benchmarks measure")."""
    check_scale(scale)
    configs = demo_configs()
    loader_batches, reps = (40, 5) if scale == "full" else (2, 1)
    if scale == "smoke":
        # A small train split, but enough for the loader's batches at the largest demo micro-batch.
        configs = [c.replace(**{"data.train_size": c.micro_batch * (loader_batches + 1)}) for c in configs[:2]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a demo rank gets one thread (two ranks share the two cores)
    rows = []
    try:
        for cfg in configs:
            step, _ = train_step(cfg, sample_batch(cfg, cfg.micro_batch))
            step_s = interleaved({"step": step}, reps=reps, warmup=1)["step"]["median"]
            consumed = cfg.micro_batch / step_s
            supplied = loader_rate(cfg, loader_batches)
            rows.append({"method": cfg.method, "size": cfg.size, "micro-batch": cfg.micro_batch,
                         "workers": cfg.data.num_workers, "clips/s supplied": supplied,
                         "clips/s consumed": consumed, "headroom": supplied / consumed,
                         "goal met": supplied / consumed >= HEADROOM_GOAL})
    finally:
        torch.set_num_threads(threads)
    return Result(NAME, TITLE, GOAL, ["method", "size", "micro-batch", "workers", "clips/s supplied",
                                      "clips/s consumed", "headroom", "goal met"], rows,
                  met=all(r["goal met"] for r in rows) if scale == "full" else None)
