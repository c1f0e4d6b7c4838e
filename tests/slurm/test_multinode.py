"""Runs that cross nodes: the two-node local cluster (`slurm/local_cluster.sh start --nodes 2`), each
slurmd in its own network and UTS namespace, so the ranks of one job see different hostnames and
addresses and meet over the bridge the script made, as on a real cluster."""
import json
import os
import subprocess

import pytest
from clitools import TINY, run_cli
from slurmtools import job_id, losses, steps_logged, stop_when_resumed, wait_for

NAMESPACES = ("scl-ctl", "scl-n1", "scl-n2")


@pytest.mark.skipif(os.geteuid() != 0, reason="reading another network namespace needs root")
def test_each_node_has_its_own_address_and_no_route_beyond_the_cluster_network(two_nodes):
    addresses = set()
    for ns in NAMESPACES:
        routes = subprocess.run(["ip", "-n", ns, "-4", "route", "show"], capture_output=True, text=True,
                                check=True).stdout.split("\n")
        assert [r.split()[0] for r in routes if r.strip()] == ["10.231.7.0/24"], (ns, routes)  # no default route
        addr = subprocess.run(["ip", "-n", ns, "-4", "-o", "addr", "show", "dev", "eth0"], capture_output=True,
                              text=True, check=True).stdout.split()[3]
        addresses.add(addr)
    assert addresses == {"10.231.7.1/24", "10.231.7.11/24", "10.231.7.12/24"}
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %o"], capture_output=True, text=True, check=True).stdout
    assert sorted(nodes.split("\n")[:2]) == ["scl-n1 10.231.7.11", "scl-n2 10.231.7.12"], nodes


RUNS = {"vatt-zero2": ["method=vatt", "zero_stage=2"], "dino-zero3": ["method=dino", "zero_stage=3"]}


@pytest.mark.parametrize("name", list(RUNS))
def test_a_two_node_run_places_one_rank_per_host_and_matches_one_node(two_nodes, tmp_path, name):
    args = [*TINY, *RUNS[name]]
    across, one_node = tmp_path / "across", tmp_path / "one_node"
    run_cli("train", *args, "--run-dir", str(across), "--launcher", "slurm", "--profile", "local",
            "--nproc", "2", "--nodes", "2", "--wait")
    record = json.loads((across / "job.json").read_text())
    assert record["resources"]["nodes"] == 2 and record["resources"]["tasks_per_node"] == 1
    ranks = json.loads((across / "env.json").read_text())["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert sorted(r["hostname"] for r in ranks) == ["scl-n1", "scl-n2"]      # one rank on each host
    assert [r["slurm_node_id"] for r in ranks] == ["0", "1"] and {r["local_rank"] for r in ranks} == {0}
    job = job_id(across)
    for rank, host in ((0, ranks[0]["hostname"]), (1, ranks[1]["hostname"])):
        log = (across / "logs" / job / f"{job}_{rank}_log.out").read_text()
        assert f"rank {rank} of world size 2 (local rank 0) on {host}; master {ranks[0]['hostname']}:" in log

    run_cli("train", *args, "--run-dir", str(one_node), "--launcher", "local", "--nproc", "2", "--wait")
    assert len(losses(across)) == 4
    assert losses(across) == pytest.approx(losses(one_node), rel=1e-6)
    summaries = [json.loads((d / "summary.json").read_text()) for d in (across, one_node)]
    assert summaries[0]["end_reason"] == summaries[1]["end_reason"] == "completed"
    assert summaries[0]["final"]["knn_top1"] == summaries[1]["final"]["knn_top1"]


def test_a_preempted_two_node_job_requeues_and_resumes_with_every_step_logged_once(two_nodes, tmp_path):
    run_dir = tmp_path / "preempted"
    run_cli("train", *TINY, "method=vatt", "zero_stage=2", "steps=100000", "checkpoint_every=5",
            "--run-dir", str(run_dir), "--launcher", "slurm", "--profile", "local", "--nproc", "2", "--nodes", "2")
    job = job_id(run_dir)
    wait_for(lambda: len(steps_logged(run_dir)) >= 12, 300, "step 12")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    stop_when_resumed(run_dir, job)
    log = (run_dir / "logs" / job / f"{job}_0_log.out").read_text()
    assert "this job is preempted" in log and "Requeued job" in log
    hosts = sorted(r["hostname"] for r in json.loads((run_dir / "env.json").read_text())["ranks"])
    assert hosts == ["scl-n1", "scl-n2"]                     # the second attempt crossed the nodes too


def test_more_nodes_than_the_partition_has_is_refused_before_submission(two_nodes, tmp_path):
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout
    proc = run_cli("train", *TINY, "method=vatt", "micro_batch=2", "--run-dir", str(tmp_path / "run"), "--launcher", "slurm",
                   "--profile", "local", "--nproc", "4", "--nodes", "4", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "invalid config: --nodes: 4 nodes requested; partition 'local' has 2" in proc.stderr
    after = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout
    assert after == before and not (tmp_path / "run").exists()


BRIDGE_PG_URL = "postgresql://postgres@10.231.7.254:55432/scaling"  # sweeps/local_postgres.sh, on the bridge


def test_a_four_trial_two_node_sweep_on_postgresql_loses_and_duplicates_no_trial(two_nodes, tmp_path):
    from sweeptools import FIXED, postgres_answers, write_spec

    from sweeps.spec import load_spec, point_key

    if not postgres_answers(BRIDGE_PG_URL):
        reason = (f"no PostgreSQL server answers at {BRIDGE_PG_URL}, the address the two-node cluster's "
                  "nodes reach (start sweeps/local_postgres.sh after slurm/local_cluster.sh start --nodes 2)")
        if os.environ.get("SCALING_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    path = write_spec(tmp_path, grid={"method": ["vatt", "dino"], "seed": [0, 1]}, storage=BRIDGE_PG_URL,
                      fixed={**FIXED, "steps": 2, "eval.linear_probe": False},
                      launcher={"type": "slurm", "profile": "local", "nproc": 2, "nodes": 2, "parallelism": 2})
    run_cli("sweep", "submit", path)

    def finished():
        s = json.loads(run_cli("sweep", "status", path, "--json").stdout)
        return s if s["counts"].get("COMPLETE", 0) + s["counts"].get("FAIL", 0) == 4 else None

    status = wait_for(finished, 900, "4 trials to end", poll=3)
    assert status["counts"] == {"COMPLETE": 4}, status
    spec = load_spec(path)
    assert sorted(point_key(t["params"]) for t in status["trials"]) == sorted(point_key(p) for p in spec.grid)
    for trial in status["trials"]:
        run_dir = spec.dir / "trials" / trial["run_dir"].split("/")[-1]
        assert sorted(r["hostname"] for r in json.loads((run_dir / "env.json").read_text())["ranks"]) == ["scl-n1", "scl-n2"]
    assert "nothing to submit" in run_cli("sweep", "submit", path).stdout
