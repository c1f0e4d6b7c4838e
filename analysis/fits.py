"""Meaning layer: scaling-law fits with uncertainty.

- `fit_power(x, y)`: the saturating power law y = E + A * x^(-alpha).
- `fit_chinchilla(N, D, L)`: L(N, D) = E + A / N^alpha + B / D^beta, fitted as in Hoffmann et al.
  (2022) and Epoch AI's replication: a Huber loss (delta 1e-3) on log L, with the prediction
  parameterised as logsumexp(a - alpha log N, b - beta log D, e).

Both use variable projection for their starting points: for fixed exponents the law is linear in
(E, A[, B]), so a non-negative least-squares solve (weighted to approximate the log-space residual)
over a grid of exponents finds the basin, and L-BFGS-B on the full objective polishes it. Bootstrap
intervals resample points (or groups, such as the seeds of one configuration); every fit also
reports the error of extrapolating to its largest scale when that scale is left out.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import least_squares, minimize, nnls

HUBER_DELTA = 1e-3
BOOTSTRAP_METHODS = ("batched", "warm", "cold")
EXPONENT_BOUNDS = (0.0, 2.5)


class FitWarning(UserWarning):
    """The fit ran but should not be trusted as is (too few points, an exponent at its bound...)."""


class FitError(ValueError):
    """The data cannot be fitted (no points, non-positive values, mismatched lengths)."""


@dataclass
class Fit:
    law: str                                   # "power" or "chinchilla"
    params: dict[str, float]                   # E, A, alpha (+ B, beta)
    objective: float
    n_points: int
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    extrapolation: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    level: float = 0.95
    draws: list[dict[str, float]] = field(default_factory=list, repr=False)  # the bootstrap refits' parameters

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"law": self.law, "n_points": self.n_points, "objective": self.objective}
        for name, value in self.params.items():
            lo, hi = self.intervals.get(name, (math.nan, math.nan))
            out[name] = {"value": value, "interval": [lo, hi], "level": self.level}
        out["extrapolation"] = self.extrapolation
        out["warnings"] = self.warnings
        return out

    def predict(self, *xs: np.ndarray, params: dict[str, float] | None = None) -> np.ndarray:
        """The law at xs (x; or N and D), with the fitted parameters or `params` (a bootstrap draw)."""
        p = self.params if params is None else params
        if self.law == "power":
            return p["E"] + p["A"] * np.asarray(xs[0], float) ** (-p["alpha"])
        n, d = (np.asarray(v, float) for v in xs)
        return p["E"] + p["A"] / n ** p["alpha"] + p["B"] / d ** p["beta"]


# ----------------------------------------------------------------------------- shared helpers
def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss of each residual and its derivative."""
    small = np.abs(r) <= delta
    loss = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))
    grad = np.where(small, r, delta * np.sign(r))
    return loss, grad


def _clean(*cols: Sequence[float], names: Sequence[str]) -> tuple[list[np.ndarray], list[str]]:
    arrays = [np.asarray(c, dtype=float).ravel() for c in cols]
    if len({a.size for a in arrays}) != 1:
        raise FitError(f"columns {', '.join(names)} have different lengths: {[a.size for a in arrays]}")
    notes = []
    finite = np.all([np.isfinite(a) for a in arrays], axis=0)
    if (~finite).any():
        notes.append(f"{int((~finite).sum())} point(s) with NaN or infinite values left out")
    positive = np.all([a > 0 for a in arrays], axis=0) if finite.any() else finite
    dropped = finite & ~positive
    if dropped.any():
        notes.append(f"{int(dropped.sum())} point(s) with non-positive values left out (the laws need x, y > 0)")
    keep = finite & positive
    return [a[keep] for a in arrays], notes


def _bounds_warning(name: str, value: float) -> str | None:
    lo, hi = EXPONENT_BOUNDS
    if value <= lo + 1e-3 or value >= hi - 1e-3:
        return f"{name} = {value:.4g} is at its bound [{lo}, {hi}]: the data do not pin the exponent"
    return None


def _percentile_intervals(samples: list[dict[str, float]], level: float) -> dict[str, tuple[float, float]]:
    if not samples:
        return {}
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    return {k: (float(np.percentile([s[k] for s in samples], lo_q)), float(np.percentile([s[k] for s in samples], hi_q)))
            for k in samples[0]}


def _resample(groups: np.ndarray | None, n: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices of one bootstrap draw: rows, or whole groups (e.g. all seeds of a configuration)."""
    if groups is None:
        return rng.integers(0, n, n)
    labels = np.unique(groups)
    chosen = rng.choice(labels, labels.size, replace=True)
    return np.concatenate([np.flatnonzero(groups == g) for g in chosen])


# ----------------------------------------------------------------------------- power law
def _power_objective(theta: np.ndarray, logx: np.ndarray, logy: np.ndarray, delta: float | None):
    """Loss on log y of y = exp(e) + exp(a - alpha log x); theta = (a, e, alpha)."""
    a, e, alpha = theta
    t1, t2 = a - alpha * logx, np.full_like(logx, e)
    m = np.maximum(t1, t2)
    w1, w2 = np.exp(t1 - m), np.exp(t2 - m)
    pred = m + np.log(w1 + w2)
    w1, w2 = w1 / (w1 + w2), w2 / (w1 + w2)
    r = pred - logy
    if delta is None:
        loss, g = 0.5 * r * r, r
    else:
        loss, g = _huber(r, delta)
    grad = np.array([np.sum(g * w1), np.sum(g * w2), np.sum(g * w1 * -logx)])
    return float(np.sum(loss)), grad


def _power_start(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Variable projection: for each alpha on a grid, (E, A) >= 0 by weighted NNLS; best as a start."""
    best, best_theta = math.inf, None
    weights = 1.0 / y
    for alpha in np.linspace(0.02, EXPONENT_BOUNDS[1] - 0.02, 125):
        design = np.stack([np.ones_like(x), x ** (-alpha)], axis=1) * weights[:, None]
        coef, _ = nnls(design, y * weights)
        pred = coef[0] + coef[1] * x ** (-alpha)
        if np.any(pred <= 0):
            continue
        err = float(np.sum((np.log(pred) - np.log(y)) ** 2))
        if err < best:
            best = err
            e_, a_ = (math.log(max(c, 1e-12 * y.min())) for c in coef)
            best_theta = np.array([a_, e_, alpha])
    if best_theta is None:
        best_theta = np.array([math.log(y.max()), math.log(y.min() * 0.5), 0.5])
    return best_theta


def _power_polish(theta0: np.ndarray, x: np.ndarray, y: np.ndarray, delta: float | None):
    """Polish (a, e, alpha) on the log residuals: MINPACK-style least squares (Huber when `delta`)."""
    logx, logy = np.log(x), np.log(y)

    def residuals(theta):
        a, e, alpha = theta
        return np.logaddexp(a - alpha * logx, e) - logy

    def jacobian(theta):
        a, e, alpha = theta
        t1 = a - alpha * logx
        w1 = np.exp(t1 - np.logaddexp(t1, e))
        return np.stack([w1, 1 - w1, -w1 * logx], axis=1)

    lo, hi = EXPONENT_BOUNDS
    start = np.array([theta0[0], theta0[1], min(max(theta0[2], lo + 1e-9), hi - 1e-9)])
    res = least_squares(residuals, start, jac=jacobian, bounds=([-np.inf, -np.inf, lo], [np.inf, np.inf, hi]),
                        loss="linear" if delta is None else "huber", f_scale=delta or 1.0, x_scale="jac",
                        ftol=1e-12, xtol=1e-12, gtol=1e-12, max_nfev=500)
    a, e, alpha = res.x
    objective = _power_objective(res.x, logx, logy, delta)[0]
    return {"E": math.exp(e), "A": math.exp(a), "alpha": float(alpha)}, objective, res.x


def fit_power(x: Sequence[float], y: Sequence[float], *, delta: float | None = None, bootstrap: int = 200,
              groups: Sequence[Any] | None = None, level: float = 0.95, seed: int = 0) -> Fit:
    """y = E + A x^(-alpha) (least squares on log y, or Huber with `delta`), with bootstrap intervals."""
    (x, y), notes = _clean(x, y, names=("x", "y"))
    group_arr = None if groups is None else np.asarray(groups, dtype=object)[: len(x)]
    if x.size == 0:
        raise FitError("no points to fit (after leaving out NaN and non-positive values)")
    if np.unique(x).size < 3:  # E, A and alpha: fewer distinct x than parameters is not identified
        raise FitError(f"not fitted: {np.unique(x).size} distinct x value(s), the law needs at least 3")
    theta = _power_start(x, y)
    params, objective, theta = _power_polish(theta, x, y, delta)
    fit = Fit("power", params, objective, int(x.size), level=level, warnings=list(notes))
    if x.size < 5:
        fit.warnings.append(f"only {x.size} points for 3 parameters: the fit is not constrained")
    note = _bounds_warning("alpha", params["alpha"])
    if note:
        fit.warnings.append(note)
    if params["A"] * x.min() ** (-params["alpha"]) < 1e-6 * y.mean():
        fit.warnings.append("A is 0: y does not fall with x, so there is no power law to fit")
    if bootstrap and x.size >= 3:
        rng = np.random.default_rng(seed)
        draws = []
        for _ in range(bootstrap):
            idx = _resample(group_arr, x.size, rng)
            if np.unique(x[idx]).size < 3:  # a resample that cannot identify the law says nothing
                continue
            draws.append(_power_polish(theta, x[idx], y[idx], delta)[0])
        fit.intervals = _percentile_intervals(draws, level)
        fit.draws = draws
    top = x == x.max()
    if (~top).sum() >= 3 and np.unique(x[~top]).size >= 3:
        held, _, _ = _power_polish(theta, x[~top], y[~top], delta)
        pred = held["E"] + held["A"] * x[top] ** (-held["alpha"])
        fit.extrapolation = {"x": float(x.max()), "relative_error": float(np.mean(np.abs(pred - y[top]) / y[top]))}
    _emit(fit)
    return fit


# ----------------------------------------------------------------------------- Chinchilla
def _chinchilla_objective(theta: np.ndarray, logn: np.ndarray, logd: np.ndarray, logl: np.ndarray, delta: float):
    """Huber loss on log L of logsumexp(a - alpha log N, b - beta log D, e); theta = (a, b, e, alpha, beta)."""
    a, b, e, alpha, beta = theta
    t = np.stack([a - alpha * logn, b - beta * logd, np.full_like(logn, e)])
    m = t.max(axis=0)
    w = np.exp(t - m)
    s = w.sum(axis=0)
    pred = m + np.log(s)
    w = w / s
    loss, g = _huber(pred - logl, delta)
    grad = np.array([np.sum(g * w[0]), np.sum(g * w[1]), np.sum(g * w[2]),
                     np.sum(g * w[0] * -logn), np.sum(g * w[1] * -logd)])
    return float(np.sum(loss)), grad


def _chinchilla_starts(n: np.ndarray, d: np.ndarray, loss: np.ndarray, delta: float, keep: int = 4) -> list[np.ndarray]:
    """Variable projection over an (alpha, beta) grid: (E, A, B) >= 0 by NNLS weighted by 1/L (the
    first-order log residual), scored on the true Huber objective; the best few become starts."""
    logn, logd, logl = np.log(n), np.log(d), np.log(loss)
    weights = 1.0 / loss
    scored = []
    for alpha in np.linspace(0.05, 1.2, 47):
        xn = n ** (-alpha)
        for beta in np.linspace(0.05, 1.2, 47):
            xd = d ** (-beta)
            design = np.stack([np.ones_like(n), xn, xd], axis=1) * weights[:, None]
            coef, _ = nnls(design, loss * weights)
            floor = 1e-12
            theta = np.array([math.log(max(coef[1], floor)), math.log(max(coef[2], floor)),
                              math.log(max(coef[0], floor)), alpha, beta])
            scored.append((_chinchilla_objective(theta, logn, logd, logl, delta)[0], theta))
    scored.sort(key=lambda item: item[0])
    return [theta for _, theta in scored[:keep]]


def _chinchilla_polish(theta0: np.ndarray, n, d, loss, delta: float):
    logn, logd, logl = np.log(n), np.log(d), np.log(loss)
    res = minimize(_chinchilla_objective, theta0, args=(logn, logd, logl, delta), jac=True, method="L-BFGS-B",
                   bounds=[(None, None), (None, None), (None, None), EXPONENT_BOUNDS, EXPONENT_BOUNDS],
                   options={"maxiter": 1000, "ftol": 1e-12, "gtol": 1e-10, "maxcor": 30})
    a, b, e, alpha, beta = res.x
    params = {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": float(alpha), "beta": float(beta)}
    return params, float(res.fun), res.x


def bootstrap_weights(groups: np.ndarray | None, n: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """(draws, n) multiplicities of each point in each bootstrap draw: points resampled with
    replacement, or whole groups (every point of a chosen group counts once per choice)."""
    if groups is None:
        weights = np.zeros((draws, n))
        np.add.at(weights, (np.repeat(np.arange(draws), n), rng.integers(0, n, draws * n)), 1.0)
        return weights
    labels, label_of = np.unique(groups, return_inverse=True)
    counts = np.zeros((draws, labels.size))
    np.add.at(counts, (np.repeat(np.arange(draws), labels.size), rng.integers(0, labels.size, draws * labels.size)), 1.0)
    return counts[:, label_of]


def _huber_sum(weights: np.ndarray, r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.sum(weights * np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta)), axis=1)


def _chinchilla_batched(theta0: np.ndarray, logn: np.ndarray, logd: np.ndarray, logl: np.ndarray,
                        weights: np.ndarray, delta: float, iterations: int = 200,
                        tol: float = 1e-12) -> np.ndarray:
    """Every weighted refit at once, each warm-started at `theta0` (the full data's optimum): a
    Gauss-Newton step on the Huber loss's iteratively reweighted least squares (weight 1 inside
    delta, delta/|r| outside: a majoriser of the Huber loss), with a backtracking line search per
    draw that only accepts a decrease, and the exponents kept in EXPONENT_BOUNDS. A draw stops when
    a step lowers its loss by less than `tol` relative. Returns the (draws, 5) optima
    (a, b, e, alpha, beta)."""
    draws = weights.shape[0]
    theta = np.tile(np.asarray(theta0, float), (draws, 1))
    lo, hi = EXPONENT_BOUNDS
    r, soft = _terms_rows(theta, logn, logd, logl)
    f = _huber_sum(weights, r, delta)
    active = np.ones(draws, dtype=bool)
    for _ in range(iterations):
        idx = np.flatnonzero(active)
        if not idx.size:
            break
        ra, sa, wa = r[idx], soft[:, idx], weights[idx]
        jac = np.stack([sa[0], sa[1], sa[2], -sa[0] * logn, -sa[1] * logd], axis=-1)   # (k, n, 5)
        psi = np.clip(ra, -delta, delta)
        omega = np.minimum(1.0, delta / np.maximum(np.abs(ra), 1e-300))
        jac_t = jac.transpose(0, 2, 1)                                                  # (k, 5, n)
        grad = np.matmul(jac_t, (wa * psi)[..., None])[..., 0]
        hess = np.matmul(jac_t * (wa * omega)[:, None, :], jac) + 1e-12 * np.eye(5)
        step = -np.linalg.solve(hess, grad[..., None])[..., 0]
        scale = np.ones(idx.size)
        pending = np.ones(idx.size, dtype=bool)
        for _ in range(40):  # halve each draw's step until its loss does not rise
            rows = np.flatnonzero(pending)
            if not rows.size:
                break
            cand = theta[idx[rows]] + scale[rows, None] * step[rows]
            cand[:, 3:] = np.clip(cand[:, 3:], lo, hi)
            rc, sc = _terms_rows(cand, logn, logd, logl)
            fc = _huber_sum(wa[rows], rc, delta)
            ok = fc <= f[idx[rows]]
            take = idx[rows[ok]]
            converged = f[take] - fc[ok] <= tol * np.maximum(1.0, np.abs(fc[ok]))
            theta[take], r[take], soft[:, take], f[take] = cand[ok], rc[ok], sc[:, ok], fc[ok]
            active[take[converged]] = False
            pending[rows[ok]] = False
            scale[rows[~ok]] *= 0.5
        active[idx[pending]] = False  # no decrease along the step: at its optimum, to tolerance
    return theta


def _terms_rows(th: np.ndarray, logn: np.ndarray, logd: np.ndarray, logl: np.ndarray):
    """Residuals (k, n) and softmax weights (3, k, n) of the log-sum-exp prediction for rows th (k, 5)."""
    t = np.stack([th[:, 0:1] - th[:, 3:4] * logn, th[:, 1:2] - th[:, 4:5] * logd,
                  np.broadcast_to(th[:, 2:3], (th.shape[0], logn.size))])
    m = t.max(axis=0)
    w = np.exp(t - m)
    total = w.sum(axis=0)
    return m + np.log(total) - logl, w / total


def fit_chinchilla(n: Sequence[float], d: Sequence[float], loss: Sequence[float], *, delta: float = HUBER_DELTA,
                   bootstrap: int = 200, groups: Sequence[Any] | None = None, level: float = 0.95,
                   seed: int = 0, bootstrap_method: str = "batched") -> Fit:
    """L(N, D) = E + A/N^alpha + B/D^beta with a Huber loss on log L, plus bootstrap intervals.

    bootstrap_method: "batched" (every refit at once, warm-started at the full data's optimum:
    `_chinchilla_batched`), "warm" (one L-BFGS-B refit per draw from that optimum) or "cold" (one
    full multi-start fit per draw, as a fit of the resampled data alone). The draws are the same
    for all three (`bootstrap_weights` from `seed`)."""
    if bootstrap_method not in BOOTSTRAP_METHODS:
        raise FitError(f"bootstrap_method must be one of {', '.join(BOOTSTRAP_METHODS)}; got {bootstrap_method!r}")
    (n, d, loss), notes = _clean(n, d, loss, names=("N", "D", "L"))
    if n.size == 0:
        raise FitError("no points to fit (after leaving out NaN and non-positive values)")
    if np.unique(n).size < 2 or np.unique(d).size < 2:
        raise FitError("a Chinchilla fit needs at least two distinct values of both N and D")
    pairs = np.unique(np.stack([n, d], axis=1), axis=0).shape[0]
    if pairs < 5:  # E, A, B, alpha and beta
        raise FitError(f"not fitted: {pairs} distinct (N, D) points, the law needs at least 5")
    best = None
    for theta0 in _chinchilla_starts(n, d, loss, delta):
        params, objective, theta = _chinchilla_polish(theta0, n, d, loss, delta)
        if best is None or objective < best[1] - 1e-15:
            best = (params, objective, theta)
    params, objective, theta = best
    fit = Fit("chinchilla", params, objective, int(n.size), level=level, warnings=list(notes))
    if n.size < 10:
        fit.warnings.append(f"only {n.size} points for 5 parameters: the fit is not constrained")
    for name in ("alpha", "beta"):
        note = _bounds_warning(name, params[name])
        if note:
            fit.warnings.append(note)
    group_arr = None if groups is None else np.asarray(groups, dtype=object)
    if bootstrap and n.size >= 6:
        fit.draws = chinchilla_bootstrap(theta, n, d, loss, delta, bootstrap, group_arr, seed, bootstrap_method)
        fit.intervals = _percentile_intervals(fit.draws, level)
    compute = 6 * n * d
    top = compute >= np.quantile(compute, 0.9) if n.size >= 20 else compute == compute.max()
    rest = ~top
    if rest.sum() >= 6 and np.unique(n[rest]).size >= 2 and np.unique(d[rest]).size >= 2:
        held, _, _ = _chinchilla_polish(theta, n[rest], d[rest], loss[rest], delta)
        pred = held["E"] + held["A"] / n[top] ** held["alpha"] + held["B"] / d[top] ** held["beta"]
        fit.extrapolation = {"held_out": int(top.sum()), "min_compute": float(compute[top].min()),
                             "relative_error": float(np.mean(np.abs(pred - loss[top]) / loss[top]))}
    _emit(fit)
    return fit


def chinchilla_bootstrap(theta: np.ndarray, n: np.ndarray, d: np.ndarray, loss: np.ndarray, delta: float,
                         draws: int, groups: np.ndarray | None = None, seed: int = 0,
                         method: str = "batched") -> list[dict[str, float]]:
    """The parameters of each bootstrap refit (see fit_chinchilla's bootstrap_method); draws that
    keep fewer than two distinct N or D values are left out."""
    weights = bootstrap_weights(groups, n.size, draws, np.random.default_rng(seed))
    present = weights > 0
    distinct_n = (present[:, :, None] & (n[:, None] == np.unique(n))[None]).any(axis=1).sum(axis=1)
    distinct_d = (present[:, :, None] & (d[:, None] == np.unique(d))[None]).any(axis=1).sum(axis=1)
    weights = weights[(distinct_n >= 2) & (distinct_d >= 2)]
    names = lambda th: {"E": math.exp(th[2]), "A": math.exp(th[0]), "B": math.exp(th[1]),  # noqa: E731
                        "alpha": float(th[3]), "beta": float(th[4])}
    if method == "batched":
        return [names(th) for th in _chinchilla_batched(theta, np.log(n), np.log(d), np.log(loss), weights, delta)]
    out = []
    for w in weights:
        idx = np.repeat(np.arange(n.size), w.astype(int))
        if method == "warm":
            out.append(_chinchilla_polish(theta, n[idx], d[idx], loss[idx], delta)[0])
        else:
            fits = [_chinchilla_polish(t0, n[idx], d[idx], loss[idx], delta)
                    for t0 in _chinchilla_starts(n[idx], d[idx], loss[idx], delta)]
            out.append(min(fits, key=lambda f: f[1])[0])
    return out


def compute_optimal(fit: Fit, compute: float | np.ndarray) -> dict[str, np.ndarray]:
    """N_opt(C) and D_opt(C) under C = 6 N D for a Chinchilla fit (Hoffmann et al., eq. 4)."""
    if fit.law != "chinchilla":
        raise FitError("compute-optimal allocation needs a Chinchilla fit")
    p = fit.params
    a, b = p["beta"] / (p["alpha"] + p["beta"]), p["alpha"] / (p["alpha"] + p["beta"])
    g = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / (p["alpha"] + p["beta"]))
    c = np.asarray(compute, dtype=float) / 6
    return {"N_opt": g * c ** a, "D_opt": c ** b / g, "a": a, "b": b}


def _emit(fit: Fit) -> None:
    for note in fit.warnings:
        warnings.warn(f"{fit.law} fit: {note}", FitWarning, stacklevel=3)
