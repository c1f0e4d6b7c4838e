"""gns.every_steps: the gradient-noise scale B_simple = tr(Sigma) / |G|^2 measured online
(McCandlish et al. 2018, "An Empirical Model of Large-Batch Training", Appendix A).

Two batch sizes give two gradient norms. The small batch is one micro-step on one rank, B_small =
micro_batch samples. The big batch is the optimizer step's reduced gradient, B_big = global_batch.
With E|G_B|^2 = |G|^2 + tr(Sigma) / B, the unbiased estimators are

    |G|^2     ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

where |G_small|^2 is the mean over the step's world x accumulation micro-steps.

Where the small gradient is seen. Under ZeRO-1/2/3, DeepSpeed reduces gradients inside the backward,
bucket by bucket, from hooks on each parameter's gradient accumulator (AccumulateGrad), and frees
them; at ZeRO-0 they accumulate in .grad over the micro-steps. A tensor hook on each parameter runs
before AccumulateGrad at every stage, with that parameter's whole gradient of this micro-step on this
rank, before any reduction or accumulation. The hooks add its squared norm to one device scalar (no
host read). DeepSpeed scales each micro-step's loss by 1 / accumulation, and GradCache's micro-steps
carry their part of the optimizer batch's loss: in both cases `accumulation` x what a micro-step
adds is the small batch's gradient G_small, so that the big batch's gradient is exactly their mean
over ranks and micro-steps (fp16's loss scale is divided out). |G_big| is the global norm the step
measures anyway, before clipping.

Why it is unbiased. The micro-steps' samples are independent draws of B_small samples (the sampler
draws without replacement within an epoch: the finite-population correction 1 - B / N is
negligible for N >> B), so each |G_small|^2 and |G_big|^2 has the expectation above, and the
estimators, linear in them, are unbiased for each measurement. Their ratio is not, which is why
gpt-neox smooths numerator and denominator separately before dividing; we do the same with
bias-corrected EMAs (`gns.ema` per measurement). Losses whose samples share negatives (VATT's NCE,
SimCLR, the sigmoid loss) are not means of independent per-sample terms; there B_simple measures
the noise of the micro-steps' contributions, the quantity a batch-size choice trades against.

Besides the EMA, the tracker keeps the sums of the per-measurement estimates, so a run's
time-averaged B_simple (ratio of means) comes with a delta-method standard error over measurements.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def estimates(small_sq: float, big_sq: float, b_small: int, b_big: int) -> tuple[float, float]:
    """The unbiased |G|^2 and tr(Sigma) of one measurement: the mean squared norm of gradients of
    `b_small` samples and the squared norm of their mean over `b_big` samples."""
    if b_big <= b_small:
        raise ValueError(f"two batch sizes are needed: b_big={b_big} must exceed b_small={b_small}")
    grad_sq = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
    trace = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)
    return grad_sq, trace


def ratio_of_means(n: int, s: float, g: float, ss: float, gg: float, sg: float) -> tuple[float, float]:
    """B = mean(trace) / mean(grad_sq) over n measurements with sums s, g and sums of squares and
    products ss, gg, sg; and its delta-method standard error (nan below 2 measurements)."""
    if n == 0 or g == 0:
        return math.nan, math.nan
    ms, mg = s / n, g / n
    b = ms / mg
    if n < 2:
        return b, math.nan
    var_s = (ss - n * ms * ms) / (n - 1)
    var_g = (gg - n * mg * mg) / (n - 1)
    cov = (sg - n * ms * mg) / (n - 1)
    var_b = (var_s - 2 * b * cov + b * b * var_g) / (n * mg * mg)
    return b, math.sqrt(max(var_b, 0.0))


class GradientNoiseScale:
    """The online B_simple of one run on this rank: `arm()` before a measured step's micro-steps,
    `measure(global_norm)` after them (a collective over ranks). Its state goes in the checkpoint."""

    KEYS = ("n", "s", "g", "ss", "gg", "sg", "ema_grad_sq", "ema_trace", "weight")

    def __init__(self, model: nn.Module, micro_batch: int, global_batch: int, accumulation: int,
                 ema: float, loss_scale=lambda: 1.0):
        self.b_small, self.b_big, self.accumulation = micro_batch, global_batch, accumulation
        self.ema, self.loss_scale = ema, loss_scale
        self.armed, self.scale = False, 1.0
        self.local: torch.Tensor | None = None
        self.last: tuple[float, float] | None = None  # the last step's small and big squared norms
        self.state = dict.fromkeys(self.KEYS, 0.0)
        self.handles = [p.register_hook(self._hook) for p in model.parameters() if p.requires_grad]

    def _hook(self, grad: torch.Tensor) -> None:
        if self.armed:
            sq = torch.linalg.vector_norm(grad.detach(), dtype=torch.float32).square()  # no fp32 copy of bf16
            self.local = sq if self.local is None else self.local + sq.to(self.local.device)

    def arm(self) -> None:
        """Measure the coming optimizer step (fp16's loss scale is the one its backward passes use)."""
        self.armed, self.local, self.scale = True, None, float(self.loss_scale())

    def measure(self, global_norm: torch.Tensor | float | None) -> dict[str, float]:
        """Close the measured step: this step's estimates folded into the EMAs and sums; returns the
        logged values (gns/...), or {} when the step measured nothing finite (an fp16 overflow)."""
        from scaling.distributed import all_reduce_, world_size

        self.armed = False
        local = self.local if self.local is not None else torch.zeros(())
        total = local.detach().double().reshape(1).clone()
        all_reduce_(total)
        # Each micro-step's gradient is `accumulation` x its hooked part: the mean of its square.
        scale = self.accumulation / self.scale
        small_sq = float(total) * scale * scale / (world_size() * self.accumulation)
        big_sq = float(global_norm) ** 2 if global_norm is not None else math.nan
        self.last = (small_sq, big_sq)
        if not (math.isfinite(small_sq) and math.isfinite(big_sq)):
            return {}
        grad_sq, trace = estimates(small_sq, big_sq, self.b_small, self.b_big)
        st = self.state
        st["n"] += 1
        st["s"] += trace
        st["g"] += grad_sq
        st["ss"] += trace * trace
        st["gg"] += grad_sq * grad_sq
        st["sg"] += trace * grad_sq
        st["ema_grad_sq"] = self.ema * st["ema_grad_sq"] + (1 - self.ema) * grad_sq
        st["ema_trace"] = self.ema * st["ema_trace"] + (1 - self.ema) * trace
        st["weight"] = self.ema * st["weight"] + (1 - self.ema)  # bias correction of the zero start
        ema_g, ema_s = st["ema_grad_sq"] / st["weight"], st["ema_trace"] / st["weight"]
        return {"gns/b_simple": ema_s / ema_g if ema_g else math.nan, "gns/grad_sq": ema_g,
                "gns/trace_cov": ema_s, "gns/b_simple_step": trace / grad_sq if grad_sq else math.nan}

    def summary(self) -> dict[str, Any]:
        """summary.json's gns block: the last smoothed B_simple, the time-averaged one (ratio of the
        mean estimates) with its standard error, and the number of measurements."""
        st = self.state
        n = int(st["n"])
        mean, se = ratio_of_means(n, st["s"], st["g"], st["ss"], st["gg"], st["sg"])
        final = st["ema_trace"] / st["ema_grad_sq"] if st["ema_grad_sq"] else math.nan
        finite = {"b_simple": final, "b_simple_mean": mean, "b_simple_mean_se": se}
        return {**{k: v if math.isfinite(v) else None for k, v in finite.items()}, "measurements": n,
                "b_small": self.b_small, "b_big": self.b_big}

    def state_dict(self) -> dict[str, float]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.state.update({k: float(v) for k, v in state.items() if k in self.KEYS})

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
