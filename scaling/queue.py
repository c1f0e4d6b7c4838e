"""One-run layer: VATT's queue of past embeddings (vatt.negatives=queue), as in MoCo (He et al. 2020).

A FIFO of detached, L2-normalised embeddings of both sides of each pair: video and audio in the
video-audio space, video and its K captions in the video-text space. They join the loss as extra
negatives (constants: no gradient reaches them). Each micro-step stages its embeddings, gathered
over the ranks so that every rank holds the same queue; `push` enqueues what was staged once per
optimizer step, after the update. So every micro-step of an optimizer step sees the same queue,
the queue is a function of the optimizer steps alone (a checkpoint at a step boundary resumes it
exactly), and its oldest entries were embedded queue_size / global_batch optimizer steps ago:
by weights that many updates stale. No momentum encoder (MoCo's fix for that staleness) is used:
see the README.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from scaling.distributed import all_gather_cat

KEYS = ("video_va", "audio_va", "video_vt", "text_vt")


class EmbeddingQueue:
    """`size` past rows of each of KEYS, newest last in time; `negatives()` gives the filled part."""

    def __init__(self, size: int):
        self.size = size
        self.buffers: dict[str, torch.Tensor] = {}
        self.filled = 0   # rows holding an embedding (on the host: no device read to know it)
        self.head = 0     # the next row to overwrite
        self._staged: list[dict[str, torch.Tensor]] = []

    def negatives(self, device: torch.device) -> dict[str, torch.Tensor] | None:
        """The queued rows of each key, on `device` (None while the queue is empty)."""
        if not self.filled:
            return None
        if next(iter(self.buffers.values())).device != device:  # restored from a checkpoint on the host
            self.buffers = {k: b.to(device) for k, b in self.buffers.items()}
        return {k: b[:self.filled] for k, b in self.buffers.items()}

    def stage(self, out: dict[str, torch.Tensor]) -> None:
        """Keep one micro-step's embeddings (normalised, detached, gathered over ranks) for `push`."""
        with torch.no_grad():
            self._staged.append({k: all_gather_cat(F.normalize(out[k].detach().float(), dim=-1)) for k in KEYS})

    def push(self) -> None:
        """Enqueue every row staged since the last push, overwriting the oldest."""
        if not self._staged:
            return
        rows = {k: torch.cat([s[k] for s in self._staged]) for k in KEYS}
        self._staged = []
        n = next(iter(rows.values())).shape[0]
        if not self.buffers:
            self.buffers = {k: v.new_zeros((self.size, *v.shape[1:])) for k, v in rows.items()}
        if n > self.size:  # more rows than the queue holds: only the newest fit
            rows, n = {k: v[-self.size:] for k, v in rows.items()}, self.size
        index = (self.head + torch.arange(n, device=rows["video_va"].device)) % self.size
        for k, v in rows.items():
            self.buffers[k].index_copy_(0, index, v)
        self.head = (self.head + n) % self.size
        self.filled = min(self.size, self.filled + n)

    def state_dict(self) -> dict[str, Any]:
        return {"buffers": {k: v.detach().to("cpu", copy=True) for k, v in self.buffers.items()},
                "filled": self.filled, "head": self.head}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffers = {k: v.clone() for k, v in state["buffers"].items()}
        self.filled, self.head = int(state["filled"]), int(state["head"])
        self._staged = []
