"""One-run layer: resume a run on another number of ranks, or another ZeRO stage (1-3).

A checkpoint's manifest records the world size and the engine's ZeRO stage it was written with. A
run resumed with others goes through DeepSpeed's universal checkpoint: rank 0 converts the
checkpoint (`ds_to_universal`) into checkpoints/universal/, every rank's engine loads it
(`checkpoint.load_universal`), and the conversion is removed once every rank has loaded it.

A universal checkpoint holds what the optimizer holds: each trainable parameter's fp32 master value
and its Adam moments. What else a run carries is restored here from the original checkpoint:
buffers (the synchronised BatchNorm statistics of VATT's heads), frozen parameters (the DINO teacher,
which the optimizer never sees) and each rank's own objective state (a 16-bit DINO teacher's fp32
shadow, re-cut for the new ranks' ZeRO-3 partitions). The centre and the schedules are client state
and carry over as they are. The random streams need no carrying: every draw is keyed by the global
sample and micro-step (scaling.draws), so the run continues the same computation on any world size.

Stage 0 in fp32 keeps the whole optimizer state in rank 0's model file, which loads at any world size
as it is; a change between stage 0 and a ZeRO stage is refused (`scaling.train.rundir.check_resume`).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

UNIVERSAL = "universal"  # checkpoints/universal/<tag>: a conversion, while ranks load it

log = logging.getLogger(__name__)


def needs_universal(saved_world: int, saved_stage: int | None, world: int, stage: int) -> bool:
    """Whether a checkpoint written by `saved_world` ranks at engine stage `saved_stage` (None: not
    recorded, i.e. the run's own) must be converted to load on `world` ranks at `stage`."""
    if saved_stage is None:
        saved_stage = stage
    if saved_world == world and saved_stage == stage:
        return False
    if saved_stage != stage and 0 in (saved_stage, stage):
        raise ValueError(f"zero_stage: a checkpoint of engine stage {saved_stage} cannot load at stage {stage}")
    return stage != 0  # fp32 stage 0: rank 0's model file holds everything, for any world size


def convert(root: Path, tag: str) -> Path:
    """Rank 0: root/universal/<tag> converted from root/<tag> (the converter's own printing kept
    off the terminal, and logged at debug level); returns root/universal, the folder to load from."""
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    out = Path(root) / UNIVERSAL
    shutil.rmtree(out, ignore_errors=True)
    args = argparse.Namespace(input_folder=str(Path(root) / tag), output_folder=str(out / tag),
                              num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False,
                              strict=True, inject_missing_state=True)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        ds_to_universal(args)
    log.debug("ds_to_universal: %s", printed.getvalue())
    return out


def restore_outside_optimizer(engine, folder: Path) -> None:
    """Every rank: the module's buffers and frozen parameters from the original checkpoint `folder`
    (a universal checkpoint carries only the optimizer's parameters)."""
    import deepspeed
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    whole = folder / "mp_rank_00_model_states.pt"  # ZeRO 0-2: the whole module, frozen parts included
    if whole.is_file():
        full = torch.load(whole, map_location="cpu", weights_only=False)["module"]
    else:  # ZeRO-3: each rank's partitions, joined
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            full = get_fp32_state_dict_from_zero_checkpoint(str(folder.parent), tag=folder.name, lazy_mode=True)
    module = engine.module
    missing = []
    with torch.no_grad():
        for name, buf in module.named_buffers():
            if name in full:
                buf.copy_(full[name].contiguous())
        frozen = [(n, p) for n, p in module.named_parameters() if not p.requires_grad]
        missing += [n for n, _ in frozen if n not in full]
        frozen = [(n, p) for n, p in frozen if n in full]
        partitioned = [p for _, p in frozen if hasattr(p, "ds_id")]
        with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0, enabled=bool(partitioned)):
            for name, p in frozen:
                p.data.copy_(full[name].contiguous().view(p.shape))
    if missing:
        raise RuntimeError(f"{folder}: no saved value for the frozen parameters {missing[:5]}")


def rank_state(folder: Path, saved_world: int, engine) -> dict[str, Any]:
    """This rank's objective state (`state_rank{r}.pt`) re-cut for the new world from the
    `saved_world` ranks' files: a DINO teacher's fp32 shadow, whole per parameter at stages 0-2, or
    each rank's slice of the flat parameter at ZeRO-3 (DeepSpeed pads each parameter to a multiple
    of the world size and gives rank r the r-th equal part)."""
    files = [folder / f"state_rank{r}.pt" for r in range(saved_world)]
    if not files[0].is_file():
        return {}
    saved = [torch.load(f, weights_only=False) for f in files]
    if set(saved[0]) - {"teacher_fp32"}:
        raise ValueError(f"{folder}: per-rank state {sorted(saved[0])} cannot carry over to another world size")
    if "teacher_fp32" not in saved[0]:
        return {}
    teacher = list(engine.module.teacher.parameters())
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    out = {}
    for i in saved[0]["teacher_fp32"]:
        param = teacher[int(i)]
        numel = getattr(param, "ds_numel", param.numel())
        parts = [s["teacher_fp32"][i].flatten() for s in saved]
        flat = parts[0] if parts[0].numel() == numel else torch.cat(parts)[:numel]
        if hasattr(param, "ds_tensor") and not getattr(param, "ds_persist", False):
            size = param.ds_tensor.numel()
            padded = torch.nn.functional.pad(flat, (0, size * world - numel))
            out[i] = padded[rank * size:(rank + 1) * size].clone()
        else:
            out[i] = flat.view(param.shape).clone()
    return {"teacher_fp32": out}
