"""One-run layer: AdamW parameter groups and the per-step schedules (lr, weight decay, DINO's
frozen last layer), shared by every training loop.
"""
from __future__ import annotations

import torch
from torch import nn

from scaling.losses import cosine_schedule


def param_groups(model: nn.Module, weight_decay: float = 0.0) -> list[dict]:
    """Trainable parameters in up to four groups: {decayed, not decayed} x {body, DINO last layer}.

    Biases and 1-D parameters (norms) get no weight decay (as DINO and timm). The DINO head's last
    layer has its own groups so it can be frozen through a zero learning rate: under ZeRO, setting
    `.grad = None` does not stop the update of a partitioned parameter.

    Each group starts with its own weight decay (`weight_decay` for the decayed ones, 0 for the
    others), not torch's default of 0.01 on every group: an optimizer step before the schedules'
    first `apply` (DeepSpeed's stage-0 fp16/bf16 wrapper runs one at construction, with zero
    gradients) would otherwise decay norms and biases.
    """
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (name.endswith(".bias") or p.ndim == 1)
        last = "student.head.last_layer" in name
        groups.setdefault((decay, last), []).append(p)
    return [{"params": params, "apply_decay": decay, "last_layer": last,
             "weight_decay": weight_decay if decay else 0.0}
            for (decay, last), params in sorted(groups.items())]


def make_optimizer(cfg, model: nn.Module) -> torch.optim.AdamW:
    """The runs' AdamW over `param_groups`, fused on every device: on the CPU the fused kernel takes
    about a quarter of the per-tensor loop's time (`scaling bench droptoken` shows the step share).
    The schedules set each group's lr and weight decay before every step; each group's weight
    decay starts at its scheduled value of step 0, the lr at peak_lr (benchmarks step this
    optimizer without the schedules)."""
    groups = param_groups(model, weight_decay=Schedules(cfg).weight_decay(0))
    return torch.optim.AdamW(groups, lr=cfg.peak_lr, betas=(0.9, 0.999), eps=cfg.adam_eps, weight_decay=0.0,
                             fused=True)


class Schedules:
    """lr: linear warm-up then cosine to min_lr; weight decay: cosine from start to end."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.total = cfg.total_steps
        self.warmup = int(round(cfg.warmup_fraction * self.total))
        self.freeze_last_steps = 0
        if cfg.method == "dino":
            steps_per_epoch = cfg.data.train_size / cfg.global_batch
            self.freeze_last_steps = int(round(cfg.dino.freeze_last_layer_epochs * steps_per_epoch))

    def lr(self, step: int) -> float:
        # DINO warms up as its np.linspace (the peak on the warm-up's last step); VATT's official
        # warm-up is step / warmup_steps.
        return cosine_schedule(self.cfg.peak_lr, self.cfg.min_lr, step, self.total, self.warmup,
                               linspace=self.cfg.method == "dino")

    def weight_decay(self, step: int) -> float:
        return cosine_schedule(self.cfg.weight_decay, self.cfg.weight_decay_end, step, self.total)

    def apply(self, optimizer, step: int) -> dict[str, float]:
        """Set every group's lr / weight decay for `step` (0-based) and return them for logging."""
        lr, wd = self.lr(step), self.weight_decay(step)
        for group in optimizer.param_groups:
            frozen = group.get("last_layer", False) and step < self.freeze_last_steps
            group["lr"] = 0.0 if frozen else lr
            group["weight_decay"] = wd if group.get("apply_decay", True) else 0.0
        return {"lr": lr, "weight_decay": wd}
