"""One-run layer: speed and memory of the training step: samples/s, tokens/s, achieved TFLOP/s and
MFU against a matmul peak measured on this very device (CPU or GPU), plus memory in use.
"""
from __future__ import annotations

import functools
import resource
import time

import torch


@functools.cache
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


# Dense (no sparsity) tensor-core peaks from the vendors' datasheets, in FLOP/s, by the name
# torch.cuda.get_device_name() reports: what papers divide by when they quote MFU. bf16/fp16 peaks
# for half-precision runs, TF32 for fp32 runs (which enable TF32 matmuls on GPUs).
DATASHEET_PEAKS = {  # name fragment: (bf16/fp16, tf32)
    "H200": (989.4e12, 494.7e12),
    "H100 SXM": (989.4e12, 494.7e12), "H100 80GB HBM3": (989.4e12, 494.7e12),
    "H100 NVL": (835e12, 417.5e12), "H100 PCIe": (756e12, 378e12),
    "GH200": (989.4e12, 494.7e12),
    "A100": (312e12, 156e12),
    "L40S": (362.05e12, 183.2e12), "L4": (121e12, 60e12),
}


def datasheet_peak_flops(device: str, precision: str) -> float | None:
    """The datasheet's dense peak of this GPU for `precision` (None on the CPU or an unknown GPU)."""
    if device != "cuda" or not torch.cuda.is_available():
        return None
    return datasheet_peak_for(torch.cuda.get_device_name(), precision)


def datasheet_peak_for(name: str, precision: str) -> float | None:
    """The datasheet's dense peak for a GPU called `name` (longest matching fragment wins)."""
    matches = [k for k in DATASHEET_PEAKS if k.lower() in name.lower()]
    if not matches:
        return None
    half, tf32 = DATASHEET_PEAKS[max(matches, key=len)]
    return half if precision in ("bf16", "fp16") else tf32


class Throughput:
    """Times the optimizer steps between two logged steps; FLOPs are the analytic per-sample count
    from `describe`.

    The clock is read, and a GPU synchronised, only when a logged step asks for the figures
    (`stop`): a synchronisation every step would stall the host's queueing of the next step.
    """

    def __init__(self, flops_per_sample: float, global_batch: int, device: str, tokens_per_sample: float = 0,
                 world_size: int = 1, precision: str = "fp32"):
        self.flops_per_sample = flops_per_sample
        self.global_batch = global_batch
        self.device = device
        self.tokens_per_sample = tokens_per_sample
        self.world_size = world_size
        self.peak = matmul_peak_flops(device)
        self.datasheet_peak = datasheet_peak_flops(device, precision)
        self._t0: float | None = None
        self._steps = 0

    def start(self) -> None:
        """Call at the start of every optimizer step: the first call after `stop` starts the clock."""
        if self._t0 is None:
            if self.device == "cuda":
                torch.cuda.synchronize()  # once per logging interval
            self._t0 = time.perf_counter()
            self._steps = 0
        self._steps += 1

    def stop(self) -> dict[str, float]:
        """The figures of the steps since the clock started, per step; restarts the interval."""
        if self.device == "cuda":
            torch.cuda.synchronize()
        dt = max(time.perf_counter() - (self._t0 or time.perf_counter()), 1e-9) / max(self._steps, 1)
        self._t0 = None
        samples = self.global_batch / dt
        per_device = samples * self.flops_per_sample / self.world_size
        out = {"samples_per_s": samples, "tokens_per_s": samples * self.tokens_per_sample,
               "tflops_per_device": per_device / 1e12, "mfu": per_device / self.peak,
               "step_time_s": dt, "memory_gb": memory_bytes(self.device) / 2**30}
        if self.datasheet_peak:
            out["mfu_datasheet"] = per_device / self.datasheet_peak
        return out
