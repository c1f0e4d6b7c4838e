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
