"""One-run layer: what one training step of each method computes, independent of the engine.

An objective (the `Objective` protocol) turns a data batch into a loss and metrics, says what
happens once per *optimizer* step (DINO's teacher EMA and centre), names the feature used for
evaluation, and carries its own checkpoint state. `OBJECTIVES` holds one class per method of
`scaling.config.METHODS`; `build_objective` refuses any other method.
"""
from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from scaling import draws
from scaling.config import MODALITIES, flip_probability
from scaling.data.augment import MultiCrop, normalize
from scaling.data.device import send
from scaling.losses import (
    DINOLoss,
    asymmetric_nce_loss,
    cosine_schedule,
    koleo_loss,
    mil_nce_loss,
    nce_loss,
    negatives_per_positive,
    nt_xent_loss,
    sigmoid_loss,
)
from scaling.models import by_method, crop_geometry
from scaling.queue import EmbeddingQueue

# A metric is a detached 0-d tensor on the model's device, or a plain number.
Metric = torch.Tensor | float


@runtime_checkable
class Objective(Protocol):
    """What the training loop (`scaling.train.loop`) and evaluation (`scaling.eval`) call on a
    method's objective. `model` is the DeepSpeed engine (or the bare module outside it: every
    method unwraps it); the objective keeps no reference to it between calls."""

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, Metric]]:
        """One micro-batch: the loss to backpropagate and its metrics, for optimizer step `step`
        (0-based). `generator` draws the augmentation's randomness. Metrics are detached device
        tensors or plain numbers; the loop reads them back only on logged steps. Called once per
        micro-batch, so it must not change state that belongs to the optimizer step."""
        ...

    def after_optimizer_step(self, model: nn.Module, step: int) -> dict[str, float]:
        """Once per optimizer step, after `engine.step()` applied the update of step `step` (never
        per micro-batch): what moves with the weights (DINO's teacher EMA and centre). Returns
        scalars the loop logs with the step's metrics."""
        ...

    def encode(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Evaluation: the backbone features (B, D) of an evaluation input (`eval_input`)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The objective's own state that is the same on every rank (DINO's centre), saved in the
        checkpoint's client state; {} when there is none."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (on resume, once the engine's checkpoint is loaded)."""
        ...

    def rank_state_dict(self, model: nn.Module) -> dict[str, Any]:
        """The state that differs per rank (a 16-bit DINO teacher's fp32 shadow, its ZeRO
        partition), saved by every rank beside the checkpoint; {} when there is none."""
        ...

    def load_rank_state_dict(self, model: nn.Module, state: dict[str, Any]) -> None:
        """Restore this rank's `rank_state_dict` (on resume, after the engine's checkpoint loaded)."""
        ...


def unwrap(model: nn.Module) -> nn.Module:
    """The user module inside an engine/DDP wrapper."""
    return getattr(model, "module", model)


def param_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the engine keeps the module's weights in (bf16/fp16 engines cast the module): inputs
    are cast to it, and outputs back to fp32 before any loss."""
    return next(unwrap(model).parameters()).dtype


def eval_input(cfg, batch: dict[str, torch.Tensor], device: torch.device | str) -> torch.Tensor:
    """What evaluation feeds the backbone: every token of the whole clip (or image), normalised
    (uint8 pixels become floats on the device)."""
    if "image" in batch:
        return normalize(send(batch["image"], device))
    video = send(batch["video"], device)
    if cfg.method == "dino" and cfg.dino.input == "image":
        return normalize(video[:, :, video.shape[2] // 2])  # the middle frame
    return normalize(video)




def dataset_options(cfg, *, evaluation: bool, split: str = "eval") -> dict[str, Any]:
    """build_dataset's keyword arguments for this run's method: the modalities it reads, whether its
    clips need captions, and in evaluation the views of each video (manifest data): the eval split's
    `eval.temporal_views` x `eval.spatial_views`, and one centre view of each train-split video for
    the k-NN bank and the probe's training set (12 views of every train video would cost 12 times
    the decoding of an epoch at each evaluation)."""
    train, evaluate = MODALITIES[cfg.method]
    options: dict[str, Any] = {"modalities": evaluate if evaluation else train,
                               "require_captions": cfg.method == "vatt" and cfg.vatt.vt_weight > 0}
    if not evaluation and cfg.data.repeats > 1:
        options["repeats"] = cfg.data.repeats
    if evaluation and cfg.data.source in ("manifest", "webdataset"):
        options["views"] = (cfg.eval.temporal_views, cfg.eval.spatial_views) if split == "eval" else (1, 1)
    return options


def caches_negatives(cfg) -> bool:
    """Whether a step runs GradCache (scaling.train.gradcache): VATT with vatt.negatives=cached and
    more than one micro-batch per step (with one, the micro-batch is the optimizer batch already)."""
    return cfg.method == "vatt" and cfg.vatt.negatives == "cached" and cfg.accumulation > 1


def queued_negatives(cfg) -> int:
    """Past embeddings a full queue adds to each positive's negatives (vatt.negatives=queue), else 0."""
    return cfg.vatt.queue_size if cfg.method == "vatt" and cfg.vatt.negatives == "queue" else 0


def contrasted_batch(cfg) -> int:
    """Clips per rank whose embeddings one loss contrasts: the micro-batch, or under GradCache the
    rank's whole share of the optimizer batch."""
    return cfg.micro_batch * (cfg.accumulation if caches_negatives(cfg) else 1)


def same_video_masked(cfg) -> int:
    """Other windows of a positive's own video left out of its negatives: data.repeats - 1 with
    vatt.mask_same_video (the default), else 0 (they stay in as negatives)."""
    return cfg.data.repeats - 1 if cfg.vatt.mask_same_video else 0


class _Stateless:
    """The Objective methods of an objective with no state of its own and nothing to do between
    optimizer steps (SimCLR; VATT, whose queue of negatives overrides them)."""

    def after_optimizer_step(self, model: nn.Module, step: int) -> dict[str, float]:
        return {}

    def encode(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return unwrap(model).encode(x.to(param_dtype(model)))

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def rank_state_dict(self, model: nn.Module) -> dict[str, Any]:
        return {}

    def load_rank_state_dict(self, model: nn.Module, state: dict[str, Any]) -> None:
        pass


class VATTObjective(_Stateless):
    """NCE(video, audio) + vt_weight x MIL-NCE(video, K captions), negatives gathered over ranks."""

    def __init__(self, cfg, world_size: int = 1):
        self.cfg = cfg
        self.negatives_per_positive = negatives_per_positive(contrasted_batch(cfg), world_size, same_video_masked(cfg),
                                                             queued_negatives(cfg))
        self.in_batch_negatives = negatives_per_positive(contrasted_batch(cfg), world_size, same_video_masked(cfg))
        self.queue = EmbeddingQueue(cfg.vatt.queue_size) if cfg.vatt.negatives == "queue" else None
        # VATT's video augmentation: random resized crop, horizontal flip (not on the synthetic
        # clips, whose class, audio and captions include the motion direction: flip_probability)
        # and colour jitter; no blur/solarise. No hue shift: the HSV round trip is the costliest op
        # on a CPU and VATT's colour cue is weak.
        r = cfg.data.resolution
        self.augment = MultiCrop(r, r, 0, global_scale=(0.4, 1.0), p_flip=flip_probability(cfg), hue=0.0, p_gray=0.0,
                                 p_blur=(0.0, 0.0, 0.0), p_solarize=(0.0, 0.0, 0.0))

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, Metric]]:
        """The loss and its metrics. Metrics are detached device tensors (or plain numbers): the
        loop reads them back only on logged steps, so a GPU never waits for them."""
        return self.loss_from(*self.embed(model, batch, generator))

    def embed(self, model: nn.Module, batch: dict[str, torch.Tensor],
              generator: torch.Generator | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """One micro-batch's embeddings in the common spaces (fp32; with vatt.loss=sigmoid also its
        scale and bias, as the forward read them) and its same-video groups (None when unmasked)."""
        return self.forward(model, self.inputs(model, batch, generator))

    def inputs(self, model: nn.Module, batch: dict[str, torch.Tensor],
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor | None]:
        """The model's inputs of one micro-batch on its device: the augmented video, the audio, the
        captions and the same-video groups (None when unmasked)."""
        device, dtype = next(unwrap(model).parameters()).device, param_dtype(model)
        # Repeated sampling puts a video's windows in one micro-batch; masked, they are not negatives.
        groups = send(batch["index"], device) if same_video_masked(self.cfg) else None
        return {"video": self.augment(send(batch["video"], device), generator)[0].to(dtype),
                "audio": send(batch["audio"], device).to(dtype), "text": send(batch["text"], device), "groups": groups}

    def forward(self, model: nn.Module, inputs: dict[str, torch.Tensor | None]
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """`embed` on inputs `inputs` made."""
        out = model(inputs["video"], inputs["audio"], inputs["text"])
        return {k: v.float() for k, v in out.items()}, inputs["groups"]

    def loss_from(self, out: dict[str, torch.Tensor],
                  groups: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, Metric]]:
        """The loss and metrics of embeddings `embed` made (of one micro-batch, or of a whole
        optimizer batch under vatt.negatives=cached)."""
        queued = self.queue.negatives(out["video_va"].device) if self.queue is not None else None
        va, vt = self.pair_losses(out, self.cfg.vatt.temperature, groups, queued)
        loss = va + self.cfg.vatt.vt_weight * vt
        npp = self.negatives_per_positive
        if self.queue is not None:
            self.queue.stage(out)
            npp = self.in_batch_negatives + self.queue.filled  # the queue fills over its first steps
        with torch.no_grad():
            sim = nn.functional.normalize(out["video_va"], dim=-1) @ nn.functional.normalize(out["audio_va"], dim=-1).t()
            if groups is not None:  # retrieval among other videos' audio, as the loss contrasts them
                sim = sim.masked_fill((groups[:, None] == groups[None, :]).fill_diagonal_(False), float("-inf"))
            target = torch.arange(sim.shape[0], device=sim.device)
            retrieval = (sim.argmax(dim=1) == target).float().mean() * 100
        metrics = {"loss": loss.detach(), "loss_va": va.detach(), "loss_vt": vt.detach(),
                   "retrieval_va_top1": retrieval, "negatives_per_positive": npp}
        if self.cfg.vatt.loss == "sigmoid":
            metrics.update({f"sigmoid_{space}_scale": out[f"{space}_log_scale"].detach().exp().reshape(())
                            for space in ("va", "vt")})
            metrics.update({f"sigmoid_{space}_bias": out[f"{space}_bias"].detach().reshape(()) for space in ("va", "vt")})
        return loss, metrics

    def pair_losses(self, out: dict[str, torch.Tensor], t: float, groups: torch.Tensor | None,
                    queued: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The video-audio and video-text terms of `vatt.loss`: nce (SymmetricNCE: NCE and MIL-NCE,
        each the mean of its two directions; with `queued` past embeddings as extra negatives),
        asymmetric (AsymmetricNCE, one joint denominator), sigmoid (SigLIP's, each caption a
        positive of its video)."""
        kind = self.cfg.vatt.loss
        if kind == "nce":
            va_q = (queued["video_va"], queued["audio_va"]) if queued else None
            vt_q = (queued["video_vt"], queued["text_vt"]) if queued else None
            return (nce_loss(out["video_va"], out["audio_va"], t, groups, va_q),
                    mil_nce_loss(out["video_vt"], out["text_vt"], t, groups, vt_q))
        if kind == "asymmetric":
            return (asymmetric_nce_loss(out["video_va"], out["audio_va"], t, groups),
                    asymmetric_nce_loss(out["video_vt"], out["text_vt"], t, groups))
        return (sigmoid_loss(out["video_va"], out["audio_va"], out["va_log_scale"], out["va_bias"], groups),
                sigmoid_loss(out["video_vt"], out["text_vt"], out["vt_log_scale"], out["vt_bias"], groups))

    def encode(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return unwrap(model).encode_video(x.to(param_dtype(model)))

    # vatt.negatives=queue: the queue moves once per optimizer step and is saved with the checkpoint.
    def after_optimizer_step(self, model: nn.Module, step: int) -> dict[str, float]:
        if self.queue is not None:
            self.queue.push()
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"queue": self.queue.state_dict()} if self.queue is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.queue is not None and "queue" in state:
            self.queue.load_state_dict(state["queue"])


class DINOObjective:
    """Multi-crop self-distillation; teacher EMA and centre once per optimizer step."""

    def __init__(self, cfg, world_size: int = 1):
        del world_size
        self.cfg = cfg
        c = cfg.dino
        geo = crop_geometry(cfg)
        video = c.input == "video"
        self.multicrop = MultiCrop(
            geo["global_resolution"], geo["local_resolution"], c.local_crops,
            global_scale=tuple(c.global_scale), local_scale=tuple(c.local_scale),
            global_frames=geo["global_frames"] if video else None,
            local_frames=geo["local_frames"] if video else None,
            # DINO flips half its images; the synthetic clips are not flipped (flip_probability).
            p_flip=flip_probability(cfg),
            # DINO's blur sigma (0.1-2 px) is for 224 px crops; keep it the same fraction of the crop.
            blur_sigma=(0.1, max(0.2, 2.0 * geo["global_resolution"] / 224)))
        self.nepochs = max(1, int(round(cfg.epochs)))
        self.loss_fn = DINOLoss(c.out_dim, 2 + c.local_crops, c.warmup_teacher_temp, c.teacher_temp,
                                c.warmup_teacher_temp_epochs, self.nepochs, c.student_temp, c.center_momentum)

    def epoch_at(self, step: int) -> float:
        return step * self.cfg.global_batch / self.cfg.data.train_size

    def _views(self, batch: dict[str, torch.Tensor], device, generator) -> torch.Tensor:
        if "image" in batch:
            return send(batch["image"], device)
        video = send(batch["video"], device)
        if self.cfg.dino.input == "image":
            # Image DINO on clips: one random frame per clip, drawn where the generator lives.
            where = generator.device if generator is not None else torch.device("cpu")
            u = draws.rand(video.shape[0], generator=generator, device=where, dtype=torch.float64)
            idx = send((u * video.shape[2]).long().clamp(max=video.shape[2] - 1), device)
            return video[torch.arange(video.shape[0], device=device), :, idx]
        return video

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, Metric]]:
        """The loss and its metrics (detached device tensors or numbers, read on logged steps)."""
        module = unwrap(model)
        device = next(module.parameters()).device
        if self.loss_fn.center.device != device:
            self.loss_fn.to(device)
        dtype = param_dtype(model)
        crops = [c.to(dtype) for c in self.multicrop(self._views(batch, device, generator), generator)]
        weight, distill = self.cfg.dino.koleo_weight, self.cfg.dino.distill_weight
        outs = model(crops, return_features=True) if weight > 0 else model(crops)
        student_out, teacher_out = outs[0].float(), outs[1].float()
        epoch = self.epoch_at(step)
        dino = self.loss_fn(student_out, teacher_out, epoch)  # also stages the centre update
        loss = dino if distill == 1.0 else distill * dino
        extra = {}
        if weight > 0:
            # DINOv2: KoLeo on the student's CLS features, per global view within the batch, summed
            # over the two views (koleo_loss_weight x the sum over the chunks), so a weight means
            # DINOv2's. The first 2B rows are the global views (local crops of that shape follow).
            globals_ = outs[2].float()[: 2 * crops[0].shape[0]]
            koleo = sum(koleo_loss(f) for f in globals_.chunk(2))
            extra = {"loss_koleo": koleo.detach()}
            loss = loss + weight * koleo
        if extra or distill != 1.0:
            extra["loss_dino"] = dino.detach()  # unweighted, so runs with different weights compare
        return loss, {"loss": loss.detach(), **extra, **self.collapse_signals(student_out, teacher_out, epoch)}

    @torch.no_grad()
    def collapse_signals(self, student_out: torch.Tensor, teacher_out: torch.Tensor, epoch: float) -> dict[str, Metric]:
        """What tells DINO collapse apart from learning: a teacher entropy near ln(out_dim) with a tiny
        KL means uniform collapse; an entropy near 0 means one-dimension collapse."""
        fn = self.loss_fn
        temp = fn.teacher_temp_at(epoch)
        teacher = torch.softmax((teacher_out - fn.center) / temp, dim=-1)
        student = torch.log_softmax(student_out[:teacher_out.shape[0]] / fn.student_temp, dim=-1)
        log_teacher = teacher.clamp_min(1e-12).log()
        entropy = -(teacher * log_teacher).sum(-1).mean()
        kl = (student.exp() * (student - log_teacher)).sum(-1).mean()  # KL(student || teacher), global views
        return {"teacher_entropy": entropy, "kl_student_teacher": kl, "center_norm": fn.center.norm(),
                "log_out_dim": math.log(self.cfg.dino.out_dim), "teacher_temp": temp}

    def teacher_momentum(self, step: int) -> float:
        """Cosine from momentum_teacher to 1 over the run (DINO)."""
        return cosine_schedule(self.cfg.dino.momentum_teacher, 1.0, step, self.cfg.total_steps)

    def after_optimizer_step(self, model: nn.Module, step: int) -> dict[str, float]:
        """Once per optimizer step, never per micro-batch: EMA of the teacher, then the centre."""
        m = self.teacher_momentum(step)
        unwrap(model).update_teacher(m)
        self.loss_fn.update_center()
        return {"teacher_momentum": m}

    def encode(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return unwrap(model).encode(x.to(param_dtype(model)))

    def state_dict(self) -> dict[str, Any]:
        return {"center": self.loss_fn.center.detach().cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss_fn.center.copy_(state["center"])

    def rank_state_dict(self, model: nn.Module) -> dict[str, Any]:
        """What differs per rank: the fp32 shadow of a 16-bit teacher (its ZeRO partition)."""
        shadow = unwrap(model).teacher_shadow_state()
        return {"teacher_fp32": shadow} if shadow else {}

    def load_rank_state_dict(self, model: nn.Module, state: dict[str, Any]) -> None:
        if "teacher_fp32" in state:
            unwrap(model).load_teacher_shadow(state["teacher_fp32"])


class SimCLRObjective(_Stateless):
    """The unimodal contrastive control arm: NT-Xent (SimCLR) between two views of each clip made by
    DINO's global-crop augmentations, negatives gathered over ranks (2 x micro_batch x world - 2)."""

    def __init__(self, cfg, world_size: int = 1):
        self.cfg = cfg
        self.negatives_per_positive = 2 * cfg.micro_batch * world_size - 2
        geo = crop_geometry(cfg)
        # DINO's two global views (asymmetric blur and solarisation, colour jitter, grey, flip).
        self.augment = MultiCrop(
            geo["global_resolution"], geo["local_resolution"], 0, global_scale=tuple(cfg.dino.global_scale),
            global_frames=geo["global_frames"], p_flip=flip_probability(cfg),
            blur_sigma=(0.1, max(0.2, 2.0 * geo["global_resolution"] / 224)))

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, Metric]]:
        device, dtype = next(unwrap(model).parameters()).device, param_dtype(model)
        views = [v.to(dtype) for v in self.augment(send(batch["video"], device), generator)]
        z1, z2 = model(views).float().chunk(2)
        loss = nt_xent_loss(z1, z2, self.cfg.simclr.temperature)
        with torch.no_grad():  # top-1 retrieval of the other view among the local views
            sim = nn.functional.normalize(z1, dim=-1) @ nn.functional.normalize(z2, dim=-1).t()
            retrieval = (sim.argmax(dim=1) == torch.arange(sim.shape[0], device=sim.device)).float().mean() * 100
        return loss, {"loss": loss.detach(), "retrieval_views_top1": retrieval,
                      "negatives_per_positive": self.negatives_per_positive}



# The objective of each method of scaling.config.METHODS (the models' table, scaling.models.MODEL_BUILDERS,
# has the same keys; tests/models/test_method_dispatch.py checks both against METHODS).
OBJECTIVES: dict[str, type[Objective]] = {"vatt": VATTObjective, "dino": DINOObjective, "simclr": SimCLRObjective}


def build_objective(cfg, world_size: int = 1) -> Objective:
    """The objective of `cfg.method` for a run over `world_size` ranks; ConfigError("method", ...)
    for a method that is not one of scaling.config.METHODS."""
    return by_method(OBJECTIVES, cfg.method)(cfg, world_size)
