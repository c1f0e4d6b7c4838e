"""One-run layer: the consolidated fp32 weights of a run (model.pt), gathered from ZeRO partitions.

Trainable parameters come from the optimizer's fp32 master weights, not from the module: under
bf16/fp16 the module holds their 16-bit rounding. The rest (buffers, frozen parameters) are the
module's values as float, except a 16-bit DINO teacher, whose exact values are its fp32 shadow.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from scaling.distributed import all_gather_cat, barrier
from scaling.distributed import rank as rank_of
from scaling.objectives import unwrap


def fp32_master_params(engine) -> dict[int, torch.Tensor]:
    """id(parameter) -> its full fp32 master weight, for every trainable parameter that has one.

    Collective: every rank calls it, in the same order of parameters. ZeRO 1-3 and DeepSpeed's
    BF16_Optimizer keep the master weights partitioned (`safe_get_full_fp32_param` gathers them);
    DeepSpeed's stage-0 16-bit wrappers keep a full fp32 copy per parameter (`fp32_groups`, or the
    flat `fp32_groups_flat` of the fused one). fp32 at stage 0 has no copy: the module's parameters
    are the master weights, so they are absent here.
    """
    from deepspeed.utils import safe_get_full_fp32_param

    module = unwrap(engine)
    optimizer = getattr(engine, "optimizer", None)
    copies: dict[int, torch.Tensor] = {}
    fp16_groups = getattr(optimizer, "fp16_groups", None)
    if fp16_groups is not None and hasattr(optimizer, "fp32_groups"):  # FP16_UnfusedOptimizer
        for lp_group, hp_group in zip(fp16_groups, optimizer.fp32_groups, strict=True):
            copies.update((id(lp), hp) for lp, hp in zip(lp_group, hp_group, strict=True))
    elif fp16_groups is not None and hasattr(optimizer, "fp32_groups_flat"):  # FP16_Optimizer (fused)
        from torch._utils import _unflatten_dense_tensors

        for lp_group, flat in zip(fp16_groups, optimizer.fp32_groups_flat, strict=True):
            hp_group = _unflatten_dense_tensors(flat, lp_group)
            copies.update((id(lp), hp) for lp, hp in zip(lp_group, hp_group, strict=True))
    masters = {}
    for param in module.parameters():
        if not param.requires_grad:
            continue
        hp = copies.get(id(param))
        if hp is None and (hasattr(param, "ds_id") or hasattr(param, "_hp_mapping")):
            hp = safe_get_full_fp32_param(param)  # all ranks: an all-reduce / all-gather
        if hp is not None:
            masters[id(param)] = hp.detach().float()
    return masters


def _gather_partition(param: nn.Parameter, partition: torch.Tensor) -> torch.Tensor:
    """The full tensor of a ZeRO-3 parameter's partition-shaped companion (e.g. the teacher's
    fp32 shadow, laid out as `param.ds_tensor`). Collective over the parameter's process group."""
    gathered = all_gather_cat(partition.reshape(1, -1), group=getattr(param, "ds_process_group", None))
    return gathered.flatten()[:param.ds_numel].view(param.ds_shape)


def _teacher_shadows(module: nn.Module) -> dict[int, torch.Tensor]:
    """id(teacher parameter) -> its full fp32 shadow (a 16-bit DINO teacher); collective at ZeRO-3.

    Every rank holds the same shadow indices (each updates its own partition of every parameter)."""
    shadows = getattr(module, "teacher_fp32_shadows", None)
    out = {}
    for param, shadow in (shadows() if shadows else []):
        partitioned = hasattr(param, "ds_id") and not getattr(param, "ds_persist", False)  # persistent: whole
        full = _gather_partition(param, shadow) if partitioned else shadow
        out[id(param)] = full.detach().float()
    return out


def consolidated_state_dict(engine) -> dict[str, torch.Tensor] | None:
    """The full fp32 state dict of the engine's module on rank 0 (on the CPU); None elsewhere.

    Collective: every rank calls it (the gathers of ZeRO partitions)."""
    import deepspeed

    module = unwrap(engine)
    rank = rank_of()
    exact = {**_teacher_shadows(module), **fp32_master_params(engine)}
    # What the module itself must provide (buffers aside): the same list on every rank, as
    # ZeRO-3 gathers it (a no-op below stage 3).
    rest = [p for p in module.parameters() if id(p) not in exact]
    if rank != 0:
        exact.clear()  # only rank 0 writes: drop the full copies at once
    with deepspeed.zero.GatheredParameters(rest, modifier_rank=None):
        if rank != 0:
            return None
        params = dict(module.named_parameters(remove_duplicate=False))
        state = {}
        for key, value in module.state_dict().items():
            hp = exact.get(id(params[key])) if key in params else None
            state[key] = (value if hp is None else hp).detach().float().cpu().clone()
        return state


def save_consolidated(engine, path: Path) -> None:
    """model.pt: the full fp32 state dict written by rank 0 (every rank takes part in the gathers)."""
    state = consolidated_state_dict(engine)
    if state is not None:
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(state, tmp)
        tmp.replace(path)
    barrier()
