"""One-run layer: start a run here: in this process (one rank) or as N local processes wired
through torch.distributed environment variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from scaling.config import RunConfig
from scaling.schema import CONFIG
from scaling.train import rundir as rd


def resolve_run(config: str | None, overrides: list[str], run_dir: str | None, nproc: int) -> tuple[RunConfig, Path]:
    """The RunConfig and run directory a `scaling train` command means.

    An existing run directory resumes: its config.yaml is the base, and overrides must not change it.
    """
    overrides = [*overrides, f"world_size={nproc}"]
    if run_dir and (Path(run_dir) / CONFIG).exists():
        base = Path(run_dir) / CONFIG
        cfg = RunConfig.load(config or base, overrides)
        check_data(cfg)
        return cfg, Path(run_dir)
    cfg = RunConfig.load(config, overrides)
    check_data(cfg)  # before the run directory exists
    return cfg, Path(run_dir) if run_dir else rd.new_run_dir("runs", cfg)


def check_data(cfg: RunConfig) -> None:
    """ConfigError, before any process group, engine or run-directory file, when the run's train or
    eval data cannot be read (scaling.data.loader.check_dataset)."""
    from scaling.data.loader import check_dataset
    from scaling.objectives import dataset_options

    for split in ("train", "eval"):
        check_dataset(cfg.data, split, **dataset_options(cfg, evaluation=split == "eval"))


def run_worker(run_dir: Path) -> None:
    """Entry point of each rank: the run directory's config.yaml says what to train."""
    from scaling.train.loop import train

    train(RunConfig.load(run_dir / CONFIG), run_dir)


def cpu_share(ways: int) -> int:
    """CPU threads for each of `ways` processes that run at once on this machine (at least 1): the
    cores this process may use, split evenly. Ranks that each take every core run many times slower
    on a CPU than ranks that split them."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, ways))


def launch_local(cfg: RunConfig, run_dir: Path, nproc: int) -> int:
    """Run `nproc` ranks as child processes of this one; returns the first non-zero exit code.
    Each rank gets its share of the cores (OMP_NUM_THREADS), unless the caller set OMP_NUM_THREADS."""
    from scaling.train.engine import free_port
    from scaling.train.rundir import prepare

    prepare(cfg, run_dir, with_environment=False)
    port = str(free_port())
    threads = os.environ.get("OMP_NUM_THREADS") or str(cpu_share(nproc))
    procs = []
    for rank in range(nproc):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
               "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "OMP_NUM_THREADS": threads}
        procs.append(subprocess.Popen([sys.executable, "-m", "scaling.train.launch", str(run_dir)], env=env))

    def stop_all(*_args) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, stop_all)
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:
                stop_all()
                for p in procs:
                    p.wait()
                return failed[0]
            if all(c == 0 for c in codes):
                return 0
            time.sleep(0.2)
    except KeyboardInterrupt:
        stop_all()
        for p in procs:
            p.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    run_worker(Path(sys.argv[1]))
