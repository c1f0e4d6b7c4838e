"""`scaling bench`: side-by-side measurements of the suite against its goals (see BENCHMARKS.md).

Each benchmark is a module here; `run_benchmarks` runs the chosen ones and writes bench.json and
bench.md. A benchmark that fails is recorded as an error and the rest still run. Progress is logged
at INFO (`scaling.logs.setup` shows it on the terminal).
"""
from __future__ import annotations

import importlib
import logging
import time
import traceback
from pathlib import Path

from benchmarks.core import Result, check_scale, command_line, verdict, write_report

log = logging.getLogger(__name__)

# In the order they run (and appear in the report).
NAMES = ("backbone", "droptoken", "zero_memory", "negatives", "gns", "fit_speed", "bootstrap", "data_pipeline", "data_real",
         "sweep_overhead")


def check_names(names: list[str] | None) -> list[str]:
    if not names:
        return list(NAMES)
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise ValueError(f"unknown benchmark {unknown[0]!r}; the benchmarks are: {', '.join(NAMES)}")
    return [n for n in NAMES if n in names]


def run_one(name: str, scale: str) -> Result:
    module = importlib.import_module(f"benchmarks.{name}")
    t0 = time.perf_counter()
    try:
        result = module.run(scale)
    except Exception as err:
        result = Result(name=name, title=module.TITLE, goal=module.GOAL, columns=[], rows=[],
                        status=f"error: {type(err).__name__}: {err}",
                        notes=traceback.format_exc().strip().splitlines()[-6:])
    result.seconds = time.perf_counter() - t0
    return result


def run_benchmarks(names: list[str] | None, scale: str, out_dir: str | Path) -> tuple[list[Result], dict]:
    scale = check_scale(scale)
    chosen = check_names(names)
    t0 = time.perf_counter()
    results = []
    for name in chosen:
        log.info("[bench] %s ...", name)
        result = run_one(name, scale)
        log.info("[bench] %s: %s (%.1f s)", name, verdict(result), result.seconds)
        results.append(result)
    paths = write_report(results, Path(out_dir), scale, command_line(), time.perf_counter() - t0)
    return results, paths
