"""Many-runs layer: what `scaling sweep plan|submit|status|cancel|tensorboard` do."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from scaling import schema
from scaling.train import rundir as rd
from sweeps.spec import SweepSpec, point_key
from sweeps.storage import storage_url
from sweeps.study import (
    create_trial,
    finish,
    mark_cancelled,
    not_its_fault,
    open_study,
    points_owed,
    reconcile,
    set_user_attr,
    submit_lock,
    trial_rows,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- plan
def plan(spec: SweepSpec) -> list[dict[str, Any]]:
    """One row per grid point: params, FLOPs, memory per GPU and GPU-hours at the spec's MFU, and for
    file-backed data the decode budget (CPU cores per GPU, scaling.data.budget)."""
    from scaling.data.budget import decode_budget
    from scaling.describe import describe

    rows = []
    repeats = spec.trials / len(spec.grid) if spec.is_search else 1
    for point in spec.grid:
        cfg = spec.run_config({**point, **{k: s.corners()[0] for k, s in spec.search.items()}})
        info = describe(cfg, "cuda")
        # Time follows the hardware's FLOPs: with activation checkpointing or GradCache, more than the model's.
        hardware_flops = info["hardware_flops_per_sample"] * info["samples"]
        gpu_hours = hardware_flops / (spec.estimate["peak_tflops"] * 1e12 * spec.estimate["mfu"]) / 3600
        budget = decode_budget(cfg, info["flops_per_sample"], mfu=spec.estimate["mfu"],
                               peak_tflops=spec.estimate["peak_tflops"])
        rows.append({"point": point, "key": point_key(point), "params": sum(info["params"].values()),
                     "flops": info["total_flops"], "memory_per_gpu": info["memory_per_gpu"]["total_bytes"],
                     "gpu_hours": gpu_hours * repeats, "trials": repeats, "decode": budget,
                     "num_workers": cfg.data.num_workers})
    return rows


def decode_notes(spec: SweepSpec, rows: list[dict[str, Any]]) -> list[str]:
    """The decode budget's basis, and warnings where the CPUs cannot keep the GPUs fed: the profile's
    cpus_per_task (less the rank's main thread) or data.num_workers below the cores a point needs."""
    budgets = [r for r in rows if r["decode"] is not None]
    if not budgets:
        return []
    worst = max(budgets, key=lambda r: r["decode"].cores_per_gpu)
    need = worst["decode"].cores_per_gpu
    where = ", ".join(f"{k}={v}" for k, v in worst["point"].items()) or "every point"
    lines = ["decode budget: cores/GPU = windows/s a GPU trains on x CPU s per window; "
             + "; ".join(sorted({r["decode"].basis for r in budgets}))]
    _, resources = _launch(spec, spec.launcher)
    if resources is not None and resources.gpus_per_node > 0 and resources.cpus_per_task - 1 < need:
        lines.append(f"warning: decoding needs {need:.1f} CPU cores per GPU ({where}), but the launcher's profile gives "
                     f"cpus_per_task={resources.cpus_per_task} ({resources.cpus_per_task - 1} for loader workers beside "
                     "each rank's main thread): the GPUs will wait on data. Raise data.repeats, lower data.frames or "
                     "data.resolution, or ask for more CPUs per task")
    short = [r for r in budgets if r["num_workers"] < r["decode"].cores_per_gpu]
    if short:
        r = max(short, key=lambda r: r["decode"].cores_per_gpu - r["num_workers"])
        lines.append(f"warning: data.num_workers={r['num_workers']} decode on at most {r['num_workers']} cores, "
                     f"below the {r['decode'].cores_per_gpu:.1f} a GPU needs ({len(short)} of {len(budgets)} points)")
    return lines


def plan_text(spec: SweepSpec, rows: list[dict[str, Any]]) -> str:
    """The plan as the table `scaling sweep plan` prints."""
    from scaling.describe import human

    lines: list[str] = []
    say = lines.append

    axes = list(dict.fromkeys(k for r in rows for k in r["point"]))
    say(f"sweep {spec.name}: {spec.trials} trial(s), {'TPE over ' + ', '.join(spec.search) if spec.is_search else 'grid'}"
        f"; objective {spec.direction} {spec.metric}; storage {storage_url(spec)}")
    head = "".join(f"{a.split('.')[-1]:>13}" for a in axes)
    decoded = any(r["decode"] is not None for r in rows)
    say(f"{head} {'params':>9} {'FLOPs':>9} {'mem/GPU':>9} {'GPU-h':>9}" + (f" {'cores/GPU':>9}" if decoded else "")
        + ("  trials" if spec.is_search else ""))
    for r in rows:
        cells = "".join(f"{r['point'].get(a, '')!s:>13}" for a in axes)
        cores = "" if not decoded else f" {r['decode'].cores_per_gpu:>9.1f}" if r["decode"] else f" {'-':>9}"
        say(f"{cells} {human(r['params'], digits=1, sep=''):>9} {human(r['flops'], digits=1, sep=''):>9} "
            f"{human(r['memory_per_gpu'], 'B', 1, ''):>9} "
            f"{r['gpu_hours']:>9.3g}{cores}" + (f"  {r['trials']:.3g}" if spec.is_search else ""))
    total = sum(r["gpu_hours"] for r in rows)
    say(f"total: {sum(r['flops'] * r['trials'] for r in rows):.3g} FLOPs, {total:.3g} GPU-hours at "
        f"{spec.estimate['mfu']:.0%} MFU of {spec.estimate['peak_tflops']:g} TFLOP/s "
        f"(search axes at their lower bound)" if spec.is_search else
        f"total: {sum(r['flops'] for r in rows):.3g} FLOPs, {total:.3g} GPU-hours at {spec.estimate['mfu']:.0%} MFU "
        f"of {spec.estimate['peak_tflops']:g} TFLOP/s")
    lines += decode_notes(spec, rows)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- submit
def _launch(spec: SweepSpec, launcher: dict[str, Any]):
    """(profile, resources) of the spec's launcher; a local sweep runs on the 'local' profile."""
    from slurm.profile import launcher_resources

    kind = launcher["type"]
    return launcher_resources(kind, launcher.get("profile") if kind == "slurm" else None, launcher["nproc"],
                              nodes=launcher.get("nodes"), time=launcher.get("time"), prefix="launcher.")


def submit(spec: SweepSpec, launcher: dict[str, Any] | None = None, *, quiet: bool = False):
    """Create and submit the trials still owed (one job array); returns their numbers and jobs.

    What it does is logged at INFO (at DEBUG when `quiet`: a sweep being followed is topped up).
    """
    from slurm.jobs import submit as submit_jobs
    from sweeps.trial_job import TrialJob

    say = log.debug if quiet else log.info
    launcher = {**spec.launcher, **(launcher or {})}
    profile, res = _launch(spec, launcher)
    if launcher["type"] == "slurm":
        from slurm.cluster import check_fits

        check_fits(profile, res)
    with submit_lock(spec):
        study = open_study(spec)
        for line in reconcile(spec, study):
            say(line)
        owed, notes = points_owed(spec, study)
        for note in notes:
            say(f"not resubmitted: {note}")
        if not owed:
            say("nothing to submit: every trial is complete, running or out of retries")
            return [], []
        owed = _local_slots(spec, study, launcher, owed, say)
        if not owed:
            return [], []
        created = [create_trial(spec, study, dict(point)) for point in owed]
        runs = [(spec.run_config(params), spec.run_dir(params)) for _, params in created]
        by_dir = {str(Path(d).resolve()): t for (t, _), (_, d) in zip(created, runs)}
        url = storage_url(spec)
        try:
            jobs = submit_jobs(runs, launcher["type"], profile=profile, res=res, logs=Path(spec.dir) / "logs",
                               parallelism=launcher.get("parallelism"), job_name=spec.name,
                               make_job=lambda d: TrialJob(d, storage=url, study_name=spec.name,
                                                           # no public trial id: Trial(study, id) needs it
                                                           trial_id=by_dir[d]._trial_id, metric=spec.metric,
                                                           pruner=dict(spec.pruner),
                                                           baseline_cache=str(Path(spec.dir).resolve() / "random_init")))
        except BaseException as err:
            for trial, _ in created:
                if isinstance(err, KeyboardInterrupt):  # the user stopped it: not the trial's failure
                    not_its_fault(study, trial)
                finish(study, trial, "FAIL", reason=f"submission failed: {err!r}")
            raise
        for (trial, params), job in zip(created, jobs):
            for name, value in (("job_id", str(job.job_id)), ("launcher", launcher["type"])):
                set_user_attr(study, trial, name, value)
            say(f"trial {trial.number}: job {job.job_id} {params}")
    if launcher["type"] == "debug":  # submitit's debug jobs run here, when their result is asked for
        for (trial, _), job in zip(created, jobs):
            try:
                job.result()
            except Exception as err:
                say(f"trial {trial.number} failed: {str(err).strip().splitlines()[-1] if str(err).strip() else err}")
    return [trial.number for trial, _ in created], jobs


def _local_slots(spec: SweepSpec, study, launcher: dict[str, Any], owed: list, say=log.info) -> list:
    """The local executor has no queue: it starts every job it is given at once. So at most
    `parallelism` trials run at a time, and the rest are submitted as those finish (by `wait`)."""
    if launcher["type"] != "local" or spec.is_search:  # search sweeps are already sized to the free slots
        return owed
    active = sum(1 for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING")
    slots = max(0, launcher.get("parallelism", 1) - active)
    if len(owed) > slots:
        say(f"local executor: {slots} of the {len(owed)} trials owed start now (parallelism "
            f"{launcher.get('parallelism', 1)}); the rest start as they finish (sweep submit --wait)")
    return owed[:slots]


# ----------------------------------------------------------------------------- status, cancel
def status(spec: SweepSpec) -> list[dict[str, Any]]:
    with submit_lock(spec):
        study = open_study(spec)
        reconcile(spec, study)
        return trial_rows(spec, study)


def counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r["state"]] = out.get(r["state"], 0) + 1
    return out


def status_text(spec: SweepSpec, rows: list[dict[str, Any]], as_json: bool) -> str:
    """The status as `scaling sweep status` prints it: a table, or JSON."""
    if as_json:
        return json.dumps({"sweep": spec.name, "counts": counts(rows), "trials": rows}, indent=2, default=str)
    lines: list[str] = []
    say = lines.append
    axes = list(dict.fromkeys(k for r in rows for k in r["params"]))
    say("".join(f"{'trial':>6}") + "".join(f"{a.split('.')[-1]:>13}" for a in axes)
        + f" {'state':>9} {'job':>10} {'step':>7} {spec.metric:>11}")
    for r in rows:
        value = "" if r["value"] is None else f"{r['value']:.4g}"
        params = "".join(f"{_short(r['params'].get(a, '')):>13}" for a in axes)
        say(f"{r['number']:>6}{params} {r['state']:>9} {r['job_id'] or '-'!s:>10} {r['step'] or '-'!s:>7} {value:>11}")
    c = counts(rows)
    owed = max(0, spec.trials - c.get("COMPLETE", 0) - c.get("PRUNED", 0) - c.get("RUNNING", 0))
    say(f"{spec.name}: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(c.items())) + f"; {owed} still to run")
    return "\n".join(lines)


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


PENDING = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED")  # SLURM: queued, not training


def cancel(spec: SweepSpec, grace_s: float = 120.0, poll_s: float = 1.0) -> int:
    """Stop the running trials' jobs and mark their trials cancelled (FAIL, not their fault: the next
    submit reruns them, resuming their checkpoints); returns how many were cancelled.

    A job still queued is cancelled at once. A running one is asked to stop (a cancel request in its
    run directory, which the training loop answers after the step it sees it at: a checkpoint of that
    step, then end_reason "cancelled"), and followed until its job has ended; one still running after
    `grace_s` is cancelled by the scheduler (scancel; SIGINT to the local executor's job). A trial whose
    run completed before the request reached it is settled from its summary: COMPLETE, not cancelled.
    """
    from slurm.jobs import run_states

    with submit_lock(spec):
        study = open_study(spec)
        running = [t for t in study.get_trials(deepcopy=False)
                   if t.state.name == "RUNNING" and t.user_attrs.get("job_id")]
        states = run_states([_run_dir(t) for t in running if _run_dir(t).is_dir()])
        asked, n = [], 0
        for t in running:
            queued = t.user_attrs.get("launcher") == "slurm" and states.get(_run_dir(t)) in PENDING
            if queued or not _run_dir(t).is_dir():  # nothing trains yet: nothing to save
                if t.user_attrs.get("launcher") == "slurm":
                    subprocess.run(["scancel", t.user_attrs["job_id"]], capture_output=True)
                mark_cancelled(study, t)
                log.info(f"trial {t.number}: cancelled job {t.user_attrs['job_id']} "
                         + ("(queued, not started)" if queued else "(no run directory)"))
                n += 1
            else:
                rd.request_cancel(_run_dir(t))
                asked.append(t)
        if asked:
            log.info(f"asked {len(asked)} running job(s) to save their step and stop (waiting up to {grace_s:.0f} s)")
        stopped_after = _wait_stopped(asked, grace_s, poll_s)
        for t in asked:
            n += _settle_cancelled(spec, study, t, stopped_after.get(t.number), grace_s)
        log.info(f"{n} trial(s) cancelled")
        return n


def _run_dir(trial) -> Path:
    return Path(trial.user_attrs.get("run_dir", ""))


def _wait_stopped(trials: list, grace_s: float, poll_s: float) -> dict[int, float]:
    """Follow the trials' jobs until each has ended, for at most `grace_s`: the seconds after which
    each was seen ended, by trial number (the ones still running are missing)."""
    from slurm.cluster import FINAL_STATES
    from slurm.jobs import ended_since_submit, run_states

    waiting, start, stopped = list(trials), time.time(), {}

    def ended(t, state: str) -> bool:  # a SLURM job the controller does not know: ended if its run says so
        return state in FINAL_STATES or (state in ("UNKNOWN", "-") and (
            t.user_attrs.get("launcher") != "slurm" or ended_since_submit(_run_dir(t))))

    while waiting:
        states = run_states([_run_dir(t) for t in waiting])
        stopped.update({t.number: time.time() - start for t in waiting if ended(t, states[_run_dir(t)])})
        waiting = [t for t in waiting if t.number not in stopped]
        if not waiting or time.time() - start >= grace_s:
            break
        time.sleep(poll_s)
    return stopped


def _settle_cancelled(spec: SweepSpec, study, trial, stopped_after: float | None, grace_s: float) -> int:
    """Tell the study how a trial asked to stop ended: 1 when it is cancelled, 0 when its run had
    completed (or been pruned) before the request reached it."""
    from slurm.jobs import ended_since_submit, read_record
    from sweeps.study import _outcome

    run_dir, job = _run_dir(trial), trial.user_attrs["job_id"]
    if stopped_after is None:  # it did not stop by itself: the scheduler stops it (the request stays, should it see it)
        if trial.user_attrs.get("launcher") == "slurm":
            subprocess.run(["scancel", job], capture_output=True)
        elif trial.user_attrs.get("launcher") == "local":
            _interrupt(read_record(run_dir).get("pid"))
        mark_cancelled(study, trial)
        log.info(f"trial {trial.number}: cancelled job {job} (it did not stop within {grace_s:.0f} s)")
        return 1
    rd.clear_cancel_request(run_dir)
    outcome, value, reason = _outcome(spec, run_dir) if ended_since_submit(run_dir) else ("FAIL", None, "")
    if outcome in ("COMPLETE", "PRUNED"):
        finish(study, trial, outcome, value, reason)
        log.info(f"trial {trial.number}: job {job} had ended {outcome} before the cancel reached it")
        return 0
    mark_cancelled(study, trial)
    steps = rd.read_summary(run_dir).get(schema.STEPS) if reason == schema.CANCELLED else None
    log.info(f"trial {trial.number}: cancelled job {job} ("
             + (f"saved step {steps} and stopped" if steps is not None else f"ended: {reason or 'no summary'}")
             + f", {stopped_after:.1f} s after the request)")
    return 1


def _interrupt(pid) -> None:
    """SIGINT to a local executor's job (what submitit's own cancel sends): it stops its tasks."""
    try:
        os.kill(int(pid), signal.SIGINT)
    except (TypeError, ValueError, ProcessLookupError, PermissionError):
        pass


def tensorboard_command(spec: SweepSpec) -> list[str]:
    return ["tensorboard", "--logdir", str(Path(spec.dir) / "trials")]


# ----------------------------------------------------------------------------- waiting
def wait(spec: SweepSpec, launcher: dict[str, Any] | None = None, poll_s: float = 5.0) -> dict[str, int]:
    """Follow the sweep until no trial is running or owed; search sweeps, and any sweep on the local
    executor, are topped up as slots free."""
    start, last = time.time(), None
    while True:
        rows = status(spec)
        c = counts(rows)
        done = c.get("COMPLETE", 0) + c.get("PRUNED", 0)
        running = c.get("RUNNING", 0)
        kind = {**spec.launcher, **(launcher or {})}
        topped_up = spec.is_search or kind["type"] == "local"  # no queue: trials start as slots free
        if topped_up and running < kind.get("parallelism", 1) and done + running < spec.trials:
            numbers, _ = submit(spec, launcher, quiet=True)
            if numbers:  # a freed slot was filled: look again at once
                continue
        current = next((r for r in rows if r["state"] == "RUNNING" and r["step"]), None)
        remaining = max(0, spec.trials - done)
        eta = (time.time() - start) / done * remaining if done else None
        started = sum(1 for r in rows if r["state"] == "RUNNING" and r["step"])
        line = (f"trials: {done}/{spec.trials} done, {started} running, {running - started} queued, "
                f"{c.get('FAIL', 0)} failed" + (f", {c['CANCELLED']} cancelled" if c.get("CANCELLED") else "")
                + (f" | trial {current['number']} step {current['step']} loss {current['loss']:.4g}"
                   if current and isinstance(current.get("loss"), (int, float)) else "")
                + (f" | ETA {eta / 60:.1f} min" if eta is not None and remaining else ""))
        if line != last:
            log.info(line)
            last = line
        if running == 0:
            owed, _ = _owed_now(spec)
            if not owed or not submit(spec, launcher)[0]:  # retries of failed trials
                return c
        time.sleep(poll_s)


def _owed_now(spec: SweepSpec):
    with submit_lock(spec):
        return points_owed(spec, open_study(spec))
