"""Meaning layer: run directories and study storage -> tidy tables -> fits, plots, reports.

It reads files and storage only; it never imports the training code.

    from analysis import load
    runs = load("runs/sweeps/batch_sensitivity")   # one row per run

The names below load `analysis.runs` (and pandas) on first use, so that the `scaling` entry point,
which imports `analysis.cli` to list the commands, starts as fast as before.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["LoadWarning", "fittable", "load", "read_metrics"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("analysis.runs"), name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
