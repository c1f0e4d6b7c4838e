"""Scaling-law fits: the Epoch AI replication as the correctness reference, recovery of known laws,
bootstrap coverage, and the edge cases."""
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from clitools import run_cli

from analysis.fits import FitError, FitWarning, compute_optimal, fit_chinchilla, fit_power

EPOCH = Path(__file__).resolve().parents[1] / "data" / "chinchilla_svg_extracted_data.csv"
# The replication's L-BFGS-B grid optimum (Besiroglu et al. 2024).
REFERENCE = {"E": 1.817, "A": 477.8, "B": 2143.0, "alpha": 0.3473, "beta": 0.3672}
TOLERANCE = {"E": 0.01, "alpha": 0.01, "beta": 0.01, "A": 0.05, "B": 0.05}


def epoch_points():
    df = pd.read_csv(EPOCH).sort_values("loss").iloc[:-5]   # drop the 5 highest losses: 240 points
    n = df["Model Size"].to_numpy()
    return n, df["Training FLOP"].to_numpy() / (6 * n), df["loss"].to_numpy()


def test_the_epoch_refit_matches_the_replication_optimum_within_5_cpu_seconds():
    n, d, loss = epoch_points()
    assert n.size == 240
    start = time.process_time()
    fit = fit_chinchilla(n, d, loss, bootstrap=0)
    cpu = time.process_time() - start
    for name, ref in REFERENCE.items():
        assert fit.params[name] == pytest.approx(ref, rel=TOLERANCE[name]), (name, fit.params)
    assert cpu <= 5.0
    assert fit.n_points == 240 and fit.extrapolation["relative_error"] < 0.05


def test_scaling_fit_prints_the_parameters_with_intervals_as_json():
    out = run_cli("fit", str(EPOCH), "--law", "chinchilla", "--n", "Model Size", "--c", "Training FLOP",
                  "--y", "loss", "--drop-top", "5", "--bootstrap", "20", "--json").stdout
    result = json.loads(out)
    assert result["n_points"] == 240 and result["objective"] > 0
    for name, ref in REFERENCE.items():
        assert result[name]["value"] == pytest.approx(ref, rel=TOLERANCE[name])
        lo, hi = result[name]["interval"]
        assert lo <= result[name]["value"] <= hi


def test_the_chinchilla_fitter_recovers_a_known_law_from_noisy_points():
    truth = {"E": 1.7, "A": 400.0, "B": 1500.0, "alpha": 0.34, "beta": 0.28}
    rng = np.random.default_rng(0)
    n, d = (a.ravel() for a in np.meshgrid(np.logspace(7, 10, 8), np.logspace(9, 12, 8)))
    loss = (truth["E"] + truth["A"] / n ** truth["alpha"] + truth["B"] / d ** truth["beta"]) \
        * np.exp(rng.normal(0, 0.003, n.size))
    fit = fit_chinchilla(n, d, loss, bootstrap=30)
    assert fit.params["E"] == pytest.approx(truth["E"], rel=0.03)
    assert fit.params["alpha"] == pytest.approx(truth["alpha"], rel=0.08)
    assert fit.params["beta"] == pytest.approx(truth["beta"], rel=0.08)
    lo, hi = fit.intervals["beta"]
    assert lo < hi


def test_power_law_bootstrap_intervals_cover_the_truth_at_about_the_nominal_rate():
    truth = {"E": 0.2, "A": 5.0, "alpha": 0.35}
    x = np.logspace(5, 9, 30)
    draws, covered = 60, {k: 0 for k in truth}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        for s in range(draws):
            rng = np.random.default_rng(1000 + s)
            y = (truth["E"] + truth["A"] * x ** -truth["alpha"]) * np.exp(rng.normal(0, 0.03, x.size))
            fit = fit_power(x, y, bootstrap=100, level=0.9, seed=s)
            for k in truth:
                lo, hi = fit.intervals[k]
                covered[k] += lo <= truth[k] <= hi
    for k, hits in covered.items():
        assert 0.75 <= hits / draws <= 0.99, (k, hits / draws)   # nominal 0.90


def test_compute_optimal_allocation_minimises_the_loss_at_fixed_compute():
    n, d, loss = epoch_points()
    fit = fit_chinchilla(n, d, loss, bootstrap=0)
    c = 5.76e23  # Chinchilla's budget
    opt = compute_optimal(fit, c)
    assert 6 * opt["N_opt"] * opt["D_opt"] == pytest.approx(c, rel=1e-9)
    grid = np.logspace(9, 12, 2001)
    losses = fit.predict(grid, c / (6 * grid))
    assert opt["N_opt"] == pytest.approx(grid[np.argmin(losses)], rel=0.01)


def test_edge_cases_warn_or_fail_clearly():
    with pytest.raises(FitError, match="no points"):
        fit_power([], [])
    with pytest.raises(FitError, match="not fitted: 1 distinct x value"):
        fit_power([10.0], [1.0])
    # Two sizes for three parameters: any curve through them would be one of infinitely many.
    with pytest.raises(FitError, match="not fitted: 2 distinct x value.*needs at least 3"):
        fit_power([1e6, 1e6, 4e6, 4e6], [30.0, 31.0, 20.0, 21.0])
    with pytest.raises(FitError, match="different lengths"):
        fit_power([1.0, 2.0], [1.0])
    with pytest.warns(FitWarning, match="NaN"):
        fit = fit_power([1e3, 1e4, 1e5, 1e6, 1e7, 1e8], [2.0, 1.5, float("nan"), 1.2, 1.15, 1.12], bootstrap=10)
    assert fit.n_points == 5
    with pytest.warns(FitWarning, match="non-positive"):
        fit_power([-1.0, 1e3, 1e4, 1e5, 1e6, 1e7], [3.0, 2.0, 1.5, 1.3, 1.2, 1.15], bootstrap=10)
    with pytest.warns(FitWarning, match="only 3 points"):
        fit_power([1e3, 1e4, 1e5], [2.0, 1.5, 1.3], bootstrap=0)
    with pytest.warns(FitWarning, match="at its bound"):
        fit_power([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [10, 1, 0.1, 0.01, 0.001, 0.0001], bootstrap=0)
    with pytest.warns(FitWarning, match="does not fall with x"):
        fit_power([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [1.0, 1.1, 1.2, 1.3, 1.4, 1.5], bootstrap=0)
    with pytest.raises(FitError, match="two distinct values of both N and D"):
        fit_chinchilla([1e9, 1e9], [1e10, 2e10], [2.0, 1.9])


def test_scaling_fit_names_a_missing_column(tmp_path):
    csv = tmp_path / "points.csv"
    csv.write_text("params,loss\n1e6,3.0\n1e7,2.5\n1e8,2.2\n")
    proc = run_cli("fit", str(csv), "--law", "power", "--x", "flops", "--y", "loss", check=False)
    assert proc.returncode == 2 and "--x: no column 'flops'" in proc.stderr and "params, loss" in proc.stderr
    proc = run_cli("fit", str(tmp_path / "missing.csv"), "--law", "power", "--x", "params", check=False)
    assert proc.returncode == 2 and "no such file" in proc.stderr


def test_the_batched_bootstrap_finds_each_draws_optimum_as_a_cold_multistart_fit_does():
    """Honesty of the fast bootstrap: on the same draws, every batched warm-started refit reaches an
    objective no worse than a cold fit of that draw alone (the full multi-start procedure) and than
    one L-BFGS-B refit per draw, and the intervals of the three agree."""
    from analysis.fits import (
        HUBER_DELTA,
        _chinchilla_objective,
        bootstrap_weights,
        chinchilla_bootstrap,
    )

    n, d, loss = epoch_points()
    p = fit_chinchilla(n, d, loss, bootstrap=0).params
    theta = np.array([np.log(p["A"]), np.log(p["B"]), np.log(p["E"]), p["alpha"], p["beta"]])
    draws = 12
    routes = {m: chinchilla_bootstrap(theta, n, d, loss, HUBER_DELTA, draws, seed=3, method=m)
              for m in ("batched", "warm", "cold")}
    weights = bootstrap_weights(None, n.size, draws, np.random.default_rng(3))

    def objective(p, w):
        th = np.array([np.log(p["A"]), np.log(p["B"]), np.log(p["E"]), p["alpha"], p["beta"]])
        idx = np.repeat(np.arange(n.size), w.astype(int))
        return _chinchilla_objective(th, np.log(n[idx]), np.log(d[idx]), np.log(loss[idx]), HUBER_DELTA)[0]

    for k, w in enumerate(weights):
        best = objective(routes["batched"][k], w)
        for other in ("warm", "cold"):
            assert best <= objective(routes[other][k], w) * (1 + 1e-7), (k, other)
    for name in ("E", "alpha", "beta"):
        spread = {m: np.percentile([p[name] for p in r], [10, 90]) for m, r in routes.items()}
        assert np.allclose(spread["batched"], spread["cold"], rtol=0.02), (name, spread)


def test_group_bootstrap_weights_count_whole_groups():
    from analysis.fits import bootstrap_weights

    groups = np.array(["a", "a", "b", "c", "c", "c"])
    weights = bootstrap_weights(groups, 6, 500, np.random.default_rng(0))
    assert weights.shape == (500, 6) and (weights.sum(axis=1) > 0).all()
    # Within a draw every point of a group has the same count, and 3 groups are drawn.
    assert (weights[:, 0] == weights[:, 1]).all() and (weights[:, 3] == weights[:, 5]).all()
    assert ((weights[:, [0, 2, 3]]).sum(axis=1) == 3).all()
    rows = bootstrap_weights(None, 6, 500, np.random.default_rng(0))
    assert (rows.sum(axis=1) == 6).all()
