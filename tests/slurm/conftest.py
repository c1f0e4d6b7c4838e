"""The SLURM tests talk to the real local cluster (`slurm/local_cluster.sh start`, which `make test`
starts). Without one they skip, unless SCALING_REQUIRE_SERVICES=1 (as in CI), where they fail."""
import os

import pytest

from slurm.cluster import partitions, sbatch_answers


@pytest.fixture(scope="session")
def cluster():
    """The local test cluster: sbatch answers and the `local` partition exists."""
    reason = None
    if not sbatch_answers():
        reason = "no SLURM controller answers (start one with: slurm/local_cluster.sh start)"
    elif "local" not in partitions():
        reason = "this SLURM cluster has no `local` partition (the one slurm/local_cluster.sh starts)"
    if reason:
        if os.environ.get("SCALING_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return True
