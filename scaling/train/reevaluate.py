"""One-run layer: `scaling evaluate RUN_DIR`: the evaluation protocol again on a finished run's
consolidated weights (model.pt), written to eval.json beside the summary.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from scaling.config import RunConfig
from scaling.eval.evaluate import evaluate
from scaling.models import build_model
from scaling.objectives import build_objective
from scaling.schema import CONFIG, EVAL, MODEL
from scaling.train import rundir as rd


def reevaluate(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    weights = run_dir / MODEL
    if not (run_dir / CONFIG).is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {CONFIG})")
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: the run has not finished")
    cfg = RunConfig.load(run_dir / CONFIG)
    model = build_model(cfg)
    model.load_state_dict(torch.load(weights, map_location="cpu"), strict=True)
    objective = build_objective(cfg)
    metrics = evaluate(cfg, model, objective)
    rd.write_json(run_dir / EVAL, metrics)
    return metrics
