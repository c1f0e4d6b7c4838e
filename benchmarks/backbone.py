"""Benchmark 1: backbone training step vs timm.

One training step (forward + backward + AdamW) of our backbones against timm's, same batch,
resolution, token count, device and dtype:

- image: `scaling.models.vit_small(patch_size=16)` vs timm `vit_small_patch16_224`
  (`pretrained=False, num_classes=0`, so both return the pooled CLS feature after the final norm;
  drop_path 0 on both);
- video: VATT's video backbone (`scaling.models.vatt.video_encoder(size, frames, resolution, 0, 0)`:
  4x16x16 voxel tokenizer + the shared transformer) vs timm `vit_base_patch16_224` (the same width,
  depth, heads and MLP) at an equal token count: a clip of 4 frames x 224^2 is 1 x 14 x 14 = 196
  voxel tokens, exactly the 196 patch tokens of one 224^2 image. The two then differ only in the
  tokenizer: a voxel has 4x the fan-in of an image patch (3*4*16*16 = 3072 vs 768), about 1.5% more
  training FLOPs, so the video row is judged per FLOP: ratio <= goal x the analytic FLOP ratio.

The loss is the mean of the squared output features (cheap and identical for both); the optimizer
is torch.optim.AdamW(lr=1e-4, fused=True), as the runs' engine builds it. On CUDA the step
runs under bf16 autocast and the goal is <= 0.9; on CPU it runs in fp32 and the goal is <= 1.0.

Timing: each round runs every case once, the order reversed every other round (the harness's
`interleaved` with one rep per round), and the ratio is the median over rounds of the per-round
ratio ours / timm, so a slow spell of a shared machine falls on both sides of a pair alike.
"""
from __future__ import annotations

import gc
import statistics
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.core import Result, check_scale, interleaved

NAME = "backbone"
TITLE = "Backbone step vs timm"
GOAL = ("training-step time ours / timm <= 1.0 on CPU fp32 and <= 0.9 on GPU bf16, for ViT-S/16 (image) "
        "and, per FLOP, for the VATT-base video backbone at the token count of a 224^2 image")

COLUMNS = ["backbone", "ours", "baseline", "input", "tokens", "batch", "device", "ours s", "timm s",
           "ratio", "FLOP ratio", "goal", "met"]

# (image resolution, image batch, video size, video frames, video resolution, video batch, rounds)
SCALES: dict[str, dict[str, Any]] = {
    "full": {"cpu": dict(image="small", res=224, image_batch=2, video_size="base", frames=4, video_res=224, video_batch=1,
                         image_rounds=9, video_rounds=7, warmup=1),
             "cuda": dict(image="small", res=224, image_batch=128, video_size="base", frames=4, video_res=224, video_batch=64,
                          image_rounds=20, video_rounds=20, warmup=3)},
    # Smoke: ViT-Ti/16 (the same modules as ViT-S) on one sample at 32 px (2x2 tokens), and the
    # video backbone at the smallest size against a timm ViT of the same dimensions.
    "smoke": {"cpu": dict(image="tiny", res=32, image_batch=1, video_size="nano", frames=4, video_res=32, video_batch=1,
                          image_rounds=1, video_rounds=1, warmup=0)},
}
SCALES["smoke"]["cuda"] = SCALES["smoke"]["cpu"]


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _sync(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def train_step(model: torch.nn.Module, x: torch.Tensor, device: str) -> Callable[[], None]:
    """One step: zero_grad, forward under the device's autocast, mean squared feature, backward, AdamW."""
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05, fused=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            features = model(x)
        features.float().square().mean().backward()
        optimizer.step()

    return step


def rounds_of(cases: dict[str, Callable[[], Any]], rounds: int, warmup: int,
              sync: Callable[[], None]) -> dict[str, list[float]]:
    """Seconds of every case in each of `rounds` rounds: each round runs every case once (the harness's
    `interleaved` with one rep), the order reversed every other round, after `warmup` untimed runs."""
    names = list(cases)
    for _ in range(warmup):
        for fn in cases.values():
            fn()
        sync()
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        stats = interleaved({k: cases[k] for k in order}, reps=1, warmup=0, sync=sync)
        for k in names:
            times[k].append(stats[k]["median"])
    return times


def paired_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """The median over rounds of the per-round ratio num / den."""
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def paired(cases: dict[str, Callable[[], None]], rounds: int, warmup: int,
           sync: Callable[[], None]) -> tuple[dict[str, float], float]:
    """Median seconds per case and the paired ratio first case / second case."""
    times = rounds_of(cases, rounds, warmup, sync)
    a, b = list(cases)
    return {k: statistics.median(v) for k, v in times.items()}, paired_ratio(times, a, b)


def _train_flops(tokens: int, patch_dim: int, width: int, layers: int, mlp: int) -> int:
    """Training FLOPs of one sample: tokenizer + blocks, backward = 2 forwards but the tokenizer's (no input grad)."""
    from scaling.describe import linear_flops, transformer_flops
    from scaling.models.sizes import Size

    tok = linear_flops(tokens, patch_dim, width)
    # Full blocks on both sides, so the ratio isolates the tokenizer; skipping the last block's
    # non-CLS rows (our backbones do, timm does not) is part of what the timing measures.
    fwd = tok + transformer_flops(Size(layers=layers, width=width, heads=1, mlp=mlp), tokens, pooled=False)
    return 3 * fwd - tok


def _timm_vit(name: str, img_size: int, **dims: Any) -> torch.nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, num_classes=0, drop_path_rate=0.0, img_size=img_size, **dims)


def _release(*objs: Any) -> None:
    del objs
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _image_row(p: dict[str, Any], device: str, limit: float, dtype: str) -> tuple[dict[str, Any], tuple[int, int]]:
    """ViT-S/16 (or ViT-Ti/16 at smoke scale) vs timm vit_small_patch16_224: the row, and the
    parameter counts (ours, timm)."""
    from scaling.models import vit_small, vit_tiny

    torch.manual_seed(0)
    res, b = p["res"], p["image_batch"]
    ours = {"small": vit_small, "tiny": vit_tiny}[p["image"]](patch_size=16, img_size=res)
    ref = _timm_vit(f"vit_{p['image']}_patch16_224", res)
    counts = (sum(q.numel() for q in ours.parameters()), sum(q.numel() for q in ref.parameters()))
    x = torch.randn(b, 3, res, res, device=device)
    sec, ratio = paired({"ours": train_step(ours, x, device), "timm": train_step(ref, x, device)},
                        p["image_rounds"], p["warmup"], _sync(device))
    tokens = (res // 16) ** 2
    short = {"small": "S", "tiny": "Ti"}[p["image"]]
    row = {"backbone": f"image ViT-{short}/16", "ours": f"scaling.models.vit_{p['image']}",
           "baseline": f"timm vit_{p['image']}_patch16_224",
           "input": f"{res}x{res} image", "tokens": tokens, "batch": b, "device": f"{device} {dtype}",
           "ours s": sec["ours"], "timm s": sec["timm"], "ratio": ratio, "FLOP ratio": 1.0,
           "goal": f"<= {limit}", "met": ratio <= limit}
    _release(ours, ref, x)
    return row, counts


def _video_row(p: dict[str, Any], device: str, limit: float, dtype: str) -> dict[str, Any]:
    """VATT's video backbone vs a timm ViT of the same size at an equal token count, judged per FLOP."""
    from scaling.models.sizes import SIZES
    from scaling.models.tokenizers import VOXEL
    from scaling.models.vatt import video_encoder

    torch.manual_seed(0)
    size, frames, vres, vb = p["video_size"], p["frames"], p["video_res"], p["video_batch"]
    s = SIZES[size]
    ours = video_encoder(size, frames, vres, 0.0, 0.0)
    grid = (frames // VOXEL[0], vres // VOXEL[1], vres // VOXEL[2])
    tokens = grid[0] * grid[1] * grid[2]
    # An image with the clip's token count: one 16 px patch per voxel of a (nt*nh) x nw grid.
    img_h, img_w = grid[0] * grid[1] * 16, grid[2] * 16
    ref = _timm_vit("vit_base_patch16_224", (img_h, img_w), embed_dim=s.width, depth=s.layers,
                    num_heads=s.heads, mlp_ratio=s.mlp / s.width)
    video = torch.randn(vb, 3, frames, vres, vres, device=device)
    image = torch.randn(vb, 3, img_h, img_w, device=device)
    sec, ratio = paired({"ours": train_step(ours, video, device), "timm": train_step(ref, image, device)},
                        p["video_rounds"], p["warmup"], _sync(device))
    flop_ratio = (_train_flops(tokens, 3 * VOXEL[0] * VOXEL[1] * VOXEL[2], s.width, s.layers, s.mlp)
                  / _train_flops(tokens, 3 * 16 * 16, s.width, s.layers, s.mlp))
    row = {"backbone": f"video VATT-{size}", "ours": "scaling.models.vatt.video_encoder",
           "baseline": "timm vit_base_patch16_224" + ("" if size == "base" else f" at {size} dims"),
           "input": f"{frames}x{vres}x{vres} clip vs {img_h}x{img_w} image", "tokens": tokens, "batch": vb,
           "device": f"{device} {dtype}", "ours s": sec["ours"], "timm s": sec["timm"], "ratio": ratio,
           "FLOP ratio": flop_ratio, "goal": f"<= {limit} x FLOP ratio = {limit * flop_ratio:.3f}",
           "met": ratio <= limit * flop_ratio}
    _release(ours, ref, video, image)
    return row


def run(scale: str) -> Result:
    """Both rows; how they are measured, and what the backbones share, is in BENCHMARKS.md
    ("How the benchmarks measure")."""
    check_scale(scale)
    import importlib.util

    if importlib.util.find_spec("timm") is None:
        return Result(NAME, TITLE, GOAL, COLUMNS, [], None, "skipped: timm is not installed")
    device = _device()
    p = SCALES[scale][device]
    limit = 0.9 if device == "cuda" else 1.0
    dtype = "bf16 autocast" if device == "cuda" else "fp32"
    image, (n_ours, n_ref) = _image_row(p, device, limit, dtype)
    rows = [image, _video_row(p, device, limit, dtype)]
    notes = [f"Parameters, image: ours {n_ours:,}, timm {n_ref:,}."]
    if scale == "smoke":
        notes.append("smoke scale: ViT-Ti/16 on one sample at 32 px and the nano video backbone; the numbers mean nothing.")
    met = all(r["met"] for r in rows) if scale == "full" else None
    return Result(NAME, TITLE, GOAL, COLUMNS, rows, met, notes=notes)
