"""Augmentation for the `scaling` suite (one run): DINO multi-crop as batched tensor ops.
Owns the random global/local crops and colour ops for image and video batches, and the evaluation view."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from scaling import draws
from scaling.data.device import unit_float
from scaling.validate import ConfigError, integer, number, pair

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ITU-R 601-2 luma, the weights PIL's "L" mode and torchvision's rgb_to_grayscale use.
_LUMA = (0.299, 0.587, 0.114)
# Box sampling retries, as in torchvision's RandomResizedCrop; drawn all at once per sample.
_BOX_ATTEMPTS = 10


def _check_prob(name: str, value) -> float:
    return number(name, value, minimum=0.0, maximum=1.0, note="a probability")


def _check_triple(name: str, value) -> tuple[float, float, float]:
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 3:
        raise ConfigError(name, f"got {value!r}; must be 3 probabilities (global crop 1, global crop 2, locals)")
    return tuple(_check_prob(f"{name}[{i}]", v) for i, v in enumerate(value))  # type: ignore[return-value]


def _check_batch(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim not in (4, 5):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be (B, C, H, W) images or (B, C, T, H, W) videos, got {shape}")
    if not (x.is_floating_point() or x.dtype == torch.uint8):
        raise ValueError(f"x must be uint8 pixels (0..255) or a floating tensor with values in [0, 1], "
                         f"got dtype {x.dtype}")


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half precision loses visible detail in the colour maths and some CPU kernels lack it,
    # so compute in float32 (float64 stays float64) and cast back once at the end.
    return torch.float64 if dtype == torch.float64 else torch.float32


# Mean/std per (device, dtype), made once: a fresh torch.tensor(..., device=cuda) per call is a
# blocking host-to-device copy in every step.
_CONSTANTS: dict[tuple[str, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}


def _mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    key = (str(x.device), x.dtype)
    if key not in _CONSTANTS:
        _CONSTANTS[key] = tuple(torch.tensor(v, dtype=x.dtype).to(x.device) for v in (IMAGENET_MEAN, IMAGENET_STD))
    shape = [1] * x.ndim
    shape[1] = 3
    mean, std = _CONSTANTS[key]
    return mean.view(shape), std.view(shape)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """ImageNet mean/std normalisation of (B, 3, H, W) or (B, 3, T, H, W) values in [0, 1] (floats)
    or 0..255 (uint8, converted to float32 first, on x's device)."""
    _check_batch(x)
    if x.shape[1] != 3:
        raise ValueError(f"x must have 3 (RGB) channels in dim 1 to normalise, got {x.shape[1]}")
    x = unit_float(x)
    mean, std = _mean_std(x)
    return (x - mean) / std


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=2)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(2)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=2)
    maxc, _ = x.max(dim=2)
    minc, _ = x.min(dim=2)
    chroma = maxc - minc
    sat = chroma / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    # The sector formulas of colorsys; the masks pick exactly one sector per pixel (r wins ties).
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    is_b = ~is_r & ~is_g
    hue = is_r * (bc - gc) + is_g * (2.0 + rc - bc) + is_b * (4.0 + gc - rc)
    hue = torch.remainder(hue / 6.0, 1.0)
    return torch.stack((hue, sat, maxc), dim=2)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(dim=2)
    h6 = h * 6.0
    vs = v * s
    # The branch-free form of the sector table: channel n is v - v*s*clamp(min(k, 4 - k), 0, 1)
    # with k = (n + 6h) mod 6 and n = 5, 3, 1 for r, g, b; no per-sector stack and gather.
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(h6 + n, 6.0)
        channels.append(v - vs * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0))
    return torch.stack(channels, dim=2)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    hsv = _rgb_to_hsv(x)
    hue = torch.remainder(hsv[:, :, 0:1] + shift, 1.0)
    return _hsv_to_rgb(torch.cat((hue, hsv[:, :, 1:]), dim=2)).clamp(0.0, 1.0)


def _gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    taps = torch.arange(-radius, radius + 1, dtype=sigma.dtype, device=sigma.device)
    kernel = torch.exp(-(taps.unsqueeze(0) ** 2) / (2.0 * sigma.unsqueeze(1) ** 2))
    return kernel / kernel.sum(dim=1, keepdim=True)


def _blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per sample, as two depthwise (grouped) convs."""
    n, t, c, h, w = x.shape
    kernel = _gaussian_kernels(sigma, radius)  # (n, K)
    kernel = kernel.repeat_interleave(t * c, dim=0)  # one depthwise filter per (sample, frame, channel)
    groups, size = n * t * c, 2 * radius + 1
    planes = x.reshape(1, groups, h, w)
    # Replicate padding extends edges like PIL's blur and, unlike reflect, works for any crop size.
    planes = F.pad(planes, (radius, radius, 0, 0), mode="replicate")
    planes = F.conv2d(planes, kernel.view(groups, 1, 1, size), groups=groups)
    planes = F.pad(planes, (0, 0, radius, radius), mode="replicate")
    planes = F.conv2d(planes, kernel.view(groups, 1, size, 1), groups=groups)
    return planes.view(n, t, c, h, w)


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1, 1)


class MultiCrop:
    """DINO multi-crop for a batch: ``[global1, global2, local1..localN]``.

    Images (B, C, H, W) give crops (B, C, S, S); videos (B, C, T, H, W) give (B, C, t, S, S),
    where t is ``global_frames`` / ``local_frames`` consecutive frames (None: all T).
    Every random choice is per sample and shared by all frames of a clip. The probabilities are
    DINO's defaults; tests and ablations switch ops off through the ``p_*`` keywords.
    """

    def __init__(
        self,
        global_size: int,
        local_size: int,
        n_local: int,
        *,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        global_frames: int | None = None,
        local_frames: int | None = None,
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        p_flip: float = 0.5,
        p_jitter: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.2,
        hue: float = 0.1,
        p_gray: float = 0.2,
        p_blur: tuple[float, float, float] = (1.0, 0.1, 0.5),
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        p_solarize: tuple[float, float, float] = (0.0, 0.2, 0.0),
        solarize_threshold: float = 0.5,
        normalize: bool = True,
    ) -> None:
        self.global_size = integer("global_size", global_size, minimum=1)
        self.local_size = integer("local_size", local_size, minimum=1)
        self.n_local = integer("n_local", n_local, minimum=0)
        self.global_scale = pair("global_scale", global_scale, exclusive_minimum=0.0, maximum=1.0)
        self.local_scale = pair("local_scale", local_scale, exclusive_minimum=0.0, maximum=1.0)
        self.global_frames = None if global_frames is None else integer("global_frames", global_frames, minimum=1)
        self.local_frames = None if local_frames is None else integer("local_frames", local_frames, minimum=1)
        self.ratio = pair("ratio", ratio, exclusive_minimum=0.0)
        self.p_flip = _check_prob("p_flip", p_flip)
        self.p_jitter = _check_prob("p_jitter", p_jitter)
        self.brightness = number("brightness", brightness, minimum=0.0)
        self.contrast = number("contrast", contrast, minimum=0.0)
        self.saturation = number("saturation", saturation, minimum=0.0)
        self.hue = number("hue", hue, minimum=0.0, maximum=0.5)
        self.p_gray = _check_prob("p_gray", p_gray)
        self.p_blur = _check_triple("p_blur", p_blur)
        self.blur_sigma = pair("blur_sigma", blur_sigma, exclusive_minimum=0.0)
        self.p_solarize = _check_triple("p_solarize", p_solarize)
        self.solarize_threshold = number("solarize_threshold", solarize_threshold, minimum=0.0, maximum=1.0)
        self.normalize = bool(normalize)
        # One fixed kernel width (3 sigma of the largest sigma) keeps shapes static across calls.
        self._blur_radius = max(1, math.ceil(3.0 * self.blur_sigma[1]))

    def __repr__(self) -> str:
        return (f"MultiCrop(global_size={self.global_size}, local_size={self.local_size}, n_local={self.n_local}, "
                f"global_frames={self.global_frames}, local_frames={self.local_frames})")

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        _check_batch(x)
        colour = self.p_jitter > 0 or self.p_gray > 0
        if colour and x.shape[1] != 3:
            raise ValueError(f"x must have 3 (RGB) channels for colour jitter/grayscale, got {x.shape[1]}; "
                             "set p_jitter=0 and p_gray=0 for other channel counts")
        if self.normalize and x.shape[1] != 3:
            raise ValueError(f"x must have 3 (RGB) channels to normalise, got {x.shape[1]}; set normalize=False")
        video = x.ndim == 5
        if not video and (self.global_frames is not None or self.local_frames is not None):
            raise ValueError("global_frames/local_frames apply to videos (B, C, T, H, W); got images (B, C, H, W)")
        b = x.shape[0]
        n_frames = x.shape[2] if video else 1
        for name, t in (("global_frames", self.global_frames), ("local_frames", self.local_frames)):
            if t is not None and t > n_frames:
                raise ValueError(f"{name}={t} exceeds the clip length T={n_frames}")
        # Frames of all clips side by side, so one roi_align call can crop any frame of any clip.
        out_dtype = x.dtype if x.is_floating_point() else torch.float32
        work = unit_float(x).to(_work_dtype(out_dtype))
        frames = work.transpose(1, 2).flatten(0, 1).contiguous() if video else work.contiguous()
        g1, g2, pl = self.p_blur
        s1, s2, sl = self.p_solarize
        crops = self._crops(frames, b, n_frames, 2, self.global_size, self.global_scale, self.global_frames,
                            [g1] * b + [g2] * b, [s1] * b + [s2] * b, generator)
        if self.n_local:
            n = self.n_local * b
            crops += self._crops(frames, b, n_frames, self.n_local, self.local_size, self.local_scale,
                                 self.local_frames, [pl] * n, [sl] * n, generator)
        if not video:
            crops = [c.squeeze(2) for c in crops]
        return [c.to(out_dtype).contiguous() for c in crops]

    # ------------------------------------------------------------------------ internals
    def _rand(self, *shape: int, generator: torch.Generator | None) -> torch.Tensor:
        # Parameters are drawn on the generator's device (CPU by default) in a fixed order and
        # count, so a seed pins every crop regardless of where the batch lives; they are tiny, so
        # bookkeeping happens on the CPU and only the finished parameters move to the batch.
        device = generator.device if generator is not None else torch.device("cpu")
        # Row i is sample i % b's (per sample, keyed by the global sample in training: scaling.draws).
        values = draws.rand(*shape, generator=generator, device=device, dtype=torch.float64)
        return values if values.device.type == "cpu" else values.cpu()

    def _boxes(self, n: int, h: int, w: int, scale: tuple[float, float], gen) -> torch.Tensor:
        """Per-sample random-resized-crop boxes (x0, y0, x1, y1) in pixels, torchvision's rule."""
        area = h * w * (scale[0] + (scale[1] - scale[0]) * self._rand(n, _BOX_ATTEMPTS, generator=gen))
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(lo + (hi - lo) * self._rand(n, _BOX_ATTEMPTS, generator=gen))
        bw = torch.round(torch.sqrt(area * aspect))
        bh = torch.round(torch.sqrt(area / aspect))
        ok = (bw > 0) & (bh > 0) & (bw <= w) & (bh <= h)
        first = ok.to(torch.int8).argmax(dim=1, keepdim=True)  # first attempt that fits
        found = ok.any(dim=1)
        # No attempt fit: centre crop of the whole frame with its aspect clamped into `ratio`.
        in_ratio = w / h
        if in_ratio < self.ratio[0]:
            fw, fh = w, round(w / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            fw, fh = round(h * self.ratio[1]), h
        else:
            fw, fh = w, h
        bw = torch.where(found, bw.gather(1, first)[:, 0], torch.full((n,), float(fw), dtype=torch.float64))
        bh = torch.where(found, bh.gather(1, first)[:, 0], torch.full((n,), float(fh), dtype=torch.float64))
        u = self._rand(n, 2, generator=gen)
        y0 = torch.where(found, torch.floor(u[:, 0] * (h - bh + 1)).clamp(max=h - bh), ((h - bh) // 2))
        x0 = torch.where(found, torch.floor(u[:, 1] * (w - bw + 1)).clamp(max=w - bw), ((w - bw) // 2))
        return torch.stack((x0, y0, x0 + bw, y0 + bh), dim=1)

    def _crops(self, frames, b, n_frames, k, size, scale, t, p_blur, p_solarize, gen) -> list[torch.Tensor]:
        """k crops of every clip, done as one batch of N = k * b rows (row r belongs to clip r % b)."""
        n = k * b
        t = n_frames if t is None else t
        device, dtype = frames.device, frames.dtype
        h, w = frames.shape[-2:]
        # Draw every parameter up front (fixed count and order), then move them to the device.
        boxes = self._boxes(n, h, w, scale, gen)
        start = torch.floor(self._rand(n, generator=gen) * (n_frames - t + 1)).clamp(max=n_frames - t).long()
        flip = self._rand(n, generator=gen) < self.p_flip
        jitter = self._rand(n, generator=gen) < self.p_jitter
        order = self._rand(n, 4, generator=gen).argsort(dim=1)  # torchvision shuffles the 4 jitter ops
        u = self._rand(n, 4, generator=gen)
        factors = torch.stack([1.0 + s * (2.0 * u[:, i] - 1.0) for i, s in
                               enumerate((self.brightness, self.contrast, self.saturation))], dim=1).clamp(min=0.0)
        hue = self.hue * (2.0 * u[:, 3] - 1.0)
        gray = self._rand(n, generator=gen) < self.p_gray
        blur = self._rand(n, generator=gen) < torch.tensor(p_blur, dtype=torch.float64)
        sigma = self.blur_sigma[0] + (self.blur_sigma[1] - self.blur_sigma[0]) * self._rand(n, generator=gen)
        solar = self._rand(n, generator=gen) < torch.tensor(p_solarize, dtype=torch.float64)

        # Crop: one ROI per (row, frame); every frame of a row shares the row's box.
        clip = torch.arange(n).remainder(b)
        frame_idx = (clip * n_frames + start).unsqueeze(1) + torch.arange(t).unsqueeze(0)  # (n, t)
        rois = torch.cat((frame_idx.reshape(-1, 1).to(torch.float64), boxes.repeat_interleave(t, dim=0)), dim=1)

        # The plan: which rows each op touches and its per-row values, worked out on the CPU (so no
        # choice waits on the device), then copied to the device in one transfer. Ops touch only
        # their rows (most fire on a minority of rows).
        staged = _Staged()
        roi_slot = staged.add(rois)
        plan: list[tuple] = []

        def on_rows(kind: str, mask: torch.Tensor, *values: torch.Tensor) -> None:
            rows = mask.nonzero().squeeze(1)
            if rows.numel():
                plan.append((kind, staged.add(rows), *(staged.add(v[rows]) for v in values)))

        on_rows("flip", flip)
        if self.p_jitter > 0:
            self._plan_jitter(jitter, order, factors, hue, on_rows, staged, plan)
        if self.p_gray > 0:
            on_rows("gray", gray)
        if any(p > 0 for p in p_blur):
            on_rows("blur", blur, sigma)
        if any(p > 0 for p in p_solarize):
            on_rows("solarize", solar)
        dev = staged.send(device)

        # aligned=True puts pixel centres at +0.5 like F.interpolate(align_corners=False); the adaptive
        # sampling ratio averages several samples per output pixel, which anti-aliases downscaling.
        out = roi_align(frames, dev[roi_slot].to(dtype), output_size=size, spatial_scale=1.0,
                        sampling_ratio=-1, aligned=True)
        out = out.view(n, t, frames.shape[1], size, size)
        for kind, *slots in plan:
            self._apply(out, kind, [dev[i] for i in slots], dtype)
        # (n, t, C, S, S) -> (n, C, t, S, S), the layout of the input videos.
        out = out.transpose(1, 2)
        if self.normalize:
            out = normalize(out)
        return list(out.split(b, dim=0))

    def _plan_jitter(self, on, order, factors, hue, on_rows, staged, plan) -> None:
        """Brightness, contrast, saturation, hue in a per-sample random order, on rows where `on`."""
        for step in range(4):
            op = order[:, step]
            # Brightness, contrast and saturation are all blends f*x + (1-f)*target (target 0, the
            # clip's mean gray, the pixel's gray), so one fused pass serves whichever of the three a
            # row does at this step; f = 1 leaves the row unchanged.
            blend = (op < 3) & on
            f = torch.where(blend, factors.gather(1, op.clamp(max=2).unsqueeze(1))[:, 0], 1.0)
            if np.any(f.numpy() != 1.0):  # host values (the generator's draws): no device read
                plan.append(("blend", staged.add((1.0 - f) * (op == 1)), staged.add((1.0 - f) * (op == 2)),
                             staged.add(f)))
            if self.hue > 0:
                on_rows("hue", (op == 3) & on, hue)

    def _apply(self, out: torch.Tensor, kind: str, args: list[torch.Tensor], dtype: torch.dtype) -> None:
        """One planned op, in place on `out` (n, t, C, S, S); args are its staged device tensors."""
        if kind == "blend":
            to_mean, to_gray, f = (_per_sample(a.to(dtype)) for a in args)
            gray = _gray(out)
            mean = gray.mean(dim=(1, 2, 3, 4), keepdim=True)  # per clip, so its frames stay consistent
            target = torch.addcmul(to_mean * mean, to_gray, gray)
            out.copy_(torch.addcmul(target, f, out).clamp_(0.0, 1.0))
            return
        idx, *values = args
        idx = idx.long()
        v = out.index_select(0, idx)
        if kind == "flip":
            v = v.flip(-1)
        elif kind == "hue":
            v = _shift_hue(v, _per_sample(values[0].to(dtype)))
        elif kind == "gray":
            v = _gray(v).expand_as(v)
        elif kind == "blur":
            v = _blur(v, values[0].to(dtype), self._blur_radius)
        elif kind == "solarize":
            v = torch.where(v >= self.solarize_threshold, 1.0 - v, v)
        out.index_copy_(0, idx, v)


class _Staged:
    """CPU tensors bound for the batch's device, sent in one (pinned, non-blocking) copy."""

    def __init__(self) -> None:
        self.parts: list[torch.Tensor] = []

    def add(self, t: torch.Tensor) -> int:
        self.parts.append(t.to(torch.float64))  # exact for every index and parameter used here
        return len(self.parts) - 1

    def send(self, device: torch.device) -> list[torch.Tensor]:
        if device.type == "cpu":
            return self.parts
        flat = torch.cat([p.reshape(-1) for p in self.parts]).pin_memory().to(device, non_blocking=True)
        return [chunk.view(p.shape) for chunk, p in zip(flat.split([p.numel() for p in self.parts]), self.parts)]


def measure_throughput(multicrop: MultiCrop, batch: torch.Tensor, seconds: float = 2.0) -> float:
    """Samples per second of ``multicrop(batch)`` over about `seconds` of wall time (after one warm-up)."""
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds!r}")
    gen = torch.Generator().manual_seed(0)
    sync = torch.cuda.synchronize if batch.is_cuda else (lambda: None)
    multicrop(batch, generator=gen)
    sync()
    calls, begin = 0, time.perf_counter()
    while True:
        multicrop(batch, generator=gen)
        sync()
        calls += 1
        elapsed = time.perf_counter() - begin
        if elapsed >= seconds:
            return calls * batch.shape[0] / elapsed
