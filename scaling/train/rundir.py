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
import uuid
from pathlib import Path
from typing import Any

from scaling.schema import CHECKPOINTS, CONFIG, DS_CONFIG, ENV, HPARAMS_RUN, METRICS, SUMMARY, TB, read_summary

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
    "environment",
    "git_commit",
    "new_run_dir",
    "prepare",
    "random_init_cache",
    "read_summary",
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


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def prepare(cfg, run_dir: Path, *, with_environment: bool = True) -> None:
    """Create the layout and write config.yaml; an existing run directory must hold the same config
    (it is resumed). env.json is written by the process that trains (a submitter skips it: it would
    import torch and DeepSpeed only to describe the wrong machine)."""
    from scaling.config import ConfigError, RunConfig

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CHECKPOINTS).mkdir(exist_ok=True)
    cfg_path = run_dir / CONFIG
    if cfg_path.exists():
        existing = RunConfig.load(cfg_path)
        if existing != cfg:
            diff = {k: (v, cfg.to_dict()[k]) for k, v in existing.to_dict().items() if cfg.to_dict()[k] != v}
            raise ConfigError("run_dir", f"{run_dir} holds a run with a different config {diff}; "
                                         "pick a new --run-dir to start another run")
    else:
        atomic_write(cfg_path, cfg.to_yaml())
    if with_environment:
        write_json(run_dir / ENV, environment())


# What a run's random-init evaluation does not depend on: how it is trained, not what is built and
# evaluated (weights come from `seed`, the architecture, and the data geometry).
TRAINING_ONLY = ("global_batch", "micro_batch", "steps", "samples", "lr", "lr_scaling", "lr_ref_batch",
                 "weight_decay", "weight_decay_end", "clip_grad", "warmup_fraction", "min_lr", "drop_rate",
                 "drop_path", "zero_stage", "offload", "world_size", "checkpoint_every", "log_every",
                 "activation_checkpointing")


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
