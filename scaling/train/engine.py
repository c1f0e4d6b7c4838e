"""One-run layer: the DeepSpeed side of a run: process-group set-up, the resolved DeepSpeed config
(templates in ds_configs/ plus the batch fields from the RunConfig) and the engine.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from scaling.describe import engine_zero_stage, fp32_grad_accumulation, resolved_precision
from scaling.distributed import local_device_index
from scaling.optim import make_optimizer

# DeepSpeed calls torch.distributed APIs that torch marks deprecated; that is not the user's concern.
warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")

DS_CONFIGS = Path(os.environ.get("SCALING_DS_CONFIGS", Path(__file__).resolve().parents[2] / "ds_configs"))


def device_kind() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_cpu_comm_op() -> None:
    """DeepSpeed's shared-memory collective op for CPU ranks, JIT-compiled on its first use (about
    70 s) and cached in ~/.cache/torch_extensions. A launcher builds it here, before any job starts:
    a SLURM attempt that compiled it would spend its minutes on the build, and one killed mid-build
    leaves the build's lock file behind, on which every later attempt waits. GPU ranks (the CUDA
    accelerator) do not use it. A build that fails is left to the job, which reports it."""
    if torch.cuda.is_available():
        return
    import logging

    import deepspeed
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return
    try:
        builder.load(verbose=False)
    except Exception as err:  # the job's own load names the cause
        logging.getLogger(__name__).warning(f"could not build DeepSpeed's {builder.NAME} op: {err}")


def _template(name: str) -> dict[str, Any]:
    path = DS_CONFIGS / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"DeepSpeed template {path} is missing (set SCALING_DS_CONFIGS to the ds_configs folder)")
    return json.loads(path.read_text())


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def build_ds_config(cfg, world_size: int, device: str | None = None) -> dict[str, Any]:
    """The DeepSpeed config of a run: ZeRO template + precision template + batch fields.

    train_batch_size = micro x accumulation x world, with world the ranks actually running.
    """
    if world_size != cfg.world_size:
        raise ValueError(f"world_size: the RunConfig says {cfg.world_size} but {world_size} ranks are running")
    precision = resolved_precision(cfg, device or device_kind())
    stage = engine_zero_stage(cfg.zero_stage, precision)
    ds = _merge(_template("zero3_offload" if cfg.offload else f"zero{stage}"), _template(precision))
    if fp32_grad_accumulation(stage, precision):
        # DeepSpeed's BF16_Optimizer: gradients accumulate in one flat fp32 buffer (over micro-steps
        # and the data-parallel reduction), with flat fp32 master weights and fused updates.
        ds["data_types"] = {"grad_accum_dtype": "fp32"}
    ds.update({
        "train_batch_size": cfg.micro_batch * cfg.accumulation * world_size,
        "train_micro_batch_size_per_gpu": cfg.micro_batch,
        "gradient_accumulation_steps": cfg.accumulation,
        # DeepSpeed clips the global norm; per_param (DINO's rule) is ours (scaling.train.clipping).
        "gradient_clipping": float(cfg.clip_grad) if cfg.clip_mode == "global" else 0.0,
    })
    return ds


def init_distributed() -> tuple[int, int]:
    """Join the process group described by the environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT).

    NCCL on GPU, gloo on CPU. A process with no such environment runs as a world of one.
    """
    import deepspeed

    for key, default in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                         ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, default)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = _chosen_port["port"] = str(free_port())
    if device_kind() == "cuda":
        torch.cuda.set_device(local_device_index())  # NCCL binds each rank's communicator to it
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if device_kind() == "cuda" else "gloo")
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


@contextlib.contextmanager
def joined_process_group() -> Iterator[tuple[int, int]]:
    """`init_distributed` for the length of a `with` block, yielding (rank, world).

    A group this block created is ended when it leaves: a process that exits with a live gloo or
    NCCL group can abort in the group's destructor after its work is done ("terminate called
    without an active exception"), so a finished job would read as failed. It is ended after a
    failure too, except under NCCL, where ending a communicator that a peer may still be waiting
    on can hang; the process is about to exit there anyway. A group the caller made before the
    block (a test, a launcher) is left to its owner.
    """
    import torch.distributed as dist

    ours = not dist.is_initialized()
    rank, world = init_distributed()
    try:
        yield rank, world
    except BaseException:
        if ours and dist.is_initialized() and dist.get_backend() != "nccl":
            end_process_group()
        raise
    if ours:
        end_process_group()


def end_process_group() -> None:
    """Destroy the default process group (after this rank's GPU work is done) so that a later
    `init_distributed` in the same process makes a new one."""
    import deepspeed.comm

    if device_kind() == "cuda":
        torch.cuda.synchronize()
    deepspeed.comm.destroy_process_group()
    if os.environ.get("MASTER_PORT") == _chosen_port.get("port"):
        del os.environ["MASTER_PORT"]  # a port this process chose for itself is chosen again


_chosen_port: dict[str, str] = {}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_engine(cfg, model: torch.nn.Module, ds_config: dict[str, Any]):
    """deepspeed.initialize with AdamW over our parameter groups (no decay on norms and biases)."""
    import deepspeed

    if device_kind() == "cuda" and resolved_precision(cfg) == "fp32":
        torch.set_float32_matmul_precision("high")  # TF32 tensor cores for fp32 matmuls, as every GPU suite does
    optimizer = make_optimizer(cfg, model)
    # DeepSpeed would pick the GPU ordinal LOCAL_RANK, which does not exist where each task sees
    # only its own GPU; device_rank is the ordinal init_distributed set.
    args = argparse.Namespace(device_rank=local_device_index()) if device_kind() == "cuda" else None
    engine, optimizer, _, _ = deepspeed.initialize(args=args, model=model, optimizer=optimizer, config=ds_config)
    return engine, optimizer


def grad_norm_before_step(engine) -> torch.Tensor | None:
    """The global gradient norm, for engines that do not report one (ZeRO stage 0 in fp32), as a
    0-d tensor on the gradients' device: nothing is read back to the host here.

    Called after the last backward of an optimizer step, when the gradients are already averaged
    over ranks and not yet applied. ZeRO optimizers measure it themselves (get_global_grad_norm).
    """
    if engine.zero_optimization_stage() > 0 or engine.bfloat16_enabled() or engine.fp16_enabled():
        return None
    grads = [p.grad.detach() for p in engine.module.parameters() if p.grad is not None]
    if not grads:
        return None
    norms = torch._foreach_norm(grads)  # one kernel per dtype/device group, not one per tensor
    return torch.linalg.vector_norm(torch.stack(norms).double())
