"""Sweep overhead: on the local SLURM cluster, the time from `submit` to each trial's first optimizer
step, where it goes, and its share of a demo trial's wall time.

Demo trials (sweeps/demo.yaml's base config, fixed and per-method overrides: VATT and DINO at global
batch 32, seed 0) go through the library path of `scaling sweep submit` (load_spec, then
sweeps.commands.submit), run in a fresh interpreter as the CLI is, with the slurm launcher and the
`local` profile, two array elements at a time as the demo runs. Full scale submits two such sweeps one
after the other: with 640 samples (20 steps; only their overhead counts), then with the demo's
samples (a demo trial's wall time, and two more overheads). Smoke: one VATT trial of 64 samples.

Every stage is timed from a clock on this machine (the cluster is this machine, so one clock):
  submit cmd       the submitting process: interpreter, imports, load_spec, trials, run dirs, sbatch
  queue            -> the job's SLURM StartTime (whole seconds: queue and job launch are each +-1 s)
  job launch       -> submitit's "Starting with JobEnvironment" log line (srun, interpreter, submitit)
  imports          -> DeepSpeed's first log line (unpickling the trial job: torch, torchvision, DeepSpeed)
  study+dist init  -> env.json, rewritten by train() (Optuna study opened, torch.distributed initialised)
  model            -> ds_config.json (model and objective built)
  engine           -> the first event of the run's TensorBoard file (DeepSpeed engine, checkpoint probe,
                      metrics log)
  data+eval0       -> the first optimizer step starts (its metrics line's time less its step_time_s): the
                      datasets and the evaluation of the random-init backbone (eval.random_init)
A trial's wall time runs from submit to the end of its job (submitit's result file). The share is the
overhead (submit -> first step) over the median wall time of the full-length demo trials
(sweeps/demo.yaml's samples).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from benchmarks.core import Result, check_scale
from scaling.schema import (
    CONFIG,
    DS_CONFIG,
    END_REASON,
    ENV,
    JOB_RECORD,
    METRICS,
    STEPS,
    SUMMARY,
    TB,
    WALL_S,
    read_json,
    read_summary,
)

ROOT = Path(__file__).resolve().parent.parent

NAME = "sweep_overhead"
TITLE = "Sweep overhead on the local SLURM cluster"
GOAL = ("measure the time from `scaling sweep submit` to each trial's first optimizer step, broken down, and its "
        "share of a demo trial's wall time (no target)")
SKIP_NO_SLURM = "skipped: no SLURM cluster answers (start one with slurm/local_cluster.sh start)"

# The demo spec the sweeps are derived from, and its samples per run.
DEMO_SPEC = yaml.safe_load((ROOT / "sweeps" / "demo.yaml").read_text())
DEMO_SAMPLES = int(DEMO_SPEC["fixed"]["samples"])
# (label, samples, extra fixed overrides) of each sweep, submitted one after the other.
SWEEPS = {
    "full": [("overhead", 640, {}), ("demo", DEMO_SAMPLES, {})],
    "smoke": [("smoke", 64, {"data.eval_size": 64, "eval.linear_probe": False})],
}
METHODS = {"full": ["vatt", "dino"], "smoke": ["vatt"]}
WAIT_S = {"full": 600.0, "smoke": 300.0}  # per sweep, after its submit; then its jobs are cancelled
PARALLELISM = 2  # as the demo: two array elements at a time on the 2-CPU node

STAGES = [("submit cmd (s)", "t0", "submitted"), ("queue (s)", "submitted", "slurm_start"),
          ("job launch (s)", "slurm_start", "python_up"), ("imports (s)", "python_up", "imported"),
          ("study+dist init (s)", "imported", "train_entered"),
          ("model (s)", "train_entered", "model_built"), ("engine (s)", "model_built", "engine_built"),
          ("data+eval0 (s)", "engine_built", "first_step")]
COLUMNS = (["trial", "method", "samples", "submit→job start (s)"] + [s[0] for s in STAGES]
           + ["submit→first step (s)", "trial wall (s)", "share"])


# ----------------------------------------------------------------------------- clocks
def _local_ts(text: str, fmt: str) -> float:
    return dt.datetime.strptime(text, fmt).timestamp()  # naive local time, as SLURM and submitit write it


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


_LOG_LINES = [  # (key, pattern with the time as group 1, its format); the first match of each counts
    ("python_up", r"submitit INFO \((\S+ \S+)\) - Starting with JobEnvironment", "%Y-%m-%d %H:%M:%S,%f"),
    # DeepSpeed's first log line, printed while `import deepspeed` picks the accelerator.
    ("ds_imported", r"^\[(\S+ \S+)\] \[\w+\] \[real_accelerator\.py", "%Y-%m-%d %H:%M:%S,%f"),
    ("job_done", r"submitit INFO \((\S+ \S+)\) - Job completed", "%Y-%m-%d %H:%M:%S,%f"),
]


def _log_times(path: Path) -> dict[str, float]:
    """Times from a job log of rank 0: when its Python started, when DeepSpeed was imported, when the
    job's work was done (submitit's and DeepSpeed's own time-stamped lines)."""
    out: dict[str, float] = {}
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        for key, pattern, fmt in _LOG_LINES:
            m = re.search(pattern, line)
            if m and key not in out:
                try:
                    out[key] = _local_ts(m.group(1), fmt)
                except ValueError:
                    pass
    return out


def _tb_created(run_dir: Path) -> float | None:
    """The wall time of the first event of the run's TensorBoard file: the file-version record that
    SummaryWriter writes when MetricsLog opens (a TFRecord: u64 length, u32 crc, an Event proto whose
    field 1 is the double wall_time)."""
    files = sorted((run_dir / TB).glob("events.out.tfevents.*"))
    stamps = []
    for path in files:
        try:
            with path.open("rb") as f:
                head = f.read(12)
                if len(head) < 12:
                    continue
                (length,) = struct.unpack("<Q", head[:8])
                data = f.read(min(length, 64))
            if len(data) >= 9 and data[0] == 0x09:
                stamps.append(struct.unpack("<d", data[1:9])[0])
        except OSError:
            continue
    return min(stamps) if stamps else None


def _slurm_times(job_ids: list[str]) -> dict[str, dict[str, float]]:
    """SubmitTime, StartTime, EndTime of each array element ('123_4'), from scontrol (whole seconds)."""
    out: dict[str, dict[str, float]] = {}
    for base in sorted({j.split("_")[0] for j in job_ids}):
        try:
            done = subprocess.run(["scontrol", "-o", "show", "job", base], capture_output=True, text=True, timeout=15)
        except (OSError, subprocess.SubprocessError):
            continue
        for line in done.stdout.splitlines():
            fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
            task = fields.get("ArrayTaskId")
            key = f"{fields.get('ArrayJobId')}_{task}" if task not in (None, "N/A") else fields.get("JobId", "")
            times = {}
            for name in ("SubmitTime", "StartTime", "EndTime"):
                try:
                    times[name] = _local_ts(fields.get(name, ""), "%Y-%m-%dT%H:%M:%S")
                except ValueError:
                    pass
            out[key] = {**times, "state": fields.get("JobState", "?"), "reason": fields.get("Reason", "")}
    return out


def _metrics_times(run_dir: Path) -> dict[str, Any]:
    """From metrics.jsonl (every line carries its wall-clock `time`): when the first optimizer step
    started and ended (its line's time, less its step_time_s), the last step and its time, and when the
    random-init evaluation (step 0) was logged."""
    out: dict[str, Any] = {}
    try:
        lines = (run_dir / METRICS).read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "time" not in row:
            continue
        if "train/loss" in row:
            if "first_step" not in out:
                out["first_step_end"] = row["time"]
                out["first_step"] = row["time"] - float(row.get("train/step_time_s", 0.0))
            out["last_step"], out["last_train"] = row["step"], row["time"]
        elif row.get("step") == 0 and "eval0_logged" not in out and any(k.startswith("eval/") for k in row):
            out["eval0_logged"] = row["time"]
    return out


# ----------------------------------------------------------------------------- the sweep
def _write_spec(root: Path, label: str, samples: int, extra: dict[str, Any], methods: list[str]) -> Path:
    """A spec derived from sweeps/demo.yaml: the same base, fixed and per-method overrides; the slurm
    launcher with the `local` profile; two trials (global batch 32, seed 0)."""
    demo = DEMO_SPEC
    spec = {
        "name": f"overhead-{label}-{uuid.uuid4().hex[:8]}",
        "base": demo["base"],
        "fixed": {**demo.get("fixed", {}), "samples": samples, **extra},
        "per_method": demo.get("per_method", {}),
        "grid": {"method": methods, "global_batch": [32], "micro_batch": [32], "seed": [0]},
        "objective": demo.get("objective", {"metric": "knn_top1", "direction": "maximize"}),
        "launcher": {"type": "slurm", "profile": "local", "nproc": 1, "parallelism": PARALLELISM},
        "retries": 0,   # a failed trial is reported, not resubmitted
        "dir": str(root / label),
    }
    path = root / f"{label}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _cancel(job_ids: list[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=30)


# The submission, in a fresh interpreter as `scaling sweep submit` runs it: the library path
# (load_spec, then sweeps.commands.submit), timed at each stage. What submit imports lazily (Optuna,
# submitit) is imported first, so that its cost is seen apart; submitting imports neither torch nor
# DeepSpeed (the run directories are written by scaling.train.rundir, which needs neither).
SUBMIT = r"""
import json, sys, time
t = {"python_up": time.time()}
from sweeps import commands
from sweeps.spec import load_spec
import optuna, submitit
t["imported"] = time.time()
spec = load_spec(sys.argv[1])
t["loaded"] = time.time()
numbers, jobs = commands.submit(spec, quiet=True)
t["submitted"] = time.time()
print("SUBMITTED " + json.dumps({"times": t, "jobs": [str(j.job_id) for j in jobs]}), flush=True)
"""


def _submit(spec_path: Path) -> dict[str, Any]:
    t0 = time.time()
    done = subprocess.run([sys.executable, "-c", SUBMIT, str(spec_path)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("SUBMITTED ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the submission failed ({done.returncode}): "
                           f"{(done.stderr.strip() or done.stdout.strip()).splitlines()[-1:]}")
    out = json.loads(lines[-1].split(" ", 1)[1])
    out["times"]["t0"] = t0
    return out


def _run_sweep(spec_path: Path, timeout_s: float, notes: list[str]) -> list[dict[str, Any]]:
    """Submit the sweep as `scaling sweep submit` does, wait for its jobs, and time every trial."""
    from slurm.cluster import FINAL_STATES, job_states
    from sweeps import commands
    from sweeps.spec import load_spec

    spec = load_spec(spec_path)
    job_ids: list[str] = []
    try:
        sub = _submit(spec_path)
        times, job_ids = sub["times"], sub["jobs"]
        deadline = times["submitted"] + timeout_s
        while True:
            states = job_states(job_ids)
            if all(s in FINAL_STATES for s in states.values()):
                break
            if time.time() > deadline:
                raise TimeoutError(f"sweep {spec.name}: jobs {states} not done after {timeout_s:.0f} s")
            time.sleep(0.5)
    except BaseException:
        _cancel(job_ids)
        try:
            commands.cancel(spec)  # any job the failed submission left
        except Exception:
            pass
        raise
    slurm = _slurm_times(job_ids)
    trials = {r["job_id"]: r for r in commands.status(spec)}
    return [_trial_times(jid, trials.get(jid, {}), slurm.get(jid, {}), times, notes) for jid in job_ids]


def _trial_times(jid: str, trial: dict[str, Any], sl: dict[str, Any], times: dict[str, float],
                 notes: list[str]) -> dict[str, Any]:
    """The clock times of one trial (job `jid`): its study row, its SLURM times, the submission's
    times; from its run directory, job record and logs. A trial that did not complete adds a note."""
    run_dir = Path(trial.get("run_dir") or "")
    record = read_json(run_dir / JOB_RECORD)
    cfg = yaml.safe_load((run_dir / CONFIG).read_text()) if (run_dir / CONFIG).is_file() else {}
    logs = {}
    for key in ("stderr", "stdout"):
        if record.get(key):
            logs.update(_log_times(Path(record[key])))
    result_pkl = Path(record["stdout"]).with_name(f"{jid}_0_result.pkl") if record.get("stdout") else None
    summary = read_summary(run_dir)
    end = (_mtime(result_pkl) if result_pkl else None) or logs.get("job_done") or _mtime(run_dir / SUMMARY)
    if trial.get("state") != "COMPLETE":
        notes.append(f"trial {trial.get('number')} (job {jid}) ended {trial.get('state')} "
                     f"(SLURM {sl.get('state')}, {trial.get(END_REASON) or summary.get(END_REASON)})")
    return {
        "job": jid, "number": trial.get("number"), "method": cfg.get("method"),
        "samples": cfg.get("samples"), "steps": summary.get(STEPS), "state": trial.get("state"),
        **{f"submit_{k}": v for k, v in times.items()}, "t0": times["t0"], "submitted": times["submitted"],
        "slurm_submit": sl.get("SubmitTime"), "slurm_start": sl.get("StartTime"),
        "python_up": logs.get("python_up"), "imported": logs.get("ds_imported"),
        "train_entered": _mtime(run_dir / ENV),
        "model_built": _mtime(run_dir / DS_CONFIG), "engine_built": _tb_created(run_dir),
        **_metrics_times(run_dir), "end": end,
        "train_wall_s": summary.get(WALL_S),
    }


def _row(label: str, t: dict[str, Any], demo_wall: float | None) -> dict[str, Any]:
    def span(a: str, b: str) -> float | None:
        return t[b] - t[a] if t.get(a) is not None and t.get(b) is not None else None

    row: dict[str, Any] = {"trial": f"{label} #{t['number']} ({t['job']})", "method": t["method"],
                           "samples": t["samples"], "submit→job start (s)": span("t0", "slurm_start")}
    for name, a, b in STAGES:
        row[name] = span(a, b)
    if t.get("imported") is None:  # no DeepSpeed log line to split on: imports and init together
        row["imports (s)"] = span("python_up", "train_entered")
    row["submit→first step (s)"] = span("t0", "first_step")
    row["trial wall (s)"] = span("t0", "end")
    overhead = row["submit→first step (s)"]
    row["share"] = overhead / demo_wall if overhead is not None and demo_wall else None
    return row


def _median_row(rows: list[dict[str, Any]], demo_wall: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {"trial": f"median of {len(rows)}", "method": "", "samples": None}
    for col in COLUMNS[3:]:
        values = [r[col] for r in rows if isinstance(r.get(col), (int, float))]
        out[col] = statistics.median(values) if values else None
    out["trial wall (s)"] = demo_wall  # the reference: the median over full-length demo trials
    overhead = out["submit→first step (s)"]
    out["share"] = overhead / demo_wall if overhead is not None and demo_wall else None
    return out


# ----------------------------------------------------------------------------- the benchmark
def run(scale: str) -> Result:
    scale = check_scale(scale)
    from slurm.cluster import partitions, sbatch_answers

    result = Result(name=NAME, title=TITLE, goal=GOAL, columns=list(COLUMNS), rows=[])
    if not sbatch_answers():
        result.status = SKIP_NO_SLURM
        result.notes.append("the project's check (slurm.cluster.sbatch_answers): sbatch on PATH and `sinfo` answering; "
                            "for the local cluster export SLURM_CONF=/tmp/scaling-slurm/slurm.conf")
        return result
    if "local" not in partitions():
        result.status = "skipped: this SLURM cluster has no `local` partition (the one slurm/local_cluster.sh starts)"
        return result
    busy = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True, timeout=30).stdout.split("\n")
    busy = [b for b in busy if b.strip()]
    if busy:
        result.notes.append(f"the cluster already had {len(busy)} job(s) queued or running at the start "
                            f"({', '.join(busy[:4])}{', ...' if len(busy) > 4 else ''}): queue times include them")

    load_before = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="sweep_overhead_"))
    timed: list[tuple[str, dict[str, Any]]] = []
    try:
        for label, samples, extra in SWEEPS[scale]:
            spec_path = _write_spec(root, label, samples, extra, METHODS[scale])
            for t in _run_sweep(spec_path, WAIT_S[scale], result.notes):
                timed.append((label, t))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    reference = [t for _, t in timed if t["samples"] == DEMO_SAMPLES] or [t for _, t in timed]
    walls = [t["end"] - t["t0"] for t in reference if t.get("end") is not None]
    demo_wall = statistics.median(walls) if walls else None
    result.rows = [_row(label, t, demo_wall) for label, t in timed]
    result.rows.append(_median_row(result.rows, demo_wall))

    result.notes += _notes(scale, timed, reference, demo_wall)
    result.notes.append(f"load average (1 min) {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on "
                        f"{os.cpu_count()} CPUs")
    return result


def _median(values: list[Any]) -> float | None:
    values = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(values) if values else None


def _notes(scale: str, timed: list[tuple[str, dict[str, Any]]], reference: list[dict[str, Any]],
           demo_wall: float | None) -> list[str]:
    """The computed notes; what the stages and the share are is in BENCHMARKS.md ("How the benchmarks
    measure")."""
    trials = [t for _, t in timed]
    notes = [
        f"{scale} scale: {len(SWEEPS[scale])} sweep(s) one after the other, each of {'/'.join(METHODS[scale])} trial(s) "
        f"at global batch 32, seed 0; samples {', then '.join(f'{s:,}' for _, s, _ in SWEEPS[scale])}; "
        f"{PARALLELISM} array elements at a time",
        "share = submit→first step over the median wall time of "
        + (f"the {DEMO_SAMPLES:,}-sample demo trials" if scale == "full" else "the smoke trial (its numbers mean nothing)")
        + (f", {demo_wall:.1f} s" if demo_wall else ""),
    ]
    sub = {k: _median([t[f"submit_{b}"] - t[f"submit_{a}"] for t in trials])
           for k, a, b in (("interpreter", "t0", "python_up"), ("imports", "python_up", "imported"),
                           ("load_spec", "imported", "loaded"), ("submit", "loaded", "submitted"))}
    sbatch = _median([t["slurm_submit"] - t["t0"] for t in trials if t.get("slurm_submit")])
    if all(v is not None for v in sub.values()):
        notes.append(f"submit cmd, median: interpreter {sub['interpreter']:.2f} s, imports {sub['imports']:.2f} s, "
                     f"load_spec {sub['load_spec']:.2f} s, trials + run directories + sbatch {sub['submit']:.2f} s"
                     + (f"; SLURM's SubmitTime {sbatch:.0f} s after the start (whole seconds)" if sbatch is not None else ""))
    eval0 = _median([t["eval0_logged"] - t["engine_built"] for t in trials if t.get("eval0_logged") and t.get("engine_built")])
    if eval0 is not None:
        notes.append(f"of data+eval0, {eval0:.1f} s (median) run from the engine to the random-init evaluation's "
                     f"metrics line")
    rates = [(t["last_step"] - 1) / (t["last_train"] - t["first_step_end"]) for t in reference
             if t.get("last_step") and t["last_step"] > 1 and t.get("last_train") and t.get("first_step_end")]
    train = _median([t["last_train"] - t["first_step"] for t in reference if t.get("last_train") and t.get("first_step")])
    tail = _median([t["end"] - t["last_train"] for t in reference if t.get("end") and t.get("last_train")])
    overhead = _median([t["first_step"] - t["t0"] for t in reference if t.get("first_step")])
    if demo_wall and train is not None and tail is not None and overhead is not None:
        notes.append(f"a demo trial's wall time, median: {overhead:.1f} s to the first step, {train:.1f} s of training "
                     f"({_median(rates) or float('nan'):.2f} steps/s after the first step), {tail:.1f} s from the last "
                     f"step to the end of the job")
    return notes
