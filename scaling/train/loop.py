"""One-run layer: the one training loop both methods share, on a DeepSpeed engine.

`train` reads top to bottom: set-up (model, engine, data), resume, then per optimizer step: schedules,
micro-batches (forward, backward), the engine step, what runs once per optimizer step, logging, a
cancel request, the deadline, evaluation, checkpoints; at the end the final checkpoint, evaluation
and weights, and summary.json. The run's state on this rank is one `_Run`; each phase is a function of it.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from scaling import draws, logs
from scaling.config import ConfigError, RunConfig
from scaling.data.device import Prefetcher
from scaling.data.loader import build_dataset, build_loader
from scaling.data.windows import mix_seed
from scaling.describe import describe, engine_zero_stage, resolved_precision
from scaling.distributed import all_agree, all_true, barrier, from_rank0, gather_to_all
from scaling.eval.evaluate import evaluate
from scaling.models import build_model
from scaling.objectives import build_objective, caches_negatives, dataset_options
from scaling.optim import Schedules
from scaling.schema import (
    BAD_CLIPS,
    BAD_DATA,
    CANCELLED,
    CHECKPOINTS,
    COMPLETED,
    DATA_SKIPPED,
    DEADLINE,
    DS_CONFIG,
    END_REASON,
    FINAL,
    FLOPS_PER_SAMPLE,
    GNS,
    INTERRUPTED,
    MODEL,
    NEGATIVES_PER_POSITIVE,
    NONFINITE_GRAD,
    NONFINITE_LOSS,
    PARAMS,
    PLANNED_STEPS,
    RANDOM_INIT,
    SAMPLES_SEEN,
    SEGMENTS,
    STEPS,
    STOPPED,
    SUMMARY,
    TOTAL_FLOPS,
    WALL_S,
)
from scaling.train import reshard
from scaling.train import rundir as rd
from scaling.train.bad_clips import BadClips, TooManyBadClips
from scaling.train.checkpoint import Checkpoints, set_rng_state
from scaling.train.clipping import clip_per_parameter, loss_scale
from scaling.train.consolidate import save_consolidated
from scaling.train.engine import build_ds_config, build_engine, device_kind, grad_norm_before_step, joined_process_group
from scaling.train.gns import GradientNoiseScale
from scaling.train.gradcache import cached_micro_steps
from scaling.train.throughput import Throughput

log = logging.getLogger(__name__)


class StopRun(Exception):
    """Raised inside the loop to end a run early with a reason (e.g. a pruned trial)."""


class StepMetrics:
    """One optimizer step's metrics, kept where they were computed (device tensors, or numbers) and
    averaged over its micro-batches; `read()` brings them to the host in one transfer."""

    def __init__(self, accumulation: int):
        self.accumulation = accumulation
        self.values: dict[str, torch.Tensor | float] = {}

    def add(self, metrics: dict[str, torch.Tensor | float]) -> None:
        for k, v in metrics.items():
            v = v.detach().float() / self.accumulation if isinstance(v, torch.Tensor) else v / self.accumulation
            self.values[k] = self.values[k] + v if k in self.values else v

    def read(self) -> dict[str, float]:
        tensors = {k: v for k, v in self.values.items() if isinstance(v, torch.Tensor)}
        out = {k: float(v) for k, v in self.values.items() if not isinstance(v, torch.Tensor)}
        if tensors:
            out.update(zip(tensors, torch.stack([v.reshape(()) for v in tensors.values()]).tolist(), strict=True))
        return out


def _finite(x: torch.Tensor | float | None) -> torch.Tensor | bool:
    """A device flag (no host read) that x is finite; None (nothing measured) counts as finite."""
    if x is None:
        return True
    return torch.isfinite(x).all() if isinstance(x, torch.Tensor) else math.isfinite(x)


def train(cfg: RunConfig, run_dir: str | Path, *, on_eval: Callable[[int, dict], None] | None = None,
          deadline: float | None = None, baseline_cache: Path | None = None) -> dict[str, Any]:
    """Train `cfg` into `run_dir` (resuming it if it holds checkpoints); returns the summary.

    `deadline` (a time.time() value, known to rank 0) ends the run early with end_reason
    "deadline" after a checkpoint of the last step: launchers use it to requeue before a time limit.
    A cancel request in the run directory (`rd.request_cancel`, written by `scaling sweep cancel`)
    ends it the same way after the step rank 0 sees it, with end_reason "cancelled".

    Every rank of the process group calls this; rank 0 alone writes the run directory and logs
    (through `logging`, which `scaling.logs.setup` routes to stdout). `on_eval(step, metrics)` runs
    on rank 0 after each evaluation and may raise StopRun (sweeps use it for pruning).

    The process group is joined here and, if this call made it, ended before it returns
    (`joined_process_group`); a caller's own group is left alive.
    """
    started = time.time()  # cancel requests older than this (and than the job's submission) are stale
    logs.setup()
    with joined_process_group() as (rank, world):
        return _train(cfg, Path(run_dir), rank, world, started, on_eval, deadline, baseline_cache)


def _train(cfg: RunConfig, run_dir: Path, rank: int, world: int, started: float,
           on_eval: Callable[[int, dict], None] | None, deadline: float | None,
           baseline_cache: Path | None) -> dict[str, Any]:
    deadline = from_rank0(deadline)
    ranks = gather_to_all(rd.rank_placement(rank))
    if rank == 0:
        rd.prepare(cfg, run_dir, ranks=ranks)
    barrier()
    done = rd.read_summary(run_dir)
    if done.get(END_REASON) == COMPLETED and done.get(STEPS, 0) >= cfg.total_steps:
        if rank == 0:
            log.info("%s finished earlier; nothing to do", run_dir)
        return done
    run = _set_up(cfg, run_dir, rank, world, deadline, on_eval)
    run.started = started
    try:  # from here on, whatever happens ends in summary.json and a closed logger
        _evaluate_random_init(run, baseline_cache)
        if "rng" in run.client:
            set_rng_state(run.client["rng"], run.generator)  # last thing before the first step: exact resume
        while run.step < cfg.total_steps:
            in_time = _optimizer_step(run)
            _log_step(run)
            _stop_if_asked(run)
            _stop_for_deadline(run, in_time)
            _evaluate_every(run)
            _checkpoint_every(run)
        _finish(run)
    except StopRun as stop:
        run.say(f"run stopped: {stop}")
        if run.end_reason == COMPLETED:
            run.end_reason = STOPPED
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or submitit leaving for a requeue
        run.end_reason = INTERRUPTED
        raise
    except BaseException as err:
        run.end_reason = f"error: {type(err).__name__}: {err}"
        raise
    finally:
        summary = _write_summary(run) if run.is_main else None
    return summary or {}


# ----------------------------------------------------------------------------- the run's state


@dataclass(eq=False)
class _Run:
    """Everything one rank's run holds between set-up and summary."""

    cfg: RunConfig
    run_dir: Path
    rank: int
    deadline: float | None  # rank 0's, on every rank
    on_eval: Callable[[int, dict], None] | None
    generator: torch.Generator  # this rank's stream for DropToken / stochastic depth
    engine: Any
    objective: Any
    schedules: Schedules
    checkpoints: Checkpoints
    start_step: int
    client: dict[str, Any]  # the resumed checkpoint's client state ({} for a fresh run)
    resumed: bool
    logger: rd.MetricsLog | None  # rank 0 only
    info: dict[str, Any]  # `describe(cfg)`: params, FLOPs, tokens, batch
    meter: Throughput
    stream: Prefetcher
    bad: BadClips  # the train split's clips that failed to decode, the same on every rank
    wall_start: float  # time.time() at the start, less the wall time of earlier attempts
    step: int = field(init=False)  # optimizer steps done
    saved: int = field(init=False)  # the last step with a checkpoint (the start step before any save)
    end_reason: str = COMPLETED
    last_metrics: dict[str, Any] = field(default_factory=dict)  # the last logged training metrics
    eval_metrics: dict[str, Any] = field(init=False)  # the last evaluation
    baseline: dict[str, Any] = field(init=False)  # the random-init evaluation
    pending: tuple[StepMetrics, dict] | None = None  # the last step's metrics when that step was not logged
    segments: list[dict[str, int]] = field(default_factory=list)  # each start: its step, world size, ZeRO stage
    span: draws.Span | None = None  # this rank's rows of a micro-step's samples (scaling.draws)
    started: float = 0.0  # time.time() when this process began the run (see rd.cancel_requested)
    cancel: bool = False  # rank 0 found a cancel request after the last step (the same on every rank)
    gns: GradientNoiseScale | None = None  # gns.every_steps > 0: the online noise scale

    def gns_due(self, step: int) -> bool:
        """Whether optimizer step `step` (counted from 1) measures the noise scale."""
        return self.gns is not None and step % self.cfg.gns.every_steps == 0

    def __post_init__(self) -> None:
        self.step = self.saved = self.start_step
        self.eval_metrics = dict(self.client.get("eval", {}))
        self.baseline = dict(self.client.get("random_init", {}))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def say(self, message: str) -> None:
        """A line on the terminal, from rank 0 only."""
        if self.is_main:
            log.info(message)

    def save(self) -> None:
        """Collective: a checkpoint of the current step, with all that exact resume needs (its client
        state's keys are the checkpoint's own, read back by `_set_up` and `__post_init__`)."""
        self.saved = self.step
        self.checkpoints.save(self.engine, self.step,
                              {"objective": self.objective.state_dict(), "wall_s": time.time() - self.wall_start,
                               "eval": self.eval_metrics, "random_init": self.baseline,
                               "bad_clips": sorted(self.bad.known), "segments": self.segments,
                               "gns": self.gns.state_dict() if self.gns else {}}, self.generator,
                              rank_state=self.objective.rank_state_dict(self.engine))


# ----------------------------------------------------------------------------- set-up and resume


def _set_up(cfg: RunConfig, run_dir: Path, rank: int, world: int, deadline: float | None,
            on_eval: Callable[[int, dict], None] | None) -> _Run:
    """Model, engine, objective and schedules; the resumed checkpoint, if any; the data stream."""
    # Identical initial weights on every rank; then per-rank streams for DropToken / stochastic depth.
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    torch.manual_seed(cfg.seed * 1000 + rank + 1)
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + rank + 1)
    objective = build_objective(cfg, world)
    ds_config = build_ds_config(cfg, world)
    if rank == 0:
        rd.write_json(run_dir / DS_CONFIG, ds_config)
    checkpoints = Checkpoints(run_dir / CHECKPOINTS, keep=2)
    latest = checkpoints.latest_sound()
    universal = latest is not None and _needs_universal(cfg, checkpoints.manifest(latest), world)
    engine, _ = build_engine(cfg, model, {**ds_config, "checkpoint": {"load_universal": True}} if universal
                             else ds_config)
    schedules = Schedules(cfg)
    start_step, client, resumed = _resume(checkpoints, latest, universal, engine, objective, run_dir, rank)
    segments = [*client.get("segments", []), {"start_step": start_step, "world_size": world,
                                              "zero_stage": cfg.zero_stage}]
    logger = rd.MetricsLog(run_dir, start_step if resumed else None) if rank == 0 else None
    loader, per_epoch, clips = _train_loader(cfg, rank, world)
    bad = BadClips(loader.dataset, cfg.data.max_bad_fraction, client.get("bad_clips", ()))
    info = describe(cfg, device_kind())
    meter = _throughput(cfg, info, world)
    stream = Prefetcher(_batches(loader, per_epoch, clips, start_step * cfg.accumulation, bad),
                        engine.device)
    gns = None
    if cfg.gns.every_steps:
        gns = GradientNoiseScale(engine.module, cfg.micro_batch, cfg.global_batch, cfg.accumulation, cfg.gns.ema,
                                 loss_scale=lambda: loss_scale(engine))
        gns.load_state_dict(client.get("gns", {}))
    return _Run(cfg=cfg, run_dir=run_dir, rank=rank, deadline=deadline, on_eval=on_eval, generator=generator,
                engine=engine, objective=objective, schedules=schedules, checkpoints=checkpoints,
                start_step=start_step, client=client, resumed=resumed, logger=logger, info=info, meter=meter,
                stream=stream, bad=bad, wall_start=time.time() - float(client.get("wall_s", 0.0)), segments=segments,
                span=draws.span_of(clips, rank, world, cfg.data.repeats), gns=gns)


def _needs_universal(cfg: RunConfig, manifest: dict[str, Any], world: int) -> bool:
    """Whether the checkpoint of `manifest` was written by another number of ranks or at another
    engine ZeRO stage, and so loads through a universal checkpoint (scaling.train.reshard)."""
    stage = engine_zero_stage(cfg.zero_stage, resolved_precision(cfg, device_kind()))
    try:
        return reshard.needs_universal(int(manifest["world_size"]), manifest.get("zero_stage"), world, stage)
    except ValueError as err:
        raise ConfigError("zero_stage", str(err).split(": ", 1)[-1]) from None


def _resume(checkpoints: Checkpoints, step: int | None, universal: bool, engine, objective, run_dir: Path,
            rank: int) -> tuple[int, dict[str, Any], bool]:
    """The checkpoint of `step` (the newest sound one) restored into the engine and the objective:
    (its step, its client state, True), or (0, {}, False) when there is none."""
    if step is None:
        return 0, {}, False
    client = checkpoints.load(engine, step, universal=universal)
    objective.load_state_dict(client.get("objective", {}))
    objective.load_rank_state_dict(engine, client.get("rank", {}))
    if rank == 0:
        saved = checkpoints.manifest(step)["world_size"]
        log.info("resumed from step %d in %s", step, run_dir)
        if universal:
            log.info("the checkpoint was written by %d rank(s) at ZeRO-%s; continued on %d through a universal "
                     "checkpoint", saved, checkpoints.manifest(step).get("zero_stage", "?"),
                     torch.distributed.get_world_size())
    return step, client, True


def _train_loader(cfg: RunConfig, rank: int, world: int):
    """This rank's loader of the train split, its micro-batches per pass over the split and the
    clips each micro-batch decodes (micro_batch / data.repeats: each clip gives `repeats` windows)."""
    train_set = build_dataset(cfg.data, "train", **dataset_options(cfg, evaluation=False))
    clips = cfg.micro_batch // cfg.data.repeats
    loader = build_loader(train_set, clips, shuffle=True, seed=cfg.seed + cfg.data.seed,
                          rank=rank, world_size=world, num_workers=cfg.data.num_workers,
                          persistent_workers=cfg.data.persistent_workers, prefetch_factor=cfg.data.prefetch_factor,
                          pin_memory=cfg.data.pin_memory)
    share = len(train_set) // world if isinstance(train_set, torch.utils.data.IterableDataset) else len(loader.sampler)
    per_epoch = share // clips
    if per_epoch < 1:
        raise ConfigError("micro_batch", f"{cfg.micro_batch} is larger than a rank's share ({share}) of the train split"
                          + (f" x data.repeats={cfg.data.repeats}" if cfg.data.repeats > 1 else ""))
    return loader, per_epoch, clips


def _batches(loader, per_epoch: int, clips: int, first_micro: int, bad: BadClips):
    """The loader's micro-batches (of `clips` clips each) without end, from micro-batch `first_micro`
    of the run on (each batch's failed clips handed to `bad`)."""
    if isinstance(loader.dataset, torch.utils.data.IterableDataset):  # shards: one endless stream that
        loader.dataset.resume_at(first_micro)                           # skips what was consumed itself
        for batch in loader:
            yield bad.take(batch)
        return
    epoch, offset = divmod(first_micro, per_epoch)
    while True:
        loader.sampler.set_epoch(epoch, start=offset * clips)
        for batch in loader:
            yield bad.take(batch)
        epoch, offset = epoch + 1, 0


def _throughput(cfg: RunConfig, info: dict[str, Any], world: int) -> Throughput:
    tokens = sum(v for k, v in info["tokens"].items() if k in ("video", "audio", "text", "student_total"))
    return Throughput(info["flops_per_sample"], cfg.global_batch, device_kind(), tokens, world,
                      resolved_precision(cfg, device_kind()))


# ----------------------------------------------------------------------------- the steps


def _evaluate_random_init(run: _Run, baseline_cache: Path | None) -> None:
    """A fresh run's evaluation of the untrained backbone (from a sweep's shared cache, if every
    rank finds it there), logged at step 0."""
    cfg = run.cfg
    if not cfg.eval.random_init or run.resumed:
        return
    cached = rd.random_init_cache(cfg, baseline_cache) if baseline_cache else None
    if all_true(cached is not None and cached.is_file()):  # every rank sees it, or all evaluate
        run.baseline = json.loads(cached.read_text())
        run.say(f"random-init evaluation from {cached}")
    else:
        run.baseline = evaluate(cfg, run.engine, run.objective)
        if run.is_main and cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            rd.write_json(cached, run.baseline)
    if run.is_main:
        run.logger.log(0, run.baseline, prefix="eval")


def _seed_micro_step(run: _Run, micro_step: int) -> None:
    """The random streams of global micro-step `micro_step`, the same on every rank and at any world
    size: torch's (DropToken, stochastic depth; every device's) and the augmentation generator's.
    Each draw covers the micro-step's whole span, and each rank keeps its samples' rows."""
    torch.manual_seed(mix_seed(run.cfg.seed, micro_step, 0))
    run.generator.manual_seed(mix_seed(run.cfg.seed, micro_step, 1))


def _clip_or_measure(cfg: RunConfig, engine):
    """At the accumulation boundary, before engine.step(): per-parameter clipping (which measures
    the global norm as it goes), or the norm for engines that do not report one."""
    if cfg.clip_mode == "per_param" and cfg.clip_grad > 0:
        return clip_per_parameter(engine, cfg.clip_grad)
    return grad_norm_before_step(engine)


def _optimizer_step(run: _Run) -> bool:
    """One optimizer step: schedules, micro-batches (forward, backward), the engine step, what runs
    once per optimizer step. Returns whether rank 0's deadline still leaves time (the same on every rank)."""
    cfg, engine, step = run.cfg, run.engine, run.step
    run.meter.start()
    scalars = run.schedules.apply(engine.optimizer, step)
    metrics, finite_loss, measured = StepMetrics(cfg.accumulation), True, None
    if run.gns_due(step + 1):
        run.gns.arm()
    if caches_negatives(cfg):
        batches = [next(run.stream) for _ in range(cfg.accumulation)]
        loss, micro, measured = cached_micro_steps(
            engine, run.objective, batches, lambda m: _seed_micro_step(run, step * cfg.accumulation + m),
            run.span, run.generator, lambda: _clip_or_measure(cfg, engine))
        finite_loss = _finite(loss)
        metrics = StepMetrics(1)
        metrics.add(micro)
    for m in range(0 if caches_negatives(cfg) else cfg.accumulation):
        batch = next(run.stream)
        _seed_micro_step(run, step * cfg.accumulation + m)
        with draws.micro_step(run.span):  # every random draw per global sample (scaling.draws)
            loss, micro = run.objective.loss(engine, batch, step, run.generator)
            finite_loss = finite_loss & _finite(loss.detach())  # stays on the device
            engine.backward(loss)
        if engine.is_gradient_accumulation_boundary():
            measured = _clip_or_measure(cfg, engine)
        engine.step()
        metrics.add(micro)
    # Under per_param the norm before clipping is our own (the engine's would be after it).
    grad_norm = None if cfg.clip_mode == "per_param" and measured is not None else engine.get_global_grad_norm()
    grad_norm = measured if grad_norm is None else grad_norm
    # One host read per optimizer step, after it: a non-finite loss or gradient ends the run
    # before anything of this step is saved (fp16 skips overflowing steps by itself).
    # The same reduction carries rank 0's deadline and whether rank 0 finds a cancel request (one
    # stat() of the run directory), so neither costs a collective more.
    finite_grad = True if cfg.precision == "fp16" else _finite(grad_norm)
    in_time = run.deadline is None or step + 1 >= cfg.total_steps or not (run.is_main and time.time() >= run.deadline)
    go_on = not (run.is_main and rd.cancel_requested(run.run_dir, run.started))
    ok_loss, ok_grad, in_time, no_new_bad, go_on = all_agree(finite_loss, finite_grad, in_time,
                                                             not run.bad.pending, go_on)
    run.cancel = not go_on
    if not no_new_bad:  # some rank replaced a clip that failed: all learn which (collective)
        try:
            run.bad.merge()
        except TooManyBadClips as err:
            run.end_reason = BAD_DATA
            raise StopRun(str(err)) from None
    if not (ok_loss and ok_grad):
        run.end_reason = NONFINITE_LOSS if not ok_loss else NONFINITE_GRAD
        what = "loss" if run.end_reason == NONFINITE_LOSS else "gradient norm"
        raise StopRun(f"the {what} is not finite at step {step + 1}")
    scalars.update(run.objective.after_optimizer_step(engine, step))
    if run.gns_due(step + 1):  # a collective: every rank measures
        scalars.update(run.gns.measure(grad_norm))
    if run.bad.tracks:
        scalars["data/skipped"] = run.bad.count
    run.step += 1
    if grad_norm is not None:
        metrics.values["grad_norm"] = grad_norm
    run.pending = (metrics, scalars)
    return in_time


def _log_step(run: _Run) -> None:
    """Rank 0 logs every `log_every` steps, the first step of an attempt, the last step and every
    step that measured the noise scale."""
    cfg, step = run.cfg, run.step
    if run.is_main and (step % cfg.log_every == 0 or step == cfg.total_steps or step == run.start_step + 1
                        or run.gns_due(step)):
        metrics, scalars = run.pending
        run.last_metrics = {**metrics.read(), **scalars, **run.meter.stop()}
        run.logger.log(step, run.last_metrics)
        run.pending = None


def _stop_if_asked(run: _Run) -> None:
    """A cancel request (rank 0 saw it, every rank learnt it in the step's reduction): a checkpoint
    of this step, then every rank leaves the loop; the request is used up."""
    if not run.cancel:
        return
    run.save()
    if run.is_main:
        rd.clear_cancel_request(run.run_dir)
    run.end_reason = CANCELLED
    raise StopRun(f"a cancel was requested: saved step {run.step}")


def _stop_for_deadline(run: _Run, in_time: bool) -> None:
    if not in_time:  # rank 0's clock decided for all
        run.save()
        run.end_reason = DEADLINE
        raise StopRun(f"the time limit is near: saved step {run.step} for the requeued job")


def _evaluate_every(run: _Run) -> None:
    """The evaluation every `eval.every_steps` steps (not at the last: `_finish` evaluates); rank 0's
    `on_eval` may stop the run, and every rank leaves the loop together."""
    cfg, step = run.cfg, run.step
    if not (cfg.eval.every_steps and step % cfg.eval.every_steps == 0 and step < cfg.total_steps):
        return
    run.eval_metrics = evaluate(cfg, run.engine, run.objective)
    stop = None
    if run.is_main:
        run.logger.log(step, run.eval_metrics, prefix="eval")
        if run.on_eval:
            try:
                run.on_eval(step, run.eval_metrics)
            except StopRun as why:
                stop = str(why)
    if not all_true(stop is None):  # rank 0 decided: every rank leaves the loop together
        raise StopRun(stop or f"stopped by rank 0 at step {step}")


def _checkpoint_every(run: _Run) -> None:
    cfg, step = run.cfg, run.step
    if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.total_steps:
        run.save()


# ----------------------------------------------------------------------------- the end


def _finish(run: _Run) -> None:
    """After the last step: its checkpoint (unless saved already), the final evaluation, model.pt."""
    if run.step > run.saved or not run.resumed:
        run.save()
    run.eval_metrics = evaluate(run.cfg, run.engine, run.objective)
    save_consolidated(run.engine, run.run_dir / MODEL)


def _write_summary(run: _Run) -> dict[str, Any]:
    """Rank 0, however the run ended: summary.json, the final evaluation's metrics line and the
    HParams row of a completed run, and the closed logger."""
    cfg, info, step, logger = run.cfg, run.info, run.step, run.logger
    if run.pending is not None and run.end_reason in (COMPLETED, STOPPED, DEADLINE, CANCELLED):
        metrics, scalars = run.pending
        run.last_metrics = {**metrics.read(), **scalars}
    if logger and run.eval_metrics and run.end_reason == COMPLETED:
        logger.log(step, run.eval_metrics, prefix="eval")
    samples = step * cfg.global_batch
    summary = {
        END_REASON: run.end_reason, STEPS: step, PLANNED_STEPS: cfg.total_steps, SAMPLES_SEEN: samples,
        PARAMS: info["params"], FLOPS_PER_SAMPLE: info["flops_per_sample"],
        TOTAL_FLOPS: info["flops_per_sample"] * step * cfg.global_batch,
        WALL_S: round(time.time() - run.wall_start, 2), FINAL: {**run.last_metrics, **run.eval_metrics},
        RANDOM_INIT: run.baseline, NEGATIVES_PER_POSITIVE: info["batch"].get("negatives_per_positive"),
        SEGMENTS: run.segments,
    }
    if run.gns is not None:
        summary[GNS] = run.gns.summary()
    if run.bad.tracks:
        summary.update({DATA_SKIPPED: run.bad.count, BAD_CLIPS: run.bad.describe()})
    rd.write_json(run.run_dir / SUMMARY, summary)
    if logger:
        if run.end_reason == COMPLETED:
            logger.hparams(hparams_of(cfg), {**run.eval_metrics, "loss": run.last_metrics.get("loss", float("nan"))})
        logger.close()
    return summary


def hparams_of(cfg: RunConfig) -> dict[str, Any]:
    return {"method": cfg.method, "size": cfg.size, "drop_rate": cfg.drop_rate, "global_batch": cfg.global_batch,
            "micro_batch": cfg.micro_batch, "lr": cfg.lr, "seed": cfg.seed, "zero_stage": cfg.zero_stage,
            "samples": cfg.total_samples}
