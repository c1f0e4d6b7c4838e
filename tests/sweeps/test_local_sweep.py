"""Sweeps on submitit's local executor, which has no queue: at most `parallelism` trials run at
once, and `wait` starts the rest as slots free."""
import json

from clitools import run_cli
from sweeptools import FIXED, write_spec


def test_the_local_executor_runs_at_most_parallelism_trials_at_once(tmp_path):
    path = write_spec(tmp_path, grid={"method": ["vatt"], "global_batch": [4, 8], "seed": [0, 1]},
                      fixed={**FIXED, "steps": 2, "eval.linear_probe": False},
                      launcher={"type": "local", "parallelism": 2})
    out = run_cli("sweep", "submit", path).stdout
    assert "local executor: 2 of the 4 trials owed start now (parallelism 2)" in out
    assert out.count(": job ") == 2

    out = run_cli("sweep", "submit", path, "--wait", timeout=900).stdout
    assert "trials: 4/4 done, 0 running, 0 queued, 0 failed" in out, out
    rows = json.loads(run_cli("sweep", "status", path, "--json").stdout)["trials"]
    spans = sorted((r["started"], r["finished"]) for r in rows)
    for i, (start, _) in enumerate(spans):  # never more than 2 trials between start and finish
        assert sum(1 for s, f in spans[:i] if f > start) <= 1, spans


def test_trials_that_differ_only_in_training_share_one_random_init_evaluation(tmp_path):
    path = write_spec(tmp_path, grid={"method": ["vatt"], "global_batch": [4, 8]},
                      fixed={**FIXED, "steps": 2, "eval.linear_probe": False},
                      launcher={"type": "local", "parallelism": 1})
    out = run_cli("sweep", "submit", path, "--wait", timeout=900).stdout
    assert "trials: 2/2 done, 0 running, 0 queued, 0 failed" in out, out
    cache = list((tmp_path / "sweep" / "random_init").glob("*.json"))
    assert len(cache) == 1
    trials = sorted((tmp_path / "sweep" / "trials").iterdir())
    summaries = [json.loads((t / "summary.json").read_text()) for t in trials]
    assert summaries[0]["random_init"] == summaries[1]["random_init"] == json.loads(cache[0].read_text())
    logs = [open(json.loads((t / "job.json").read_text())["stdout"]).read() for t in trials]
    assert sum(f"random-init evaluation from {cache[0]}" in log for log in logs) == 1


def test_the_random_init_cache_key_ignores_only_how_a_run_trains(tmp_path):
    from scaling.config import RunConfig
    from scaling.train.rundir import random_init_cache

    def key(*overrides):
        return random_init_cache(RunConfig.load(None, ["steps=4", *overrides]), tmp_path)

    assert key() == key("global_batch=128", "micro_batch=32", "lr=1e-3", "drop_rate=0.5", "zero_stage=3",
                        "checkpoint_every=2", "eval.every_steps=2")
    for changed in ("seed=1", "size=micro", "data.resolution=32", "data.train_size=128", "eval.knn_k=10",
                    "method=dino", "precision=bf16"):
        assert key(changed) != key(), changed


def test_cancel_settles_each_running_trial_by_how_its_run_ended(tmp_path, caplog, request):
    """Race-free, without training: three RUNNING trials of a local sweep whose jobs `cancel` finds
    (a) ended with a completed run before the request reached it: COMPLETE with its value, request removed;
    (b) ended without a summary: CANCELLED; (c) still running and deaf to the request: after the
    grace period its job is interrupted (SIGINT, as submitit's own cancel), and it is CANCELLED."""
    import logging
    import subprocess
    import time

    from scaling.train import rundir as rd
    from sweeps import commands
    from sweeps.spec import load_spec
    from sweeps.study import create_trial, open_study, set_user_attr, submit_lock

    path = write_spec(tmp_path, grid={"seed": [0, 1, 2]}, fixed={**FIXED, "steps": 2},
                      launcher={"type": "local", "parallelism": 3})
    spec = load_spec(path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    deaf = subprocess.Popen(["sleep", "300"])
    request.addfinalizer(deaf.kill)
    with submit_lock(spec):
        study = open_study(spec)
        created = [create_trial(spec, study, dict(point)) for point in spec.grid]
    for (trial, params), pid in zip(created, [dead.pid, dead.pid, deaf.pid]):
        run_dir = spec.run_dir(params)
        run_dir.mkdir(parents=True)
        rd.write_json(run_dir / "job.json", {"job_id": str(pid), "launcher": "local", "pid": pid,
                                             "submitted_time": time.time()})
        set_user_attr(study, trial, "job_id", str(pid))
        set_user_attr(study, trial, "launcher", "local")
    done_dir = spec.run_dir(created[0][1])
    rd.write_json(done_dir / "summary.json", {"end_reason": "completed", "steps": 2,
                                               "final": {spec.metric: 0.75}})

    with caplog.at_level(logging.INFO, logger="sweeps.commands"):
        assert commands.cancel(spec, grace_s=3, poll_s=0.2) == 2
    assert deaf.wait(timeout=10) == -2                                  # SIGINT
    text = caplog.text
    assert f"trial {created[0][0].number}: job {dead.pid} had ended COMPLETE before the cancel reached it" in text
    assert f"trial {created[1][0].number}: cancelled job {dead.pid} (ended: no summary" in text
    assert f"trial {created[2][0].number}: cancelled job {deaf.pid} (it did not stop within 3 s)" in text
    assert not (done_dir / "cancel.request").exists()
    rows = {r["number"]: r for r in commands.status(spec)}
    assert rows[created[0][0].number]["state"] == "COMPLETE" and rows[created[0][0].number]["value"] == 0.75
    assert [rows[t.number]["state"] for t, _ in created[1:]] == ["CANCELLED", "CANCELLED"]
    assert all(rows[t.number]["end_reason"] == "cancelled" for t, _ in created[1:])


def test_sweep_cancel_stops_a_local_trial_at_its_next_step(tmp_path, request):
    """The local executor: a trial with 100,000 steps to go saves its step and stops by itself."""
    import os
    import subprocess
    import sys

    from slurmtools import steps_logged, wait_for

    path = write_spec(tmp_path, grid={"seed": [0]}, launcher={"type": "local", "parallelism": 1},
                      fixed={**FIXED, "steps": 100_000, "checkpoint_every": 50_000, "eval.linear_probe": False,
                             "eval.random_init": False})
    # Not run_cli: the local job inherits the submitter's stdout, and would hold its pipe open.
    subprocess.run([sys.executable, "-m", "scaling.cli", "sweep", "submit", path], check=True, timeout=300,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE",
                                                                          "MASTER_ADDR", "MASTER_PORT")})
    trial = json.loads(run_cli("sweep", "status", path, "--json").stdout)["trials"][0]
    run_dir = tmp_path / "sweep" / "trials" / trial["run_dir"].split("/")[-1]
    request.addfinalizer(lambda: _interrupt(json.loads((run_dir / "job.json").read_text())["pid"]))
    wait_for(lambda: len(steps_logged(run_dir)) >= 2, 300, "the trial to train")
    out = run_cli("sweep", "cancel", path).stdout
    assert f"trial {trial['number']}: cancelled job {trial['job_id']} (saved step " in out, out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["end_reason"] == "cancelled" and summary["steps"] < 100_000
    assert (run_dir / "checkpoints" / f"step_{summary['steps']:08d}" / "COMPLETE.json").is_file()
    row = json.loads(run_cli("sweep", "status", path, "--json").stdout)["trials"][0]
    assert row["state"] == "CANCELLED" and row["end_reason"] == "cancelled"


def _interrupt(pid: int) -> None:
    """A test that fails leaves no local job training behind (SIGINT: submitit's own cancel)."""
    import os
    import signal

    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        pass
