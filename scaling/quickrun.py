"""One-run layer: a short single-process run in plain PyTorch (AdamW, the shared schedules and
objectives), with k-NN of the random-init and trained backbones. The DeepSpeed loop is `scaling.train`.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from scaling.data.loader import build_dataset, build_loader
from scaling.evaluate import evaluate
from scaling.models import build_model
from scaling.objectives import build_objective
from scaling.optim import Schedules, param_groups


def quick_run(cfg, log: Callable[[str], None] | None = None) -> dict[str, float]:
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    model = build_model(cfg)
    objective = build_objective(cfg)
    train_set = build_dataset(cfg.data, "train")
    before = evaluate(cfg, model, objective)

    optimizer = torch.optim.AdamW(param_groups(model), lr=cfg.peak_lr)
    schedules = Schedules(cfg)
    model.train()
    losses, step, epoch, start = [], 0, 0, time.time()
    loader = build_loader(train_set, cfg.micro_batch, shuffle=True, seed=cfg.seed, num_workers=cfg.data.num_workers)
    while step < cfg.total_steps:
        loader.sampler.set_epoch(epoch)
        for i, batch in enumerate(loader):
            if i % cfg.accumulation == 0:
                schedules.apply(optimizer, step)
            loss, metrics = objective.loss(model, batch, step, generator)
            (loss / cfg.accumulation).backward()
            if (i + 1) % cfg.accumulation:
                continue
            if cfg.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            objective.after_optimizer_step(model, step)
            losses.append(metrics["loss"])
            step += 1
            if log and (step % cfg.log_every == 0 or step == cfg.total_steps):
                log(f"[{cfg.method}] step {step}/{cfg.total_steps} loss {metrics['loss']:.4f}")
            if step >= cfg.total_steps:
                break
        epoch += 1
    after = evaluate(cfg, model, objective)
    k = max(1, len(losses) // 10)
    return {"loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k,
            "knn_top1_random_init": before["knn_top1"], "knn_top1": after["knn_top1"],
            "linear_top1_random_init": before.get("linear_top1"), "linear_top1": after.get("linear_top1"),
            "steps": step, "wall_s": round(time.time() - start, 1)}
