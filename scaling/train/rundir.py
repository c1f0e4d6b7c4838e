"""One-run layer: the self-describing run directory (config, DeepSpeed config, environment,
metrics.jsonl, TensorBoard events, summary) and the rank-0 metrics logger that never repeats a step.
The names of its files are scaling.schema's (re-exported here: rd.CONFIG, rd.SUMMARY, rd.read_summary, ...).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from scaling.schema import (
    CANCEL_REQUEST,
    CHECKPOINTS,
    CONFIG,
    DS_CONFIG,
    ENV,
    HPARAMS_RUN,
    JOB_RECORD,
    METRICS,
    SUMMARY,
    TB,
    read_json,
    read_summary,
)

# The file names live in scaling.schema; they are re-exported here (rd.CONFIG, ...) for callers.
__all__ = [
    "CHECKPOINTS",
    "CONFIG",
    "DS_CONFIG",
    "ENV",
    "HPARAMS_RUN",
    "METRICS",
    "SUMMARY",
    "TB",
    "TRAINING_ONLY",
    "MetricsLog",
    "atomic_write",
    "cancel_requested",
    "clear_cancel_request",
    "environment",
    "git_commit",
    "new_run_dir",
    "prepare",
    "random_init_cache",
    "read_summary",
    "request_cancel",
    "submitted_time",
    "write_json",
]


def new_run_dir(root: str | Path = "runs", cfg=None) -> Path:
    """A fresh, newly created folder under `root`, named by time and the config's main axes."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = stamp if cfg is None else f"{stamp}-{cfg.method}-{cfg.size}-b{cfg.global_batch}-r{cfg.drop_rate:g}-s{cfg.seed}"
    Path(root).mkdir(parents=True, exist_ok=True)
    path, n = Path(root) / name, 1
    while True:  # create it, so two runs resolved in the same second never share a folder
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1
            path = Path(root) / f"{name}.{n}"


def atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file. The temporary
    name is unique, so concurrent writers of one path (trials filling a sweep's random-init
    cache) never rename each other's file away: the last rename wins, whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, json.dumps(data, indent=2, default=str) + "\n")


# ----------------------------------------------------------------------------- cancel requests
def request_cancel(run_dir: str | Path) -> None:
    """Ask the job training `run_dir` to save its current step and stop (end_reason "cancelled"):
    a small file that rank 0 of the loop looks for after every optimizer step."""
    write_json(Path(run_dir) / CANCEL_REQUEST, {"time": time.time(), "pid": os.getpid(), "host": socket.gethostname()})


def clear_cancel_request(run_dir: str | Path) -> None:
    (Path(run_dir) / CANCEL_REQUEST).unlink(missing_ok=True)


def submitted_time(run_dir: str | Path) -> float | None:
    """When the run's latest job was submitted (its job.json), or None for a run without a launcher."""
    record = read_json(Path(run_dir) / JOB_RECORD)
    if isinstance(record.get("submitted_time"), (int, float)):
        return float(record["submitted_time"])
    try:
        return dt.datetime.fromisoformat(record["submitted_at"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return None


def cancel_requested(run_dir: str | Path, started: float) -> bool:
    """Whether `run_dir` holds a current cancel request (one stat() when there is none).

    A request is current when written after the run's latest submission (job.json), or, for a run
    no launcher submitted, after `started` (this process's start). A stale one (left for an earlier
    job: a resubmitted trial must not stop for it) is ignored and removed. The submission, not the
    process's start, is what counts under a launcher: a job asked to stop while it was still
    starting stops at its first step.
    """
    path = Path(run_dir) / CANCEL_REQUEST
    try:
        written = path.stat().st_mtime
    except OSError:
        return False
    asked = read_json(path).get("time")
    asked = asked if isinstance(asked, (int, float)) and not isinstance(asked, bool) else written
    since = submitted_time(run_dir)
    if asked >= (started if since is None else since):
        return True
    path.unlink(missing_ok=True)
    return False


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def prepare(cfg, run_dir: Path, *, with_environment: bool = True, ranks: list[dict] | None = None) -> None:
    """Create the layout and write config.yaml; an existing run directory must hold the same config
    (it is resumed). env.json is written by the process that trains (a submitter skips it: it would
    import torch and DeepSpeed only to describe the wrong machine); `ranks` (rank_placement of every
    rank, in rank order) goes in it as "ranks"."""
    from scaling.config import RunConfig

    check_resumable(cfg, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CHECKPOINTS).mkdir(exist_ok=True)
    cfg_path = run_dir / CONFIG
    if not cfg_path.exists() or RunConfig.load(cfg_path) != cfg:  # new, or resumed on other ranks/stage
        atomic_write(cfg_path, cfg.to_yaml())
    if with_environment:
        write_json(run_dir / ENV, {**environment(), **({"ranks": ranks} if ranks is not None else {})})


def rank_placement(rank: int) -> dict[str, Any]:
    """Where this rank runs: its host, process, local rank and SLURM node (env.json's "ranks")."""
    return {"rank": rank, "hostname": socket.gethostname(), "pid": os.getpid(),
            "local_rank": int(os.environ.get("LOCAL_RANK", "0")), "slurm_node_id": os.environ.get("SLURM_NODEID")}


def check_resumable(cfg, run_dir: Path) -> None:
    """What `prepare` refuses, before anything exists: ConfigError (check_resume) when `run_dir`
    holds a run (config.yaml) that `cfg` may not continue. A launcher calls it before any process
    group, engine or submission."""
    from scaling.config import RunConfig

    cfg_path = Path(run_dir) / CONFIG
    if cfg_path.exists():
        existing = RunConfig.load(cfg_path)
        if existing != cfg:
            check_resume(existing, cfg, run_dir)


# What a resumed run may change: how many ranks share each micro-step, and how ZeRO partitions the
# state (scaling.train.reshard converts the checkpoint).
RESHARDABLE = ("world_size", "micro_batch", "zero_stage")


def check_resume(existing, cfg, run_dir: Path) -> None:
    """ConfigError unless `cfg` may continue the run of `existing` in `run_dir`: the same config but
    for RESHARDABLE fields, with micro_batch x world_size unchanged (one micro-step spans the same
    samples: the data order, VATT's negatives, KoLeo's neighbours and the synchronised BatchNorm
    statistics depend on it), no move between ZeRO stage 0 and a ZeRO stage, and no WebDataset
    shards (their split by rank and worker has no counterpart on another number of ranks)."""
    from scaling.config import ConfigError

    old, new = existing.to_dict(), cfg.to_dict()
    diff = {k: (v, new[k]) for k, v in old.items() if new[k] != v}
    if set(diff) - set(RESHARDABLE):
        raise ConfigError("run_dir", f"{run_dir} holds a run with a different config {diff}; "
                                     "pick a new --run-dir to start another run")
    span = existing.micro_batch * existing.world_size
    if cfg.micro_batch * cfg.world_size != span:
        fits = span % cfg.world_size == 0
        raise ConfigError("micro_batch", f"resuming a run of {existing.world_size} rank(s) x micro_batch "
                          f"{existing.micro_batch} on {cfg.world_size} needs micro_batch x world_size = {span}, "
                          "the samples one micro-step spans (the data order, VATT's negatives, KoLeo's "
                          "neighbours and BatchNorm statistics depend on it): "
                          + (f"micro_batch={span // cfg.world_size}" if fits
                             else f"{span} does not split over {cfg.world_size} ranks"))
    if (existing.zero_stage == 0) != (cfg.zero_stage == 0):
        raise ConfigError("zero_stage", f"got {cfg.zero_stage}; the run was trained at ZeRO-{existing.zero_stage}, "
                                        "and a checkpoint moves between ZeRO stages 1-3 only (stage 0 keeps a "
                                        "plain optimizer state)")
    if cfg.world_size != existing.world_size and cfg.data.source == "webdataset":
        raise ConfigError("world_size", f"the run reads WebDataset shards split by rank and worker over "
                                        f"{existing.world_size} rank(s); that order has no counterpart on "
                                        f"{cfg.world_size} (resume with --nproc {existing.world_size})")


# What a run's random-init evaluation does not depend on: how it is trained, not what is built and
# evaluated (weights come from `seed`, the architecture, and the data geometry).
TRAINING_ONLY = ("global_batch", "micro_batch", "steps", "samples", "lr", "lr_scaling", "lr_ref_batch",
                 "weight_decay", "weight_decay_end", "clip_grad", "clip_mode", "warmup_fraction", "min_lr",
                 "adam_eps", "drop_rate", "drop_path", "dropout", "zero_stage", "offload", "world_size",
                 "checkpoint_every", "log_every", "activation_checkpointing")


def random_init_cache(cfg, folder: Path) -> Path:
    """Where the random-init evaluation of `cfg` is kept in a shared cache folder (a sweep's): one
    file per distinct (method, architecture, seed, data, evaluation, precision), so trials that differ
    only in how they train share it."""
    import hashlib

    d = {k: v for k, v in cfg.to_dict().items() if k not in TRAINING_ONLY}
    d["eval"] = {k: v for k, v in d.get("eval", {}).items() if k != "every_steps"}
    key = hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(folder) / f"{cfg.method}-{cfg.size}-s{cfg.seed}-{key}.json"


def environment() -> dict[str, Any]:
    import deepspeed
    import torch

    return {
        "python": sys.version.split()[0], "torch": torch.__version__, "deepspeed": deepspeed.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
        "hostname": socket.gethostname(), "git_commit": git_commit(), "argv": sys.argv,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "torch_threads": torch.get_num_threads(),  # per rank; ranks on one CPU machine split its cores
    }


class MetricsLog:
    """metrics.jsonl plus TensorBoard scalars, written by rank 0.

    On resume from step s, lines after s are dropped from metrics.jsonl and TensorBoard is told to
    purge events after s, so every step appears exactly once however often the run restarts.
    """

    def __init__(self, run_dir: Path, resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        self.path = run_dir / METRICS
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            atomic_write(self.path, "".join(line + "\n" for line in kept))
        elif self.path.exists():
            self.path.unlink()
        self.file = self.path.open("a")
        purge = None if resume_step is None else resume_step + 1
        self.tb = SummaryWriter(log_dir=str(run_dir / TB), purge_step=purge)

    def log(self, step: int, metrics: dict[str, float], prefix: str = "train") -> None:
        """One metrics.jsonl line and the TensorBoard scalars of `step`: each key under `prefix`/,
        unless it names its own namespace (such as data/skipped)."""
        tags = {(k if "/" in k else f"{prefix}/{k}"): v for k, v in metrics.items()}
        row = {"step": step, "time": round(dt.datetime.now().timestamp(), 3), **tags}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        for tag, value in tags.items():
            if isinstance(value, (int, float)):
                self.tb.add_scalar(tag, value, step)

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}
        final = {f"hparam/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
        self.tb.add_hparams(clean, final, run_name=HPARAMS_RUN)

    def close(self) -> None:
        self.tb.flush()
        self.tb.close()
        self.file.close()
