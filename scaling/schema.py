"""The run directory's schema: its file names and the keys of summary.json.

The writer (`scaling.train`) and every reader (`slurm`, `sweeps`, `analysis`, `benchmarks`) import
these names instead of spelling them. This module imports nothing but the standard library, so
`analysis` may read run directories through it without loading torch or the training code.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

# ----------------------------------------------------------------------------- files
CONFIG = "config.yaml"          # the resolved RunConfig
DS_CONFIG = "ds_config.json"    # the resolved DeepSpeed config
ENV = "env.json"                # the training process's machine and versions
METRICS = "metrics.jsonl"       # one JSON line per logged step
SUMMARY = "summary.json"        # the final metrics, FLOPs, params and wall time
TB = "tb"                       # TensorBoard events
CHECKPOINTS = "checkpoints"     # DeepSpeed checkpoints, one folder per saved step
MODEL = "model.pt"              # the consolidated fp32 weights of a finished run
EVAL = "eval.json"              # written by `scaling evaluate`: the evaluation again on MODEL
JOB_RECORD = "job.json"         # written by a launcher: how and where the run was submitted
HPARAMS_RUN = "hparams"         # the fixed TensorBoard sub-run of the HParams row

# ----------------------------------------------------------------------------- summary.json keys
END_REASON = "end_reason"       # COMPLETED, STOPPED, DEADLINE, INTERRUPTED, nonfinite_*, or "error: ..."
STEPS = "steps"
PLANNED_STEPS = "planned_steps"
SAMPLES_SEEN = "samples_seen"
PARAMS = "params"               # {part: count}
FLOPS_PER_SAMPLE = "flops_per_sample"
TOTAL_FLOPS = "total_flops"
WALL_S = "wall_s"
FINAL = "final"                 # {metric: value}: the last logged training metrics and the last evaluation
RANDOM_INIT = "random_init"     # {metric: value}: the evaluation of the untrained backbone
NEGATIVES_PER_POSITIVE = "negatives_per_positive"
STOP = "stop"                   # why a stopped run stopped (a sweep writes "pruned at step N")
DATA_SKIPPED = "data_skipped"   # distinct clips that failed to decode and were replaced (manifest data)
BAD_CLIPS = "bad_clips"         # their files, each with its manifest line
SEGMENTS = "segments"           # each start of the run: [{start_step, world_size, zero_stage}]
GNS = "gns"                     # gns.every_steps > 0: {b_simple, b_simple_mean, b_simple_mean_se, measurements, b_small, b_big}

# ----------------------------------------------------------------------------- end reasons
COMPLETED, STOPPED, DEADLINE, INTERRUPTED = "completed", "stopped", "deadline", "interrupted"
NONFINITE_LOSS, NONFINITE_GRAD = "nonfinite_loss", "nonfinite_grad"
BAD_DATA = "bad_data"           # more clips than data.max_bad_fraction failed to decode
CANCELLED = "cancelled"         # a cancel request (`sweep cancel`, Ctrl-C in `scaling demo`) stopped it
CANCEL_REQUEST = "cancel.request"  # in the run dir: asks the running job to save its step and stop


class InputError(ValueError):
    """A command-line input other than a config value is invalid (a run directory `scaling evaluate`
    reads, the folders `scaling analyze` reads, a CSV `scaling fit` reads); the message names the
    argument. The `scaling` entry point reports it as `scaling: invalid input: FIELD: ...`, exit 2."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        self.message = message
        super().__init__(f"{field_name}: {message}")


def finite_number(value: Any) -> bool:
    """A metric counts only as a real, finite number (not a bool, None, NaN or inf)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object from `path`, or {} when the file is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """The run's summary.json, or {} when there is none yet."""
    return read_json(Path(run_dir) / SUMMARY)


def is_completed(run_dir: str | Path, planned_steps: int | None = None) -> bool:
    """The run ended normally (and, given `planned_steps`, reached them)."""
    summary = read_summary(run_dir)
    return summary.get(END_REASON) == COMPLETED and (planned_steps is None or summary.get(STEPS, 0) >= planned_steps)
