"""Meaning layer: the measured critical batch beside each arm's batch sensitivity.

Per arm (method, size, drop rate):
- the measured noise scale B_simple (McCandlish et al. 2018): the mean over the arm's runs of each
  run's time-averaged estimate (gns.every_steps > 0), with a t-interval over runs (one run: its own
  delta-method standard error over measurements);
- B_95, the batch at which the arm retains 95% of its largest batch's mean metric: walking down
  from the largest batch, the first batch whose retained fraction falls below 0.95, interpolated
  in log2(batch) with the batch above it; when no batch falls below, B_95 is at most the smallest
  batch run ("<="). Its interval is a percentile bootstrap that resamples each batch's seeds.
- whether they agree: the two intervals overlap (not judged when B_95 is only a bound).

An arm whose runs' mean B_simple is not positive has no critical batch: its |G|^2 estimate is
negative, which independent micro-steps cannot give in expectation; losses that couple a batch's
samples (VATT's all-gathered NCE and synchronised BatchNorm) do. It is reported as not identified.

What the comparison means. At equal samples seen, McCandlish et al.'s model predicts that batches
below the critical batch train about as well per sample (optimization noise costs little there),
and batches above it worse. So an arm that loses accuracy as its batch shrinks *below* B_simple is
not losing it to optimization noise: for a contrastive arm, the negatives are the suspect.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from analysis.compare import GROUP, _t_interval
from analysis.runs import LoadWarning, fittable

THRESHOLD = 0.95


def b_threshold(batches: np.ndarray, means: np.ndarray, threshold: float = THRESHOLD) -> tuple[float, bool]:
    """(B at which means / means[largest] first falls below `threshold` walking down from the
    largest batch, log-interpolated; whether it is only an upper bound: the smallest batch)."""
    order = np.argsort(batches)
    b, m = batches[order].astype(float), means[order].astype(float)
    top = m[-1]
    if not np.isfinite(top) or top <= 0:
        return math.nan, False
    r = m / top
    for i in range(len(b) - 2, -1, -1):
        if r[i] < threshold:
            t = (threshold - r[i]) / (r[i + 1] - r[i])
            return float(2 ** (math.log2(b[i]) + t * (math.log2(b[i + 1]) - math.log2(b[i])))), False
    return float(b[0]), True


def _b_threshold_interval(groups: dict[int, np.ndarray], level: float = 0.95,
                          resamples: int = 2000) -> tuple[float, float]:
    """Percentile bootstrap of B_95, resampling the seeds of each batch independently."""
    if min(v.size for v in groups.values()) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(0)
    batches = np.array(sorted(groups), dtype=float)
    draws = np.stack([rng.choice(groups[int(b)], (resamples, groups[int(b)].size)).mean(1) for b in batches], 1)
    values = np.array([b_threshold(batches, row)[0] for row in draws])
    values = values[np.isfinite(values)]
    if not values.size:
        return math.nan, math.nan
    return float(np.quantile(values, (1 - level) / 2)), float(np.quantile(values, (1 + level) / 2))


def _b_simple(runs: pd.DataFrame, level: float = 0.95) -> tuple[float, float, float, int]:
    """The arm's B_simple: mean over runs, its interval, the runs measured."""
    if "b_simple_mean" not in runs:
        return math.nan, math.nan, math.nan, 0
    values = pd.to_numeric(runs["b_simple_mean"], errors="coerce").to_numpy(float)
    ok = np.isfinite(values)
    values = values[ok]
    if values.size == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(values.mean())
    if values.size >= 2:
        return (mean, *_t_interval(values, level), int(values.size))
    se = pd.to_numeric(runs["b_simple_mean_se"], errors="coerce").to_numpy(float)[ok][0]
    half = stats.norm.ppf((1 + level) / 2) * se if np.isfinite(se) else math.nan
    return mean, mean - half, mean + half, 1


def critical_batch(df: pd.DataFrame, metric: str = "final_knn_top1", threshold: float = THRESHOLD) -> pd.DataFrame:
    """One row per arm: the measured B_simple (time-averaged, and final) and B_95 (the batch that
    retains `threshold` of the largest batch's metric), each with its 95% interval, and whether they
    agree (the intervals overlap). Arms without a noise-scale measurement get NaN there."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LoadWarning)
        runs = fittable(df, metric)
    if runs.empty:
        return pd.DataFrame()
    rows = []
    for key, group in runs.groupby(GROUP, dropna=False):
        groups = {int(b): g[metric].to_numpy(float) for b, g in group.groupby("global_batch")}
        batches = np.array(sorted(groups))
        b_simple, s_lo, s_hi, measured = _b_simple(group)
        note = None
        if measured and b_simple <= 0:  # |G|^2 estimated negative: coupled samples (see scaling.train.gns)
            note = (f"not identified: the runs' mean B_simple is {b_simple:.3g} (their |G|^2 estimate is negative: "
                    "the micro-steps' gradients are not independent)")
            b_simple = s_lo = s_hi = math.nan
        row = {**dict(zip(GROUP, key)), "batches": [int(b) for b in batches], "runs": len(group),
               "b_simple": b_simple, "b_simple_ci_low": s_lo, "b_simple_ci_high": s_hi, "runs_measured": measured,
               "b_simple_note": note,
               "b_simple_final": float(pd.to_numeric(group.get("b_simple_final"), errors="coerce").mean())
               if "b_simple_final" in group else math.nan}
        if len(batches) >= 2:
            b95, bound = b_threshold(batches, np.array([groups[b].mean() for b in batches]), threshold)
            lo, hi = _b_threshold_interval(groups)
            if bound:
                lo = 0.0  # at most the smallest batch: no lower end
            row.update({"b95": b95, "b95_upper_bound_only": bound, "b95_ci_low": lo, "b95_ci_high": hi})
            # A bound is no crossing to compare with: the arm keeps 95% at every batch run.
            row["agree"] = None if bound else _overlap(s_lo, s_hi, lo, hi)
        rows.append(row)
    return pd.DataFrame(rows)


def _overlap(a_lo: float, a_hi: float, b_lo: float, b_hi: float) -> bool | None:
    if not all(np.isfinite(v) for v in (a_lo, a_hi, b_lo, b_hi)):
        return None
    return bool(a_lo <= b_hi and b_lo <= a_hi)


def describe_row(row: pd.Series) -> str:
    """One line of the report: the two batches, their intervals and the verdict."""
    def interval(v, lo, hi, upper=False):
        if not np.isfinite(v):
            return "not measured"
        text = f"<= {v:.0f}" if upper else f"{v:.0f}"
        return text + (f" (95% CI {lo:.0f} to {hi:.0f})" if np.isfinite(lo) and np.isfinite(hi) else "")

    name = f"{row['method']} {row['size']}" + (f" drop {row['drop_rate']:g}" if row.get("drop_rate") else "")
    b_simple = row.get("b_simple_note") if isinstance(row.get("b_simple_note"), str) else \
        interval(row["b_simple"], row["b_simple_ci_low"], row["b_simple_ci_high"])
    b95 = row.get("b95", math.nan)
    bound = row.get("b95_upper_bound_only") == True  # noqa: E712 (a numpy bool, or NaN where B_95 is missing)
    retained = interval(b95, row.get("b95_ci_low", math.nan), row.get("b95_ci_high", math.nan), bound) \
        if np.isfinite(b95) else "needs two batches (one run here)"
    agree = row.get("agree") if row.get("agree") in (True, False) else None
    if agree is None:
        verdict = ("agreement cannot be judged: the arm keeps 95% of its largest batch's metric at every batch run"
                   if bound else "agreement cannot be judged")
    else:
        verdict = "they agree (the intervals overlap)" if agree else "they disagree (the intervals do not overlap)"
    return f"{name}: measured critical batch B_simple {b_simple}; B_95 {retained}; {verdict}"
