"""Meaning layer: the report's figures (matplotlib, written as PNG and SVG)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.runs import baseline_column

COLORS = {"vatt": "#1f77b4", "vatt+asymmetric": "#17becf", "vatt+sigmoid": "#2ca02c", "dino": "#d62728",
          "dino+koleo": "#9467bd", "koleo": "#8c564b", "simclr": "#ff7f0e"}


def _figure():
    import matplotlib

    matplotlib.use("Agg")
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
                           metric: str | None = None) -> list[Path]:
    """Metric vs global batch (mean, 95% CI over seeds, and each seed), and the retained fraction."""
    plt = _figure()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    styles = {size: ls for size, ls in zip(sorted(table["size"].dropna().unique()), ("-", "--", ":", "-."))}
    for (method, size, drop), g in table.groupby(["method", "size", "drop_rate"], dropna=False):
        g = g.sort_values("global_batch")
        label = f"{method} {size}" + (f" drop {drop:g}" if drop else "")
        color, ls = COLORS.get(method), styles.get(size, "-")
        marker = "s" if drop else "o"
        axes[0].plot(g["global_batch"], g["mean"], marker=marker, label=label, color=color, linestyle=ls)
        axes[0].fill_between(g["global_batch"], g["ci_low"].clip(lower=0), g["ci_high"].clip(upper=100),
                             color=color, alpha=0.08)
        axes[1].plot(g["global_batch"], 100 * g["retained"], marker=marker, label=label, color=color, linestyle=ls)
        if runs is not None and metric:
            seeds = runs.loc[(runs["method"] == method) & (runs["size"] == size) & (runs["drop_rate"] == drop)]
            axes[0].scatter(seeds["global_batch"], seeds[metric], color=color, s=10, alpha=0.5)
    baseline = baseline_column(metric) if metric else None
    if runs is not None and baseline in runs:
        # The bar every arm must clear: the same backbone with random-init weights (mean over seeds).
        base_values = pd.to_numeric(runs[baseline], errors="coerce")
        for size, base in base_values.groupby(runs["size"]).mean().dropna().items():
            axes[0].axhline(base, color="0.5", linestyle=styles.get(size, "-"), linewidth=1,
                            label=f"random init {size}")
    axes[0].set_ylim(0, 100)
    for ax, ylabel in zip(axes, (metric_label, f"% of the largest batch's {metric_label}")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("global batch (log2)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].set_title("metric vs batch (mean, 95% CI over seeds, seeds as dots)")
    axes[1].set_title("retained relative to the largest batch")
    axes[0].legend(fontsize=8)
    return _save(fig, out, "batch_sensitivity")


def model_scaling_plot(points: pd.DataFrame, fits: dict, out: Path) -> list[Path]:
    plt = _figure()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, axis, label in zip(axes, ("params", "total_flops"), ("video backbone parameters", "training FLOPs")):
        for method, g in points.loc[points["axis"] == axis].groupby("method"):
            color = COLORS.get(method)
            ax.scatter(g["x"], g["error"], color=color, label=f"{method} runs", s=18)
            fit = fits.get(f"{method}:{axis}", {})
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
    for size, g in table.groupby("size"):
        ax.scatter(g["total_flops"], g["metric"], s=30, label=f"vatt {size}")
        for _, r in g.iterrows():
            ax.annotate(f"drop {r['drop_rate']:g}", (r["total_flops"], r["metric"]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
    front = table.loc[table["pareto"]].sort_values("total_flops")
    ax.plot(front["total_flops"], front["metric"], "k--", lw=1, label="Pareto frontier")
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (log)")
    ax.set_ylabel(metric_label)
    ax.set_title("DropToken: accuracy vs training compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out, "droptoken")
