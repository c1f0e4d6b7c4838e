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
