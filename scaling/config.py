"""One-run layer: `RunConfig`, the frozen, typed description of one training run.

It is the only object passed between layers; a sweep trial is a set of dotted overrides on it.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from scaling.models.sizes import SIZES
from scaling.validate import ConfigError, choice, flag, integer, number, pair, plain, yaml_problem, yaml_value
from scaling.validate import load_named_yaml as load_named_yaml  # re-exported: it lived here

METHODS = ("vatt", "dino", "simclr")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LR_SCALINGS = ("linear", "sqrt", "none")
DATA_SOURCES = ("synthetic", "manifest", "webdataset", "images")
DECODERS = ("torchcodec", "pyav")   # the video decoders of data.source=manifest
# What each method reads from a clip (training, evaluation): a manifest decodes only these.
MODALITIES = {"vatt": (("video", "audio", "text"), ("video", "text")), "dino": (("video",), ("video",)),
              "simclr": (("video",), ("video",))}
ZERO_STAGES = (0, 1, 2, 3)
CONFIGS = Path(__file__).resolve().parent / "configs"  # the packaged RunConfig files
# Optimizer steps of a run that sets neither steps nor samples: `scaling train` with no arguments
# (vatt nano, batch 64, synthetic clips). On a 2-core CPU a step takes ~0.55 s, and the fixed part
# (start-up, the random-init and the final evaluation over 8192 + 1024 clips, model.pt) about a
# minute, so 50 steps (the loss falls from ~8.5 to ~7.8) take ~1.5 minutes on an idle machine
# (measured: 3 minutes on a shared one); 200 steps took 5 minutes there.
DEFAULT_STEPS = 50


# ----------------------------------------------------------------------------- sections
SYNTHETIC_MAX_CLASSES = 144  # scaling.data.synthetic.MAX_CLASSES (a test keeps the two equal)


@dataclass(frozen=True)
class DataConfig:
    """Where clips come from and their geometry (shared by both methods, so comparisons are fair)."""

    source: str = "synthetic"          # synthetic | manifest | webdataset | images
    path: str | None = None            # manifest .jsonl, shards (brace pattern or -shards.json) or image-folder root
    eval_path: str | None = None       # the held-out split for k-NN / linear probes
    num_classes: int = 10
    train_size: int = 8192             # synthetic clips in the train split
    eval_size: int = 1024              # synthetic clips in the eval split
    difficulty: float = 0.5
    frames: int = 8                    # video frames per clip (multiple of the 4-frame voxel)
    resolution: int = 64               # pixels, multiple of the 16-pixel voxel
    audio_samples: int = 4096          # waveform samples (multiple of the 128-sample patch)
    sample_rate: int = 16000
    fps: float = 10.0
    captions: int = 4                  # MIL-NCE positives per clip
    max_words: int = 16
    vocab_size: int = 65536
    num_workers: int = 2
    seed: int = 0                      # the data set's own seed, fixed across runs of a study
    decoder: str = "torchcodec"        # torchcodec | pyav: the manifest's video decoder (BENCHMARKS.md)
    max_bad_fraction: float = 0.01     # a run stops when more of its clips than this fail to decode
    shuffle_buffer: int = 1000         # webdataset: samples in each worker's seeded shuffle buffer (0/1: none)
    p_flip: float | None = None        # training's horizontal-flip probability; None: flip_probability()
    persistent_workers: bool = True    # keep the loader's workers between epochs (and evaluations)
    prefetch_factor: int = 2           # batches each worker prepares ahead
    pin_memory: bool | None = None     # pinned host memory for asynchronous copies; None: when on CUDA
    repeats: int = 1                   # training windows cut from each decoded video (repeated sampling)

    def validate(self) -> None:
        choice("data.source", self.source, DATA_SOURCES)
        for name in ("path", "eval_path"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ConfigError(f"data.{name}", f"got {getattr(self, name)!r}; must be a path (a string: quote "
                                                  "a name that YAML reads as another value)")
        if self.source != "synthetic" and not self.path:
            raise ConfigError("data.path", f"data.source={self.source!r} needs a path (manifest .jsonl or image folder)")
        for name in ("train_size", "eval_size", "frames", "resolution",
                     "audio_samples", "sample_rate", "captions", "max_words", "vocab_size"):
            integer(f"data.{name}", getattr(self, name), exclusive_minimum=0)
        if self.source == "synthetic":  # 6 shapes x 8 directions, x 3 speed bands beyond 48 classes
            integer("data.num_classes", self.num_classes, minimum=2, maximum=SYNTHETIC_MAX_CLASSES,
                    note="the synthetic clips have 6 shapes x 8 directions x 3 speed bands")
        else:
            integer("data.num_classes", self.num_classes, minimum=2, note="need at least 2 classes")
        integer("data.num_workers", self.num_workers, minimum=0)
        integer("data.seed", self.seed, minimum=0)
        number("data.fps", self.fps, exclusive_minimum=0)
        number("data.difficulty", self.difficulty, minimum=0.0, maximum=1.0)
        choice("data.decoder", self.decoder, DECODERS)
        number("data.max_bad_fraction", self.max_bad_fraction, minimum=0.0, maximum=1.0)
        integer("data.shuffle_buffer", self.shuffle_buffer, minimum=0)
        if self.p_flip is not None:
            number("data.p_flip", self.p_flip, minimum=0.0, maximum=1.0)
        flag("data.persistent_workers", self.persistent_workers)
        integer("data.prefetch_factor", self.prefetch_factor, minimum=1)
        integer("data.repeats", self.repeats, minimum=1)
        if self.pin_memory is not None:
            flag("data.pin_memory", self.pin_memory)
        if self.frames % 4:
            raise ConfigError("data.frames", f"got {self.frames}; must be a multiple of the 4-frame voxel")
        if self.resolution % 16:
            raise ConfigError("data.resolution", f"got {self.resolution}; must be a multiple of the 16-pixel voxel")
        if self.audio_samples % 128:
            raise ConfigError("data.audio_samples", f"got {self.audio_samples}; must be a multiple of the 128-sample patch")


VATT_LOSSES = ("nce", "asymmetric", "sigmoid")
VATT_NEGATIVES = ("batch", "cached", "queue")


@dataclass(frozen=True)
class VATTConfig:
    """VATT-specific choices; the video backbone size is the run's `size`."""

    audio_size: str | None = None      # None: same as `size`
    text_size: str | None = None       # None: same as `size`
    shared_backbone: bool = False      # the modality-agnostic (MA) variant
    va_dim: int = 512                  # video-audio common space
    vt_dim: int = 256                  # video-text common space
    temperature: float = 0.07
    vt_weight: float = 1.0             # NCE : MIL-NCE = 1 : vt_weight
    word_dim: int = 300                # word2vec-sized embeddings
    freeze_word_embeddings: bool = True
    mask_same_video: bool = True       # data.repeats > 1: a video's windows are not each other's negatives
    loss: str = "nce"                  # nce (SymmetricNCE) | asymmetric (AsymmetricNCE) | sigmoid (SigLIP)
    negatives: str = "batch"           # batch: the micro-batch x world | cached: GradCache over the optimizer batch
    #                                    | queue: + a FIFO of past embeddings (MoCo), vatt.loss=nce only
    queue_size: int = 4096             # vatt.negatives=queue: past clips kept as negatives

    def validate(self) -> None:
        flag("vatt.mask_same_video", self.mask_same_video)
        choice("vatt.loss", self.loss, VATT_LOSSES)
        choice("vatt.negatives", self.negatives, VATT_NEGATIVES)
        integer("vatt.queue_size", self.queue_size, exclusive_minimum=0)
        if self.negatives == "queue" and self.loss != "nce":
            raise ConfigError("vatt.negatives", f"queue works with vatt.loss=nce only; got vatt.loss={self.loss!r} "
                                                "(use negatives=batch or cached with that loss)")
        for name in ("audio_size", "text_size"):
            value = getattr(self, name)
            if value is not None:
                choice(f"vatt.{name}", value, tuple(SIZES))
        for name in ("va_dim", "vt_dim", "word_dim"):
            integer(f"vatt.{name}", getattr(self, name), exclusive_minimum=0)
        number("vatt.temperature", self.temperature, exclusive_minimum=0)
        number("vatt.vt_weight", self.vt_weight, minimum=0)


@dataclass(frozen=True)
class SimCLRConfig:
    """The unimodal contrastive control arm (method=simclr): NT-Xent between two augmented views of
    each clip (DINO's global-crop augmentations) on the video backbone, with SimCLR v1's head."""

    temperature: float = 0.1           # the official SimCLR code's default
    proj_dim: int = 128                # the head's output (SimCLR's 128)
    proj_hidden: int | None = None     # None: the backbone's width (SimCLR's head keeps the width)

    def validate(self) -> None:
        number("simclr.temperature", self.temperature, exclusive_minimum=0)
        integer("simclr.proj_dim", self.proj_dim, exclusive_minimum=0)
        if self.proj_hidden is not None:
            integer("simclr.proj_hidden", self.proj_hidden, exclusive_minimum=0)


@dataclass(frozen=True)
class DINOConfig:
    """DINO-specific choices (defaults are the paper's, sizes scaled to the clip geometry)."""

    input: str = "video"               # video: voxel crops of clips (same backbone as VATT); image: frames/images
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    norm_last_layer: bool = True
    local_crops: int = 8
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    local_resolution: int | None = None  # None: 96/224 of data.resolution, rounded to the voxel
    local_frames: int | None = None      # None: half the clip, at least one voxel
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    center_momentum: float = 0.9
    momentum_teacher: float = 0.996
    freeze_last_layer_epochs: float = 1.0
    koleo_weight: float = 0.0          # DINOv2's KoLeo spreading term on the student's global CLS (0: off, as DINO)
    distill_weight: float = 1.0        # weight of DINO's self-distillation loss (0, an ablation: KoLeo alone)
    patch_size: int = 16               # image input only
    fp32_last_layer: bool = True       # the head's 65536-way last layer in fp32 under bf16/fp16 (the T=0.04 softmax)

    def validate(self) -> None:
        choice("dino.input", self.input, ("video", "image"))
        for name in ("out_dim", "hidden_dim", "bottleneck_dim"):
            integer(f"dino.{name}", getattr(self, name), exclusive_minimum=0)
        integer("dino.local_crops", self.local_crops, minimum=0)
        for name in ("global_scale", "local_scale"):
            pair(f"dino.{name}", getattr(self, name), exclusive_minimum=0, maximum=1)
        for name in ("local_resolution", "local_frames"):
            if getattr(self, name) is not None:
                integer(f"dino.{name}", getattr(self, name), exclusive_minimum=0)
        for name in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            number(f"dino.{name}", getattr(self, name), exclusive_minimum=0)
        integer("dino.warmup_teacher_temp_epochs", self.warmup_teacher_temp_epochs, minimum=0)
        number("dino.center_momentum", self.center_momentum, minimum=0.0, maximum=1.0)
        number("dino.momentum_teacher", self.momentum_teacher, minimum=0.0, maximum=1.0)
        for name in ("freeze_last_layer_epochs", "koleo_weight", "distill_weight"):
            number(f"dino.{name}", getattr(self, name), minimum=0)
        if self.distill_weight == 0 and self.koleo_weight == 0:
            raise ConfigError("dino.distill_weight", "got 0 with dino.koleo_weight=0: nothing would be trained; "
                                                     "one of the two must be > 0")
        choice("dino.patch_size", self.patch_size, (8, 16))
        flag("dino.fp32_last_layer", self.fp32_last_layer)


@dataclass(frozen=True)
class EvalConfig:
    """The evaluation protocol, identical for both methods."""

    knn_k: int = 20
    knn_temperature: float = 0.07
    every_steps: int = 0               # 0: only at the end
    linear_probe: bool = True
    random_init: bool = True           # also evaluate the untrained backbone (the baseline), once
    temporal_views: int = 1            # windows per video, evenly spaced (manifest data only)
    spatial_views: int = 1             # crops per window along the long side (manifest data only)

    @property
    def views(self) -> int:
        return self.temporal_views * self.spatial_views

    def validate(self) -> None:
        integer("eval.knn_k", self.knn_k, exclusive_minimum=0)
        integer("eval.temporal_views", self.temporal_views, minimum=1)
        integer("eval.spatial_views", self.spatial_views, minimum=1)
        number("eval.knn_temperature", self.knn_temperature, exclusive_minimum=0)
        integer("eval.every_steps", self.every_steps, minimum=0)


@dataclass(frozen=True)
class GNSConfig:
    """The online gradient-noise scale (scaling.train.gns): B_simple from the micro-step and the
    optimizer-step gradients, measured every `every_steps` optimizer steps and logged as gns/*."""

    every_steps: int = 0               # 0: off
    ema: float = 0.95                  # smoothing of |G|^2 and tr(Sigma), per measurement

    def validate(self) -> None:
        integer("gns.every_steps", self.every_steps, minimum=0)
        number("gns.ema", self.ema, minimum=0.0, exclusive_maximum=1.0)


# Defaults that differ by method (None in RunConfig means "the method's default").
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    # VATT (Akbari et al. 2021, the official configs): Adam (eps 1e-7), lr 1e-4, no weight decay,
    # linear warm-up over 1% of the steps (5k of 500k), then cosine to 5e-5; dropout 0.1, no
    # stochastic depth, no gradient clipping.
    "vatt": dict(lr=1e-4, lr_scaling="none", weight_decay=0.0, weight_decay_end=0.0, clip_grad=0.0,
                 clip_mode="global", warmup_fraction=0.01, min_lr=5e-5, adam_eps=1e-7, dropout=0.1,
                 drop_path=0.0),
    # DINO (Caron et al. 2021): AdamW, lr 5e-4 x B/256, wd cosine 0.04 -> 0.4, each parameter's
    # gradient clipped at norm 3.0, warm-up over 10 of 100 epochs, cosine to 1e-6, stochastic depth
    # 0.1, no dropout.
    "dino": dict(lr=5e-4, lr_scaling="linear", weight_decay=0.04, weight_decay_end=0.4, clip_grad=3.0,
                 clip_mode="per_param", warmup_fraction=0.1, min_lr=1e-6, adam_eps=1e-8, dropout=0.0,
                 drop_path=0.1),
}
# SimCLR (the unimodal contrastive control arm): DINO's optimisation, so that the two video-only
# arms differ in their objective alone (SimCLR's own LARS at lr 0.3 x B/256 is not used).
METHOD_DEFAULTS["simclr"] = dict(METHOD_DEFAULTS["dino"])
CLIP_MODES = ("global", "per_param")


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one run. Frozen; invalid values fail at construction."""

    method: str = "vatt"
    size: str = "nano"
    drop_rate: float = 0.0             # fraction of video/audio tokens DROPPED in training
    global_batch: int = 64             # samples per optimizer step, all ranks and micro-steps
    micro_batch: int = 64              # samples per rank per forward/backward
    world_size: int = 1                # ranks; accumulation = global / (micro x world)
    steps: int | None = None           # at most one of steps / samples; neither: DEFAULT_STEPS
    samples: int | None = None
    lr: float | None = None            # base lr at lr_ref_batch; None: the method's default
    lr_scaling: str | None = None      # linear (lr x B/ref) | sqrt | none
    lr_ref_batch: int = 256
    min_lr: float | None = None        # the cosine's end value
    warmup_fraction: float | None = None  # of total steps
    weight_decay: float | None = None
    weight_decay_end: float | None = None
    adam_eps: float | None = None      # the optimizer's epsilon
    clip_grad: float | None = None     # gradient-norm clip (0: off)
    clip_mode: str | None = None       # global: one norm over all parameters | per_param: each parameter's own
    drop_path: float | None = None     # stochastic depth at the last block
    dropout: float | None = None       # after every dense layer but qkv, and on the embedded tokens (ViT's rule)
    activation_checkpointing: bool = False  # recompute each transformer block in the backward (memory for ~1/3 more FLOPs)
    seed: int = 0
    zero_stage: int = 0
    offload: bool = False              # ZeRO-3 only: optimizer + params on CPU
    precision: str = "auto"            # auto: bf16 on GPU, fp32 on CPU
    log_every: int = 10
    checkpoint_every: int = 0          # optimizer steps between saves (0: at the end only)
    data: DataConfig = field(default_factory=DataConfig)
    vatt: VATTConfig = field(default_factory=VATTConfig)
    dino: DINOConfig = field(default_factory=DINOConfig)
    simclr: SimCLRConfig = field(default_factory=SimCLRConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    gns: GNSConfig = field(default_factory=GNSConfig)

    def __post_init__(self) -> None:
        choice("method", self.method, METHODS)
        for key, value in METHOD_DEFAULTS[self.method].items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        choice("size", self.size, tuple(SIZES))
        number("drop_rate", self.drop_rate, minimum=0.0, exclusive_maximum=1.0)
        for name in ("global_batch", "micro_batch", "world_size"):
            integer(name, getattr(self, name), exclusive_minimum=0)
        if self.method == "vatt" and self.micro_batch * self.world_size < 2:
            raise ConfigError("micro_batch", f"got {self.micro_batch} on {self.world_size} rank(s); VATT's FAC heads "
                                             "batch-normalise over the micro-batch x ranks, which needs at least 2 clips")
        if self.global_batch % (self.micro_batch * self.world_size):
            raise ConfigError(
                "global_batch",
                f"got {self.global_batch}; must be a multiple of micro_batch x world_size "
                f"= {self.micro_batch} x {self.world_size} = {self.micro_batch * self.world_size}")
        if self.steps is not None:
            integer("steps", self.steps, exclusive_minimum=0)
        if self.samples is not None:
            integer("samples", self.samples, exclusive_minimum=0)
            if self.samples % self.global_batch:
                raise ConfigError("samples", f"got {self.samples}; must be a multiple of global_batch="
                                             f"{self.global_batch} so every run sees exactly that many samples")
        number("lr", self.lr, exclusive_minimum=0)
        choice("lr_scaling", self.lr_scaling, LR_SCALINGS)
        integer("lr_ref_batch", self.lr_ref_batch, exclusive_minimum=0)
        for name in ("min_lr", "weight_decay", "weight_decay_end", "clip_grad"):
            number(name, getattr(self, name), minimum=0)
        number("adam_eps", self.adam_eps, exclusive_minimum=0)
        choice("clip_mode", self.clip_mode, CLIP_MODES)
        for name in ("warmup_fraction", "drop_path", "dropout"):
            number(name, getattr(self, name), minimum=0.0, exclusive_maximum=1.0)
        flag("activation_checkpointing", self.activation_checkpointing)
        integer("seed", self.seed, minimum=0)
        choice("zero_stage", self.zero_stage, ZERO_STAGES)
        if self.offload and self.zero_stage != 3:
            raise ConfigError("offload", f"CPU offload needs zero_stage=3 (got zero_stage={self.zero_stage})")
        choice("precision", self.precision, PRECISIONS)
        integer("log_every", self.log_every, exclusive_minimum=0)
        integer("checkpoint_every", self.checkpoint_every, minimum=0)
        self.data.validate()
        self.vatt.validate()
        self.dino.validate()
        self.simclr.validate()
        self.eval.validate()
        self.gns.validate()
        if self.gns.every_steps and self.global_batch == self.micro_batch:
            raise ConfigError("gns.every_steps", f"the noise scale compares two batch sizes, the micro-batch and the "
                                                 f"optimizer batch: global_batch={self.global_batch} must exceed "
                                                 f"micro_batch={self.micro_batch} (more ranks or accumulation)")
        if self.eval.views > 1 and self.data.source not in ("manifest", "webdataset"):
            field_ = "eval.temporal_views" if self.eval.temporal_views > 1 else "eval.spatial_views"
            raise ConfigError(field_, f"evaluation views cut windows and crops out of videos: they need "
                                      f"data.source='manifest' or 'webdataset' (got {self.data.source!r})")
        if self.data.repeats > 1:
            if self.data.source not in ("manifest", "webdataset"):
                raise ConfigError("data.repeats", f"repeated sampling cuts windows out of decoded videos: it needs "
                                                  f"data.source='manifest' or 'webdataset' (got {self.data.source!r})")
            if self.micro_batch % self.data.repeats:
                raise ConfigError("data.repeats", f"got {self.data.repeats}; micro_batch={self.micro_batch} must be a "
                                                  "multiple of it (each video's windows land in one micro-batch)")
        if self.data.source == "synthetic" and self.data.train_size // self.world_size < self.micro_batch:
            raise ConfigError("data.train_size", f"got {self.data.train_size}; each of the {self.world_size} "
                                                 f"ranks needs at least micro_batch={self.micro_batch} clips")
        if self.method == "vatt" and self.data.source == "images":
            raise ConfigError("data.source", "VATT needs clips with audio and captions; "
                                             "allowed for method=vatt: 'synthetic', 'manifest'")
        if self.method == "dino" and self.dino.input == "video" and self.data.source == "images":
            raise ConfigError("dino.input", "data.source='images' has no clips; set dino.input='image'")
        if self.method == "simclr" and self.data.source == "images":
            raise ConfigError("data.source", "the SimCLR arm trains the video backbone on clips; "
                                             "allowed for method=simclr: 'synthetic', 'manifest', 'webdataset'")
        if self.method == "simclr" and self.dino.input != "video":
            raise ConfigError("dino.input", "method=simclr takes DINO's global-crop augmentations of clips "
                                            "(dino.input='video'); it has no image variant")
        if self.method == "dino" and self.dino.input == "image" and self.drop_rate > 0:
            raise ConfigError("drop_rate", f"got {self.drop_rate}; the image ViT (dino.input='image') does not drop "
                                           "tokens: DropToken is for the voxel backbone (dino.input='video')")
        if self.method == "dino":
            self._check_dino_crops()
        if self.method == "vatt" and self.vatt.shared_backbone and \
                not (self.vatt.audio_size or self.size) == (self.vatt.text_size or self.size) == self.size:
            raise ConfigError("vatt.shared_backbone", f"the modality-agnostic VATT shares one encoder: "
                                                      f"vatt.audio_size and vatt.text_size must be unset or equal "
                                                      f"size={self.size!r} (got {self.vatt.audio_size!r}, "
                                                      f"{self.vatt.text_size!r})")
        if self.steps is not None and self.samples is not None:  # last: no other field's error waits on it
            raise ConfigError("steps", f"set steps or samples, not both (got steps={self.steps!r}, "
                                       f"samples={self.samples!r}; neither: {DEFAULT_STEPS} steps)")

    def _check_dino_crops(self) -> None:
        """Local crops the backbone can tokenize: on the voxel grid (video) or the patch grid (image),
        and no longer than the clip."""
        video = self.dino.input == "video"
        grid = 16 if video else self.dino.patch_size  # the voxel's pixels, or the image patch
        if self.dino.local_resolution is not None and self.dino.local_resolution % grid:
            raise ConfigError("dino.local_resolution", f"got {self.dino.local_resolution}; must be a multiple of the "
                                                       f"{grid}-pixel {'voxel' if video else 'patch'}")
        if video and self.dino.local_frames is not None:
            if self.dino.local_frames % 4:
                raise ConfigError("dino.local_frames", f"got {self.dino.local_frames}; must be a multiple of the "
                                                       "4-frame voxel")
            if self.dino.local_frames > self.data.frames:
                raise ConfigError("dino.local_frames", f"got {self.dino.local_frames}; a local crop cannot be longer "
                                                       f"than the clip (data.frames={self.data.frames})")

    # ------------------------------------------------------------------ derived values
    @property
    def accumulation(self) -> int:
        return self.global_batch // (self.micro_batch * self.world_size)

    @property
    def total_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        return self.samples // self.global_batch if self.samples is not None else DEFAULT_STEPS

    @property
    def total_samples(self) -> int:
        return self.total_steps * self.global_batch

    @property
    def peak_lr(self) -> float:
        """The learning rate after the batch-scaling rule."""
        ratio = self.global_batch / self.lr_ref_batch
        return self.lr * {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[self.lr_scaling]

    @property
    def epochs(self) -> float:
        """Passes over the train split (DINO's schedules are per epoch)."""
        return self.total_samples / self.data.train_size

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RunConfig:
        return _build(cls, raw, prefix="")

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
        """A YAML file (optional) plus dotted `key=value` overrides."""
        raw: dict[str, Any] = {}
        if path is not None:
            p = Path(path)
            if not p.is_file():
                raise ConfigError("config", f"no such config file: {p}")
            try:
                raw = yaml.safe_load(p.read_text()) or {}
            except (OSError, UnicodeDecodeError) as err:
                raise ConfigError("config", f"cannot read {p}: {err}") from None
            except yaml.YAMLError as err:
                raise ConfigError("config", f"{p} is not valid YAML: {yaml_problem(err)}") from None
            if not isinstance(raw, dict):
                raise ConfigError("config", f"{p} must hold a mapping of fields")
        return cls.from_dict(apply_overrides(raw, overrides))

    def replace(self, **changes: Any) -> RunConfig:
        """A new config with dotted-key changes, validated again."""
        return RunConfig.from_dict(apply_overrides(self.to_dict(), [f"{k}={yaml_value(v)}" for k, v in changes.items()]))


def _number_or_self(value: Any) -> Any:
    """YAML 1.1 reads `3e-4` (no dot) as a string; read such strings as the numbers they are."""
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return value


def _build(cls: type, raw: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(prefix.rstrip(".") or "config", f"must be a mapping, got {raw!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known), key=str)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}", f"unknown field; allowed fields: {', '.join(known)}")
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        sub = _SECTIONS.get(known[name].type) if isinstance(known[name].type, str) else None
        if sub is not None:
            kwargs[name] = _build(sub, value or {}, prefix=f"{prefix}{name}.")
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = _number_or_self(value)
    return cls(**kwargs)


_SECTIONS = {"DataConfig": DataConfig, "VATTConfig": VATTConfig, "DINOConfig": DINOConfig,
             "SimCLRConfig": SimCLRConfig, "EvalConfig": EvalConfig,
             "GNSConfig": GNSConfig}


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `a.b=value` strings (values parsed as YAML) to a nested dict, returning a copy."""
    out = plain(dict(raw))
    for item in overrides:
        if "=" not in item:
            raise ConfigError("override", f"{item!r} is not of the form key=value (e.g. size=tiny, data.frames=8)")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError("override", f"{item!r} has an empty key")
        try:
            value = _number_or_self(yaml.safe_load(text)) if text.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(key, f"{text!r} is not a valid YAML value: {yaml_problem(err)}") from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(key, f"{part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return out


def flip_probability(cfg) -> float:
    """Training's horizontal-flip probability: data.p_flip when set; otherwise DINO's 0.5, except for
    clips of the synthetic data, whose class includes the motion direction (and whose captions and
    audio name it), which a mirror would reverse: 0 there."""
    if cfg.data.p_flip is not None:
        return cfg.data.p_flip
    clips = cfg.method == "vatt" or cfg.dino.input == "video"
    return 0.0 if clips and cfg.data.source == "synthetic" else 0.5
