"""One-run layer: the few collective operations the models and losses need, differentiable,
and working on any backend (gloo on CPU, NCCL on GPU) or with no process group at all.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _GatherWithLocalGrad(torch.autograd.Function):
    """All-gather along dim 0; the backward sums the gradient over ranks and keeps the local slice.

    Every rank computes the same global loss from the gathered tensor, so the gradient reaching a
    rank's own rows is the sum of what every rank's copy of the loss sends them. With the engine
    averaging parameter gradients over ranks, the result is exactly the gradient of the global loss.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.n = rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x from every rank (rank order), with gradient to the local part."""
    if not is_distributed():
        return x
    return _GatherWithLocalGrad.apply(x)


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Differentiable sum over ranks (identity without a process group)."""
    return _AllReduceSum.apply(x) if is_distributed() else x


class SyncBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm over (B, C) whose batch statistics span every rank.

    torch's SyncBatchNorm runs on GPUs only; this one works on gloo too, so VATT's FAC heads see the
    global batch on any device. Without a process group it is a plain BatchNorm1d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in fp32 whatever the engine's precision (a bf16 engine casts the weights, and
        # a bf16 variance of a whole batch loses most of its digits); the output in the input's dtype.
        dtype, x = x.dtype, x.float()
        for name in ("running_mean", "running_var"):
            buf = getattr(self, name)
            if buf is not None and buf.dtype != torch.float32:
                setattr(self, name, buf.float())
        weight, bias = (self.weight.float(), self.bias.float()) if self.affine else (None, None)
        if not (self.training and is_distributed()):
            if self.training and self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
            return nn.functional.batch_norm(x, self.running_mean, self.running_var, weight, bias,
                                            self.training or self.running_mean is None, self.momentum,
                                            self.eps).to(dtype)
        stats = torch.cat([x.sum(0), (x * x).sum(0), x.new_full((1,), x.shape[0])])
        stats = all_reduce_sum(stats)
        c = x.shape[1]
        count = stats[-1]
        mean = stats[:c] / count
        var = (stats[c:2 * c] / count - mean * mean).clamp_min(0)
        with torch.no_grad():
            unbiased = var * count / (count - 1).clamp_min(1)
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean.detach())
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * unbiased.detach())
            self.num_batches_tracked.add_(1)
        out = (x - mean) / torch.sqrt(var + self.eps)
        if self.affine:
            out = out * weight + bias
        return out.to(dtype)
