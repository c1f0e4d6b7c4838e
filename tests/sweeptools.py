"""Helpers of the sweep tests: the tiny trial config, PostgreSQL's URL, and spec files."""
import os
import uuid

import yaml
from clitools import TINY

PG_URL = os.environ.get("SCALING_PG_URL", "postgresql://postgres@127.0.0.1:55432/scaling")
FIXED = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in TINY)}


def postgres_answers(url: str = PG_URL) -> bool:
    try:
        import psycopg

        psycopg.connect(url, connect_timeout=5).close()
        return True
    except Exception:
        return False


def write_spec(tmp_path, **fields) -> str:
    """A sweep spec in tmp_path with a unique study name (PostgreSQL is shared between tests)."""
    spec = {"name": f"t{uuid.uuid4().hex[:10]}", "fixed": dict(FIXED), "dir": str(tmp_path / "sweep"), **fields}
    if spec.get("storage") is None:
        spec.pop("storage", None)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)
