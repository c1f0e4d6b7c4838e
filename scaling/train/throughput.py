"""One-run layer: speed and memory of the training step: samples/s, tokens/s, achieved TFLOP/s and
MFU against a matmul peak measured on this very device (CPU or GPU), plus memory in use.
"""
from __future__ import annotations

import functools
import resource
import time

import torch


@functools.lru_cache(maxsize=None)
def matmul_peak_flops(device: str = "cpu", seconds: float = 0.3) -> float:
    """The FLOP/s a large square matmul reaches here (bf16 on GPU, fp32 on CPU): MFU's denominator."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    n = 8192 if device == "cuda" else 1024
    g = torch.Generator(device=device).manual_seed(0)  # never the run's RNG streams
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    a @ b  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - start)


def memory_bytes(device: str) -> float:
    if device == "cuda":
        return float(torch.cuda.max_memory_allocated())
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


class Throughput:
    """Times one optimizer step at a time; FLOPs are the analytic per-sample count from `describe`."""

    def __init__(self, flops_per_sample: float, global_batch: int, device: str, tokens_per_sample: float = 0,
                 world_size: int = 1):
        self.flops_per_sample = flops_per_sample
        self.global_batch = global_batch
        self.device = device
        self.tokens_per_sample = tokens_per_sample
        self.world_size = world_size
        self.peak = matmul_peak_flops(device)
        self._t0 = 0.0

    def start(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
        self._t0 = time.perf_counter()

    def stop(self, step: int) -> dict[str, float]:
        if self.device == "cuda":
            torch.cuda.synchronize()
        dt = max(time.perf_counter() - self._t0, 1e-9)
        samples = self.global_batch / dt
        per_device = samples * self.flops_per_sample / self.world_size
        return {"samples_per_s": samples, "tokens_per_s": samples * self.tokens_per_sample,
                "tflops_per_device": per_device / 1e12, "mfu": per_device / self.peak,
                "step_time_s": dt, "memory_gb": memory_bytes(self.device) / 2**30}
