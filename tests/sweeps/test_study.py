"""The study against each storage (SQLite, journal file, PostgreSQL): concurrent results, idempotent
and concurrent submits, and pruning."""
import json
import multiprocessing as mp

import pytest
from clitools import run_cli
from sweeptools import write_spec

from sweeps.spec import load_spec, point_key
from sweeps.study import create_trial, finish, open_study, submit_lock


def _finish_together(spec_path: str, number: int, together) -> None:
    spec = load_spec(spec_path, check_storage=False)
    study = open_study(spec)
    trial = next(t for t in study.get_trials() if t.number == number)
    together.wait(120)  # all 8 have opened the study: they finish at once, however slow the start
    finish(study, trial, "COMPLETE", float(number) / 10)


def test_eight_trials_finishing_at_the_same_moment_lose_none_and_duplicate_none(tmp_path, storage):
    path = write_spec(tmp_path, storage=storage, grid={"seed": list(range(8))}, launcher={"type": "debug"})
    spec = load_spec(path)
    with submit_lock(spec):
        study = open_study(spec)
        created = [create_trial(spec, study, dict(point)) for point in spec.grid]
    ctx = mp.get_context("spawn")
    together = ctx.Barrier(len(created))
    procs = [ctx.Process(target=_finish_together, args=(path, trial.number, together)) for trial, _ in created]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    trials = open_study(spec).get_trials()
    assert len(trials) == 8
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert sorted(t.value for t in trials) == pytest.approx([n / 10 for n in range(8)])
    assert sorted(t.user_attrs["key"] for t in trials) == sorted(point_key(p) for p in spec.grid)


def test_submit_twice_at_once_and_again_yields_exactly_the_grid(tmp_path, storage):
    path = write_spec(tmp_path, storage=storage, grid={"method": ["vatt", "dino"]}, launcher={"type": "debug"})
    import subprocess
    import sys

    procs = [subprocess.Popen([sys.executable, "-m", "scaling.cli", "sweep", "submit", path],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sum("nothing to submit" in o for o in outs) == 1, outs
    again = run_cli("sweep", "submit", path).stdout
    assert "nothing to submit" in again
    status = json.loads(run_cli("sweep", "status", path, "--json").stdout)
    assert status["counts"] == {"COMPLETE": 2}
    assert sorted(t["params"]["method"] for t in status["trials"]) == ["dino", "vatt"]
    assert all(t["value"] is not None for t in status["trials"])


@pytest.mark.parametrize("storage", ["postgresql"], indirect=True)  # the storage layer is covered above
def test_a_tpe_sweep_with_median_pruning_prunes_a_trial(tmp_path, storage):
    # Trials alternate between 2-class and 48-class clips: the k-NN top-1 of a 48-class trial at its
    # first evaluation is far below the 2-class trial's, so the median pruner must stop it.
    path = write_spec(tmp_path, storage=storage, grid={"data.num_classes": [2, 48]},
                      search={"lr": "loguniform(1e-4, 1e-3)"}, trials=2, seed=0,
                      fixed={"steps": 4, "global_batch": 8, "micro_batch": 4, "data.train_size": 96,
                             "data.eval_size": 96, "data.num_workers": 0, "data.captions": 2, "data.max_words": 8,
                             "data.vocab_size": 1000, "log_every": 1, "eval.every_steps": 2, "eval.linear_probe": False},
                      pruner={"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
                      launcher={"type": "debug", "parallelism": 1})
    out = run_cli("sweep", "submit", path, "--wait").stdout
    status = json.loads(run_cli("sweep", "status", path, "--json").stdout)
    states = {t["params"]["data.num_classes"]: t["state"] for t in status["trials"]}
    assert states == {2: "COMPLETE", 48: "PRUNED"}, out
    pruned = next(t for t in status["trials"] if t["state"] == "PRUNED")
    summary = json.loads((tmp_path / "sweep" / "trials" / pruned["run_dir"].split("/")[-1] / "summary.json").read_text())
    assert summary["stop"] == "pruned at step 2" and summary["steps"] == 2
    assert all(1e-4 <= t["params"]["lr"] <= 1e-3 for t in status["trials"])


@pytest.mark.parametrize("state", ["COMPLETE", "FAIL"])
def test_finishing_a_trial_its_job_finished_first_leaves_the_jobs_result(tmp_path, storage, state):
    """reconcile reads the RUNNING trials, then asks SLURM; a job that ends between the two has told the
    study itself, and the reconciler's late tell must leave that result as it is."""
    path = write_spec(tmp_path, storage=storage, grid={"seed": [0]}, launcher={"type": "debug"})
    spec = load_spec(path)
    with submit_lock(spec):
        study = open_study(spec)
        create_trial(spec, study, dict(spec.grid[0]))
    stale = next(t for t in study.get_trials() if t.state.name == "RUNNING")
    finish(open_study(spec), stale, "COMPLETE", 0.5, reason="completed")  # the job's own tell
    for reason in ("job ended", ""):  # the late tell with a reason to record, and without one
        finish(study, stale, state, 0.1 if state == "COMPLETE" else None, reason=reason)
    (trial,) = open_study(spec).get_trials()
    assert (trial.state.name, trial.value, trial.user_attrs["end_reason"]) == ("COMPLETE", 0.5, "completed")
