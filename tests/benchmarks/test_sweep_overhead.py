"""`sweep_overhead` without a cluster: a trial's clock times are read from its run directory (named by
scaling.schema), and the rows and computed notes follow from them."""
import json
import os

import yaml

from benchmarks import sweep_overhead as so
from scaling import schema


def _touch(path, when):
    path.write_text("{}")
    os.utime(path, (when, when))


def test_a_trials_times_come_from_its_run_directory_and_make_a_row(tmp_path):
    t0 = 1_000_000.0
    run = tmp_path / "run"
    run.mkdir()
    (run / schema.CONFIG).write_text(yaml.safe_dump({"method": "vatt", "samples": 640}))
    (run / schema.SUMMARY).write_text(json.dumps({schema.END_REASON: "completed", schema.STEPS: 20, schema.WALL_S: 9.5}))
    (run / schema.JOB_RECORD).write_text(json.dumps({"stdout": str(tmp_path / "logs" / "45_0_log.out")}))
    _touch(run / schema.ENV, t0 + 4)
    _touch(run / schema.DS_CONFIG, t0 + 5)
    (run / schema.METRICS).write_text(
        json.dumps({"step": 0, "time": t0 + 7, "eval/knn_top1": 50.0}) + "\n"
        + json.dumps({"step": 1, "time": t0 + 8, "train/loss": 1.0, "train/step_time_s": 0.5}) + "\n"
        + json.dumps({"step": 20, "time": t0 + 12, "train/loss": 0.5, "train/step_time_s": 0.2}) + "\n")
    times = {"t0": t0, "python_up": t0 + 0.1, "imported": t0 + 0.3, "loaded": t0 + 0.4, "submitted": t0 + 1}
    notes: list[str] = []
    trial = {"number": 0, "state": "COMPLETE", "run_dir": str(run), schema.END_REASON: "completed"}
    t = so._trial_times("45_0", trial, {"SubmitTime": t0, "StartTime": t0 + 2, "state": "COMPLETED"}, times, notes)
    assert notes == []
    assert (t["method"], t["samples"], t["steps"], t["train_wall_s"]) == ("vatt", 640, 20, 9.5)
    assert t["train_entered"] == t0 + 4 and t["model_built"] == t0 + 5
    assert t["first_step"] == t0 + 7.5 and t["eval0_logged"] == t0 + 7 and t["last_step"] == 20
    t["end"] = t0 + 14
    row = so._row("overhead", t, demo_wall=14.0)
    assert row["trial"] == "overhead #0 (45_0)" and row["submit→first step (s)"] == 7.5
    assert row["model (s)"] == 1.0 and row["share"] == 7.5 / 14.0
    assert so._median_row([row], 14.0)["share"] == row["share"]
    notes = so._notes("smoke", [("smoke", t)], [t], 14.0)
    assert notes[0].startswith("smoke scale: 1 sweep(s)") and "14.0 s" in notes[1]
    assert any(n.startswith("submit cmd, median: interpreter 0.10 s") for n in notes)
    assert any(n.startswith("a demo trial's wall time, median: 7.5 s to the first step") for n in notes)


def test_a_trial_that_did_not_complete_is_noted(tmp_path):
    notes: list[str] = []
    times = {"t0": 0.0, "submitted": 1.0}
    so._trial_times("7_1", {"number": 1, "state": "FAIL", "run_dir": str(tmp_path)}, {"state": "FAILED"}, times, notes)
    assert notes == ["trial 1 (job 7_1) ended FAIL (SLURM FAILED, None)"]
