"""Terminal output of the whole suite, through `logging`.

Library modules log with `logging.getLogger(__name__)`. `setup()` (called by the `scaling` entry
point and by every process that trains) sends the suite's records to the terminal as plain lines,
as `print` showed them: INFO to stdout, WARNING and above to stderr. It adds its handlers once per
process, and they look up sys.stdout / sys.stderr when they write, so a redirected stream (pytest's
capture, submitit's log files) receives the lines.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

PACKAGES = ("scaling", "slurm", "sweeps", "analysis", "benchmarks")


class _Terminal(logging.StreamHandler):
    """Writes to whichever of sys.stdout / sys.stderr is current at the time of the record."""

    def __init__(self, errors: bool):
        super().__init__()
        self.errors = errors
        self.setFormatter(logging.Formatter("%(message)s"))
        self.addFilter(lambda record: (record.levelno >= logging.WARNING) == errors)

    @property
    def stream(self):
        return sys.stderr if self.errors else sys.stdout

    @stream.setter
    def stream(self, _value) -> None:  # StreamHandler.__init__ assigns one; the property decides
        pass


def setup(level: int = logging.INFO) -> None:
    """Route the suite's log records to the terminal (idempotent)."""
    for name in PACKAGES:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if not any(isinstance(h, _Terminal) for h in logger.handlers):
            logger.addHandler(_Terminal(errors=False))
            logger.addHandler(_Terminal(errors=True))


@contextlib.contextmanager
def indented(prefix: str = "  ") -> Iterator[None]:
    """Within the block, the suite's terminal lines start with `prefix` (the demo nests a sweep's
    progress under its own lines)."""
    handlers = [h for name in PACKAGES for h in logging.getLogger(name).handlers if isinstance(h, _Terminal)]
    old = [h.formatter for h in handlers]
    for h in handlers:
        h.setFormatter(logging.Formatter(prefix + "%(message)s"))
    try:
        yield
    finally:
        for h, f in zip(handlers, old):
            h.setFormatter(f)
