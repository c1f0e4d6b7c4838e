"""Puts tests/ on sys.path, so every test can import the shared helpers (clitools, slurmtools,
sweeptools); and the fixture of the real local SLURM cluster."""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Under pytest-xdist (`make test` runs two workers) every process of a test gets one thread: two
# workers' ranks then share the cores instead of oversubscribing them.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

# The tests of these modules share one SLURM cluster and one PostgreSQL server (queue, node CPUs,
# squeue counts): under xdist's loadgroup they all run on one worker, one after the other.
SERVICE_MODULES = ("tests/slurm/", "tests/sweeps/", "tests/test_demo.py")


# tryfirst: xdist's worker appends each item's group to its nodeid in its own
# pytest_collection_modifyitems, so the marker must be on the item before that hook runs.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.startswith(SERVICE_MODULES):  # nodeids are relative to the repository root
            item.add_marker(pytest.mark.xdist_group("services"))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """On the controller under --dist loadgroup: refuse to schedule if the grouping did not take. The
    scheduler groups by the `@services` suffix of each nodeid; without it the services' tests would
    share the cluster across workers and race on its queue."""
    if node.config.getoption("dist") != "loadgroup":
        return
    lost = [i for i in ids if i.startswith(SERVICE_MODULES) and not i.endswith("@services")]
    if lost:
        raise pytest.UsageError(
            f"pytest-xdist did not group {len(lost)} services test(s), e.g. {lost[0]}: this pytest and "
            "pytest-xdist disagree on how a nodeid is renamed (see the pin in pyproject.toml)")


def _require_cluster(nodes: int, start: str) -> None:
    """Skip (or fail, where SCALING_REQUIRE_SERVICES=1) unless the cluster of SLURM_CONF answers and
    its `local` partition has `nodes` nodes."""
    from slurm.cluster import partitions, sbatch_answers

    reason = None
    if not sbatch_answers():
        reason = f"no SLURM controller answers (start one with: {start})"
    elif "local" not in (parts := partitions()):
        reason = f"this SLURM cluster has no `local` partition (the one {start} starts)"
    elif parts["local"].nodes != nodes:
        reason = f"the `local` partition has {parts['local'].nodes} node(s), not {nodes} ({start})"
    if reason:
        if os.environ.get("SCALING_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def cluster():
    """The local one-node test cluster (slurm/local_cluster.sh, which `make test` starts): sbatch
    answers and the `local` partition exists. Without it the test skips, or fails where
    SCALING_REQUIRE_SERVICES=1."""
    _require_cluster(1, "slurm/local_cluster.sh start")
    return True


TWO_NODE_CONF = "/tmp/scaling-slurm-2nodes/slurm.conf"


@pytest.fixture
def two_nodes(monkeypatch):
    """The two-node test cluster (`slurm/local_cluster.sh start --nodes 2`, which `make test` starts;
    each slurmd in its own network and UTS namespace): SLURM_CONF points at it for the test and the
    CLI it runs. Skips without it, or fails where SCALING_REQUIRE_SERVICES=1."""
    monkeypatch.setenv("SLURM_CONF", os.environ.get("SCALING_SLURM_CONF_2NODES", TWO_NODE_CONF))
    _require_cluster(2, "slurm/local_cluster.sh start --nodes 2")
    return os.environ["SLURM_CONF"]


@pytest.fixture
def process_group_env(monkeypatch):
    """The torch.distributed environment of an in-process world of one, undone after the test: a
    process group the test made itself (train() ends its own) outlives the test, but no later
    subprocess inherits its MASTER_PORT (whose store this process still holds) and fails to bind it."""
    from scaling.train.engine import free_port

    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": os.environ.get("MASTER_PORT") or str(free_port())}.items():
        monkeypatch.setenv(key, value)
