"""Runs submitted through submitit to the real local SLURM cluster (and the local/debug launchers)."""
import json
import subprocess

import pytest
import yaml
from clitools import TINY, run_cli
from slurmtools import job_id, job_states, losses, squeue_ids, steps_logged, stop_when_resumed, wait_for

VATT = [*TINY, "method=vatt", "zero_stage=2"]


def layout(run_dir):
    """The run directory's files, without the launcher's own (logs, job record, event-file names)."""
    names = set()
    for p in run_dir.rglob("*"):
        rel = p.relative_to(run_dir)
        if rel.parts[0] in ("logs", "job.json"):
            continue
        names.add(str(rel.parent / "events") if p.name.startswith("events.out.tfevents") else str(rel))
    return names


def test_a_two_task_zero2_vatt_run_completes_and_matches_the_local_launcher(cluster, tmp_path):
    on_slurm, on_local = tmp_path / "slurm", tmp_path / "local"
    out = run_cli("train", *VATT, "--run-dir", str(on_slurm), "--launcher", "slurm", "--profile", "local",
                  "--nproc", "2", "--wait").stdout
    job = job_id(on_slurm)
    assert f"submitted job {job} (slurm)" in out and "tensorboard --logdir" in out and "_0_log.out" in out
    record = json.loads((on_slurm / "job.json").read_text())
    assert record["profile"] == "local" and record["resources"]["tasks_per_node"] == 2
    for rank in (0, 1):
        log = (on_slurm / "logs" / job / f"{job}_{rank}_log.out").read_text()
        assert f"rank {rank} of world size 2" in log
    assert json.loads((on_slurm / "ds_config.json").read_text())["train_batch_size"] == 8
    assert json.loads((on_slurm / "ds_config.json").read_text())["zero_optimization"]["stage"] == 2

    run_cli("train", *VATT, "--run-dir", str(on_local), "--launcher", "local", "--nproc", "2", "--wait")
    assert layout(on_slurm) == layout(on_local)
    assert (on_slurm / "config.yaml").read_text() == (on_local / "config.yaml").read_text()
    assert losses(on_slurm) == pytest.approx(losses(on_local), rel=1e-6)
    slurm_summary, local_summary = (json.loads((d / "summary.json").read_text()) for d in (on_slurm, on_local))
    assert slurm_summary["end_reason"] == local_summary["end_reason"] == "completed"
    assert slurm_summary["final"]["knn_top1"] == local_summary["final"]["knn_top1"]

    jobs = run_cli("jobs", "--runs", str(tmp_path))
    assert f"{job} " in jobs.stdout and "COMPLETED" in jobs.stdout and "4/4" in jobs.stdout
    assert "sacct" not in jobs.stdout + jobs.stderr


def test_a_job_array_of_three_runs_completes_each_in_its_own_run_directory(cluster, tmp_path):
    configs = []
    for seed in range(3):
        path = tmp_path / f"seed{seed}.yaml"
        path.write_text(yaml.safe_dump({"method": "vatt", "seed": seed}))
        configs += ["--config", str(path)]
    out = run_cli("train", *configs, *TINY, "--parallelism", "2", "--launcher", "slurm", "--profile", "local",
                  "--wait", cwd=tmp_path).stdout
    run_dirs = sorted(p.parent for p in (tmp_path / "runs").glob("*/job.json"))
    assert len(run_dirs) == 3, out
    ids = [job_id(d) for d in run_dirs]
    assert len({i.split("_")[0] for i in ids}) == 1, ids          # one array
    assert sorted(i.split("_")[1] for i in ids) == ["0", "1", "2"]
    seeds = sorted(yaml.safe_load((d / "config.yaml").read_text())["seed"] for d in run_dirs)
    assert seeds == [0, 1, 2]
    for d in run_dirs:
        assert json.loads((d / "summary.json").read_text())["end_reason"] == "completed"


def test_preemption_requeues_and_resumes_with_every_step_logged_once(cluster, tmp_path):
    run_dir = tmp_path / "preempted"
    run_cli("train", *VATT, "steps=100000", "checkpoint_every=5", "--run-dir", str(run_dir),
            "--launcher", "slurm", "--profile", "local", "--nproc", "2")
    job = job_id(run_dir)
    wait_for(lambda: len(steps_logged(run_dir)) >= 12, 180, "step 12")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    stop_when_resumed(run_dir, job)
    log = (run_dir / "logs" / job / f"{job}_0_log.out").read_text()
    assert "this job is preempted" in log and "Requeued job" in log


def test_a_run_past_its_time_limit_is_requeued_and_resumes(cluster, tmp_path):
    profile = tmp_path / "short.yaml"
    # slurmctld checks time limits about every 30 s, so USR2 comes 60-90 s before the 2-minute limit
    # (30-60 s into the attempt; the run's own deadline is at 60 s). The run (100,000 steps) cannot
    # finish first on any machine. Once it is requeued, the pending job's limit is raised, so that its
    # second attempt meets no time limit of its own before the test asks it to stop.
    profile.write_text(yaml.safe_dump({"partition": "local", "tasks_per_node": 2, "mem": "4G", "time": 2,
                                       "signal_delay_s": 60, "max_timeout_requeues": 20}))
    run_dir = tmp_path / "timed_out"
    run_cli("train", *VATT, "steps=100000", "checkpoint_every=25", "log_every=10", "--run-dir", str(run_dir),
            "--launcher", "slurm", "--profile", str(profile), "--nproc", "2")
    job = job_id(run_dir)
    log_file = run_dir / "logs" / job / f"{job}_0_log.out"
    wait_for(lambda: log_file.is_file() and any(line in log_file.read_text() for line in
                                                ("Requeued job", "time limit near: requeuing job")),
             600, "the job to be requeued before its time limit")
    wait_for(lambda: job_states([job])[job] == "PENDING", 120, "the requeued job to be pending")
    subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=30"], check=True)
    stop_when_resumed(run_dir, job, every=10)
    log = log_file.read_text()
    # Requeued by submitit on SLURM's USR2, or, should the signal not come, by the run's own deadline.
    assert ("this job is timed-out" in log and "Requeued job" in log) or "time limit near: requeuing job" in log


@pytest.mark.parametrize("profile, args, field", [
    ({"partition": "nonexistent", "mem": "1G"}, [], "partition"),
    ({"partition": "local", "gpus_per_node": 4, "mem": "1G"}, [], "gpus_per_node"),
    ({"partition": "local", "tasks_per_node": 2, "mem": "100000G"}, [], "mem"),
    ({"partition": "local", "tasks_per_node": 2, "cpus_per_task": 64, "mem": "1G"}, [], "cpus_per_task"),
    ({"partition": "local", "tasks_per_node": 2, "mem": "1G"}, ["--nproc", "4", "--nodes", "2"], "--nodes"),
    ({"partition": "local", "tasks_per_node": 2, "mem": "1G"}, ["--nproc", "4", "--nodes", "1"], "tasks_per_node"),
    ({"partition": "local", "tasks_per_node": 2, "mem": "1G"}, ["--time", "tomorrow"], "--time"),
    ({"mem": "1G"}, [], "partition"),
])
def test_a_bad_profile_or_request_fails_before_submission(cluster, tmp_path, profile, args, field):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(profile))
    before = squeue_ids()
    proc = run_cli("train", *VATT, "micro_batch=2", "--run-dir", str(tmp_path / "run"), "--launcher", "slurm",
                   "--profile", str(path),
                   *(args or ["--nproc", "2"]), check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"invalid config: {field}:" in proc.stderr
    assert squeue_ids() <= before
    assert not (tmp_path / "run").exists()
