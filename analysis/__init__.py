"""Meaning layer: run directories and study storage -> tidy tables -> fits, plots, reports.

It reads files and storage only; it never imports the training code.

    from analysis import load
    runs = load("runs/sweeps/batch_sensitivity")   # one row per run
"""
from analysis.runs import LoadWarning, fittable, load, read_metrics

__all__ = ["LoadWarning", "fittable", "load", "read_metrics"]
