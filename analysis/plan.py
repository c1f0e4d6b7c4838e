"""Meaning layer: `scaling plan --budget`: from a finished sweep's fitted law to the run to submit.

For one arm and a compute budget C (GPU-hours x the GPU's peak x the planned MFU):

- **The law.** At one optimizer batch (the one the most sizes ran), Chinchilla's L(N, D) =
  E + A/N^alpha + B/D^beta on the error (100 - metric), with N the video backbone's parameters and
  D the samples seen, when the sweep has at least 5 distinct (N, D); otherwise the saturating
  power law in training FLOPs, error = E + A C^-alpha, when it has at least 3 distinct FLOP
  totals. Runs without DropToken only.
- **The size.** Each of the suite's sizes (with its own FLOPs per sample, from `describe`) gets
  D = C / FLOPs per sample; Chinchilla's law picks the size with the lowest predicted error. The
  law in compute does not tell sizes apart: there the size is the one of the sweep's best run at
  its largest compute, and the plan says so.
- **The DropToken rate.** A rate the arm's sweep ran costs fewer FLOPs per sample (more samples for
  the budget) and, at equal samples, the measured difference in error to no drop at the same size
  and batch; the rate with the lowest predicted error is chosen (0 when the sweep ran no other).
- **The global batch.** The arm's best batch in the sweep, capped at the largest power of two not
  above the measured critical batch B_simple (analysis.critical) when the runs measured it.
- **The prediction** with a percentile interval over the fit's bootstrap refits, each evaluated at
  the recommended (N, D).

Refused, naming the reason(s), when the fit cannot be trusted: too few points, an exponent at its
bound, or a budget beyond `MAX_EXTRAPOLATION` x the largest compute the law was fitted on.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analysis.compare import fitting_batch
from analysis.critical import critical_batch
from analysis.fits import FitError, FitWarning, fit_chinchilla, fit_power
from analysis.runs import LoadWarning, fittable

MAX_EXTRAPOLATION = 10.0


class PlanRefused(ValueError):
    """The sweep's law cannot carry this plan; `reasons` says which checks failed."""

    def __init__(self, reasons: list[str]):
        self.reasons = reasons
        super().__init__("; ".join(reasons))


@dataclass(frozen=True)
class Candidate:
    """One size (at one drop rate) the plan may choose: its backbone parameters and training FLOPs per sample."""

    size: str
    params: float
    flops_per_sample: float
    drop_rate: float = 0.0


@dataclass
class Plan:
    arm: str
    law: str
    budget_flops: float
    size: str
    params: float
    drop_rate: float
    samples: int
    global_batch: int
    micro_batch: int
    predicted_metric: float
    interval: tuple[float, float]
    level: float
    notes: list[str] = field(default_factory=list)
    alternatives: list[dict[str, Any]] = field(default_factory=list)

    def overrides(self, method: str) -> list[str]:
        """The RunConfig overrides of the recommended run (`scaling train` / a sweep spec's fixed)."""
        return [f"method={method}", f"size={self.size}", f"drop_rate={self.drop_rate:g}",
                f"global_batch={self.global_batch}", f"micro_batch={self.micro_batch}", f"samples={self.samples}"]


def _arm_runs(df: pd.DataFrame, arm: str, metric: str) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LoadWarning)
        runs = fittable(df, metric)
    return runs.loc[runs["method"] == arm]


def _fit(runs: pd.DataFrame, metric: str, bootstrap: int):
    """(fit, the fitted runs' largest compute) on the arm's no-drop runs at one batch
    (compare.fitting_batch); PlanRefused when neither law is identified."""
    base = runs.loc[runs["drop_rate"].fillna(0) == 0]
    if len(base):
        base = base.loc[base["global_batch"] == fitting_batch(base)]
    error = 100.0 - base[metric].to_numpy(float)
    n, d, c = (base[k].to_numpy(float) for k in ("params", "samples_seen", "total_flops"))
    pairs = np.unique(np.stack([n, d], 1), axis=0).shape[0] if len(base) else 0
    with warnings.catch_warnings():  # the plan reads the fit's own warnings (an exponent at its bound)
        warnings.simplefilter("ignore", FitWarning)
        try:
            if pairs >= 5:
                fit = fit_chinchilla(n, d, error, bootstrap=bootstrap)
            else:
                fit = fit_power(c, error, bootstrap=bootstrap)
        except FitError as err:
            at = f" at global batch {int(base['global_batch'].iloc[0])}" if len(base) else ""
            raise PlanRefused([f"too few points: {err} ({len(base)} run(s) without DropToken{at}, {pairs} distinct "
                               f"(N, D), {np.unique(c).size} distinct compute values)"]) from None
    return fit, float(np.nanmax(c))


def _bound_reasons(fit) -> list[str]:
    return [f"an exponent at its bound: {w}" for w in fit.warnings if "at its bound" in w]


def _drop_penalties(runs: pd.DataFrame, metric: str) -> dict[float, float]:
    """Per drop rate the arm ran: the mean error above no drop at the same size and batch (0 for no drop)."""
    out = {0.0: 0.0}
    for rate, g in runs.loc[runs["drop_rate"].fillna(0) > 0].groupby("drop_rate"):
        diffs = []
        for (size, batch), same in g.groupby(["size", "global_batch"]):
            base = runs.loc[(runs["drop_rate"].fillna(0) == 0) & (runs["size"] == size) & (runs["global_batch"] == batch)]
            if len(base):
                diffs.append(base[metric].mean() - same[metric].mean())
        if diffs:
            out[float(rate)] = float(np.mean(diffs))
    return out


def _batch(runs: pd.DataFrame, df: pd.DataFrame, arm: str, metric: str) -> tuple[int, int, list[str]]:
    """(global batch, micro-batch, notes): the best batch of the sweep, capped by the critical batch."""
    base = runs.loc[runs["drop_rate"].fillna(0) == 0]
    means = base.groupby("global_batch")[metric].mean()
    best = int(means.idxmax())
    micro = int(base.loc[base["global_batch"] == best, "micro_batch"].max())
    critical = critical_batch(df.loc[df["method"] == arm], metric)  # this arm's readout only
    row = critical.loc[critical["method"] == arm] if not critical.empty else critical
    measured = row["b_simple"].dropna() if len(row) else pd.Series(dtype=float)
    measured = measured[measured > 0]
    if measured.empty:
        note = row["b_simple_note"].dropna() if len(row) and "b_simple_note" in row else pd.Series(dtype=object)
        why = (f"the critical batch is {note.iloc[0]}" if len(note) else
               "the critical batch was not measured (runs with gns.every_steps > 0 measure it)")
        return best, micro, [f"global batch {best}: the sweep's best for {arm}; {why}, so the batch is not capped"]
    b_crit = float(measured.min())
    cap = 2 ** int(math.floor(math.log2(b_crit))) if b_crit >= 1 else 1
    if best <= cap:
        return best, micro, [f"global batch {best}: the sweep's best, below the measured critical batch "
                             f"B_simple = {b_crit:.0f}"]
    return cap, min(micro, cap), [f"global batch {cap}: the sweep's best ({best}) capped at the largest power of two "
                                  f"not above the measured critical batch B_simple = {b_crit:.0f}"]


def recommend(df: pd.DataFrame, arm: str, budget_flops: float, candidates: list[Candidate],
              metric: str = "final_knn_top1", bootstrap: int = 200, level: float = 0.95) -> Plan:
    """The plan for `arm` at `budget_flops` training FLOPs (see the module's docstring)."""
    runs = _arm_runs(df, arm, metric)
    if runs.empty:
        raise PlanRefused([f"too few points: no complete run of arm {arm!r} with a finite {metric}"])
    fit, top_compute = _fit(runs, metric, bootstrap)
    reasons = _bound_reasons(fit)
    if budget_flops > MAX_EXTRAPOLATION * top_compute:
        reasons.append(f"extrapolation: the budget's {budget_flops:.3g} FLOPs are {budget_flops / top_compute:.3g}x the "
                       f"largest compute fitted ({top_compute:.3g}); at most {MAX_EXTRAPOLATION:g}x is planned")
    if reasons:
        raise PlanRefused(reasons)
    penalties = _drop_penalties(runs, metric)
    options = []
    for c in candidates:
        if c.drop_rate not in penalties:
            continue
        samples = budget_flops / c.flops_per_sample
        error = fit.predict(c.params, samples) if fit.law == "chinchilla" else fit.predict(budget_flops)
        options.append({"size": c.size, "drop_rate": c.drop_rate, "params": c.params, "samples": samples,
                        "predicted_error": float(error) + penalties[c.drop_rate]})
    if not options:
        raise PlanRefused(["no candidate size at a drop rate the sweep ran"])
    notes = [f"law: {fit.law} ({fit.n_points} runs)"]
    if fit.law == "power":
        best_run = runs.loc[runs["drop_rate"].fillna(0) == 0].sort_values(["total_flops", metric]).iloc[-1]
        options = [o for o in options if o["size"] == best_run["size"]] or options
        notes.append(f"the law in compute does not tell sizes apart: size {best_run['size']} is that of the sweep's "
                     "best run at its largest compute")
    choice = min(options, key=lambda o: o["predicted_error"])
    batch, micro, batch_notes = _batch(runs, df, arm, metric)
    notes += batch_notes
    samples = max(batch, int(choice["samples"] // batch) * batch)
    x = (choice["params"], samples) if fit.law == "chinchilla" else (budget_flops,)
    penalty = penalties[choice["drop_rate"]]
    draws = np.array([float(fit.predict(*x, params=p)) + penalty for p in fit.draws])
    draws = draws[np.isfinite(draws)]
    lo, hi = (np.quantile(draws, [(1 - level) / 2, (1 + level) / 2]) if draws.size else (math.nan, math.nan))
    predicted = 100.0 - (float(fit.predict(*x)) + penalty)
    return Plan(arm=arm, law=fit.law, budget_flops=budget_flops, size=choice["size"], params=choice["params"],
                drop_rate=choice["drop_rate"], samples=samples, global_batch=batch, micro_batch=micro,
                predicted_metric=predicted, interval=(100.0 - float(hi), 100.0 - float(lo)), level=level,
                notes=notes, alternatives=sorted(options, key=lambda o: o["predicted_error"]))
