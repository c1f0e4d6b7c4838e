"""Benchmark 4: the Chinchilla refit of the Epoch AI points, ours against the replication's procedure.

Ours (`analysis.fits.fit_chinchilla`): variable-projection starts (NNLS over an exponent grid), the
best few polished by L-BFGS-B. The reference: Hoffmann et al.'s grid of 4,500 initialisations
(alpha, beta in {0, 0.5, .., 2}, e in {-1, -0.5, .., 1}, a, b in {0, 5, .., 25}), each run through
L-BFGS-B to convergence with scipy's defaults, the lowest objective kept. Both minimise the same
function (the Huber loss, delta = 1e-3, on log L through log-sum-exp, with its exact gradient), so
the difference measured is the procedure alone.
"""
from __future__ import annotations

import itertools
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from benchmarks.core import Result, check_scale, interleaved

NAME = "fit_speed"
TITLE = "Scaling-fit speed: Chinchilla refit vs the 4,500-start L-BFGS-B grid"
GOAL = "ours >= 30x faster than the reference grid, at the same optimum"
DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "chinchilla_svg_extracted_data.csv"
SPEEDUP_GOAL = 30.0
DROP_TOP = 5  # the replication leaves out the 5 highest losses


def epoch_points() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, D, L) of the 240 points the replication fits: D = C / (6 N)."""
    if not DATA.is_file():
        raise FileNotFoundError(f"the Epoch AI data set is missing: {DATA}")
    table = pd.read_csv(DATA)
    loss = table["loss"].to_numpy(float)
    keep = np.sort(loss.argsort(kind="stable")[: len(loss) - DROP_TOP])
    n = table["Model Size"].to_numpy(float)[keep]
    return n, table["Training FLOP"].to_numpy(float)[keep] / (6 * n), loss[keep]


def reference_grid() -> list[np.ndarray]:
    """Hoffmann et al.'s initialisations as (a, b, e, alpha, beta): 6 x 6 x 5 x 5 x 5 = 4,500."""
    exps = np.arange(0.0, 2.01, 0.5)
    es = np.arange(-1.0, 1.01, 0.5)
    abs_ = np.arange(0.0, 25.1, 5.0)
    return [np.array(p) for p in itertools.product(abs_, abs_, es, exps, exps)]


def reference_fit(n, d, loss, starts: list[np.ndarray]) -> dict[str, float]:
    from analysis.fits import HUBER_DELTA, _chinchilla_objective

    logn, logd, logl = np.log(n), np.log(d), np.log(loss)
    best = None
    for theta0 in starts:
        with np.errstate(all="ignore"):
            res = minimize(_chinchilla_objective, theta0, args=(logn, logd, logl, HUBER_DELTA), jac=True,
                           method="L-BFGS-B")
        if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
            best = res
    a, b, e, alpha, beta = best.x
    return {"objective": float(best.fun), "E": math.exp(e), "A": math.exp(a), "B": math.exp(b),
            "alpha": float(alpha), "beta": float(beta)}


def our_fit(n, d, loss) -> dict[str, float]:
    from analysis.fits import FitWarning, fit_chinchilla

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        fit = fit_chinchilla(n, d, loss, bootstrap=0)
    return {"objective": fit.objective, **fit.params}


def run(scale: str, every: int = 15, chunks: int = 3) -> Result:
    """Ours `chunks` times, interleaved with `chunks` disjoint slices of a systematic 1-in-`every`
    sample of the grid; the grid's time is the sample's mean time per start x 4,500 (the whole grid
    takes minutes: `python -m benchmarks.fit_speed --all-starts` runs all of it)."""
    check_scale(scale)
    n, d, loss = epoch_points()
    grid = reference_grid()
    if scale == "smoke":
        every, chunks = 1500, 1
    sample = grid[::every]
    slices = [sample[i::chunks] for i in range(chunks)]
    out: dict[str, dict[str, float]] = {}
    ours_t, ref_t = [], []
    refs = []
    for i in range(chunks):
        for which in (("ours", "ref") if i % 2 == 0 else ("ref", "ours")):
            if which == "ours":
                t = interleaved({"ours": lambda: out.__setitem__("ours", our_fit(n, d, loss))}, reps=1, warmup=0)
                ours_t.append(t["ours"]["median"])
            else:
                t = interleaved({"ref": lambda i=i: refs.append(reference_fit(n, d, loss, slices[i]))}, reps=1, warmup=0)
                ref_t.append(t["ref"]["median"])
    ours = out["ours"]
    ref = min(refs, key=lambda r: r["objective"])
    per_start = sum(ref_t) / len(sample)
    grid_s = per_start * len(grid) if scale == "full" else sum(ref_t)
    ours_s = float(np.median(ours_t))
    speedup = grid_s / ours_s
    worst_param = max(abs(ours[k] / ref[k] - 1) for k in ("E", "A", "B", "alpha", "beta"))
    same_optimum = ours["objective"] <= ref["objective"] * (1 + 1e-6) or worst_param < 1e-3
    rows = [{"procedure": "ours: VarPro starts + L-BFGS-B", "starts": 4, "seconds": ours_s, **_shown(ours)},
            {"procedure": "reference: grid of L-BFGS-B runs", "starts": len(grid) if scale == "full" else len(sample),
             "seconds": grid_s, **_shown(ref)}]
    notes = [f"{len(n)} points (the {DROP_TOP} highest losses left out, D = C / 6N); ours: the median of "
             f"{chunks} runs; speedup **{speedup:.0f}x**; largest relative parameter difference {worst_param:.1e}"]
    if scale == "full":
        notes.insert(1, f"the reference's time is {len(sample)} of its starts (every {every}th, run in {chunks} "
                        f"slices interleaved with ours) x {len(grid)} / {len(sample)}: {per_start * 1e3:.0f} ms a start; "
                        f"its optimum is the best of those starts")
    else:
        notes.append(f"smoke scale: the reference runs {len(sample)} of the {len(grid)} starts")
    return Result(NAME, TITLE, GOAL, ["procedure", "starts", "seconds", "objective", "E", "A", "B", "alpha", "beta"],
                  rows, met=bool(speedup >= SPEEDUP_GOAL and same_optimum) if scale == "full" else None, notes=notes)


def _shown(r: dict[str, float]) -> dict[str, object]:
    return {"objective": f"{r['objective']:.9g}", "E": f"{r['E']:.4f}", "A": f"{r['A']:.2f}", "B": f"{r['B']:.1f}",
            "alpha": f"{r['alpha']:.5f}", "beta": f"{r['beta']:.5f}"}


def main() -> None:
    import argparse
    import time

    parser = argparse.ArgumentParser(description="Time the whole 4,500-start reference grid once, and ours.")
    parser.add_argument("--all-starts", action="store_true", required=True)
    parser.parse_args()
    n, d, loss = epoch_points()
    t0 = time.perf_counter()
    ref = reference_fit(n, d, loss, reference_grid())
    grid_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = our_fit(n, d, loss)
    ours_s = time.perf_counter() - t0
    print(f"reference, all {len(reference_grid())} starts: {grid_s:.1f} s {_shown(ref)}")
    print(f"ours: {ours_s:.2f} s {_shown(ours)}; speedup {grid_s / ours_s:.0f}x")


if __name__ == "__main__":
    main()
