"""Many-runs layer: the Optuna study of a sweep — opening it, reconciling trials with their jobs,
and creating the trials that are still owed.

Every trial is one grid point (plus its sampled search values), one run directory keyed by the
point (so a retried trial resumes the same run from its checkpoints) and one job. Trials are created
under a lock file in the sweep directory, so `submit` run twice, or twice at once, never creates a
point twice. A RUNNING trial whose job has ended without telling the study is settled from its
run's summary, or marked FAIL and retried up to `retries` times.
"""
from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scaling import schema
from sweeps.spec import Search, SweepSpec
from sweeps.storage import open_storage, storage_url, with_retries

ACTIVE = ("RUNNING", "WAITING")


def _grid_sampler(space: dict[str, list], seed: int):
    import optuna

    class EnqueuedGridSampler(optuna.samplers.GridSampler):
        """Optuna's GridSampler over the sweep's axes, whose points are enqueued explicitly (under the
        sweep's lock): it records the grid, and its end-of-grid bookkeeping skips enqueued trials."""

        def after_trial(self, study, trial, state, values):
            if "grid_id" in trial.system_attrs:
                super().after_trial(study, trial, state, values)

    return EnqueuedGridSampler(space, seed=seed)


def make_sampler(spec: SweepSpec):
    import optuna

    if spec.is_search:
        startup = min(10, max(1, spec.trials // 4))
        return optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=startup)
    space: dict[str, list] = {}
    for point in spec.grid:
        for axis, value in point.items():
            space.setdefault(axis, [])
            if value not in space[axis]:
                space[axis].append(value)
    return _grid_sampler(space, spec.seed)


def make_pruner(pruner: dict[str, Any]):
    """The Optuna pruner of a spec's `pruner:` mapping (not stored in the study: every user builds it)."""
    import optuna

    kind = pruner.get("type", "none")
    args = {k: v for k, v in pruner.items() if k != "type"}
    if kind == "median":
        return optuna.pruners.MedianPruner(**args)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(**args)
    return optuna.pruners.NopPruner()


def open_study(spec: SweepSpec):
    """The sweep's study, created on first use."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(storage_url(spec))
    return with_retries(lambda: optuna.create_study(
        study_name=spec.name, storage=storage, load_if_exists=True, direction=spec.direction,
        sampler=make_sampler(spec), pruner=make_pruner(spec.pruner)))


@contextlib.contextmanager
def submit_lock(spec: SweepSpec) -> Iterator[None]:
    """One submitter at a time per sweep (a lock file in the sweep directory)."""
    Path(spec.dir).mkdir(parents=True, exist_ok=True)
    with open(Path(spec.dir) / ".submit.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def axis_distribution(spec: SweepSpec, axis: str):
    """The Optuna distribution of a grid or search axis."""
    import optuna.distributions as d

    if axis in spec.search:
        return spec.search[axis].distribution()
    values: list = []
    for point in spec.grid:
        if axis in point and point[axis] not in values:
            values.append(point[axis])
    return d.CategoricalDistribution(values)


def suggest(trial, spec: SweepSpec, axis: str) -> Any:
    dist = axis_distribution(spec, axis)
    search: Search | None = spec.search.get(axis)
    if search is None or search.kind == "choice":
        return trial.suggest_categorical(axis, list(dist.choices))
    if search.kind in ("int", "logint"):
        return trial.suggest_int(axis, dist.low, dist.high, log=dist.log)
    return trial.suggest_float(axis, dist.low, dist.high, log=dist.log)


def trial_value(trial) -> float | None:
    return trial.value if trial.state.name == "COMPLETE" else None


# ----------------------------------------------------------------------------- reconciliation
def _outcome(spec: SweepSpec, run_dir: Path) -> tuple[str, float | None, str]:
    """How a run ended, from its summary: (COMPLETE|PRUNED|FAIL, objective, reason)."""
    summary = schema.read_summary(run_dir)
    reason = summary.get(schema.END_REASON, "no summary.json")
    if reason == schema.COMPLETED:
        value = objective_value(spec, summary)
        if value is None:
            return "FAIL", None, f"completed without a finite {spec.metric}"
        return "COMPLETE", value, reason
    if reason.startswith(schema.STOPPED) and "pruned" in str(summary.get(schema.STOP, "")):
        return "PRUNED", None, reason
    return "FAIL", None, reason


def objective_value(spec: SweepSpec, summary: dict[str, Any]) -> float | None:
    value = summary.get(schema.FINAL, {}).get(spec.metric)
    return float(value) if schema.finite_number(value) else None


def set_user_attr(study, trial, name: str, value: Any) -> None:
    """Record a user attribute of `trial` in the study: an optuna Trial, or a FrozenTrial read back from it
    (whose own set_user_attr changes only that in-memory copy)."""
    import optuna

    if isinstance(trial, optuna.trial.Trial):
        with_retries(lambda: trial.set_user_attr(name, value))
        return
    # Optuna has no public API to set an attribute of a trial read back as a FrozenTrial (building a
    # Trial for it would run the sampler's before_trial hook again), so this goes through the storage.
    with_retries(lambda: study._storage.set_trial_user_attr(trial._trial_id, name, value))


def finish(study, trial, state: str, value: float | None = None, reason: str = "") -> None:
    """Tell the study how a trial ended; a trial already finished by someone else is left alone (its
    job told the study between our reading it RUNNING and this tell: optuna's skip_if_finished)."""
    import optuna

    try:
        if reason:
            set_user_attr(study, trial, schema.END_REASON, reason)
        if state == "COMPLETE":
            with_retries(lambda: study.tell(trial.number, value, skip_if_finished=True))
        else:
            ended = getattr(optuna.trial.TrialState, state)
            with_retries(lambda: study.tell(trial.number, state=ended, skip_if_finished=True))
    except (RuntimeError, ValueError) as err:
        if "finished" not in str(err).lower():
            raise


def not_its_fault(study, trial) -> None:
    """Mark a trial that ends FAIL through no fault of its run (cancelled, or its submission was
    interrupted): it does not count against the point's retries."""
    set_user_attr(study, trial, "cancelled", True)


def mark_cancelled(study, trial) -> None:
    """Settle a trial that a cancel stopped: FAIL (reason "cancelled"), not its fault, so the next
    submit reruns it. One that has ended already (its job told the study first) is left as it is."""
    try:
        not_its_fault(study, trial)
    except RuntimeError as err:  # optuna's UpdateFinishedTrialError
        if "finished" not in str(err).lower():
            raise
        return
    finish(study, trial, "FAIL", reason=schema.CANCELLED)


def reconcile(spec: SweepSpec, study) -> list[str]:
    """Settle RUNNING trials whose job has ended, and drop WAITING trials left by a crashed submit.

    Returns one line per trial it changed.
    """
    from slurm.cluster import FINAL_STATES
    from slurm.jobs import ended_since_submit, read_record, run_states

    changed = []
    trials = study.get_trials(deepcopy=False)
    for _ in range(sum(1 for t in trials if t.state.name == "WAITING")):
        orphan = with_retries(study.ask)  # enqueued by a submit that died before asking for it
        not_its_fault(study, orphan)
        finish(study, orphan, "FAIL", reason="left waiting by an interrupted submit")
        changed.append(f"trial {orphan.number}: left waiting -> FAIL")
    running = [t for t in trials if t.state.name == "RUNNING"]
    if not running:
        return changed
    dirs = {t.number: Path(t.user_attrs.get("run_dir", "")) for t in running}
    states = run_states([d for d in dirs.values() if d.is_dir()])
    for trial in running:
        run_dir = dirs[trial.number]
        job = trial.user_attrs.get("job_id")
        if job is None:  # created but never submitted (the submit was interrupted)
            not_its_fault(study, trial)
            finish(study, trial, "FAIL", reason="never submitted")
            changed.append(f"trial {trial.number}: never submitted -> FAIL")
            continue
        record = read_record(run_dir) if run_dir.is_dir() else {}
        if record.get("job_id") not in (None, job):
            finish(study, trial, "FAIL", reason=f"superseded by job {record.get('job_id')}")
            changed.append(f"trial {trial.number}: superseded -> FAIL")
            continue
        state = states.get(run_dir, "UNKNOWN")
        if state not in FINAL_STATES and state != "UNKNOWN":
            continue
        outcome, value, reason = _outcome(spec, run_dir)
        if reason == schema.CANCELLED and ended_since_submit(run_dir):  # stopped by a cancel request
            mark_cancelled(study, trial)
            changed.append(f"trial {trial.number}: job {job} {state} -> cancelled")
            continue
        if outcome == "FAIL":
            reason = f"job {job} ended {state}: {reason}"
        finish(study, trial, outcome, value, reason)
        changed.append(f"trial {trial.number}: job {job} {state} -> {outcome}")
    return changed


# ----------------------------------------------------------------------------- owed trials
def points_owed(spec: SweepSpec, study) -> tuple[list[dict[str, Any]], list[str]]:
    """The trial points to submit now, and notes on points given up after too many failures."""
    from sweeps.spec import point_key

    trials = study.get_trials(deepcopy=False)
    by_key: dict[str, list] = {}
    for t in trials:
        by_key.setdefault(t.user_attrs.get("key", ""), []).append(t)

    def status(key: str) -> tuple[bool, int]:
        mine = by_key.get(key, [])
        settled = any(t.state.name in ("COMPLETE", "PRUNED", *ACTIVE) for t in mine)
        fails = sum(1 for t in mine if t.state.name == "FAIL" and not t.user_attrs.get("cancelled"))
        return settled, fails

    owed, notes = [], []
    if not spec.is_search:
        for point in spec.grid:
            settled, fails = status(point_key(point))
            if settled:
                continue
            if fails > spec.retries:
                notes.append(f"{point}: failed {fails} times (retries: {spec.retries}); not resubmitted")
                continue
            owed.append(point)
        return owed, notes

    # Search sweeps: retry failed trials with their own values, then ask TPE for new ones.
    active = sum(1 for t in trials if t.state.name in ACTIVE)
    slots = max(0, spec.launcher.get("parallelism", 1) - active)
    retried: set[str] = set()
    for t in trials:
        key = t.user_attrs.get("key", "")
        if t.state.name != "FAIL" or key in retried:
            continue
        settled, fails = status(key)
        if settled or fails > spec.retries:
            if not settled:
                notes.append(f"{t.params}: failed {fails} times (retries: {spec.retries}); not resubmitted")
            retried.add(key)
            continue
        if len(owed) < slots:
            owed.append(dict(t.params))
            retried.add(key)
    counted = sum(1 for key, ts in by_key.items() if key and (status(key)[0] or key in retried or
                                                              status(key)[1] > spec.retries))
    new = min(slots - len(owed), spec.trials - counted)
    for i in range(max(0, new)):
        point = spec.grid[(counted + i) % len(spec.grid)]
        owed.append({**point, "__sample__": True})
    return owed, notes


def create_trial(spec: SweepSpec, study, point: dict[str, Any]):
    """Enqueue the point's fixed values, ask (sampling any search axes), and record key and run dir."""
    from sweeps.spec import point_key

    sample = point.pop("__sample__", False)
    with_retries(lambda: study.enqueue_trial(point))
    trial = with_retries(study.ask)
    axes = list(dict.fromkeys([*point, *(spec.search if sample or spec.is_search else [])]))
    params = {axis: suggest(trial, spec, axis) for axis in axes}
    key = point_key(params)
    run_dir = spec.run_dir(params)
    for name, value in (("key", key), ("run_dir", str(run_dir.resolve()))):
        set_user_attr(study, trial, name, value)
    return trial, params


def trial_rows(spec: SweepSpec, study) -> list[dict[str, Any]]:
    """One row per trial: number, params, state, job, step, objective, run directory, and when it
    was submitted (started) and settled (finished)."""
    from slurm.jobs import progress

    rows = []
    for t in study.get_trials(deepcopy=False):
        run_dir = Path(t.user_attrs.get("run_dir", ""))
        last = progress(run_dir) if run_dir.is_dir() else {}
        # A trial stopped through no fault of its own (cancel, Ctrl-C) is shown as such, not as failed.
        state = "CANCELLED" if t.state.name == "FAIL" and t.user_attrs.get("cancelled") else t.state.name
        rows.append({"number": t.number, "params": dict(t.params), "state": state,
                     "job_id": t.user_attrs.get("job_id"), "step": last.get("step"),
                     "loss": last.get("train/loss"), "value": trial_value(t),
                     "end_reason": t.user_attrs.get(schema.END_REASON),
                     "run_dir": str(run_dir) if t.user_attrs.get("run_dir") else None,
                     "started": t.datetime_start.isoformat() if t.datetime_start else None,
                     "finished": t.datetime_complete.isoformat() if t.datetime_complete else None})
    return rows
