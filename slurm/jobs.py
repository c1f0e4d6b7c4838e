"""Where-layer: submit runs with submitit (SLURM, local processes, or in-process) and follow them.

Each run directory is prepared (config.yaml) before submission, and gets a `job.json` record
naming its job, launcher and logs. The submitted callable is `TrainJob(run_dir)`: every task
exports the torch.distributed environment and calls `scaling.train.loop.train`, which resumes from
the run's latest checkpoint. On USR2 (time limit near, or preemption) submitit calls
`checkpoint()` on rank 0, which requeues a fresh `TrainJob` on the same run directory.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from scaling import schema
from scaling.config import ConfigError, RunConfig
from scaling.schema import JOB_RECORD
from scaling.train import rundir as rd
from scaling.train.engine import build_cpu_comm_op
from scaling.train.launch import cpu_share
from scaling.validate import integer
from slurm.cluster import FINAL_STATES, check_fits, job_states
from slurm.profile import Profile, ProfileError, Resources

LAUNCHERS = ("slurm", "local", "debug")
LOGS = "logs"  # <run dir>/logs/<job id>/: submitit's pickles and one log pair per task
log = logging.getLogger(__name__)


class RunFailed(RuntimeError):
    """The run ended without completing (for example a non-finite loss)."""


@dataclass
class TrainJob:
    """The submitted callable: train the run in `run_dir` (resuming it) on every task of the job."""

    run_dir: str
    guard_s: int = 0          # SLURM: save and requeue this long before the time limit, should USR2 not come
    max_requeues: int = 0     # ... at most this many times (the profile's max_timeout_requeues)
    threads: int = 0          # CPU threads per rank (0: torch's default); ranks sharing a node must not oversubscribe it

    def __call__(self) -> dict[str, Any]:
        import submitit

        from scaling.logs import setup

        setup()  # this task's lines go to its log files
        if "SUBMITIT_DEBUG_JOB_ID" not in os.environ:  # the debug launcher is one in-process rank
            env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            log.info(f"rank {env.rank} of world size {env.world_size} (local rank {env.local_rank}) on "
                     f"{socket.gethostname()}; master {env.master_addr}:{env.master_port}")
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        cfg = RunConfig.load(Path(self.run_dir) / schema.CONFIG)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world != cfg.world_size:
            raise ConfigError("world_size", f"the job has {world} tasks but the run was planned for "
                                            f"{cfg.world_size} ranks")
        summary = self.run(cfg)
        reason = summary.get(schema.END_REASON, schema.COMPLETED)  # ranks other than 0 return {}
        if reason == schema.DEADLINE:
            self._requeue()
            return summary
        if reason.startswith(("nonfinite", "error")):
            raise RunFailed(f"{self.run_dir}: {reason}")
        return summary

    def run(self, cfg: RunConfig) -> dict[str, Any]:
        """Every rank: train (or resume) the run; the summary on rank 0, {} elsewhere."""
        from scaling.train.loop import train

        return train(cfg, self.run_dir, deadline=self.deadline())

    def deadline(self) -> float | None:
        """Rank 0 of a SLURM job: when to save and requeue by itself — `guard_s` before the job's
        end time. SLURM's USR2 normally comes first; this covers a signal that never arrives."""
        job = os.environ.get("SLURM_JOB_ID")
        if not job or not self.guard_s or int(os.environ.get("RANK", "0")) != 0:
            return None
        if _timeout_requeues(self.run_dir) >= self.max_requeues:
            return None  # out of requeues: run on to the limit
        try:
            out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%e"], capture_output=True, text=True, timeout=30)
            end = dt.datetime.fromisoformat(out.stdout.strip().splitlines()[0]).timestamp()
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return None
        return end - self.guard_s

    def _requeue(self) -> None:
        """Rank 0: count the requeue in job.json, then ask SLURM to requeue this job."""
        if int(os.environ.get("RANK", "0")) != 0:
            return
        path = Path(self.run_dir) / JOB_RECORD
        record = read_record(self.run_dir)
        record["timeout_requeues"] = record.get("timeout_requeues", 0) + 1
        rd.write_json(path, record)
        log.info(f"time limit near: requeuing job {os.environ['SLURM_JOB_ID']} "
                 f"({record['timeout_requeues']} of {self.max_requeues})")
        done = subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], capture_output=True, text=True)
        if done.returncode != 0:
            raise RunFailed(f"scontrol requeue failed: {done.stderr.strip()}")
        sys.exit(-1)  # as submitit does after its own requeue: no result, the requeued job continues

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Requeue: a fresh callable on the same run directory resumes from its latest checkpoint."""
        import submitit

        return submitit.helpers.DelayedSubmission(dataclasses.replace(self))


def _timeout_requeues(run_dir: str) -> int:
    return read_record(run_dir).get("timeout_requeues", 0)


def make_executor(launcher: str, folder: Path, *, profile: Profile | None = None, res: Resources | None = None,
                  job_name: str = "scaling", parallelism: int | None = None):
    """A submitit executor for `launcher`, with the profile's and the request's SLURM parameters."""
    import submitit

    if launcher not in LAUNCHERS:
        raise ConfigError("--launcher", f"got {launcher!r}; allowed values: {', '.join(LAUNCHERS)}")
    if launcher == "debug":
        return submitit.DebugExecutor(folder=folder)
    if res is None:
        raise ValueError("the local and slurm launchers need the resources of the run")
    if launcher == "local":
        if res.nodes != 1:
            raise ProfileError("--nodes", f"the local launcher runs on this machine only; got {res.nodes} nodes")
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=res.time_min, tasks_per_node=res.tasks_per_node,
                                   gpus_per_node=res.gpus_per_node, nodes=1)
        return executor
    if profile is None:
        raise ValueError("the slurm launcher needs a profile")
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=profile.max_timeout_requeues,
                                      python=profile.python)
    params: dict[str, Any] = dict(
        job_name=job_name, partition=profile.partition, nodes=res.nodes, ntasks_per_node=res.tasks_per_node,
        cpus_per_task=res.cpus_per_task, time=res.time_min, signal_delay_s=profile.signal_delay_s,
        setup=list(profile.setup),
        # Logs of a requeued job continue the same files instead of replacing them.
        additional_parameters={"open-mode": "append", **profile.sbatch},
        srun_args=["--open-mode=append"],
    )
    for key in ("account", "qos", "constraint", "mem"):
        if getattr(profile, key):
            params[key] = getattr(profile, key)
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    if parallelism:
        params["array_parallelism"] = parallelism
    executor.update_parameters(**params)
    return executor


def prepare(cfg: RunConfig, run_dir: Path) -> None:
    """Write the run's config.yaml (and environment) so the job finds it; an existing run is kept."""
    from scaling.train.rundir import prepare as prepare_run_dir  # light: no torch, no DeepSpeed

    prepare_run_dir(cfg, run_dir, with_environment=False)


def _record(run_dir: Path, job, launcher: str, profile: Profile | None, res: Resources | None,
            world_size: int) -> dict[str, Any]:
    path = Path(run_dir) / JOB_RECORD
    previous = read_record(run_dir)
    history = previous.get("history", [])
    if previous.get("job_id"):
        history.append({k: previous[k] for k in ("job_id", "launcher", "submitted_at", "world_size") if k in previous})
    record = {
        "job_id": str(job.job_id), "launcher": launcher, "profile": profile.name if profile else None,
        "resources": asdict(res) if res else None, "world_size": world_size,  # ranks of this submission
        # The debug launcher prints to this terminal; the others log to files per task.
        "stdout": None if launcher == "debug" else str(job.paths.stdout),
        "stderr": None if launcher == "debug" else str(job.paths.stderr),
        "submitted_at": dt.datetime.now().isoformat(timespec="seconds"), "history": history,
        "submitted_time": round(time.time(), 3),  # the same, precisely (stale cancel requests are older)
        # The process that runs the job: the debug launcher's is this one, the local launcher's its own.
        "pid": os.getpid() if launcher == "debug" else (int(job.job_id) if launcher == "local" else None),
    }
    rd.write_json(path, record)
    return record


def submit(runs: Sequence[tuple[RunConfig, Path]], launcher: str, *, profile: Profile | None = None,
           res: Resources | None = None, logs: Path | None = None, parallelism: int | None = None,
           job_name: str = "scaling", make_job: Callable[[str], Any] = TrainJob) -> list:
    """Submit one job per run; several runs go as one job array (at most `parallelism` at once).

    Everything is checked (profile, resources, partition) before anything is written or submitted.
    `make_job(run_dir)` builds each submitted callable (a picklable object with `checkpoint()`, such
    as TrainJob). Returns the submitit jobs, in the order of `runs`.
    """
    if not runs:
        raise ConfigError("runs", "nothing to submit")
    if launcher == "slurm":
        if profile is None or res is None:
            raise ProfileError("--profile", "the slurm launcher needs a profile")
        check_fits(profile, res)
    if launcher == "debug" and any(cfg.world_size != 1 for cfg, _ in runs):
        raise ConfigError("--nproc", "the debug launcher runs one rank in this process; use --nproc 1")
    if res is not None and any(cfg.world_size != res.ranks for cfg, _ in runs):
        raise ConfigError("world_size", f"the runs must plan for {res.ranks} ranks (nodes x tasks per node)")
    if parallelism is not None:
        integer("--parallelism", parallelism, minimum=1)

    run_dirs = [Path(d).resolve() for _, d in runs]
    if len(set(run_dirs)) != len(run_dirs):
        raise ConfigError("--run-dir", "two runs of one submission share a run directory")
    if logs is None:
        logs = run_dirs[0] / LOGS if len(runs) == 1 else Path(os.path.commonpath(run_dirs)) / LOGS
    if launcher != "debug" and not (profile and profile.gpus_per_node):
        build_cpu_comm_op()  # CPU ranks: compiled once here, not inside a time-limited job
    folder = Path(logs) / "%j"
    executor = make_executor(launcher, folder, profile=profile, res=res, job_name=job_name, parallelism=parallelism)
    for cfg, run_dir in zip((c for c, _ in runs), run_dirs):
        prepare(cfg, run_dir)
    def callable_for(run_dir: Path):
        job = make_job(str(run_dir))
        if launcher == "slurm":
            job.guard_s, job.max_requeues = profile.signal_delay_s, profile.max_timeout_requeues
            job.threads = res.cpus_per_task
        elif launcher == "local":  # every task of every job running at once shares this machine's cores
            # (a sweep tops up one trial at a time while others still run: `parallelism` is what runs at once)
            job.threads = cpu_share(res.tasks_per_node * (parallelism or len(runs)))
        return job

    if len(runs) == 1 or launcher == "debug":
        jobs = [executor.submit(callable_for(d)) for d in run_dirs]
    else:
        with executor.batch():
            pending = [executor.submit(callable_for(d)) for d in run_dirs]
        jobs = list(pending)
    for (cfg, _), job, run_dir in zip(runs, jobs, run_dirs):
        _record(run_dir, job, launcher, profile, res, cfg.world_size)
    if folder.is_dir() and not any(folder.iterdir()):  # the local executor creates the template itself
        folder.rmdir()
    return jobs


# ----------------------------------------------------------------------------- following jobs
def read_record(run_dir: Path) -> dict[str, Any]:
    """The run's job.json (how and where it was submitted), or {} when it has none."""
    return schema.read_json(Path(run_dir) / JOB_RECORD)


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (TypeError, ValueError, ProcessLookupError, PermissionError):
        return False


def ended_since_submit(run_dir: Path) -> bool:
    """A summary.json written after the latest submission: this job's run has ended."""
    summary, record = Path(run_dir) / schema.SUMMARY, Path(run_dir) / JOB_RECORD
    return summary.is_file() and record.is_file() and summary.stat().st_mtime >= record.stat().st_mtime


def run_states(run_dirs: Sequence[Path]) -> dict[Path, str]:
    """The scheduler state of each run's latest job (SLURM state, or RUNNING/COMPLETED/FAILED locally)."""
    records = {Path(d): read_record(d) for d in run_dirs}
    slurm_ids = [r["job_id"] for r in records.values() if r.get("launcher") == "slurm"]
    slurm = job_states(slurm_ids) if slurm_ids else {}
    states = {}
    for run_dir, rec in records.items():
        if not rec:
            states[run_dir] = "-"
        elif rec["launcher"] == "slurm":
            states[run_dir] = slurm.get(rec["job_id"], "UNKNOWN")
        elif rec["launcher"] in ("local", "debug") and not ended_since_submit(run_dir) and _pid_alive(rec.get("pid")):
            states[run_dir] = "RUNNING"
        else:
            reason = schema.read_summary(run_dir).get(schema.END_REASON)
            states[run_dir] = ("COMPLETED" if reason == schema.COMPLETED else "CANCELLED" if reason == schema.CANCELLED
                               else "FAILED" if reason else "UNKNOWN")
    return states


def progress(run_dir: Path) -> dict[str, Any]:
    """The run's last logged step and metrics (from the tail of metrics.jsonl)."""
    path = Path(run_dir) / schema.METRICS
    last: dict[str, Any] = {}
    if path.is_file():
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            for line in f.read().decode(errors="replace").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut by the 64 KiB window
                    continue
                if "step" in row:
                    last = {**last, **row} if row["step"] == last.get("step") else row
    return last


def wait(jobs: Sequence, run_dirs: Sequence[Path], *, poll_s: float = 5.0) -> dict[Path, str]:
    """Block until every run's job has ended; returns each run's end reason ('completed' or why not)."""
    run_dirs = [Path(d) for d in run_dirs]
    launcher = read_record(run_dirs[0]).get("launcher")
    if launcher in ("local", "debug"):
        for job in jobs:
            try:
                job.wait() if launcher == "local" else job.result()
            except Exception as err:  # the run's own summary says what happened
                log.info(f"job {job.job_id} failed: {str(err).strip().splitlines()[-1] if str(err).strip() else err}")
    else:
        shown, unknown_polls = None, 0
        while True:
            states = run_states(run_dirs)
            line = "  ".join(f"{d.name}: {s} step {progress(d).get('step', 0)}" for d, s in states.items())
            if line != shown:
                log.info(line)
                shown = line
            # A job the controller no longer knows has ended too (purged after MinJobAge); ask twice more.
            unknown_polls = unknown_polls + 1 if "UNKNOWN" in states.values() else 0
            if all(s in FINAL_STATES or (s == "UNKNOWN" and unknown_polls >= 3) for s in states.values()):
                break
            time.sleep(poll_s)
    return {d: schema.read_summary(d).get(schema.END_REASON, "no summary") for d in run_dirs}
