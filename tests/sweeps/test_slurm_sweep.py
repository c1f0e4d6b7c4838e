"""Sweeps end to end on the real local SLURM cluster (SQLite storage in the sweep directory)."""
import ast
import json
import re
import subprocess
import sys

from clitools import run_cli
from slurmtools import steps_logged, wait_for
from sweeptools import FIXED, write_spec

from sweeps.spec import load_spec, point_key

SLURM = {"type": "slurm", "profile": "local", "nproc": 1, "parallelism": 2}


def sweep_status(path):
    return json.loads(run_cli("sweep", "status", path, "--json").stdout)


def test_plan_submit_status_on_a_12_trial_grid(cluster, tmp_path):
    path = write_spec(tmp_path, grid={"method": ["vatt", "dino"], "global_batch": [4, 8, 16], "size": ["nano", "micro"]},
                      fixed={**FIXED, "steps": 2, "eval.linear_probe": False}, launcher=SLURM)
    plan = run_cli("sweep", "plan", path).stdout
    assert "12 trial(s)" in plan and "GPU-hours" in plan
    assert len([line for line in plan.splitlines() if line.strip().startswith(("vatt", "dino"))]) == 12
    assert not (tmp_path / "sweep").exists()  # plan submits and creates nothing

    # Two submits at once: the lock lets one create the trials; the other finds them running.
    procs = [subprocess.Popen([sys.executable, "-m", "scaling.cli", "sweep", "submit", path], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    submitted = [line for o in outs for line in o.splitlines() if re.match(r"trial \d+: job \d+_\d+ ", line)]
    assert len(submitted) == 12 and sum("nothing to submit" in o for o in outs) == 1, outs

    def finished():
        s = sweep_status(path)
        return s if s["counts"].get("COMPLETE", 0) + s["counts"].get("FAIL", 0) == 12 else None

    status = wait_for(finished, 600, "12 trials to end", poll=3)
    assert status["counts"] == {"COMPLETE": 12}, status
    spec = load_spec(path)
    assert sorted(point_key(t["params"]) for t in status["trials"]) == sorted(point_key(p) for p in spec.grid)
    assert all(isinstance(t["value"], float) and t["job_id"] for t in status["trials"])
    assert "nothing to submit" in run_cli("sweep", "submit", path).stdout
    text = run_cli("sweep", "status", path).stdout
    assert "12 complete; 0 still to run" in text


def test_submit_after_killing_half_the_jobs_reruns_them_from_their_checkpoints(cluster, tmp_path):
    steps = 150
    path = write_spec(tmp_path, grid={"seed": [0, 1, 2, 3]}, launcher=SLURM,
                      fixed={**FIXED, "steps": steps, "checkpoint_every": 10, "eval.linear_probe": False})
    spec = load_spec(path)
    out = run_cli("sweep", "submit", path).stdout
    # The victims are found from what submit printed, not from `sweep status`: a status call is a CLI
    # that imports torch, and on a loaded machine it can outlast a 150-step run. The array's first
    # two elements run first, side by side.
    jobs = {ast.literal_eval(params)["seed"]: job for job, params in re.findall(r"^trial \d+: job (\S+) (\{.*\})$", out, re.M)}
    assert sorted(jobs) == [0, 1, 2, 3], out
    victims = [(jobs[seed], spec.run_dir({"seed": seed})) for seed in (0, 1)]

    # SIGKILL to every process of the job: a plain scancel sends SIGTERM, which submitit ignores, and
    # only kills after KillWait, time enough for a fast machine to finish the 150 steps. Both victims
    # are watched at once and each is killed as soon as it passes a checkpoint: they start side by
    # side but need not keep in step.
    killed = set()

    def kill_each_past_a_checkpoint():
        for job, run_dir in victims:
            if job not in killed and len(steps_logged(run_dir)) >= 12:
                subprocess.run(["scancel", "--signal=KILL", "--full", job], check=True)
                killed.add(job)
        return len(killed) == len(victims)

    wait_for(kill_each_past_a_checkpoint, 300, "both victims to pass a checkpoint", poll=0.2)
    first = {t["params"]["seed"]: t for t in sweep_status(path)["trials"]}
    assert [first[seed]["job_id"] for seed in (0, 1)] == [job for job, _ in victims]

    def settled():
        s = sweep_status(path)
        return s if s["counts"].get("RUNNING", 0) == 0 else None

    status = wait_for(settled, 600, "the other trials to end", poll=3)
    assert status["counts"] == {"COMPLETE": 2, "FAIL": 2}, status

    out = run_cli("sweep", "submit", path).stdout
    assert len(re.findall(r"^trial \d+: job ", out, re.M)) == 2, out
    status = wait_for(lambda: (lambda s: s if s["counts"].get("COMPLETE", 0) == 4 else None)(sweep_status(path)),
                      600, "the resubmitted trials", poll=3)
    complete = [t for t in status["trials"] if t["state"] == "COMPLETE"]
    assert sorted(t["params"]["seed"] for t in complete) == [0, 1, 2, 3]      # exactly the grid
    for job, run_dir in victims:
        record = json.loads((run_dir / "job.json").read_text())
        assert record["history"][0]["job_id"] == job                            # resubmitted
        assert "resumed from step" in open(record["stdout"]).read()           # from its checkpoint
        assert steps_logged(run_dir) == list(range(1, steps + 1))
    assert "nothing to submit" in run_cli("sweep", "submit", path).stdout


def _sound_checkpoints(run_dir):
    """The steps of the run's checkpoints, each checked against its manifest (sizes and checksums)."""
    import hashlib

    steps = []
    for folder in sorted((run_dir / "checkpoints").glob("step_*")):
        manifest = json.loads((folder / "COMPLETE.json").read_text())
        for name, meta in manifest["files"].items():
            data = (folder / name).read_bytes()
            assert len(data) == meta["size"], (folder, name)
            assert "sha256" not in meta or hashlib.sha256(data).hexdigest() == meta["sha256"], (folder, name)
        steps.append(manifest["step"])
    return steps


def _cancel_running(path, run_dir, trial):
    """`sweep cancel` once the trial trains (two steps past where it started); its output and the
    seconds from the cancel request to the run's stop, as cancel reports them."""
    from slurm.cluster import job_states

    first = len(steps_logged(run_dir))
    wait_for(lambda: len(steps_logged(run_dir)) >= first + 2, 300, "the trial to train")
    out = run_cli("sweep", "cancel", path).stdout
    assert f"trial {trial['number']}: cancelled job {trial['job_id']} (saved step " in out, out
    # It stopped by itself (nothing was killed), and cancel waited for its job to end: COMPLETED.
    assert job_states([trial["job_id"]])[trial["job_id"]] == "COMPLETED"
    latency = float(re.search(r"stopped, ([\d.]+) s after the request", out).group(1))
    return out, latency


def test_cancel_stops_running_trials_and_the_next_submit_reruns_them(cluster, tmp_path, request):
    """A trial with 100,000 steps to go stops within seconds of `sweep cancel`: a checkpoint of the
    step it saw the request at (the only one: checkpoint_every is never reached), end_reason
    cancelled, its trial CANCELLED. The next submit resumes it from that checkpoint."""
    path = write_spec(tmp_path, grid={"seed": [0]}, launcher=SLURM,
                      fixed={**FIXED, "steps": 100_000, "checkpoint_every": 50_000, "eval.linear_probe": False,
                             "eval.random_init": False})
    assert run_cli("sweep", "tensorboard", path).stdout.split() == ["tensorboard", "--logdir",
                                                                     str(tmp_path / "sweep" / "trials")]
    name = load_spec(path).name
    request.addfinalizer(lambda: subprocess.run(["scancel", f"--name={name}"], capture_output=True))  # if it fails
    run_cli("sweep", "submit", path)
    trial = sweep_status(path)["trials"][0]
    run_dir = tmp_path / "sweep" / "trials" / trial["run_dir"].split("/")[-1]
    _, latency = _cancel_running(path, run_dir, trial)
    assert latency < 30, latency
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["end_reason"] == "cancelled" and 2 <= summary["steps"] < 100_000
    assert _sound_checkpoints(run_dir) == [summary["steps"]]
    assert steps_logged(run_dir) == list(range(1, summary["steps"] + 1))
    assert not (run_dir / "cancel.request").exists()
    cancelled = sweep_status(path)["trials"][0]
    assert cancelled["state"] == "CANCELLED" and cancelled["end_reason"] == "cancelled"

    out = run_cli("sweep", "submit", path).stdout                      # the rerun resumes the checkpoint
    assert len(re.findall(r"^trial \d+: job ", out, re.M)) == 1, out
    rerun = next(t for t in sweep_status(path)["trials"] if t["state"] == "RUNNING")
    _cancel_running(path, run_dir, rerun)
    record = json.loads((run_dir / "job.json").read_text())
    assert record["job_id"] == rerun["job_id"] and record["history"][0]["job_id"] == trial["job_id"]
    assert f"resumed from step {summary['steps']} " in open(record["stdout"]).read()
    again = json.loads((run_dir / "summary.json").read_text())
    assert again["end_reason"] == "cancelled" and again["steps"] >= summary["steps"] + 2
    assert steps_logged(run_dir) == list(range(1, again["steps"] + 1))  # every step logged once
    assert _sound_checkpoints(run_dir) == [summary["steps"], again["steps"]]
    assert sweep_status(path)["counts"] == {"CANCELLED": 2}
