"""One-run layer: DINO (Caron et al. 2021): the projection head, the multi-crop wrapper, and the
student/teacher pair, on either the shared video backbone or an image ViT.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from scaling.models.vit import Dropout, DropPath, init_weights


class WeightNormLinear(nn.Module):
    """Linear without bias whose weight is g * v / ||v|| (row-wise), as torch's weight_norm.

    Computed inside forward (not in a hook), so ZeRO-3 gathers weight_g / weight_v like any other
    parameter. The names match the official DINO head (last_layer.weight_g, last_layer.weight_v).

    With fp32 the normalisation and the matmul run in fp32 whatever the parameters' dtype, and the
    output is fp32: under a bf16 engine (which casts the whole module) a bf16 logit in [-1, 1] is
    resolved to ~0.004, i.e. ~0.1 after the teacher's temperature of 0.04. On fp32 parameters and
    inputs the casts are no-ops: the output is the same, bit for bit.
    """

    def __init__(self, in_dim: int, out_dim: int, fp32: bool = True):
        super().__init__()
        self.fp32 = fp32
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        # nn.Linear's default init (Kaiming-uniform, a = sqrt(5)), drawn as nn.Linear draws it: the
        # official head creates its last layer after applying the MLP's truncated-normal init.
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, v = self.weight_g, self.weight_v
        if self.fp32:
            x, g, v = x.float(), g.float(), v.float()
        weight = g * v / v.norm(dim=1, keepdim=True)
        return F.linear(x, weight)


class DINOHead(nn.Module):
    """3-layer MLP (GELU) to a bottleneck, L2 normalisation, then a weight-normed linear layer.

    With norm_last_layer the weight-norm gain stays fixed at 1 (not trained), as in DINO. With
    fp32_last_layer the L2 normalisation and the last layer compute (and return) fp32 under 16-bit
    parameters; the MLP stays in the parameters' dtype.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 norm_last_layer: bool = True, fp32_last_layer: bool = True):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp.apply(init_weights)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fp32=fp32_last_layer)
        if norm_last_layer:
            self.last_layer.weight_g.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.mlp(x)
        if self.last_layer.fp32:
            z = z.float()  # the L2 normalisation too: its bf16 rounding is most of the logits' error
        return self.last_layer(F.normalize(z, dim=-1, p=2))


class MultiCropWrapper(nn.Module):
    """Runs the backbone once per run of same-shaped crops, then the head on all features."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: list[torch.Tensor] | torch.Tensor, return_features: bool = False):
        """Head outputs of all crops; with return_features also the backbone features of the first run
        of same-shaped crops (the global views)."""
        if isinstance(crops, torch.Tensor):
            crops = [crops]
        feats, start = [], 0
        while start < len(crops):
            end = start + 1
            while end < len(crops) and crops[end].shape[1:] == crops[start].shape[1:]:
                end += 1
            feats.append(self.backbone(torch.cat(crops[start:end], dim=0)))
            start = end
        out = self.head(torch.cat(feats, dim=0))
        return (out, feats[0]) if return_features else out


class DINO(nn.Module):
    """Student and EMA teacher with identical architecture; the teacher has no gradients.

    Both live in one module so that an engine (e.g. ZeRO-3) partitions them the same way, letting
    the EMA update run partition by partition.
    """

    def __init__(self, backbone: nn.Module, width: int, *, out_dim: int = 65536, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, norm_last_layer: bool = True, fp32_last_layer: bool = True):
        super().__init__()
        head = DINOHead(width, out_dim, hidden_dim, bottleneck_dim, norm_last_layer, fp32_last_layer)
        self.student = MultiCropWrapper(backbone, head)
        # The teacher sees every token and no stochastic depth: a deep copy made before any
        # training, switched to eval mode for good.
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        _set_drop_path(self.teacher, 0.0)
        self._teacher_fp32: dict[int, torch.Tensor] = {}
        if hasattr(self.teacher.backbone, "drop_rate"):
            self.teacher.backbone.drop_rate = 0.0

    def train(self, mode: bool = True) -> DINO:
        super().train(mode)
        self.teacher.eval()
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone feature used for evaluation: the teacher's, as DINO evaluates."""
        return self.teacher.backbone(x)

    def forward(self, crops: list[torch.Tensor], return_features: bool = False):
        """crops: 2 global views then the local ones. Returns (student_out, teacher_out), and with
        return_features also the student's backbone features of the global views (for KoLeo)."""
        with torch.no_grad():
            teacher_out = self.teacher(crops[:2])
        if return_features:
            student_out, feats = self.student(crops, return_features=True)
            return student_out, teacher_out, feats
        return self.student(crops), teacher_out

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- m * teacher + (1 - m) * student, with one foreach kernel per dtype group.

        Under ZeRO-3 each parameter is partitioned (`ds_tensor`); the teacher's parameters have the
        same shapes as the student's, hence the same partitioning, so each rank updates its own
        partition and nothing is gathered. With 16-bit parameters the average is kept in an fp32
        shadow: a 0.4% step of a bf16 value would round away. Its source is then the student's fp32
        master weights wherever this rank holds them whole for what it averages (`student_fp32_master`),
        and the 16-bit student elsewhere.

        The ops are `mul_(m)` then `add_(src, alpha=1 - m)`, as the per-parameter loop was: the same
        rounding, bit for bit (`lerp_` computes dst + w * (src - dst), which rounds differently).
        The tensor lists are re-read each call: ZeRO-3 and the engine's casting replace `.data`.
        """
        fp32_dst, fp32_src, shadows, half_dst, half_src = [], [], [], [], []
        persistent = []
        for i, (ps, pt) in enumerate(zip(self.student.parameters(), self.teacher.parameters())):
            src, dst = ema_tensor(ps), ema_tensor(pt)
            if getattr(pt, "ds_persist", False):
                persistent.append(pt)
            if dst.dtype == torch.float32:
                fp32_dst.append(dst)
                fp32_src.append(src.to(torch.float32))
                continue
            shadow = self._teacher_fp32.get(i)
            if shadow is None or shadow.shape != dst.shape:
                shadow = self._teacher_fp32[i] = dst.float()
            master = student_fp32_master(ps)
            shadows.append(shadow)
            half_dst.append(dst)
            half_src.append(src.float() if master is None else master.view_as(shadow))
        for dsts, srcs in ((fp32_dst, fp32_src), (shadows, half_src)):
            if dsts:
                torch._foreach_mul_(dsts, momentum)
                torch._foreach_add_(dsts, srcs, alpha=1.0 - momentum)
        if half_dst:
            torch._foreach_copy_(half_dst, shadows)
        for pt in persistent:  # keep the partition (what checkpoints and consolidation read) in step
            _refresh_partition(pt)

    def teacher_fp32_shadows(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(teacher parameter, this rank's fp32 shadow of it), for every shadowed parameter, in the
        teacher's parameter order; under ZeRO-3 each shadow is laid out as the parameter's
        `ds_tensor` partition. Empty in fp32 (the teacher's own values are exact)."""
        teacher = list(self.teacher.parameters())
        return [(teacher[i], self._teacher_fp32[i]) for i in sorted(self._teacher_fp32)]

    def teacher_shadow_state(self) -> dict[int, torch.Tensor]:
        """This rank's fp32 shadow of a 16-bit teacher (empty in fp32): per-rank checkpoint state.

        Under ZeRO-3 each entry is this rank's partition, so every rank saves and loads its own.
        """
        return {i: t.detach().cpu().clone() for i, t in self._teacher_fp32.items()}

    def load_teacher_shadow(self, state: dict[int, torch.Tensor]) -> None:
        """Restore `teacher_shadow_state()`; shapes must match this rank's teacher partitions."""
        teacher = list(self.teacher.parameters())
        shadow = {}
        for i, t in state.items():
            i = int(i)
            dst = ema_tensor(teacher[i]) if 0 <= i < len(teacher) else None
            if dst is None or tuple(dst.shape) != tuple(t.shape):
                raise ValueError(f"teacher shadow entry {i} of shape {tuple(t.shape)} does not match this "
                                 f"rank's teacher ({'no such parameter' if dst is None else tuple(dst.shape)}); "
                                 "was the checkpoint written with another ZeRO stage or world size?")
            shadow[i] = t.to(device=dst.device, dtype=torch.float32).clone()
        self._teacher_fp32 = shadow


def ema_tensor(param: nn.Parameter) -> torch.Tensor:
    """What the teacher's EMA updates of `param` on this rank: its ZeRO-3 partition (`ds_tensor`),
    except for a parameter ZeRO-3 keeps whole on every rank (`ds_persist`, below
    stage3_param_persistence_threshold): the forward reads its full `.data` and never gathers the
    partition, so the full tensor is averaged (and the partition refreshed from it)."""
    if getattr(param, "ds_persist", False):
        return param.data
    return getattr(param, "ds_tensor", param.data)


def student_fp32_master(param: nn.Parameter) -> torch.Tensor | None:
    """The optimizer's fp32 master of what the teacher's EMA reads of `param` on this rank (laid out
    as `ema_tensor(param)`), where the engine keeps one whole here; None where it does not, and the
    EMA averages the 16-bit student instead:

    - ZeRO-3, a partitioned parameter: the local fp32 partition, which is the same slice of the flat
      parameter as its `ds_tensor` (DeepSpeed's grad_position: partition_numel elements per rank).
    - ZeRO-1/2 and DeepSpeed's BF16_Optimizer on one rank: the fp32 fragment is the whole parameter.
    - Otherwise None: with more than one rank those engines partition the fp32 master over the ranks
      while the teacher is whole on each, so a rank holds only some parameters' masters (or a piece
      of one), and averaging those where present would make the ranks' teachers differ; the teacher
      would have to be partitioned and gathered every step to use them. A persistent ZeRO-3 parameter
      (kept whole, `ds_persist`) has the same problem: its master is partitioned, its EMA is whole.
    """
    if hasattr(param, "ds_id"):
        if getattr(param, "ds_persist", False) or not param.requires_grad:
            return None
        from deepspeed.utils import safe_get_local_fp32_param

        master = safe_get_local_fp32_param(param)
        return master if master is not None and master.numel() == param.ds_tensor.numel() else None
    mapping = getattr(param, "_hp_mapping", None)
    if mapping is None:
        return None
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        return None
    master = mapping.hp_fragment
    return master if master.numel() == param.numel() and master.dtype == torch.float32 else None


def _refresh_partition(param: nn.Parameter) -> None:
    """A persistent ZeRO-3 parameter's partition set from its full value (rank r holds the r-th equal,
    zero-padded part of the flat parameter)."""
    import torch.distributed as dist

    part = param.ds_tensor
    if part.data_ptr() == param.data.data_ptr():  # one rank: the partition is the parameter
        return
    group = getattr(param, "ds_process_group", None)
    rank = dist.get_rank(group) if dist.is_initialized() else 0
    flat = param.data.detach().reshape(-1)
    piece = flat[rank * part.numel():(rank + 1) * part.numel()].clone()
    part.data.view(-1).zero_()
    part.data.view(-1)[:piece.numel()].copy_(piece)


def _set_drop_path(module: nn.Module, p: float) -> None:
    """Stochastic depth and dropout of every block set to p (0 for the teacher)."""
    for m in module.modules():
        if isinstance(m, (DropPath, Dropout)):
            m.p = p
