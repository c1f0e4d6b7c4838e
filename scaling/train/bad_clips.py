"""Part of the `scaling` (one run) layer: the clips of a run that failed to decode.
Owns their count (the same on every rank), the `data.max_bad_fraction` limit and their checkpoint state.

A data set replaces a clip that fails by another and marks the sample's "bad" entry with the failed
indices (scaling.data.files.ManifestClips); this takes that entry off each batch on the host, so
counting costs no device sync. Ranks learn of each other's new failures through the reduction every
optimizer step already makes (`all_agree`), and gather them only on a step that has some.
"""

from __future__ import annotations

from typing import Any

import torch

from scaling.distributed import union_of_sets


class TooManyBadClips(Exception):
    """More clips than data.max_bad_fraction failed; the message names them."""


class BadClips:
    def __init__(self, dataset, max_fraction: float, known=()):
        self.dataset, self.max_fraction = dataset, max_fraction
        self.known: set[int] = set(known)   # on every rank, after each merge
        self.new: set[int] = set()           # this rank's, not yet merged
        self.tracks = hasattr(dataset, "describe_clip")

    def take(self, batch: dict[str, Any]) -> dict[str, Any]:
        """`batch` without its "bad" entry, whose failed indices are remembered."""
        bad = batch.pop("bad", None)
        if isinstance(bad, torch.Tensor):
            self.new.update(int(i) for i in bad[bad >= 0].tolist() if int(i) not in self.known)
        return batch

    @property
    def pending(self) -> bool:
        return bool(self.new)

    def merge(self) -> None:
        """Collective: every rank's new failures joined into `known`; raises TooManyBadClips past the limit."""
        self.known |= union_of_sets(self.new)
        self.new.clear()
        if len(self.known) > self.max_fraction * len(self.dataset):
            names = "; ".join(self.describe()[:20])
            raise TooManyBadClips(
                f"{len(self.known)} of {len(self.dataset)} clips failed to decode, more than "
                f"data.max_bad_fraction={self.max_fraction}: {names}"
                + (" ..." if len(self.known) > 20 else "") + " (find them all with: scaling data check MANIFEST)")

    @property
    def count(self) -> int:
        return len(self.known)

    def describe(self) -> list[str]:
        return [self.dataset.describe_clip(i) for i in sorted(self.known)]
