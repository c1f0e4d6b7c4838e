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

from scaling.config import ConfigError, RunConfig
from scaling.schema import CONFIG
from scaling.train import rundir as rd


def resolve_run(config: str | None, overrides: list[str], run_dir: str | None, nproc: int, *,
                gpus: bool | None = None) -> tuple[RunConfig, Path]:
    """The RunConfig and run directory a `scaling train` command means.

    An existing run directory resumes: its config.yaml is the base, and overrides must not change it.
    Everything that can be refused is refused (ConfigError) before a fresh run directory is created:
    see check_run. `gpus`: whether the ranks run on GPUs (None: they run here, on this machine's).
    """
    cfg, existing = check_run(config, overrides, run_dir, nproc, gpus=gpus)
    return cfg, existing if existing is not None else place_run(cfg, run_dir)


def place_run(cfg: RunConfig, run_dir: str | None) -> Path:
    """The run directory of a checked, fresh run: `run_dir`, or a new folder under runs/ (created)."""
    if run_dir:
        return Path(run_dir)
    try:
        return rd.new_run_dir("runs", cfg)
    except OSError as err:
        raise ConfigError("--run-dir", f"cannot create a run directory under runs/: {err}; "
                                       "pass --run-dir DIR") from None


def check_run(config: str | None, overrides: list[str], run_dir: str | None, nproc: int, *,
              gpus: bool | None = None) -> tuple[RunConfig, Path | None]:
    """(the RunConfig, the run directory it resumes or None): every check of resolve_run, with
    nothing created. Refuses a config, run directory, data path or precision that cannot run."""
    overrides = [*overrides, f"world_size={nproc}"]
    if run_dir:
        check_run_dir(Path(run_dir))
    if run_dir and (Path(run_dir) / CONFIG).exists():
        base = Path(run_dir) / CONFIG
        cfg = RunConfig.load(config or base, _same_span(RunConfig.load(base), nproc, overrides))
        rd.check_resumable(cfg, Path(run_dir))
        check_precision(cfg, gpus)
        check_data(cfg)
        return cfg, Path(run_dir)
    cfg = RunConfig.load(config, overrides)
    check_precision(cfg, gpus)
    check_data(cfg)  # before the run directory exists
    return cfg, None


def _same_span(existing: RunConfig, nproc: int, overrides: list[str]) -> list[str]:
    """The overrides with micro_batch set so that a run resumed on `nproc` ranks keeps the samples of
    a micro-step (micro_batch x world_size) as they were, unless they set micro_batch themselves
    (rd.check_resume says what else may change on resume)."""
    if nproc == existing.world_size or any(o.split("=", 1)[0].strip() == "micro_batch" for o in overrides):
        return overrides
    span = existing.micro_batch * existing.world_size
    if span % nproc:
        raise ConfigError("--nproc", f"got {nproc}; the run's micro-steps span {span} samples "
                                     f"({existing.world_size} rank(s) x micro_batch {existing.micro_batch}), "
                                     f"which do not split over {nproc} ranks")
    return [f"micro_batch={span // nproc}", *overrides]


def check_run_dir(run_dir: Path) -> None:
    """ConfigError("--run-dir") unless `run_dir` is a folder, or can be made one, that this process may write."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError("--run-dir", f"{run_dir} exists and is not a folder: give a run directory "
                                       "(a new folder, or a run's folder to resume)")
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError("--run-dir", f"{run_dir} cannot be created: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError("--run-dir", f"{run_dir} cannot be written: no write permission on {existing}")


def check_precision(cfg: RunConfig, gpus: bool | None = None) -> None:
    """ConfigError("precision"), before any engine, when the ranks' device cannot train in the run's
    precision: fp16 needs a GPU (DeepSpeed has no fp16 on CPU), bf16 a GPU that supports it (or the
    CPU). `gpus`: whether the ranks run on GPUs; None: on this machine's, if it has any (then the
    GPU itself is asked about bf16)."""
    import torch

    from scaling.describe import resolved_precision

    here = gpus is None
    if here:
        gpus = torch.cuda.is_available()
    precision = resolved_precision(cfg, "cuda" if gpus else "cpu")
    if precision == "fp16" and not gpus:
        where = "this machine has none" if here else "the launcher's profile has gpus_per_node=0"
        raise ConfigError("precision", f"got 'fp16'; fp16 training needs a GPU and {where}: use precision=fp32 "
                                       "or bf16 (or auto: bf16 on a GPU, fp32 on a CPU)")
    if precision == "bf16" and gpus and here and not torch.cuda.is_bf16_supported():
        got = "auto, which is bf16 on a GPU" if cfg.precision == "auto" else "'bf16'"
        raise ConfigError("precision", f"got {got}; this GPU ({torch.cuda.get_device_name(0)}) has no bf16: "
                                       "use precision=fp16 or fp32")


def check_data(cfg: RunConfig) -> None:
    """ConfigError, before any process group, engine or run-directory file, when the run's train or
    eval data cannot be read (scaling.data.loader.check_dataset)."""
    from scaling.data.corpus import check_paths

    check_paths(cfg.data)  # torch-free: a missing path is refused at once

    from scaling.data.loader import check_dataset
    from scaling.objectives import dataset_options

    for split in ("train", "eval"):
        check_dataset(cfg.data, split, **dataset_options(cfg, evaluation=split == "eval"))
    share, clips = cfg.data.train_size // cfg.world_size, cfg.micro_batch // cfg.data.repeats
    if cfg.data.source != "synthetic" and share < clips:  # (synthetic clips: RunConfig checks it)
        # check_dataset has matched data.train_size to the split; the loop refuses it too, but later.
        raise ConfigError("micro_batch", f"{cfg.micro_batch} is larger than a rank's share ({share}) of the train "
                                         "split" + (f" x data.repeats={cfg.data.repeats}" if cfg.data.repeats > 1 else ""))
    if cfg.data.source == "webdataset":  # each rank (and, in training, each loader worker) reads whole shards
        from scaling.data.stream import shard_list

        workers = max(1, cfg.data.num_workers)
        for field, path, ways in (("data.path", cfg.data.path, cfg.world_size * workers),
                                  ("data.eval_path", cfg.data.eval_path, cfg.world_size)):
            shards, _ = shard_list(path)
            if len(shards) < ways:
                feeds = f"{cfg.world_size} rank(s)" + (f" x {workers} loader workers" if field == "data.path" else "")
                raise ConfigError(field, f"{path}: {len(shards)} shard(s) cannot feed {feeds} (each reads whole "
                                         "shards): write more, smaller shards (scaling data shard --shard-size)"
                                         + (" or lower data.num_workers" if field == "data.path" else ""))


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
