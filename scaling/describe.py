"""One-run layer: the cost of a RunConfig without training it: parameters by part, analytic
FLOPs per sample (DropToken and multi-crop counted; model FLOPs, and hardware FLOPs with activation
checkpointing's recompute), tokens, batch arithmetic, memory per GPU.

Importing it loads no torch (`sweeps.commands` formats its tables with `human`): the FLOP and
memory arithmetic is plain Python; only what builds or asks torch (`count_params`, the device of
`resolved_precision`, hence `describe`) imports it, when called.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from scaling.config import RunConfig
from scaling.models import build_model, by_method, crop_geometry
from scaling.models.geometry import AUDIO_PATCH, VOXEL, kept_tokens
from scaling.models.sizes import SIZES, Size

if TYPE_CHECKING:
    from torch import nn

VOXEL_DIM = 3 * VOXEL[0] * VOXEL[1] * VOXEL[2]


# ----------------------------------------------------------------------------- FLOPs
def transformer_flops(size: Size, tokens: int, pooled: bool = True) -> int:
    """Forward matmul FLOPs of one sequence of `tokens` (+1 CLS) through the blocks.

    Per layer: qkv 3d^2, projection d^2 and the two MLP maps 2dm, each 2 FLOPs per multiply-add
    per token; attention scores and the weighted sum 2 x 2 n^2 d. pooled (what the backbones
    compute, `Transformer.pool`): the last layer still makes keys and values (and queries, in
    the one qkv map) for every token, but attention, projection and MLP only for the CLS row.
    """
    n, d, m = tokens + 1, size.width, size.mlp
    per_layer = 2 * n * (4 * d * d + 2 * d * m) + 4 * n * n * d
    if not pooled:
        return size.layers * per_layer
    last = 2 * n * 3 * d * d + 2 * (d * d + 2 * d * m) + 4 * n * d
    return (size.layers - 1) * per_layer + last


def linear_flops(rows: int, fan_in: int, fan_out: int) -> int:
    return 2 * rows * fan_in * fan_out


def _train(fwd: int, first_layer: int = 0) -> int:
    """Forward + backward: the backward costs two forwards, except the first layer, whose input
    needs no gradient (only its weight gradient is computed)."""
    return 3 * fwd - first_layer


def video_grid(frames: int, resolution: int) -> int:
    return (frames // VOXEL[0]) * (resolution // VOXEL[1]) * (resolution // VOXEL[2])


def _encoder_forward(tokens: int, fan_in: int, size: Size, shared: bool, sequences: int = 1) -> tuple[int, int]:
    """Forward FLOPs of one modality encoder (tokenizer, blocks, and under the shared backbone the
    per-modality pre-projection on every token and post-projection on the pooled row), for
    `sequences` sequences of `tokens` each; and the raw projection's share, whose input needs no
    gradient."""
    d = size.width
    raw = sequences * linear_flops(tokens, fan_in, d)
    projections = sequences * (linear_flops(tokens, d, d) + linear_flops(1, d, d)) if shared else 0
    return raw + projections + sequences * transformer_flops(size, tokens), raw


def _vatt_costs(cfg: RunConfig) -> dict[str, Any]:
    d, v = cfg.data, cfg.vatt
    sv, sa, st = SIZES[cfg.size], SIZES[v.audio_size or cfg.size], SIZES[v.text_size or cfg.size]
    nv_full, na_full = video_grid(d.frames, d.resolution), d.audio_samples // AUDIO_PATCH
    nv, na = kept_tokens(nv_full, cfg.drop_rate), kept_tokens(na_full, cfg.drop_rate)
    nt, k = d.max_words, d.captions
    shared = v.shared_backbone
    fwd_v, raw_v = _encoder_forward(nv, VOXEL_DIM, sv, shared)
    fwd_a, raw_a = _encoder_forward(na, AUDIO_PATCH, sa, shared)
    # Text's pre-projection is its word projection with a GELU (no extra matmul).
    fwd_t, raw_t = _encoder_forward(nt, v.word_dim, st, False, sequences=k)
    if shared:
        fwd_t += k * linear_flops(1, st.width, st.width)
    blocks_v, blocks_a, blocks_t = transformer_flops(sv, nv), transformer_flops(sa, na), k * transformer_flops(st, nt)
    video, audio, text = _train(fwd_v, raw_v), _train(fwd_a, raw_a), _train(fwd_t, raw_t)
    from scaling.objectives import caches_negatives, contrasted_batch, queued_negatives

    # Each row is scored against every contrasted clip: the micro-batch x ranks, or under GradCache
    # the optimizer batch.
    negatives = contrasted_batch(cfg) * cfg.world_size + queued_negatives(cfg)
    loss = _train(2 * negatives * v.va_dim + 2 * negatives * k * v.vt_dim)
    heads_fwd = (linear_flops(1, sv.width, v.va_dim) + linear_flops(1, v.va_dim, v.va_dim) + linear_flops(1, sa.width, v.va_dim)
                 + linear_flops(1, v.va_dim, v.vt_dim) + linear_flops(k, st.width, v.vt_dim))
    return {
        # GradCache's first pass: the whole forward once more, without a graph (hardware, not model, FLOPs).
        "extra_hardware_flops": fwd_v + fwd_a + fwd_t + heads_fwd if caches_negatives(cfg) else 0,
        "flops": {"video": video, "audio": audio, "text": text, "heads": _train(heads_fwd), "loss": loss},
        "tokens": {"video": nv, "audio": na, "text": nt * k,
                   "video_full": nv_full, "audio_full": na_full},
        # Evaluation never drops: the whole clip's tokens, tokenizer included.
        "eval_flops_per_sample": _encoder_forward(nv_full, VOXEL_DIM, sv, shared)[0],
        "block_forward_flops": blocks_v + blocks_a + blocks_t,
        # (tokens, width, layers) of each transformer call; the K captions run as one batch.
        "encoders": [(nv, sv.width, sv.layers), (na, sa.width, sa.layers), (nt * k, st.width, st.layers)],
    }


def _dino_costs(cfg: RunConfig) -> dict[str, Any]:
    c, s = cfg.dino, SIZES[cfg.size]
    geo = crop_geometry(cfg)
    if c.input == "video":
        n_global = video_grid(geo["global_frames"], geo["global_resolution"])
        n_local = video_grid(geo["local_frames"], geo["local_resolution"])
        patch_dim = VOXEL_DIM
    else:
        n_global = (geo["global_resolution"] // c.patch_size) ** 2
        n_local = (geo["local_resolution"] // c.patch_size) ** 2
        patch_dim = 3 * c.patch_size ** 2
    # Only the student drops tokens; the teacher sees whole global crops. (The image ViT never
    # drops: the config refuses drop_rate > 0 with dino.input='image'.)
    sg, sl = kept_tokens(n_global, cfg.drop_rate), kept_tokens(n_local, cfg.drop_rate)
    # Image ViT's positions are interpolated per crop; CLS takes part like every other token.
    tok = lambda n: linear_flops(n, patch_dim, s.width)  # noqa: E731
    head = (linear_flops(1, s.width, c.hidden_dim) + linear_flops(1, c.hidden_dim, c.hidden_dim)
            + linear_flops(1, c.hidden_dim, c.bottleneck_dim) + linear_flops(1, c.bottleneck_dim, c.out_dim))
    student_blocks = 2 * transformer_flops(s, sg) + c.local_crops * transformer_flops(s, sl)
    student_fwd = 2 * tok(sg) + c.local_crops * tok(sl) + student_blocks
    student = _train(student_fwd, 2 * tok(sg) + c.local_crops * tok(sl))
    student_head = _train((2 + c.local_crops) * head)
    teacher = 2 * (tok(n_global) + transformer_flops(s, n_global) + head)
    return {
        "flops": {"student_backbone": student, "student_head": student_head, "teacher": teacher},
        "tokens": {"global_crop": sg, "local_crop": sl, "teacher_global_crop": n_global,
                   "crops": 2 + c.local_crops, "student_total": 2 * sg + c.local_crops * sl},
        "crops": geo,
        "eval_flops_per_sample": tok(n_global) + transformer_flops(s, n_global),
        # Only the student's blocks are recomputed: the teacher runs under no_grad.
        "block_forward_flops": student_blocks,
        # The student runs its backbone once per resolution: both globals together, then the locals.
        "encoders": [(2 * sg, s.width, s.layers), (c.local_crops * sl, s.width, s.layers)],
    }


def _simclr_costs(cfg: RunConfig) -> dict[str, Any]:
    s, c = SIZES[cfg.size], cfg.simclr
    geo = crop_geometry(cfg)
    n_view = video_grid(geo["global_frames"], geo["global_resolution"])
    sv = kept_tokens(n_view, cfg.drop_rate)
    tok = linear_flops(sv, VOXEL_DIM, s.width)
    blocks = transformer_flops(s, sv)
    hidden = c.proj_hidden or s.width
    head = linear_flops(1, s.width, hidden) + linear_flops(1, hidden, c.proj_dim)
    # NT-Xent: each of a sample's two views against all 2N views of the global batch.
    views = 2 * cfg.micro_batch * cfg.world_size
    return {
        "flops": {"backbone": _train(2 * (tok + blocks), 2 * tok), "head": _train(2 * head),
                  "loss": _train(2 * 2 * views * c.proj_dim)},
        "tokens": {"view": sv, "view_full": n_view, "views": 2},
        "eval_flops_per_sample": linear_flops(n_view, VOXEL_DIM, s.width) + transformer_flops(s, n_view),
        "block_forward_flops": 2 * blocks,
        "encoders": [(2 * sv, s.width, s.layers)],
    }


# ----------------------------------------------------------------------------- params
def _vatt_parts(cfg: RunConfig, model: nn.Module) -> list[tuple[str, nn.Module]]:
    parts = [("shared_backbone", model.video.transformer)] if cfg.vatt.shared_backbone else []
    parts.append(("word_embeddings", model.text.tokenizer.embed))
    parts += [(f"{name}_backbone", getattr(model, name)) for name in ("video", "audio", "text")]
    return parts + [("heads", model.heads)]


def _dino_parts(cfg: RunConfig, model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [("backbone", model.student.backbone), ("head", model.student.head), ("teacher", model.teacher)]


def _simclr_parts(cfg: RunConfig, model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [("backbone", model.net.backbone), ("head", model.net.head)]


# Per method of scaling.config.METHODS: its analytic costs, and its parts (name, submodule) in counting order.
COSTS: dict[str, Callable[[RunConfig], dict[str, Any]]] = {"vatt": _vatt_costs, "dino": _dino_costs,
                                                          "simclr": _simclr_costs}
PARTS: dict[str, Callable[[RunConfig, nn.Module], list[tuple[str, nn.Module]]]] = {
    "vatt": _vatt_parts, "dino": _dino_parts, "simclr": _simclr_parts}


def count_params(cfg: RunConfig) -> dict[str, int]:
    """Exact parameter counts by part, from the real module built on the meta device (no memory).
    A parameter shared by two parts counts in the first (VATT's shared backbone)."""
    import torch

    with torch.device("meta"):
        model = build_model(cfg)
    parts: dict[str, int] = {}
    seen: set[int] = set()
    for name, module in by_method(PARTS, cfg.method)(cfg, model):
        n = 0
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
        if n:
            parts[name] = n
    parts["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    parts["frozen"] = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    parts["total"] = parts["trainable"] + parts["frozen"]
    return parts


# ----------------------------------------------------------------------------- memory
def resolved_precision(cfg: RunConfig, device: str | None = None) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return "bf16" if device == "cuda" else "fp32"


def engine_zero_stage(zero_stage: int, precision: str) -> int:
    """The ZeRO stage the DeepSpeed engine is built with.

    Half precision at stage 0 is DeepSpeed's slowest path: it wraps a torch optimizer in
    FP16_UnfusedOptimizer, whose overflow check reads every gradient tensor back to the host and
    which copies the master weights parameter by parameter. Stage 1 gives the same maths (fp32
    master weights, one global-norm clip) with flat fused buffers, and only partitions the
    optimizer state, which saves memory and changes no result. fp32 at stage 0 stays stage 0.
    """
    return 1 if zero_stage == 0 and precision in ("bf16", "fp16") else zero_stage


def fp32_grad_accumulation(engine_stage: int, precision: str) -> bool:
    """Whether the engine accumulates bf16 gradients in fp32: at stage 1 (DeepSpeed's BF16_Optimizer,
    which holds a full fp32 gradient buffer); ZeRO-2/3 keep their own partitioned buffers."""
    return precision == "bf16" and engine_stage == 1


def model_state_bytes(trainable: int, frozen: int, stage: int, world: int, precision: str,
                      offload: bool = False) -> dict[str, float]:
    """Per-rank bytes of parameters, gradients and optimizer state (ZeRO paper, Rajbhandari et al.).

    Mixed precision (bf16/fp16): 2 bytes of params and grads, K = 12 bytes of fp32 master copy,
    Adam momentum and variance. fp32: 4 + 4 bytes and K = 8 (Adam m, v) at stage 0, where torch's
    optimizer updates the fp32 params in place; K = 12 at stages >= 1, because DeepSpeed's ZeRO
    optimizers keep an fp32 master partition of their own even of fp32 params (measured by
    `scaling bench zero_memory`).
    Stage 1 partitions the optimizer state, stage 2 also the gradients, stage 3 also the params.
    `stage` is the engine's (`engine_zero_stage`); bf16 at stage 1 adds a whole fp32 gradient buffer.
    """
    half = precision in ("bf16", "fp16")
    p_bytes, g_bytes, k_bytes = (2, 2, 12) if half else (4, 4, 8 if stage == 0 else 12)
    n = max(world, 1)
    params = (trainable + frozen) * p_bytes / (n if stage >= 3 else 1)
    grads = trainable * g_bytes / (n if stage >= 2 else 1)
    if fp32_grad_accumulation(stage, precision):
        grads += trainable * 4  # BF16_Optimizer's fp32 accumulation buffer, whole on every rank
    optim = trainable * k_bytes / (n if stage >= 1 else 1)
    out = {"params": params, "grads": grads, "optimizer": optim}
    if offload:
        out["cpu_offloaded"] = params + optim
        out["params"], out["optimizer"] = 0.0, 0.0
    out["total"] = out["params"] + out["grads"] + out["optimizer"]
    return out


# Values the backward keeps per token, width unit and layer (Korthikanti et al. 2022, with fused
# attention removing the n^2 term).
SAVED_PER_LAYER = 17


def activation_bytes(cfg: RunConfig, encoders: list[tuple[int, int, int]], precision: str) -> float:
    """Rough activation memory of one micro-batch; encoders: (tokens per sample, width, layers) of
    each transformer call of a step.

    Without checkpointing every layer keeps its ~17 values per token and width unit until the
    backward reaches it. With activation checkpointing each block keeps only its input (1 value
    instead of 17 per layer), and the backward recomputes one block at a time, whose full ~17 values
    live only until that block's gradients are done: add one layer of the largest call (the most
    tokens x width). The embeddings, final norm and heads outside the blocks are small either way.
    """
    elem = 2 if precision in ("bf16", "fp16") else 4
    token_layers = sum(n * d * layers for n, d, layers in encoders)
    if not cfg.activation_checkpointing:
        return SAVED_PER_LAYER * elem * cfg.micro_batch * token_layers
    kept = elem * cfg.micro_batch * token_layers
    recomputed = SAVED_PER_LAYER * elem * cfg.micro_batch * max(n * d for n, d, _ in encoders)
    return kept + recomputed


def describe(cfg: RunConfig, device: str | None = None) -> dict[str, Any]:
    costs = by_method(COSTS, cfg.method)(cfg)
    params = count_params(cfg)
    flops = costs["flops"]
    per_sample = sum(flops.values())
    # Model FLOPs (what MFU and the analysis count) stay per_sample; with activation checkpointing
    # the hardware also runs the blocks' forward once more in the backward: x 4 instead of x 3.
    # GradCache (vatt.negatives=cached) runs the forward twice: once more on the hardware too.
    hardware = (per_sample + (costs["block_forward_flops"] if cfg.activation_checkpointing else 0)
                + costs.get("extra_hardware_flops", 0))
    precision = resolved_precision(cfg, device)
    stage = engine_zero_stage(cfg.zero_stage, precision)
    states = model_state_bytes(params["trainable"], params["frozen"], stage, cfg.world_size,
                               precision, cfg.offload)
    activations = activation_bytes(cfg, costs["encoders"], precision)
    batch = {"global_batch": cfg.global_batch, "micro_batch": cfg.micro_batch,
             "accumulation": cfg.accumulation, "world_size": cfg.world_size,
             "formula": f"{cfg.micro_batch} x {cfg.accumulation} x {cfg.world_size} = {cfg.global_batch}"}
    if cfg.data.repeats > 1:
        batch["repeats"] = cfg.data.repeats
        batch["clips_per_micro_batch"] = cfg.micro_batch // cfg.data.repeats
    if cfg.method == "vatt":
        from scaling.losses import negatives_per_positive
        from scaling.objectives import contrasted_batch, queued_negatives, same_video_masked

        batch["negatives_per_positive"] = negatives_per_positive(contrasted_batch(cfg), cfg.world_size,
                                                                 same_video_masked(cfg), queued_negatives(cfg))
        batch["negatives"] = cfg.vatt.negatives
    elif cfg.method == "simclr":  # the other view is the positive; the other 2N - 2 views are negatives
        batch["negatives_per_positive"] = 2 * cfg.micro_batch * cfg.world_size - 2
    out = {
        "method": cfg.method,
        "size": cfg.size,
        "drop_rate": cfg.drop_rate,
        "params": params,
        "flops_per_sample": per_sample,
        "flops_per_sample_by_part": flops,
        "hardware_flops_per_sample": hardware,
        "eval_flops_per_sample": costs["eval_flops_per_sample"],
        "flops_per_step": per_sample * cfg.global_batch,
        "total_flops": per_sample * cfg.total_samples,
        "steps": cfg.total_steps,
        "samples": cfg.total_samples,
        "tokens": costs["tokens"],
        "batch": batch,
        "memory_per_gpu": {
            "precision": precision, "zero_stage": cfg.zero_stage, "engine_zero_stage": stage, "offload": cfg.offload,
            "activation_checkpointing": cfg.activation_checkpointing,
            "model_states_bytes": states, "activations_bytes": activations,
            "total_bytes": states["total"] + activations,
        },
    }
    if "crops" in costs:
        out["crops"] = costs["crops"]
    return out


def human(n: float, unit: str = "", digits: int = 2, sep: str = " ") -> str:
    """1.6e12 -> '1.60 T' + unit: the SI prefix of a count, FLOPs or bytes, for tables."""
    for scale, suffix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.{digits}f}{sep}{suffix}{unit}"
    return f"{n:.0f}{sep}{unit}".rstrip()

