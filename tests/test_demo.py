"""`scaling demo` runs the whole pipeline (sweep -> runs -> analysis -> summary) on a smaller spec."""
import yaml
from clitools import run_cli
from sweeptools import FIXED


def test_the_demo_pipeline_runs_end_to_end_and_a_rerun_only_redoes_the_analysis(tmp_path):
    spec = tmp_path / "mini_demo.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "mini_demo", "dir": str(tmp_path / "sweep"),
        "fixed": {**FIXED, "eval.linear_probe": False},
        # As the demo: no accumulation, so a VATT run's batch is its contrastive batch (one arm).
        "grid": [{"method": ["vatt", "dino"], "global_batch": [4], "micro_batch": [4]},
                 {"method": ["vatt", "dino"], "global_batch": [8], "micro_batch": [8]},
                 {"method": ["vatt"], "size": ["micro"], "micro_batch": [8]},
                 {"method": ["vatt"], "drop_rate": [0.5], "micro_batch": [8]}],
        "launcher": {"type": "local", "parallelism": 2}}))
    done = run_cli("demo", "--spec", str(spec), "--launcher", "local", "--bootstrap", "10", timeout=900)
    out = done.stdout
    # A clean exit: the summary and the report's path are the last lines; no traceback on stderr
    # (submitit's LocalJob.__del__ once printed two at interpreter exit).
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr[-3000:]
    assert out.rstrip().splitlines()[-1].startswith("report: "), out[-500:]
    assert "on submitit's local executor" in out and "watch: tensorboard --logdir" in out
    assert "trials: 6/6 done, 0 running, 0 queued, 0 failed" in out
    assert "| batch 4 | batch 8 |" in out and "scaling exponent vatt" in out and "DropToken 0.5 (nano, batch 8)" in out
    report = tmp_path / "sweep" / "report" / "report.html"
    assert f"report: {report}" in out and report.is_file()

    again = run_cli("demo", "--spec", str(spec), "--launcher", "local", "--bootstrap", "10", timeout=900).stdout
    assert "nothing to submit" in again and f"report: {report}" in again


def test_interrupting_the_demo_and_running_it_again_continues_where_it_stopped(tmp_path):
    """Ctrl-C (SIGINT to the whole foreground process group, as a terminal sends it) stops the demo
    and its running job; running it again keeps the finished trial, resumes the interrupted one from
    its checkpoint, runs the rest, and counts no failure."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    spec = tmp_path / "ctrl_c_demo.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "ctrl_c_demo", "dir": str(tmp_path / "sweep"),
        "fixed": {**FIXED, "steps": 24, "checkpoint_every": 4, "eval.linear_probe": False, "eval.random_init": False},
        "grid": [{"method": ["vatt"], "global_batch": [4, 8], "seed": [0]}, {"method": ["dino"]}],
        "launcher": {"type": "local", "parallelism": 1}}))
    trials = tmp_path / "sweep" / "trials"

    def summaries():
        return {d.name: json.loads((d / "summary.json").read_text()) for d in trials.glob("*") if (d / "summary.json").is_file()}

    def checkpointed():  # unfinished trials with a complete checkpoint (its manifest written)
        return [d for d in trials.glob("*")
                if d.name not in summaries() and any((d / "checkpoints").glob("*/COMPLETE.json"))]

    cmd = [sys.executable, "-m", "scaling.cli", "demo", "--spec", str(spec), "--launcher", "local", "--bootstrap", "10"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and not (summaries() and checkpointed()):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.5)
    assert summaries() and checkpointed(), "no trial finished while another had a checkpoint"
    finished = dict(summaries())
    interrupted = checkpointed()[0]
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "interrupted: stopping the demo's running jobs" in out and "run the same command again to continue" in out
    first_job = {name: json.loads((trials / name / "job.json").read_text())["job_id"] for name in finished}

    again = run_cli("demo", "--spec", str(spec), "--launcher", "local", "--bootstrap", "10", timeout=900).stdout
    assert "trials: 3/3 done, 0 running, 0 queued, 0 failed, 1 cancelled" in again, again
    assert f"report: {tmp_path / 'sweep' / 'report' / 'report.html'}" in again
    for name, summary in finished.items():  # kept: not run again
        assert json.loads((trials / name / "job.json").read_text())["job_id"] == first_job[name]
        assert summaries()[name] == summary
    record = json.loads((interrupted / "job.json").read_text())
    log = Path(record["stdout"]).read_text()
    assert "resumed from step" in log and "resumed from step 0 " not in log, log[-2000:]
    steps = [json.loads(line)["step"] for line in (interrupted / "metrics.jsonl").read_text().splitlines()
             if "train/loss" in line]
    assert steps == sorted(set(steps)) and steps[-1] == 24
    assert summaries()[interrupted.name]["end_reason"] == "completed"
