"""The benchmark harness: interleaved timing, the result record, and the JSON + markdown report.

Every benchmark is a module in this package with NAME, TITLE, GOAL and `run(scale) -> Result`.
`scale` is "full" (the recorded numbers) or "smoke" (the smallest size that still runs every code
path; the tests use it to keep the benchmarks from rotting, and its numbers mean nothing).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCALES = ("full", "smoke")


@dataclasses.dataclass
class Result:
    """One benchmark's table. `met` is True/False against the goal, None where there is no goal
    or it could not be judged (then `status` says why)."""
    name: str
    title: str
    goal: str
    columns: list[str]
    rows: list[dict[str, Any]]
    met: bool | None = None
    status: str = "ok"               # ok | skipped: <why> | error: <what>
    notes: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_scale(scale: str) -> str:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {list(SCALES)}, got {scale!r}")
    return scale


def interleaved(cases: dict[str, Callable[[], Any]], reps: int, warmup: int = 1,
                sync: Callable[[], None] | None = None) -> dict[str, dict[str, float]]:
    """Time each case `reps` times, round-robin (the order reversed every other round, so slow drift
    of the machine falls on every case alike). Returns median, min and max seconds per case."""
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    sync = sync or (lambda: None)
    for _ in range(warmup):
        for fn in cases.values():
            fn()
        sync()
    times: dict[str, list[float]] = {k: [] for k in cases}
    names = list(cases)
    for r in range(reps):
        for k in (names if r % 2 == 0 else names[::-1]):
            sync()
            t0 = time.perf_counter()
            cases[k]()
            sync()
            times[k].append(time.perf_counter() - t0)
    return {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "reps": len(v)}
            for k, v in times.items()}


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        import deepspeed
        info["deepspeed"] = deepspeed.__version__
    except Exception:
        info["deepspeed"] = None
    try:
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:
            return "nan"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.1f}"
        if abs(value) >= 1:
            return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def verdict(result: Result) -> str:
    if result.status != "ok":
        return result.status
    return {True: "goal met", False: "goal MISSED", None: "no goal"}[result.met]


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"# `scaling bench` ({report['scale']})", "",
             f"{report['date']}, commit {report['commit'] or '?'}; {m['cpu']}, {m['cores']} cores, "
             f"{m.get('memory_gib', '?')} GiB, GPU: {m['gpu'] or 'none'}; torch {m['torch']}, "
             f"DeepSpeed {m['deepspeed'] or 'absent'}. Command: `{report['command']}`. "
             f"Total {report['seconds']:.0f} s.", ""]
    for r in report["results"]:
        res = Result(**r)
        lines += [f"## {res.title} (`{res.name}`): {verdict(res)}", "", f"Goal: {res.goal}", ""]
        if res.rows:
            lines.append("| " + " | ".join(res.columns) + " |")
            lines.append("|" + "---|" * len(res.columns))
            for row in res.rows:
                lines.append("| " + " | ".join(_cell(row.get(c)) for c in res.columns) + " |")
            lines.append("")
        lines += [f"- {n}" for n in res.notes]
        lines += [f"- {res.seconds:.1f} s", ""]
    return "\n".join(lines)


def write_report(results: list[Result], out_dir: Path, scale: str, command: str, seconds: float) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "scale": scale,
              "command": command, "commit": git_commit(), "machine": machine(), "seconds": seconds,
              "results": [r.to_dict() for r in results]}
    paths = {"json": out_dir / "bench.json", "markdown": out_dir / "bench.md"}
    for key, text in (("json", json.dumps(report, indent=2, default=float)), ("markdown", markdown(report))):
        tmp = paths[key].with_suffix(paths[key].suffix + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, paths[key])
    return paths


def command_line() -> str:
    return "scaling " + " ".join(sys.argv[1:]) if Path(sys.argv[0]).name == "scaling" else " ".join(sys.argv)
