"""Meaning layer: the study's comparisons on the tidy run table.

- batch sensitivity of VATT vs DINO (metric vs global batch, retained accuracy, slope per halving
  with CIs over seeds, a DINO-ablation-style table, negatives per positive beside the batch);
- model scaling (error vs params and vs FLOPs, fitted per method);
- the DropToken frontier (accuracy vs training FLOPs per drop rate, Pareto points marked);
- learning against the random-init backbone (gain in points, with CIs over seeds).
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from analysis.fits import FitError, FitWarning, fit_power
from analysis.runs import LoadWarning, baseline_column, fittable
from scaling.schema import finite_number

GROUP = ["method", "size", "drop_rate"]
POWER_PARAMS = 3  # E, A and alpha of y = E + A x^(-alpha)


def _t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size < 2:
        return math.nan, math.nan
    half = stats.t.ppf((1 + level) / 2, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size)
    return float(values.mean() - half), float(values.mean() + half)


# The two x-axes of the batch-sensitivity analysis: the optimizer (global) batch, and the contrastive
# batch, negatives per positive + 1 (for an arm without negatives, DINO, only the first applies).
X_AXES = {"global_batch": "optimizer batch", "contrasted_batch": "negatives per positive + 1"}


def _retained_interval(values: np.ndarray, largest: np.ndarray, level: float = 0.95,
                       resamples: int = 2000) -> tuple[float, float]:
    """A percentile bootstrap interval of mean(values) / mean(largest), resampling the seeds of each
    batch independently (the two batches' seeds are different runs)."""
    values, largest = values[np.isfinite(values)], largest[np.isfinite(largest)]
    if values.size < 2 or largest.size < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(0)
    num = rng.choice(values, (resamples, values.size)).mean(1)
    den = rng.choice(largest, (resamples, largest.size)).mean(1)
    ok = den != 0
    ratio = num[ok] / den[ok]
    return float(np.quantile(ratio, (1 - level) / 2)), float(np.quantile(ratio, (1 + level) / 2))


def _with_contrasted_batch(runs: pd.DataFrame) -> pd.DataFrame:
    npp = pd.to_numeric(runs.get("negatives_per_positive"), errors="coerce") if "negatives_per_positive" in runs \
        else pd.Series(np.nan, index=runs.index)
    return runs.assign(contrasted_batch=npp + 1)


def batch_sensitivity(df: pd.DataFrame, metric: str = "final_knn_top1",
                      x: str = "global_batch") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per (method, size, drop rate, x): mean metric, seeds, CI, the fraction retained of the largest
    x's mean (with a bootstrap CI); and per (method, size, drop rate): the slope per halving of x with
    its CI over seeds. x is the optimizer batch (global_batch) or the contrastive batch
    (contrasted_batch = negatives per positive + 1), so a reader sees which one an arm follows."""
    if x not in X_AXES:
        raise ValueError(f"x must be one of {', '.join(X_AXES)}; got {x!r}")
    runs = _with_contrasted_batch(fittable(df, metric))
    runs = runs.loc[runs[x].notna()] if not runs.empty else runs
    if runs.empty:
        return pd.DataFrame(), pd.DataFrame()
    runs = runs.assign(**{x: runs[x].astype(int)})
    rows, slopes = [], []
    for key, group in runs.groupby(GROUP, dropna=False):
        by_x = group.groupby(x)
        top = group[x].max()
        largest_values = by_x.get_group(top)[metric].to_numpy(float)
        largest = largest_values.mean()
        for value, g in by_x:
            values = g[metric].to_numpy(float)
            lo, hi = _t_interval(values)
            r_lo, r_hi = _retained_interval(values, largest_values) if value != top else (1.0, 1.0)
            npp = g["negatives_per_positive"] if "negatives_per_positive" in g else pd.Series(dtype=float)
            rows.append({**dict(zip(GROUP, key)), x: int(value), "mean": values.mean(), "seeds": values.size,
                         "ci_low": lo, "ci_high": hi,
                         **({"global_batch": int(g["global_batch"].iloc[0])} if x != "global_batch" else {}),
                         "negatives_per_positive": npp.mean() if npp.notna().any() else None,
                         "micro_batch": g["micro_batch"].iloc[0], "samples_seen": g["samples_seen"].iloc[0],
                         "retained": values.mean() / largest if largest else math.nan,
                         "retained_ci_low": r_lo, "retained_ci_high": r_hi})
        if group[x].nunique() >= 2:
            per_seed = []
            for _, g in group.groupby("seed"):
                if g[x].nunique() >= 2:
                    slope = np.polyfit(np.log2(g[x].to_numpy(float)), g[metric].to_numpy(float), 1)[0]
                    per_seed.append(-slope)  # change per halving
            per_seed = np.array(per_seed)
            lo, hi = _t_interval(per_seed)
            slopes.append({**dict(zip(GROUP, key)), "x": x, "slope_per_halving": per_seed.mean() if per_seed.size else math.nan,
                           "ci_low": lo, "ci_high": hi, "seeds": per_seed.size,
                           "excludes_zero": bool(np.isfinite(lo) and (lo > 0 or hi < 0)),
                           x.replace("_batch", "") + "_batches": sorted(int(b) for b in group[x].unique())})
    return pd.DataFrame(rows), pd.DataFrame(slopes)


def ablation_table(table: pd.DataFrame) -> pd.DataFrame:
    """DINO's batch-size ablation layout: one row per method (and size), one column per batch."""
    if table.empty:
        return table
    cell = table.apply(lambda r: f"{r['mean']:.1f}" + (f" ± {(r['ci_high'] - r['ci_low']) / 2:.1f}"
                                                        if np.isfinite(r["ci_low"]) else ""), axis=1)
    wide = table.assign(cell=cell).pivot_table(index=["method", "size", "drop_rate"], columns="global_batch",
                                               values="cell", aggfunc="first")
    wide.columns = [f"batch {c}" for c in wide.columns]
    return wide.reset_index()


def fitting_batch(runs: pd.DataFrame) -> int:
    """The optimizer batch a law across sizes is fitted at: the one that the most sizes ran (the
    larger on a tie), so that sizes are compared at one batch and batch effects stay out of the law."""
    sizes_at = runs.groupby("global_batch")["size"].nunique()
    return int(max(sizes_at.index, key=lambda b: (sizes_at[b], b)))


def model_scaling(df: pd.DataFrame, metric: str = "final_knn_top1", bootstrap: int = 200) -> tuple[pd.DataFrame, dict]:
    """Error (100 - metric) vs params and vs training FLOPs per method, each with a power-law fit."""
    runs = fittable(df, metric)
    runs = runs.loc[runs["drop_rate"].fillna(0) == 0]
    points, fits = [], {}
    for method, g in runs.groupby("method"):
        batch = fitting_batch(g)
        g = g.loc[g["global_batch"] == batch]
        error = 100.0 - g[metric].to_numpy(float)
        for axis in ("params", "total_flops"):
            x = g[axis].to_numpy(float)
            name = f"{method}:{axis}"
            for xi, yi, run in zip(x, error, g["run"]):
                points.append({"method": method, "axis": axis, "x": xi, "error": yi, "run": run})
            distinct = np.unique(x[np.isfinite(x)]).size
            if distinct < POWER_PARAMS:  # fewer distinct x than free parameters: not identified, not drawn
                fits[name] = {"skipped": f"not fitted: {distinct} {'size' if axis == 'params' else 'compute value'}"
                                         f"{'s' if distinct != 1 else ''}, the law needs at least {POWER_PARAMS}",
                              "n_distinct": int(distinct), "needs": POWER_PARAMS,
                              "data": {"runs": len(g), "x": axis, "global_batch": int(batch),
                                       "sizes": sorted(g["size"].dropna().unique().tolist())}}
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", FitWarning)
                try:
                    fit = fit_power(x, error, bootstrap=bootstrap)
                except FitError as err:
                    fits[name] = {"skipped": str(err)}
                    continue
            out = fit.to_dict()
            out["data"] = {"runs": len(g), "x": axis, "y": f"100 - {metric}", "global_batch": int(batch),
                           "sizes": sorted(g["size"].dropna().unique().tolist())}
            out["warnings"] = sorted(set(out["warnings"]) | {str(w.message) for w in caught})
            fits[name] = out
    return pd.DataFrame(points), fits


def pareto(points: pd.DataFrame, cost: str, value: str) -> pd.Series:
    """True for the points no other point beats on both lower cost and higher value."""
    flags = []
    for _, p in points.iterrows():
        dominated = ((points[cost] <= p[cost]) & (points[value] >= p[value])
                     & ((points[cost] < p[cost]) | (points[value] > p[value]))).any()
        flags.append(not dominated)
    return pd.Series(flags, index=points.index)


def droptoken(df: pd.DataFrame, metric: str = "final_knn_top1") -> pd.DataFrame:
    """VATT runs: metric vs training FLOPs (and throughput) per drop rate, with the Pareto frontier."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LoadWarning)
        runs = fittable(df, metric)
    runs = runs.loc[runs["method"].astype(str).str.startswith("vatt")]
    # Only (arm, size, batch) settings that ran more than one drop rate compare like with like.
    rates = runs.groupby(["method", "size", "global_batch"])["drop_rate"].transform("nunique")
    runs = runs.loc[rates >= 2]
    if runs.empty:
        return pd.DataFrame()
    table = runs.groupby(["method", "size", "global_batch", "drop_rate"], dropna=False).agg(
        total_flops=("total_flops", "mean"), metric=(metric, "mean"), seeds=(metric, "size"),
        samples_per_s=("samples_per_s", "mean") if "samples_per_s" in runs else (metric, "size")).reset_index()
    table["pareto"] = pd.concat([pareto(g, "total_flops", "metric") for _, g in table.groupby("method")])
    return table


def random_init_gain(df: pd.DataFrame, metric: str = "final_knn_top1") -> pd.DataFrame:
    """Does each arm learn? Per (method, size, drop rate, batch): the trained metric against the same
    backbone with random-init weights (same seeds, same protocol), and the gain in points with its
    95% CI over seeds. Only runs that measured their random-init baseline take part."""
    base = baseline_column(metric)
    if base not in df:
        return pd.DataFrame()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LoadWarning)
        runs = fittable(df, metric)
    runs = runs.loc[runs[base].map(finite_number)]
    rows = []
    for key, g in runs.groupby([*GROUP, "global_batch"], dropna=False):
        gain = g[metric].to_numpy(float) - g[base].to_numpy(float)
        lo, hi = _t_interval(gain)
        rows.append({**dict(zip([*GROUP, "global_batch"], key)), "seeds": int(gain.size),
                     "random_init": float(g[base].mean()), "trained": float(g[metric].mean()),
                     "gain": float(gain.mean()), "gain_ci_low": lo, "gain_ci_high": hi})
    return pd.DataFrame(rows)


def fairness(df: pd.DataFrame) -> dict[str, Any]:
    """What the compared runs share (or not): backbone data, samples seen, evaluation protocol."""
    complete = df.loc[df["state"] == "complete"] if "state" in df else df
    facts: dict[str, Any] = {}
    for col in ("data.source", "data.resolution", "data.frames", "data.difficulty", "samples_seen"):
        if col in complete:
            values = sorted(complete[col].dropna().unique().tolist())
            facts[col] = values
    facts["methods"] = sorted(complete["method"].dropna().unique().tolist()) if "method" in complete else []
    if "dino.koleo_weight" in complete:
        weights = complete.loc[complete["method"] == "dino+koleo", "dino.koleo_weight"].dropna().unique()
        if weights.size:
            facts["dino+koleo: dino.koleo_weight"] = sorted(float(w) for w in weights)
    return facts
