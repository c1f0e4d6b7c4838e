"""Meaning layer: the report's figures (matplotlib, written as PNG and SVG)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.runs import baseline_column

COLORS = {"vatt": "#1f77b4", "vatt+asymmetric": "#17becf", "vatt+sigmoid": "#2ca02c", "dino": "#d62728",
          "dino+koleo": "#9467bd", "koleo": "#8c564b", "simclr": "#ff7f0e", "vatt+cached": "#aec7e8",
          "vatt+sigmoid+cached": "#98df8a", "vatt+queue": "#393b79", "vatt+accum": "#7f7f7f"}


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"  # SVG text stays text: searchable, and testable
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path, name: str) -> list[Path]:
    paths = []
    for ext in ("png", "svg"):
        path = out / f"{name}.{ext}"
        fig.savefig(path, dpi=130, bbox_inches="tight")
        paths.append(path)
    _figure().close(fig)
    return paths


def batch_sensitivity_plot(table: pd.DataFrame, metric_label: str, out: Path, runs: pd.DataFrame | None = None,
                           metric: str | None = None, x: str = "global_batch") -> list[Path]:
    """Metric vs x (mean, 95% CI over seeds, and each seed), and the retained fraction with its CI;
    x is the global batch or the contrasted batch (negatives per positive + 1)."""
    from analysis.compare import X_AXES

    if runs is not None and x == "contrasted_batch":
        runs = runs.assign(contrasted_batch=pd.to_numeric(runs["negatives_per_positive"], errors="coerce") + 1)
    plt = _figure()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    styles = {size: ls for size, ls in zip(sorted(table["size"].dropna().unique()), ("-", "--", ":", "-."))}
    for (method, size, drop), g in table.groupby(["method", "size", "drop_rate"], dropna=False):
        g = g.sort_values(x)
        label = f"{method} {size}" + (f" drop {drop:g}" if drop else "")
        color, ls = COLORS.get(method), styles.get(size, "-")
        marker = "s" if drop else "o"
        axes[0].plot(g[x], g["mean"], marker=marker, label=label, color=color, linestyle=ls)
        axes[0].fill_between(g[x], g["ci_low"].clip(lower=0), g["ci_high"].clip(upper=100),
                             color=color, alpha=0.08)
        axes[1].plot(g[x], 100 * g["retained"], marker=marker, label=label, color=color, linestyle=ls)
        if "retained_ci_low" in g:
            axes[1].fill_between(g[x], 100 * g["retained_ci_low"], 100 * g["retained_ci_high"], color=color, alpha=0.08)
        if runs is not None and metric:
            seeds = runs.loc[(runs["method"] == method) & (runs["size"] == size) & (runs["drop_rate"] == drop)]
            axes[0].scatter(seeds[x], seeds[metric], color=color, s=10, alpha=0.5)
    baseline = baseline_column(metric) if metric else None
    if runs is not None and baseline in runs:
        # The bar every arm must clear: the same backbone with random-init weights (mean over seeds).
        base_values = pd.to_numeric(runs[baseline], errors="coerce")
        for size, base in base_values.groupby(runs["size"]).mean().dropna().items():
            axes[0].axhline(base, color="0.5", linestyle=styles.get(size, "-"), linewidth=1,
                            label=f"random init {size}")
    axes[0].set_ylim(0, 100)
    for ax, ylabel in zip(axes, (metric_label, f"% of the largest {X_AXES[x]}'s {metric_label}")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"{X_AXES[x]} (log2)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].set_title(f"metric vs {X_AXES[x]} (mean, 95% CI over seeds, seeds as dots)", fontsize=9)
    axes[1].set_title(f"retained relative to the largest {X_AXES[x]} (95% bootstrap CI)", fontsize=9)
    axes[0].legend(fontsize=8)
    return _save(fig, out, "batch_sensitivity" if x == "global_batch" else "batch_sensitivity_negatives")


def model_scaling_plot(points: pd.DataFrame, fits: dict, out: Path) -> list[Path]:
    plt = _figure()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, axis, label in zip(axes, ("params", "total_flops"), ("video backbone parameters", "training FLOPs")):
        for method, g in points.loc[points["axis"] == axis].groupby("method"):
            color = COLORS.get(method)
            ax.scatter(g["x"], g["error"], color=color, label=f"{method} runs", s=18)
            fit = fits.get(f"{method}:{axis}", {})
            if "skipped" in fit:  # points only: a law that is not identified gets no curve
                ax.scatter([], [], color=color, marker="x", label=f"{method}: {fit['skipped']}")
            if "E" in fit:
                xs = np.logspace(np.log10(g["x"].min()), np.log10(g["x"].max()), 100)
                E, A, alpha = fit["E"]["value"], fit["A"]["value"], fit["alpha"]["value"]
                ax.plot(xs, E + A * xs ** (-alpha), color=color,
                        label=f"{method}: {E:.3g} + {A:.3g}·x^(-{alpha:.3f})")
                lo, hi = fit["alpha"]["interval"]
                if np.isfinite(lo) and np.isfinite(hi):
                    band = [E + A * xs ** (-a) * (g["x"].min() ** (a - alpha)) for a in (lo, hi)]
                    ax.fill_between(xs, np.minimum(*band), np.maximum(*band), color=color, alpha=0.12)
        ax.set_xscale("log")
        ax.set_xlabel(f"{label} (log)")
        ax.set_ylabel("k-NN error (%)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[0].set_title("error vs model size")
    axes[1].set_title("error vs training compute")
    return _save(fig, out, "model_scaling")


def droptoken_plot(table: pd.DataFrame, metric_label: str, out: Path) -> list[Path]:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 4))
    for (method, size), g in table.groupby(["method", "size"]):
        ax.scatter(g["total_flops"], g["metric"], s=30, label=f"{method} {size}", color=COLORS.get(method))
        for _, r in g.iterrows():
            ax.annotate(f"drop {r['drop_rate']:g}", (r["total_flops"], r["metric"]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
    for method, g in table.loc[table["pareto"]].groupby("method"):
        front = g.sort_values("total_flops")
        ax.plot(front["total_flops"], front["metric"], "--", lw=1, color=COLORS.get(method, "k"),
                label="Pareto frontier" + (f" ({method})" if table["method"].nunique() > 1 else ""))
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (log)")
    ax.set_ylabel(metric_label)
    ax.set_title("DropToken: accuracy vs training compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out, "droptoken")
