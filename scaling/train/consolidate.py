"""One-run layer: the consolidated fp32 weights of a run (model.pt), gathered from ZeRO partitions."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.distributed as dist

from scaling.objectives import unwrap


def save_consolidated(engine, path: Path) -> None:
    """The full fp32 state dict on rank 0 (gathering ZeRO-3 partitions), for evaluation and export."""
    import deepspeed

    module = unwrap(engine)
    rank = dist.get_rank() if dist.is_initialized() else 0
    params = list(module.parameters())
    stage3 = engine.zero_optimization_stage() == 3
    ctx = deepspeed.zero.GatheredParameters(params, modifier_rank=None) if stage3 else contextlib.nullcontext()
    with ctx:
        if rank == 0:
            state = {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
            tmp = path.with_name(f".{path.name}.tmp")
            torch.save(state, tmp)
            tmp.replace(path)
    if dist.is_initialized():
        dist.barrier()
