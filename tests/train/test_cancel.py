"""Cancel requests: a file in the run directory that the loop answers after the step it sees it at
(a checkpoint of that step, end_reason "cancelled"); requests older than the run's job are stale."""
import json
import time

from clitools import TINY, read_metrics

from scaling.train import rundir as rd


def _job_record(run_dir, submitted: float) -> None:
    rd.write_json(run_dir / "job.json", {"job_id": "1", "launcher": "local", "submitted_time": submitted})


def test_a_request_is_current_only_when_newer_than_the_submission_or_the_process(tmp_path):
    started = time.time()
    assert not rd.cancel_requested(tmp_path, started)                  # none
    rd.request_cancel(tmp_path)
    assert rd.cancel_requested(tmp_path, started)                      # no job record: newer than the process
    assert not rd.cancel_requested(tmp_path, time.time() + 1)          # older than the process: stale, removed
    assert not (tmp_path / "cancel.request").exists()

    rd.request_cancel(tmp_path)
    _job_record(tmp_path, time.time() - 60)
    assert rd.cancel_requested(tmp_path, time.time() + 1)              # after the submission: a job still starting
    _job_record(tmp_path, time.time() + 1)                             # resubmitted since: stale
    assert not rd.cancel_requested(tmp_path, 0.0) and not (tmp_path / "cancel.request").exists()

    (tmp_path / "job.json").unlink()
    (tmp_path / "cancel.request").write_text("")                       # a hand-made one counts from its mtime
    assert rd.cancel_requested(tmp_path, started)
    rd.clear_cancel_request(tmp_path)
    assert not (tmp_path / "cancel.request").exists()


def test_a_cancel_request_stops_the_run_at_the_next_step_with_its_checkpoint(tmp_path, process_group_env):
    from scaling.config import RunConfig
    from scaling.train.checkpoint import Checkpoints
    from scaling.train.loop import train

    cfg = RunConfig.load(None, [*TINY, "steps=6", "eval.every_steps=2", "eval.random_init=false",
                                "eval.linear_probe=false", "checkpoint_every=100"])
    run_dir = tmp_path / "run"

    def on_eval(step, metrics):  # the request arrives after step 2 (while the run evaluates)
        if step == 2:
            rd.request_cancel(run_dir)

    summary = train(cfg, run_dir, on_eval=on_eval)
    assert summary["end_reason"] == "cancelled" and summary["steps"] == 3
    assert json.loads((run_dir / "summary.json").read_text())["end_reason"] == "cancelled"
    assert "loss" in summary["final"]                                   # the last step's metrics
    checkpoints = Checkpoints(run_dir / "checkpoints")
    assert checkpoints.complete() == [3] and checkpoints.problem(3) is None
    assert not (run_dir / "cancel.request").exists()                   # used up
    assert not (run_dir / "model.pt").exists()

    summary = train(cfg, run_dir)                                       # the next attempt resumes and completes
    assert summary["end_reason"] == "completed" and summary["steps"] == 6
    assert [r["step"] for r in read_metrics(run_dir) if "train/loss" in r] == [1, 2, 3, 4, 5, 6]
