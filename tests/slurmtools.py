"""Helpers of the SLURM tests: job ids, the queue, and waiting on the real local cluster."""
import json
import subprocess
import time
from pathlib import Path

from clitools import read_metrics

from slurm.cluster import job_states


def job_id(run_dir: Path) -> str:
    return json.loads((Path(run_dir) / "job.json").read_text())["job_id"]


def squeue_ids() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def start_now_if_requeued(job: str) -> None:
    """SLURM holds a requeued job for ~2 minutes (BeginTime); let it start at once."""
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)


def wait_for(predicate, timeout: float, what: str, poll: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def wait_final(job: str, timeout: float = 600, requeued_ok: bool = True) -> str:
    """Wait until `job` reaches a final SLURM state, starting it at once whenever it is requeued."""
    def final():
        state = job_states([job])[job]
        if state == "PENDING" and requeued_ok:
            start_now_if_requeued(job)
        return state if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY") else None
    return wait_for(final, timeout, f"job {job} to end", poll=1.0)


def steps_logged(run_dir: Path) -> list[int]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [r["step"] for r in read_metrics(run_dir) if "train/loss" in r]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(run_dir) if "train/loss" in r}


def stop_when_resumed(run_dir, job, timeout: float = 900, every: int = 1) -> list[int]:
    """Wait until the requeued attempt has resumed and logged a step of its own, then ask the run to
    stop (a cancel request: it saves a checkpoint and ends by itself at its next step). However fast
    the machine trains, the run (100,000 steps) is still going when it is asked; returns the steps logged."""
    from scaling.train.rundir import request_cancel

    log = run_dir / "logs" / job / f"{job}_0_log.out"  # both attempts: the log is appended to
    def resumed_step():
        text = log.read_text() if log.is_file() else ""
        if "resumed from step" not in text:
            return None
        start = int(text.split("resumed from step", 1)[1].split()[0])
        return start if max(steps_logged(run_dir), default=0) > start else None
    wait_for(resumed_step, timeout, "the requeued attempt to resume and log a step")
    request_cancel(run_dir)
    assert wait_final(job, timeout=300) == "COMPLETED"  # it stopped by itself
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["end_reason"] == "cancelled"
    logged = steps_logged(run_dir)
    assert logged == sorted(set(logged)) and logged[-1] <= summary["steps"]  # each step once, in order
    assert set(range(every, summary["steps"] + 1, every)) <= set(logged)   # none lost across the attempts
    return logged
