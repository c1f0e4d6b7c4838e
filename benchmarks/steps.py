"""What the benchmarks time: one real training step of a RunConfig (augmentation, model, loss,
backward, AdamW), outside DeepSpeed, on a batch rendered beforehand."""
from __future__ import annotations

from collections.abc import Callable

import torch

from scaling.config import RunConfig
from scaling.data.loader import build_dataset, collate_batch
from scaling.models import build_model
from scaling.objectives import build_objective
from scaling.optim import make_optimizer


def sample_batch(cfg: RunConfig, batch_size: int, split: str = "train") -> dict[str, torch.Tensor]:
    """The first `batch_size` clips of the config's data set, as the loader would collate them."""
    dataset = build_dataset(cfg.data, split)
    fetch = getattr(dataset, "__getitems__", None)
    ids = list(range(min(batch_size, len(dataset))))
    return collate_batch(fetch(ids) if fetch else [dataset[i] for i in ids])


def train_step(cfg: RunConfig, batch: dict[str, torch.Tensor] | None = None,
               device: str = "cpu") -> tuple[Callable[[], float], torch.nn.Module]:
    """A closure running one optimizer step of `cfg` on one micro-batch (the same batch each time),
    with the run's AdamW parameter groups; returns (step, model)."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device).train()
    objective = build_objective(cfg)
    optimizer = make_optimizer(cfg, model)
    batch = batch if batch is not None else sample_batch(cfg, cfg.micro_batch)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda" and cfg.precision != "fp32")
    step_no = [0]

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss, _ = objective.loss(model, batch, step_no[0], generator)
        loss.backward()
        optimizer.step()
        objective.after_optimizer_step(model, step_no[0])
        step_no[0] += 1
        return loss.item()

    return step, model
