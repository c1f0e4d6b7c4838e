"""Part of the `scaling` (one run) layer: getting batches onto the accelerator without stalling it.
Owns the non-blocking host-to-device copy, the one-batch-ahead prefetch and the uint8 -> float step.

Decoded video crosses PCIe as uint8 (a quarter of fp32's bytes) from pinned memory, copied with
non_blocking=True while the previous step computes, and becomes float on the device.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch


def send(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """x on `device`: itself when it is there already, else a non-blocking copy (pinned first, so the
    copy is asynchronous; the DataLoader pins batches itself when a GPU is present)."""
    device = torch.device(device)
    if x.device == device or (device.type == "cuda" and device.index is None and x.is_cuda):
        return x
    if device.type == "cuda" and x.device.type == "cpu" and not x.is_pinned():
        x = x.pin_memory()
    return x.to(device, non_blocking=True)


def send_batch(batch: Mapping[str, Any], device: torch.device | str, keys=None) -> dict[str, Any]:
    """The batch's tensors (those under `keys`, if given) on `device` (see `send`); the rest as they are."""
    return {k: send(v, device) if isinstance(v, torch.Tensor) and (keys is None or k in keys) else v
            for k, v in batch.items()}


def unit_float(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Pixels as floats in [0, 1]: uint8 (0..255, how decoders deliver frames) is scaled where it
    lives, on the device; floating input passes through (cast to `dtype` only if it is not float)."""
    if x.dtype == torch.uint8:
        return x.to(dtype).div_(255.0)
    return x if x.is_floating_point() else x.to(dtype)


class Prefetcher:
    """Iterates `batches` one ahead: batch i + 1's copy to the GPU is issued on a side stream while
    the caller computes on batch i. On the CPU batches pass through as they come."""

    def __init__(self, batches: Iterable[Mapping[str, Any]], device: torch.device | str):
        self.batches = iter(batches)
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._next: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any] | None:
        try:
            batch = next(self.batches)
        except StopIteration:
            return None
        if self.stream is None:
            return send_batch(batch, self.device)
        with torch.cuda.stream(self.stream):
            return send_batch(batch, self.device)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        if self.stream is None:  # nothing to overlap: load lazily, exactly as the plain loader
            return send_batch(next(self.batches), self.device)
        batch = self._next if self._next is not None else self._load()
        if batch is None:
            raise StopIteration
        if self.stream is not None:
            # The compute stream waits for the copy; the tensors' memory is then owned by it.
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
            for v in batch.values():
                if isinstance(v, torch.Tensor) and v.is_cuda:
                    v.record_stream(torch.cuda.current_stream(self.device))
        self._next = self._load()
        return batch
