"""The launchers that need no cluster: submitit's debug (in-process) executor, and the flag checks."""
import json

import pytest
from clitools import TINY, run_cli


def test_the_debug_launcher_trains_in_process_and_records_the_job(tmp_path):
    run_dir = tmp_path / "debug"
    out = run_cli("train", *TINY, "--run-dir", str(run_dir), "--launcher", "debug").stdout
    record = json.loads((run_dir / "job.json").read_text())
    assert record["launcher"] == "debug" and record["job_id"].startswith("DEBUG_")
    assert json.loads((run_dir / "summary.json").read_text())["end_reason"] == "completed"
    assert f"{run_dir}: completed" in out
    jobs = run_cli("jobs", "--runs", str(tmp_path)).stdout
    assert "debug" in jobs and "COMPLETED" in jobs and "4/4" in jobs


@pytest.mark.parametrize("args, message", [
    (["--launcher", "debug", "--nproc", "2"], "--nproc: the debug launcher runs one rank"),
    (["--profile", "local"], "--profile: applies to --launcher"),
    (["--launcher", "slurm"], "--profile: --launcher slurm needs a profile; available: "),
    (["--launcher", "slurm", "--profile", "nonexistent"], "--profile: no profile 'nonexistent'"),
    (["--config", "a.yaml", "--config", "b.yaml"], "--config: several runs at once need --launcher"),
])
def test_launcher_flag_mistakes_are_named_before_anything_runs(tmp_path, args, message):
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text("method: vatt\n")
    proc = run_cli("train", *TINY, *args, check=False, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
