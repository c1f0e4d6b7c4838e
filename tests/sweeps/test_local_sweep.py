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
