"""Benchmark: what measuring the gradient-noise scale costs a training step (gns.every_steps).

Each case is one real `scaling train` run in a fresh process with `gns.every_steps=2`, so its steps
alternate between measured (the hooks square every parameter's micro-step gradient, one scalar
all-reduce, one host read and a logged line) and unmeasured ones, in the same process, on the same
data pipeline and engine. The overhead of a measured step is the median, over adjacent pairs, of
the measured step's time over the unmeasured step's before it, less 1. The same pairing of a run
with the noise scale off is the control: any even/odd asymmetry of the steps themselves shows there,
and the overhead reported is the measured run's ratio less the control's. The goal is at most 3% of
a step. A run averages half of that at every_steps=2, and less at the usual 10 or more.

Cases: VATT on 1 rank at ZeRO-0 with 4 accumulation micro-steps, and DINO on 2 ranks at ZeRO-2
(the reduction inside the backward, where the hooks see the gradient before it is reduced).
"""
from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.core import Result, check_scale
from benchmarks.negatives import _overrides, _run

NAME = "gns"
TITLE = "Gradient-noise scale: the cost of a measured step"
GOAL_FRACTION = 0.03
GOAL = f"a measured step costs at most {GOAL_FRACTION:.0%} more than an unmeasured one"
COLUMNS = ["case", "ranks", "ZeRO", "global batch", "micro-batch", "pairs", "unmeasured step s", "measured step s",
           "even / odd, gns on", "even / odd, gns off (control)", "overhead", f"goal <= {GOAL_FRACTION:.0%}"]

PLAN = {
    "full": dict(size="tiny", batch=32, steps=42, skip=2,
                 geometry=dict(frames=16, resolution=64, audio_samples=4096, captions=2, max_words=8)),
    "smoke": dict(size="nano", batch=8, steps=4, skip=0,
                  geometry=dict(frames=4, resolution=32, audio_samples=512, captions=1, max_words=4)),
}


def _pairs(times: list[float], skip: int) -> list[tuple[float, float]]:
    """(unmeasured, measured) of adjacent steps: step 2k is measured (logged times are steps 1, 2, ...)."""
    return [(times[i - 1], times[i]) for i in range(1 + 2 * skip, len(times), 2)]


def run(scale: str) -> Result:
    plan = PLAN[check_scale(scale)]
    batch = plan["batch"]
    micro = max(2, batch // 4)
    cases = {"vatt, ZeRO-0, 4 micro-steps": (dict(method="vatt", micro_batch=micro, zero_stage=0), 1),
             "dino, ZeRO-2, 2 ranks x 2 micro-steps": (dict(method="dino", micro_batch=micro, zero_stage=2), 2)}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-gns-") as tmp:
        for name, (fields, nproc) in cases.items():
            ratios, pairs = {}, {}
            for every in (0, 2) if nproc == 1 else (2, 0):  # alternate which runs first
                out = _run(_overrides(plan, **fields, **{"gns.every_steps": every}), nproc, Path(tmp))
                pairs[every] = _pairs(out["step_times"], plan["skip"])
                ratios[every] = statistics.median(m / u for u, m in pairs[every])
            overhead = ratios[2] - ratios[0]
            rows.append({"case": name, "ranks": nproc, "ZeRO": fields["zero_stage"], "global batch": batch,
                         "micro-batch": micro, "pairs": len(pairs[2]),
                         "unmeasured step s": statistics.median(u for u, _ in pairs[2]),
                         "measured step s": statistics.median(m for _, m in pairs[2]),
                         "even / odd, gns on": ratios[2], "even / odd, gns off (control)": ratios[0],
                         "overhead": overhead, f"goal <= {GOAL_FRACTION:.0%}": overhead <= GOAL_FRACTION})
    met = None if scale == "smoke" else all(r["overhead"] <= GOAL_FRACTION for r in rows)
    notes = [f"{scale} scale: {plan['size']}, global batch {batch}, micro-batch {micro}, {plan['geometry']}, "
             f"{plan['steps']} steps with gns.every_steps=2 (the first {plan['skip']} pairs not counted)",
             "even / odd: the median over adjacent (odd, even) step pairs of their time ratio; with gns on, "
             "the even steps measure; overhead: gns on's ratio less the control's"]
    return Result(name=NAME, title=TITLE, goal=GOAL, columns=COLUMNS, rows=rows, met=met, notes=notes)
