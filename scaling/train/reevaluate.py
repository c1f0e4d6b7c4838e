"""One-run layer: `scaling evaluate RUN_DIR`: the evaluation protocol again on a finished run's
consolidated weights (model.pt), written to eval.json beside the summary.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

from scaling.config import RunConfig
from scaling.schema import CONFIG, EVAL, MODEL, InputError
from scaling.train import rundir as rd


def reevaluate(run_dir: str | Path) -> dict[str, Any]:
    """The evaluation of the run in `run_dir` on its model.pt, also written to eval.json. Raises
    InputError("run_dir") (or ConfigError) before any compute when `run_dir` is no finished run
    or its data cannot be read."""
    run_dir = Path(run_dir)
    weights = run_dir / MODEL
    if not run_dir.is_dir():
        raise InputError("run_dir", f"{run_dir}: no such run directory")
    if not (run_dir / CONFIG).is_file():
        raise InputError("run_dir", f"{run_dir} is not a run directory (no {CONFIG})")
    if not weights.is_file():
        raise InputError("run_dir", f"{weights} is missing: the run has not finished "
                                    "(model.pt is written when a run completes)")
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise InputError("run_dir", f"{run_dir} cannot be written: no write permission for {EVAL}")
    cfg = RunConfig.load(run_dir / CONFIG)
    import torch  # here: a refused run directory costs no torch import

    from scaling.data.loader import check_dataset
    from scaling.eval.evaluate import evaluate
    from scaling.models import build_model
    from scaling.objectives import build_objective, dataset_options

    for split in ("train", "eval"):  # what the evaluation reads: the train split's bank, the eval split
        check_dataset(cfg.data, split, **dataset_options(cfg, evaluation=True, split=split))
    model = build_model(cfg)
    try:
        model.load_state_dict(torch.load(weights, map_location="cpu"), strict=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise InputError("run_dir", f"{weights} does not hold this run's weights: "
                                    f"{' '.join(str(err).split())[:500]}") from None
    objective = build_objective(cfg)
    metrics = evaluate(cfg, model, objective)
    rd.write_json(run_dir / EVAL, metrics)
    return metrics
