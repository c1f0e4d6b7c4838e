"""Helpers shared by the tests that run the real CLI: tiny runs in subprocesses (each run owns its
process group, as it would on a cluster)."""
import json
import os
import subprocess
import sys
from pathlib import Path

TINY = ["steps=4", "global_batch=8", "micro_batch=4", "data.train_size=64", "data.eval_size=32",
        "data.num_workers=0", "data.captions=2", "data.max_words=8", "data.vocab_size=1000", "log_every=1",
        "dino.out_dim=64", "dino.hidden_dim=32", "dino.bottleneck_dim=16", "dino.local_crops=2"]


def run_cli(*args, timeout=600, check=True, env=None, cwd=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in (env or os.environ).items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-m", "scaling.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"scaling {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def kill_at_checkpoint(args, run_dir: Path, step: int, timeout: float = 300) -> None:
    """Start `scaling *args --run-dir run_dir` in its own process group, SIGKILL the whole group as
    soon as checkpoint `step` is complete, and check that the run left no summary (it died mid-run)."""
    import signal
    import time

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_PORT")}
    proc = subprocess.Popen([sys.executable, "-m", "scaling.cli", *args, "--run-dir", str(run_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    deadline = time.time() + timeout
    while not (run_dir / "checkpoints" / f"step_{step:08d}" / "COMPLETE.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "summary.json").exists()
