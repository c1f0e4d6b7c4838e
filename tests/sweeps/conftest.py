"""Sweep tests run the same suite against each storage: SQLite, a journal file and a real PostgreSQL
server (sweeps/local_postgres.sh, which `make test` starts; its URL is $SCALING_PG_URL)."""
import os

import pytest
from sweeptools import PG_URL, postgres_answers


@pytest.fixture(params=["sqlite", "journal", "postgresql"])
def storage(request, tmp_path):
    """A storage URL of each kind (None: the default SQLite file in the sweep directory)."""
    if request.param == "sqlite":
        return None
    if request.param == "journal":
        return f"journal:{tmp_path / 'study.journal'}"
    if not postgres_answers():
        reason = f"no PostgreSQL server answers at {PG_URL} (start one with: sweeps/local_postgres.sh start)"
        if os.environ.get("SCALING_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return PG_URL
