"""Per-parameter gradient clipping (clip_mode=per_param), as official DINO clips: each parameter's
gradient, once averaged over ranks, is scaled by clip / (||g|| + 1e-6) when that is below 1.

DeepSpeed's gradient_clipping clips the global norm, so under per_param the DeepSpeed config turns
it off and the loop calls clip_per_parameter after the last backward of an optimizer step, before
engine.step(). Under ZeRO a parameter's reduced gradient lives in pieces on the ranks that own
them; each rank holds its local piece of every parameter (possibly empty), and one all_reduce of
the per-parameter squared norms gives every rank the whole-parameter norms:

- ZeRO-0 in fp32: p.grad, whole and identical on every rank (no reduction needed);
- DeepSpeed's BF16_Optimizer (bf16 at ZeRO-0) and ZeRO-1/2: the fp32 (or 16-bit) gradient
  fragment DeepSpeed maps to this rank's optimizer partition (the param's _hp_mapping), the
  piece DeepSpeed's own get_full_hp_grad contributes;
- ZeRO-3: the local gradient partition (safe_get_local_grad / safe_set_local_grad).

The scaling is applied in place to those pieces, so the optimizer steps on the clipped gradient.
fp16 gradients carry the loss scale, which is divided out of the norm first.
"""
from __future__ import annotations

import torch

from scaling.distributed import all_reduce_

EPS = 1e-6  # official DINO's clip_gradients: clip / (norm + 1e-6)


def _fragment(param: torch.nn.Parameter) -> tuple[torch.Tensor, bool]:
    """This rank's piece of param's reduced gradient (a flat view to scale in place), and whether
    the piece is the whole gradient replicated on every rank."""
    if hasattr(param, "ds_id"):  # ZeRO-3
        from deepspeed.utils import safe_get_local_grad

        return safe_get_local_grad(param).view(-1), False
    if hasattr(param, "_hp_mapping"):  # ZeRO-1/2, BF16_Optimizer
        mapping = param._hp_mapping
        if mapping is None:  # no part of this parameter in this rank's partition
            return param.new_zeros(0, dtype=torch.float32), False
        grad = mapping.get_lp_grad_fragment(param._index_in_param_group).view(-1)
        address = mapping.lp_fragment_address
        if grad.numel() == param.numel() and address.numel != param.numel():
            # BF16_Optimizer keeps the whole accumulation buffer on every rank; its partition is the piece.
            grad = grad.narrow(0, address.start, address.numel)
        return grad, False
    return param.grad.view(-1), True


def _write_back(param: torch.nn.Parameter, piece: torch.Tensor) -> None:
    """ZeRO-3 may hand out a copy of the local partition (an fp32 copy of 16-bit gradients): put the
    scaled piece back."""
    if hasattr(param, "ds_id"):
        from deepspeed.utils import safe_set_local_grad

        safe_set_local_grad(param, piece)


def loss_scale(engine) -> float:
    return float(getattr(engine.optimizer, "loss_scale", 1.0) or 1.0) if engine.fp16_enabled() else 1.0


def clip_per_parameter(engine, clip: float) -> torch.Tensor | None:
    """Clip each parameter's reduced gradient norm at `clip`, in place. Returns the global norm
    before clipping (a 0-d fp32 tensor on the gradients' device; nothing is read to the host), or
    None when no parameter has a gradient."""
    params = [p for p in engine.module.parameters() if p.requires_grad]
    pieces, replicated = [], []
    for p in params:
        if p.grad is None and not hasattr(p, "ds_id") and not hasattr(p, "_hp_mapping"):
            continue
        piece, whole = _fragment(p)
        pieces.append((p, piece))
        replicated.append(whole)
    if not pieces:
        return None
    device = next((piece.device for _, piece in pieces if piece.numel()), pieces[0][1].device)
    sq = torch.stack([torch.linalg.vector_norm(piece.float()).square().to(device) for _, piece in pieces])
    if not all(replicated):
        if any(replicated):
            raise RuntimeError("per-parameter clipping: some gradients are partitioned and some are not")
        all_reduce_(sq)
    norms = sq.sqrt() / loss_scale(engine)
    coef = torch.clamp(clip / (norms + EPS), max=1.0)
    for i, (p, piece) in enumerate(pieces):
        if piece.numel():
            piece.mul_(coef[i].to(piece.dtype))
            _write_back(p, piece)
    return torch.linalg.vector_norm(norms)
