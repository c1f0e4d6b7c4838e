"""Many-runs layer: where a sweep's Optuna study lives.

- default (`storage:` left out): SQLite in the sweep directory, for one machine;
- `journal:PATH`: an append-only JournalStorage file, for a shared filesystem (NFS);
- any SQLAlchemy URL (`postgresql://...`, `mysql+pymysql://...`): a database server, for clusters.

SQLite on NFS is unsafe (file locks are unreliable there): use a journal file or a server.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

JOURNAL = "journal:"


def storage_url(spec: Any) -> str:
    """A sweep spec's storage (its `storage` and `dir`) as a string: `sqlite:///<dir>/study.db` when
    none is given."""
    if spec.storage:
        return str(spec.storage)
    return f"sqlite:///{(Path(spec.dir) / 'study.db').resolve()}"


def open_storage(url: str):
    """An Optuna storage for `url`, with timeouts that survive many trials writing at once."""
    import optuna

    if url.startswith(JOURNAL):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len(JOURNAL):]).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 300}})
    return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})


def storage_problem(spec: Any) -> str | None:
    """What is wrong with a sweep spec's storage, found by opening it once (so that a bad URL fails
    before any job), or None. The spec layer raises it as the `storage` field's error."""
    url = storage_url(spec)
    if spec.storage is not None and (not isinstance(spec.storage, str) or not spec.storage.strip()):
        return f"got {spec.storage!r}; use journal:PATH or a SQLAlchemy URL, or leave it out"
    if url.startswith(JOURNAL):
        parent = Path(url[len(JOURNAL):]).expanduser().parent
        if parent.exists() and not parent.is_dir():
            return f"{url}: {parent} is not a directory"
    elif "://" not in url:
        return (f"got {url!r}; use journal:PATH or a SQLAlchemy URL "
                "(sqlite:///path.db, postgresql://user@host/db)")
    if url.startswith("sqlite:///") and spec.storage is None:
        return None  # created on first use in the sweep directory
    try:
        storage = open_storage(url)
        storage.get_all_studies()
    except Exception as err:  # the drivers raise their own types; report them all the same way
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"cannot open {url!r}: {type(err).__name__}: {first}"
    return None


def with_retries(fn, *, attempts: int = 8, wait_s: float = 0.5):
    """Run a storage call, retrying briefly when the database is busy (many trials ending at once)."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as err:
            busy = "locked" in str(err) or "could not serialize" in str(err) or "deadlock" in str(err).lower()
            if not busy or attempt == attempts - 1:
                raise
            time.sleep(wait_s * (attempt + 1))
    return None
