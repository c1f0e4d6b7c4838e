"""Benchmark: bootstrap intervals of the Chinchilla fit at Epoch AI's scale (4,000 refits).

`analysis.fits.fit_chinchilla` refits every bootstrap draw of the 240 Epoch points at once
(`bootstrap_method="batched"`: a Gauss-Newton step on the Huber loss's reweighted least squares
with a per-draw line search, all draws as one array, each warm-started at the full data's
optimum). It is timed as a whole fit (the point estimate, the 4,000 refits and the held-out
check) against the per-draw route it replaced (`"warm"`: one L-BFGS-B refit per draw, from the same
optimum), whose time is measured on the first draws and scaled to 4,000. The standard errors over
the draws are set beside Epoch AI's published ones (Besiroglu et al. 2024, 4,000 bootstraps).
"""
from __future__ import annotations

import time
import warnings

import numpy as np

from benchmarks.core import Result, check_scale
from benchmarks.fit_speed import epoch_points

NAME = "bootstrap"
TITLE = "Bootstrap at Epoch's scale: 4,000 Chinchilla refits"
SECONDS_GOAL = 10.0
GOAL = f"4,000 bootstrap refits of the Chinchilla fit on the Epoch points in <= {SECONDS_GOAL:g} s"
# Besiroglu et al. (2024): estimate (standard error over 4,000 bootstraps).
EPOCH = {"E": (1.8172, 0.03), "A": (482.01, 124.58), "B": (2085.43, 1293.23), "alpha": (0.3478, 0.02),
         "beta": (0.3658, 0.02)}
COLUMNS = ["parameter", "estimate", "SE (ours)", "95% interval (ours)", "Epoch estimate", "Epoch SE"]
PLAN = {"full": dict(draws=4000, warm_sample=40), "smoke": dict(draws=40, warm_sample=4)}


def run(scale: str) -> Result:
    from analysis.fits import (
        HUBER_DELTA,
        FitWarning,
        chinchilla_bootstrap,
        fit_chinchilla,
    )

    plan = PLAN[check_scale(scale)]
    n, d, loss = epoch_points()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        start = time.perf_counter()
        fit = fit_chinchilla(n, d, loss, bootstrap=plan["draws"])
        seconds = time.perf_counter() - start
        p = fit.params  # the full data's optimum, in the refits' parameterisation (a, b, e, alpha, beta)
        theta = np.array([np.log(p["A"]), np.log(p["B"]), np.log(p["E"]), p["alpha"], p["beta"]])
        batched = chinchilla_bootstrap(theta, n, d, loss, HUBER_DELTA, plan["draws"])
        start = time.perf_counter()
        chinchilla_bootstrap(theta, n, d, loss, HUBER_DELTA, plan["warm_sample"], method="warm")
        warm_per_draw = (time.perf_counter() - start) / plan["warm_sample"]
    rows = []
    for name, (epoch_value, epoch_se) in EPOCH.items():
        values = np.array([draw[name] for draw in batched])
        lo, hi = fit.intervals[name]
        rows.append({"parameter": name, "estimate": fit.params[name], "SE (ours)": float(values.std(ddof=1)),
                     "95% interval (ours)": f"{lo:.4g} to {hi:.4g}", "Epoch estimate": epoch_value,
                     "Epoch SE": epoch_se})
    warm_total = warm_per_draw * plan["draws"]
    met = None if scale == "smoke" else seconds <= SECONDS_GOAL
    notes = [f"{plan['draws']} draws: the whole fit took {seconds:.2f} s (goal <= {SECONDS_GOAL:g} s at 4,000); "
             f"one L-BFGS-B refit per draw (the previous route) takes {1e3 * warm_per_draw:.1f} ms, "
             f"{warm_total:.1f} s for {plan['draws']} draws ({warm_total / seconds:.1f}x)",
             f"draws kept: {len(batched)} of {plan['draws']} (a draw needs two distinct N and D values)",
             "SE: the standard deviation of each parameter over the draws, as Epoch reports"]
    return Result(name=NAME, title=TITLE, goal=GOAL, columns=COLUMNS, rows=rows, met=met, notes=notes)
