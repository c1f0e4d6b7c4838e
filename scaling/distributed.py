"""One-run layer: every tensor collective of the suite (nothing else calls torch.distributed's
collectives), on the device the backend serves: CUDA under NCCL, the CPU under gloo.

Differentiable gathers and sums for the losses, the control-flow agreements of the training loop
(one flag, rank 0's value), tensor gathers for evaluation, and the device ordinal of a rank.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def local_device_index() -> int:
    """This rank's GPU ordinal: LOCAL_RANK modulo the GPUs it can see. Sites that show each task
    only its own GPU (CUDA_VISIBLE_DEVICES narrowed per task) leave every rank one ordinal, 0."""
    count = torch.cuda.device_count()
    return int(os.environ.get("LOCAL_RANK", "0")) % max(count, 1)


def collective_device() -> torch.device:
    """Where this process group's collectives must find their tensors.

    A backend string names one backend for all devices ("gloo", "nccl") or one per device type
    ("cpu:gloo,cuda:nccl"). A group that serves the CPU takes CPU tensors (no device round trip for
    a flag); a CUDA-only group (NCCL) takes tensors on this rank's GPU.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return torch.device("cpu")
    name = str(dist.get_backend()).lower()
    served = {part.split(":", 1)[0] for part in name.split(",")} if ":" in name else \
        ({"cuda"} if name == "nccl" else {"cpu", "cuda"} if name == "gloo" else {"cuda"})
    if "cpu" in served:
        return torch.device("cpu")
    return torch.device("cuda", local_device_index())


def _on_collective_device(x: torch.Tensor) -> torch.Tensor:
    return x.to(collective_device(), non_blocking=True)


def all_agree(*flags: bool | torch.Tensor) -> tuple[bool, ...]:
    """Whether each flag holds on every rank, in one reduction and one host read: what a training
    loop needs to take the same branches on all ranks. Device tensor flags are combined where they
    live (a Python bool joins them as a device fill, not a copy)."""
    device = next((f.device for f in flags if isinstance(f, torch.Tensor)), torch.device("cpu"))
    t = torch.stack([f.reshape(()).to(torch.int32) if isinstance(f, torch.Tensor)
                     else torch.full((), int(bool(f)), dtype=torch.int32, device=device) for f in flags])
    if is_distributed():
        t = _on_collective_device(t)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return tuple(bool(v) for v in t.tolist())


def all_true(flag: bool | torch.Tensor) -> bool:
    """Whether `flag` holds on every rank (see `all_agree`)."""
    return all_agree(flag)[0]


def from_rank0(value: float | None) -> float | None:
    """Rank 0's value on every rank (None stays None), so all ranks take the same collective path."""
    if not is_distributed():
        return value
    t = torch.tensor([math.nan if value is None else float(value)], dtype=torch.float64,
                     device=collective_device())
    dist.broadcast(t, src=0)
    out = float(t.item())
    return None if math.isnan(out) else out


def gather_to_all(value: Any) -> list[Any]:
    """Every rank's `value` (JSON-serialisable), in rank order, on every rank: its UTF-8 bytes
    padded to the longest rank's length and gathered as one tensor on the collective device (two
    tensor collectives; torch's all_gather_object would pick its own device)."""
    if not is_distributed():
        return [value]
    data = torch.tensor(list(json.dumps(value).encode()), dtype=torch.uint8)
    length = torch.tensor([data.numel()], dtype=torch.int64)
    lengths = all_gather_cat(length)
    padded = torch.zeros(int(lengths.max()), dtype=torch.uint8)
    padded[:data.numel()] = data
    rows = all_gather_cat(padded[None])
    return [json.loads(bytes(row[:int(n)].tolist()).decode()) for row, n in zip(rows, lengths)]


def all_reduce_(x: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place sum (or "min"/"max") of x over ranks; x stays where it is (copied to the collective
    device and back when the backend does not serve x's device)."""
    if not is_distributed():
        return x
    reduce_op = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op]
    device = collective_device()
    if x.device == device:
        dist.all_reduce(x, op=reduce_op)
        return x
    t = x.to(device)
    dist.all_reduce(t, op=reduce_op)
    return x.copy_(t)


def _gather_single(out: torch.Tensor, x: torch.Tensor, group=None) -> None:
    # torch now names all_gather_into_tensor all_gather_single (and deprecates the old name).
    (getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor)(out, x, group=group)


def all_gather_cat(x: torch.Tensor, group=None) -> torch.Tensor:
    """x from every rank (of `group`, default all) concatenated along dim 0 in rank order, without
    gradient. Every rank must pass the same shape (evaluation pads its shards to equal length)."""
    if not is_distributed():
        return x
    device = collective_device()
    local = x.detach().contiguous().to(device)
    n = dist.get_world_size(group=group)
    out = torch.empty((n * local.shape[0], *local.shape[1:]), dtype=local.dtype, device=device)
    _gather_single(out, local, group)
    return out.to(x.device)


def barrier() -> None:
    """Every rank waits for the others (a no-op without a process group). A CUDA-only backend
    (NCCL) is told this rank's GPU: without it, NCCL guesses the device and warns, wherever the
    process group was made without a `device_id` (DeepSpeed leaves it out on one rank)."""
    if dist.is_available() and dist.is_initialized():
        device = collective_device()
        if device.type == "cuda":
            dist.barrier(device_ids=[device.index])
        else:
            dist.barrier()


class _GatherWithLocalGrad(torch.autograd.Function):
    """All-gather along dim 0; the backward sums the gradient over ranks and keeps the local slice.

    Every rank computes the same global loss from the gathered tensor, so the gradient reaching a
    rank's own rows is the sum of what every rank's copy of the loss sends them. With the engine
    averaging parameter gradients over ranks, the result is exactly the gradient of the global loss.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.n = rank(), x.shape[0]
        return all_gather_cat(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = all_reduce_(grad.contiguous().clone())
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x from every rank (rank order), with gradient to the local part."""
    if not is_distributed():
        return x
    return _GatherWithLocalGrad.apply(x)


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return all_reduce_(x.contiguous().clone())

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return all_reduce_(grad.contiguous().clone())


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


def union_of_sets(items: set[int]) -> set[int]:
    """The union of every rank's `items` (small sets of ints), on every rank."""
    if not is_distributed():
        return set(items)
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, sorted(items))
    return set().union(*map(set, gathered))
