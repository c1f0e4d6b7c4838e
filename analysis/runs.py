"""Meaning layer: run directories (and a sweep's study) -> one tidy pandas table, one row per run.

Reads only files and storage: config.yaml, summary.json, metrics.jsonl, and the Optuna study of a
sweep directory. Failed, stopped or NaN runs are kept with their reason; `fittable()` selects the
rows a fit may use and says why the others are left out.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from scaling import schema

AXES = ("method", "size", "drop_rate", "global_batch", "micro_batch", "world_size", "seed", "lr", "zero_stage",
        "precision")
METRICS = ("knn_top1", "knn_top5", "linear_top1", "v2t_r1", "v2t_r5", "v2t_r10", "t2v_r1", "t2v_r5", "t2v_r10")


class LoadWarning(UserWarning):
    """A run was skipped or is not usable as is."""


def read_metrics(run_dir: str | Path) -> pd.DataFrame:
    """A run's curves: metrics.jsonl as a table (one row per logged line; NaN where a key is absent)."""
    rows = []
    path = Path(run_dir) / schema.METRICS
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return pd.DataFrame(rows)


def baseline_column(metric: str) -> str | None:
    """The column holding `metric` measured on the random-init backbone (final_X -> random_init_X),
    or None for a metric without a baseline."""
    return metric.replace("final_", "random_init_", 1) if metric and metric.startswith("final_") else None


def arm(cfg: dict[str, Any], negatives_per_positive: float | None = None) -> str | None:
    """The compared arm a run belongs to: its method, except that DINO with DINOv2's KoLeo term on
    (dino.koleo_weight > 0) is its own arm, "dino+koleo", never pooled with plain DINO, and KoLeo
    with the self-distillation loss off (dino.distill_weight = 0, an ablation) is "koleo".

    VATT's arm names its loss when not the default symmetric NCE ("+asymmetric", "+sigmoid") and its
    negatives when not the micro-batch's: "+cached" (GradCache: the optimizer batch's) or "+queue";
    with in-batch negatives under gradient accumulation, so that the run contrasts fewer clips than
    its optimizer batch (negatives_per_positive < global_batch - 1), "+accum". Within one arm the
    negatives per positive are then a function of the optimizer batch, and the two x-axes of the
    batch-sensitivity analysis never pool unlike runs."""
    method = cfg.get("method")
    dino = cfg.get("dino") or {}
    vatt = cfg.get("vatt") or {}
    if method == "vatt":
        name = "vatt" + ("" if (vatt.get("loss") or "nce") == "nce" else f"+{vatt['loss']}")
        negatives = vatt.get("negatives") or "batch"
        if negatives != "batch":
            return f"{name}+{negatives}"
        batch = cfg.get("global_batch")
        if negatives_per_positive is not None and batch and negatives_per_positive < batch - 1:
            return f"{name}+accum"
        return name
    if method == "dino" and (dino.get("koleo_weight") or 0) > 0:
        return "koleo" if dino.get("distill_weight", 1.0) == 0 else "dino+koleo"
    return method


def run_row(run_dir: Path) -> dict[str, Any]:
    """One run as a flat row: its axes, cost, final and best metrics, wall time and state, and with
    gns.every_steps > 0 its measured noise scale: the last smoothed B_simple (b_simple_final) and the
    time-averaged one (b_simple_mean, with its standard error b_simple_mean_se).

    `method` is the run's arm (see `arm`): vatt (with +asymmetric or +sigmoid, and +cached, +queue or
    +accum), simclr, dino, dino+koleo or koleo."""
    cfg = yaml.safe_load((run_dir / schema.CONFIG).read_text()) or {}
    summary = schema.read_summary(run_dir)
    row: dict[str, Any] = {"run_dir": str(run_dir), "run": run_dir.name}
    for axis in AXES:
        row[axis] = cfg.get(axis)
    row["method"] = arm(cfg, summary.get(schema.NEGATIVES_PER_POSITIVE))
    for key in ("koleo_weight", "distill_weight"):
        row[f"dino.{key}"] = (cfg.get("dino") or {}).get(key) if cfg.get("method") == "dino" else None
    data = cfg.get("data", {}) or {}
    row.update({"data.source": data.get("source"), "data.resolution": data.get("resolution"),
                "data.frames": data.get("frames"), "data.difficulty": data.get("difficulty")})
    params = summary.get(schema.PARAMS) or {}
    # The video backbone is what both methods share (VATT: video_backbone; DINO: the student backbone).
    row["params"] = params.get("video_backbone", params.get("backbone")) if isinstance(params, dict) else params
    row["params_trainable"] = params.get("trainable") if isinstance(params, dict) else None
    for key in (schema.FLOPS_PER_SAMPLE, schema.TOTAL_FLOPS, schema.SAMPLES_SEEN, schema.STEPS,
                schema.PLANNED_STEPS, schema.WALL_S, schema.NEGATIVES_PER_POSITIVE):
        row[key] = summary.get(key)
    gns = summary.get(schema.GNS) or {}  # gns.every_steps > 0: the measured noise scale
    row.update({"b_simple_final": gns.get("b_simple"), "b_simple_mean": gns.get("b_simple_mean"),
                "b_simple_mean_se": gns.get("b_simple_mean_se"), "gns_measurements": gns.get("measurements")})
    final = summary.get(schema.FINAL, {}) or {}
    row["final_loss"] = final.get("loss")
    for m in METRICS:
        row[f"final_{m}"] = final.get(m)
    baseline = summary.get(schema.RANDOM_INIT, {}) or {}
    for m in ("knn_top1", "linear_top1"):
        row[baseline_column(f"final_{m}")] = baseline.get(m)
    curves = read_metrics(run_dir)
    if not curves.empty:
        if "train/loss" in curves:
            row["best_loss"] = curves["train/loss"].min(skipna=True)
        for m in METRICS:
            key = f"eval/{m}"
            if key in curves:
                after = curves.loc[curves["step"] > 0, key] if "step" in curves else curves[key]
                row[f"best_{m}"] = after.max(skipna=True) if after.notna().any() else None
        if "train/samples_per_s" in curves:
            row["samples_per_s"] = curves["train/samples_per_s"].median(skipna=True)
    reason = summary.get(schema.END_REASON)
    row["end_reason"] = reason
    if reason is None:
        row["state"] = "running" if curves.size else "pending"
    elif reason == schema.COMPLETED:
        row["state"] = "complete"
    elif str(reason).startswith(schema.STOPPED):
        row["state"] = "pruned" if "pruned" in str(summary.get(schema.STOP, "")) else "stopped"
    else:
        row["state"] = "failed"
    return row


def _run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"no such run or sweep directory: {path}")
        if (path / schema.CONFIG).is_file():
            found.append(path)
            continue
        found.extend(sorted(p.parent for p in path.rglob(schema.CONFIG) if schema.CHECKPOINTS not in p.parts))
    return list(dict.fromkeys(found))


def _study_states(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """Per run directory: the trial's state and objective, from the sweep's default SQLite study."""
    db = sweep_dir / "study.db"
    if not db.is_file():
        return {}
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        url = f"sqlite:///{db.resolve()}"
        out = {}
        for summary in optuna.get_all_study_summaries(url):
            study = optuna.load_study(study_name=summary.study_name, storage=url)
            for t in study.get_trials(deepcopy=False):
                run_dir = t.user_attrs.get("run_dir")
                if run_dir:
                    out[str(Path(run_dir).resolve())] = {"trial": t.number, "trial_state": t.state.name,
                                                         "objective": t.value}
        return out
    except Exception as err:  # a study we cannot read does not stop the analysis of its runs
        warnings.warn(f"could not read the study in {db}: {err}", LoadWarning, stacklevel=3)
        return {}


def load(*paths: str | Path) -> pd.DataFrame:
    """One row per run found under `paths` (run directories or sweep directories)."""
    rows = []
    trials: dict[str, dict[str, Any]] = {}
    for path in map(Path, paths):
        if path.is_dir():
            trials.update(_study_states(path))
    for run_dir in _run_dirs(paths):
        try:
            row = run_row(run_dir)
        except (OSError, yaml.YAMLError) as err:
            warnings.warn(f"skipping {run_dir}: {err}", LoadWarning, stacklevel=2)
            continue
        row.update(trials.get(str(run_dir.resolve()), {}))
        rows.append(row)
    if not rows:
        warnings.warn(f"no runs found under {', '.join(map(str, paths))}", LoadWarning, stacklevel=2)
        return pd.DataFrame(columns=["run_dir", "run", *AXES, "state"])
    return pd.DataFrame(rows)


def fittable(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """The complete runs with a finite `column`; warns naming those left out and why."""
    if column not in df.columns:
        warnings.warn(f"no column {column!r} in the runs (nothing to fit)", LoadWarning, stacklevel=2)
        return df.iloc[0:0]
    ok = (df["state"] == "complete") & df[column].map(schema.finite_number)
    left = df.loc[~ok]
    for _, r in left.iterrows():
        why = r["end_reason"] if r["state"] != "complete" else f"{column} is missing or not finite"
        warnings.warn(f"left out of the fit: {r['run']} ({why})", LoadWarning, stacklevel=2)
    return df.loc[ok]
