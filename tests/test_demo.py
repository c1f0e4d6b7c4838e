"""`scaling demo` runs the whole pipeline (sweep -> runs -> analysis -> summary) on a smaller spec."""
import yaml

from clitools import run_cli
from sweeptools import FIXED


def test_the_demo_pipeline_runs_end_to_end_and_a_rerun_only_redoes_the_analysis(tmp_path):
    spec = tmp_path / "mini_demo.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "mini_demo", "dir": str(tmp_path / "sweep"),
        "fixed": {**FIXED, "eval.linear_probe": False},
        "grid": [{"method": ["vatt", "dino"], "global_batch": [4, 8]},
                 {"method": ["vatt"], "size": ["micro"]}, {"method": ["vatt"], "drop_rate": [0.5]}],
        "launcher": {"type": "local", "parallelism": 2}}))
    out = run_cli("demo", "--spec", str(spec), "--launcher", "local", "--bootstrap", "10", timeout=900).stdout
    assert "on submitit's local executor" in out and "watch: tensorboard --logdir" in out
    assert "trials: 6/6 done, 0 running, 0 queued, 0 failed" in out
    assert "| batch 4 | batch 8 |" in out and "scaling exponent vatt" in out and "DropToken 0.5 (nano, batch 8)" in out
    report = tmp_path / "sweep" / "report" / "report.html"
    assert f"report: {report}" in out and report.is_file()

    again = run_cli("demo", "--spec", str(spec), "--launcher", "local", "--bootstrap", "10", timeout=900).stdout
    assert "nothing to submit" in again and f"report: {report}" in again
