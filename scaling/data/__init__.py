"""Part of the `scaling` (one run) layer: the data sets a run trains and evaluates on.
Owns the public data API: synthetic and file-backed clips, caption encoding and the sharded loader.

The names below load their modules (and torch) on first use, so that the `scaling` entry point,
which imports `scaling.data.commands` to list the `data` commands, starts without torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "ImageFolderDataset": "scaling.data.files",
    "ManifestClips": "scaling.data.files",
    "ShardedEpochSampler": "scaling.data.loader",
    "build_dataset": "scaling.data.loader",
    "build_loader": "scaling.data.loader",
    "collate_batch": "scaling.data.loader",
    "SyntheticClips": "scaling.data.synthetic",
    "measure_throughput": "scaling.data.synthetic",
    "PAD_ID": "scaling.data.text",
    "encode_caption": "scaling.data.text",
    "word_id": "scaling.data.text",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'scaling.data' has no attribute {name!r}")
