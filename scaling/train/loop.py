"""One-run layer: the one training loop both methods share, on a DeepSpeed engine.

Read top to bottom: set-up, resume, then per optimizer step: schedules, micro-batches (forward,
backward), the engine step, what runs once per optimizer step, logging, checkpoints, evaluation.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from scaling.config import ConfigError, RunConfig
from scaling.data.device import Prefetcher
from scaling.data.loader import build_dataset, build_loader
from scaling.describe import describe, resolved_precision
from scaling.distributed import all_agree, all_true, barrier, from_rank0
from scaling.models import build_model
from scaling.objectives import build_objective
from scaling.optim import Schedules
from scaling.train import rundir as rd
from scaling.train.checkpoint import Checkpoints, set_rng_state
from scaling.train.engine import build_ds_config, build_engine, device_kind, grad_norm_before_step, init_distributed
from scaling.evaluate import evaluate
from scaling.train.consolidate import save_consolidated
from scaling.train.throughput import Throughput


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
            out.update(zip(tensors, torch.stack([v.reshape(()) for v in tensors.values()]).tolist()))
        return out


def _finite(x: torch.Tensor | float | None) -> torch.Tensor | bool:
    """A device flag (no host read) that x is finite; None (nothing measured) counts as finite."""
    if x is None:
        return True
    return torch.isfinite(x).all() if isinstance(x, torch.Tensor) else math.isfinite(x)


def train(cfg: RunConfig, run_dir: str | Path, *, on_eval: Callable[[int, dict], None] | None = None,
          deadline: float | None = None, log: Callable[[str], None] = print,
          baseline_cache: Path | None = None) -> dict[str, Any]:
    """Train `cfg` into `run_dir` (resuming it if it holds checkpoints); returns the summary.

    `deadline` (a time.time() value, known to rank 0) ends the run early with end_reason
    "deadline" after a checkpoint of the last step: launchers use it to requeue before a time limit.

    Every rank of the process group calls this. `on_eval(step, metrics)` runs on rank 0 after each
    evaluation and may raise StopRun (sweeps use it for pruning).
    """
    run_dir = Path(run_dir)
    rank, world = init_distributed()
    is_main = rank == 0
    deadline = from_rank0(deadline)
    say = log if is_main else (lambda _msg: None)
    if is_main:
        rd.prepare(cfg, run_dir)
    barrier()
    done = rd.read_summary(run_dir)
    if done.get("end_reason") == "completed" and done.get("steps", 0) >= cfg.total_steps:
        say(f"{run_dir} finished earlier; nothing to do")
        return done

    # Identical initial weights on every rank; then per-rank streams for DropToken / stochastic depth.
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    torch.manual_seed(cfg.seed * 1000 + rank + 1)
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + rank + 1)
    objective = build_objective(cfg, world)
    ds_config = build_ds_config(cfg, world)
    if is_main:
        rd.write_json(run_dir / rd.DS_CONFIG, ds_config)
    engine, optimizer = build_engine(cfg, model, ds_config)
    schedules = Schedules(cfg)
    checkpoints = Checkpoints(run_dir / rd.CHECKPOINTS, keep=2, log=say)

    start_step, client = 0, {}
    resumed = checkpoints.load_latest(engine)
    if resumed is not None:
        start_step, client = resumed
        objective.load_state_dict(client.get("objective", {}))
        objective.load_rank_state_dict(engine, client.get("rank", {}))
        say(f"resumed from step {start_step} in {run_dir}")
    logger = rd.MetricsLog(run_dir, start_step if resumed else None) if is_main else None

    train_set = build_dataset(cfg.data, "train")
    loader = build_loader(train_set, cfg.micro_batch, shuffle=True, seed=cfg.seed + cfg.data.seed,
                          rank=rank, world_size=world, num_workers=cfg.data.num_workers)
    per_epoch = len(loader.sampler) // cfg.micro_batch
    if per_epoch < 1:
        raise ConfigError("micro_batch", f"{cfg.micro_batch} is larger than a rank's share "
                                         f"({len(loader.sampler)}) of the train split")

    def batches(first_micro: int):
        epoch, offset = divmod(first_micro, per_epoch)
        while True:
            loader.sampler.set_epoch(epoch, start=offset * cfg.micro_batch)
            yield from loader
            epoch, offset = epoch + 1, 0

    info = describe(cfg, device_kind())
    tokens = sum(v for k, v in info["tokens"].items() if k in ("video", "audio", "text", "student_total"))
    meter = Throughput(info["flops_per_sample"], cfg.global_batch, device_kind(), tokens, world,
                       resolved_precision(cfg, device_kind()))
    stream = Prefetcher(batches(start_step * cfg.accumulation), engine.device)
    wall_start = time.time() - float(client.get("wall_s", 0.0))
    end_reason, last_metrics, eval_metrics = "completed", {}, dict(client.get("eval", {}))
    pending = None  # the last step's metrics when that step was not logged (read for the summary)

    saved = [start_step]

    def save(step_done: int) -> None:
        saved.append(step_done)
        checkpoints.save(engine, step_done, {"objective": objective.state_dict(), "wall_s": time.time() - wall_start,
                                             "eval": eval_metrics, "random_init": baseline}, generator,
                         rank_state=objective.rank_state_dict(engine))

    baseline = dict(client.get("random_init", {}))
    step = start_step
    try:  # from here on, whatever happens ends in summary.json and a closed logger
        if cfg.eval.random_init and resumed is None:
            cached = rd.random_init_cache(cfg, baseline_cache) if baseline_cache else None
            if all_true(cached is not None and cached.is_file()):  # every rank sees it, or all evaluate
                baseline = json.loads(cached.read_text())
                say(f"random-init evaluation from {cached}")
            else:
                baseline = evaluate(cfg, engine, objective)
                if is_main and cached is not None:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    rd.write_json(cached, baseline)
            if is_main:
                logger.log(0, baseline, prefix="eval")
        if "rng" in client:
            set_rng_state(client["rng"], generator)  # last thing before the first step: exact resume
        while step < cfg.total_steps:
            meter.start()
            scalars = schedules.apply(engine.optimizer, step)
            metrics, finite_loss, measured = StepMetrics(cfg.accumulation), True, None
            for _ in range(cfg.accumulation):
                loss, micro = objective.loss(engine, next(stream), step, generator)
                finite_loss = finite_loss & _finite(loss.detach())  # stays on the device
                engine.backward(loss)
                if engine.is_gradient_accumulation_boundary():
                    measured = grad_norm_before_step(engine)
                engine.step()
                metrics.add(micro)
            grad_norm = engine.get_global_grad_norm()
            grad_norm = measured if grad_norm is None else grad_norm
            # One host read per optimizer step, after it: a non-finite loss or gradient ends the run
            # before anything of this step is saved (fp16 skips overflowing steps by itself).
            # The same reduction carries rank 0's deadline, so a run under a time limit pays nothing more.
            finite_grad = True if cfg.precision == "fp16" else _finite(grad_norm)
            in_time = deadline is None or step + 1 >= cfg.total_steps or not (is_main and time.time() >= deadline)
            ok_loss, ok_grad, in_time = all_agree(finite_loss, finite_grad, in_time)
            if not (ok_loss and ok_grad):
                end_reason = "nonfinite_loss" if not ok_loss else "nonfinite_grad"
                what = "loss" if end_reason == "nonfinite_loss" else "gradient norm"
                raise StopRun(f"the {what} is not finite at step {step + 1}")
            scalars.update(objective.after_optimizer_step(engine, step))
            step += 1
            if grad_norm is not None:
                metrics.values["grad_norm"] = grad_norm
            pending = (metrics, scalars)
            if is_main and (step % cfg.log_every == 0 or step == cfg.total_steps or step == start_step + 1):
                last_metrics = {**metrics.read(), **scalars, **meter.stop()}
                logger.log(step, last_metrics)
                pending = None
            if not in_time:  # rank 0's clock decided for all
                save(step)
                end_reason = "deadline"
                raise StopRun(f"the time limit is near: saved step {step} for the requeued job")
            if cfg.eval.every_steps and step % cfg.eval.every_steps == 0 and step < cfg.total_steps:
                eval_metrics = evaluate(cfg, engine, objective)
                stop = None
                if is_main:
                    logger.log(step, eval_metrics, prefix="eval")
                    if on_eval:
                        try:
                            on_eval(step, eval_metrics)
                        except StopRun as why:
                            stop = str(why)
                if not all_true(stop is None):  # rank 0 decided: every rank leaves the loop together
                    raise StopRun(stop or f"stopped by rank 0 at step {step}")
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.total_steps:
                save(step)
        if step > saved[-1] or resumed is None:
            save(step)
        eval_metrics = evaluate(cfg, engine, objective)
        save_consolidated(engine, run_dir / "model.pt")
    except StopRun as stop:
        say(f"run stopped: {stop}")
        if end_reason == "completed":
            end_reason = "stopped"
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or submitit leaving for a requeue
        end_reason = "interrupted"
        raise
    except BaseException as err:
        end_reason = f"error: {type(err).__name__}: {err}"
        raise
    finally:
        summary = None
        if is_main and pending is not None and end_reason in ("completed", "stopped", "deadline"):
            last_metrics = {**pending[0].read(), **pending[1]}
        if is_main:
            if logger and eval_metrics and end_reason == "completed":
                logger.log(step, eval_metrics, prefix="eval")
            summary = {
                "end_reason": end_reason, "steps": step, "planned_steps": cfg.total_steps,
                "samples_seen": step * cfg.global_batch, "params": info["params"],
                "flops_per_sample": info["flops_per_sample"], "total_flops": info["flops_per_sample"] * step * cfg.global_batch,
                "wall_s": round(time.time() - wall_start, 2), "final": {**last_metrics, **eval_metrics},
                "random_init": baseline,
                "negatives_per_positive": info["batch"].get("negatives_per_positive"),
            }
            rd.write_json(run_dir / rd.SUMMARY, summary)
            if logger:
                if end_reason == "completed":
                    logger.hparams(hparams_of(cfg), {**eval_metrics, "loss": last_metrics.get("loss", float("nan"))})
                logger.close()
    return summary or {}


def hparams_of(cfg: RunConfig) -> dict[str, Any]:
    return {"method": cfg.method, "size": cfg.size, "drop_rate": cfg.drop_rate, "global_batch": cfg.global_batch,
            "micro_batch": cfg.micro_batch, "lr": cfg.lr, "seed": cfg.seed, "zero_stage": cfg.zero_stage,
            "samples": cfg.total_samples}
