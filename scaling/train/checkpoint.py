"""One-run layer: collective DeepSpeed checkpoints with everything exact resume needs (per-rank RNG,
objective state), a completeness manifest, pruning to the last K, and skipping of damaged ones.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from scaling.distributed import all_true, barrier
from scaling.train.rundir import write_json

MANIFEST = "COMPLETE.json"
HASH_LIMIT = 64 << 20  # files up to this size are also checksummed; larger ones are size-checked

log = logging.getLogger(__name__)


def _tag(step: int) -> str:
    return f"step_{step:08d}"


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
             "augment": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    generator.set_state(state["augment"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


class Checkpoints:
    """checkpoints/step_XXXXXXXX/ folders; a folder counts only once its manifest is written."""

    def __init__(self, root: Path, keep: int = 2):
        self.root = Path(root)
        self.keep = keep

    def save(self, engine, step: int, client_state: dict[str, Any], generator: torch.Generator,
             rank_state: dict[str, Any] | None = None) -> None:
        """Collective: every rank calls it. Rank 0 writes the manifest after all ranks have written.

        `client_state` is the same on every rank (rank 0's copy is kept); `rank_state` is this
        rank's own (e.g. the partition of the DINO teacher's fp32 shadow) and is written per rank.
        """
        rank = dist.get_rank()
        tag = _tag(step)
        engine.save_checkpoint(str(self.root), tag=tag, client_state=client_state, save_latest=False)
        torch.save(rng_state(generator), self.root / tag / f"rng_rank{rank}.pt")
        if rank_state:
            torch.save(rank_state, self.root / tag / f"state_rank{rank}.pt")
        barrier()
        if rank == 0:
            files = {str(p.relative_to(self.root / tag)): {
                "size": p.stat().st_size, **({"sha256": _sha256(p)} if p.stat().st_size <= HASH_LIMIT else {})}
                for p in _files(self.root / tag)}
            write_json(self.root / tag / MANIFEST, {"step": step, "world_size": dist.get_world_size(), "files": files})
            for old in self.complete()[self.keep:]:
                shutil.rmtree(self.root / _tag(old), ignore_errors=True)
        barrier()

    def complete(self) -> list[int]:
        """Steps of folders with a manifest, newest first."""
        steps = []
        for manifest in self.root.glob(f"step_*/{MANIFEST}"):
            try:
                steps.append(int(json.loads(manifest.read_text())["step"]))
            except (ValueError, KeyError, json.JSONDecodeError):
                continue
        return sorted(steps, reverse=True)

    def problem(self, step: int) -> str | None:
        """Why the checkpoint of `step` cannot be trusted, or None."""
        folder = self.root / _tag(step)
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as err:
            return f"unreadable manifest ({err})"
        if manifest.get("world_size") != dist.get_world_size():
            return f"written by {manifest.get('world_size')} ranks, this run has {dist.get_world_size()}"
        for name, meta in manifest["files"].items():
            path = folder / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != meta["size"]:
                return f"{name} is truncated ({path.stat().st_size} of {meta['size']} bytes)"
            if "sha256" in meta and _sha256(path) != meta["sha256"]:
                return f"{name} is corrupt (checksum mismatch)"
        return None

    def load_latest(self, engine) -> tuple[int, dict[str, Any]] | None:
        """Restore the newest sound checkpoint on every rank; damaged ones are skipped with a message.

        The client state carries this rank's RNG states under "rng"; apply them with `set_rng_state`
        right before the first step, so nothing in between can draw from them. This rank's own
        state (`save`'s rank_state), if any was saved, is under "rank".
        """
        for step in self.complete():
            reason = self.problem(step)
            if not all_true(reason is None):  # all ranks take the same decision
                if dist.get_rank() == 0:
                    log.info("skipping checkpoint %s: %s", _tag(step), reason or "damaged on another rank")
                continue
            _, client_state = engine.load_checkpoint(str(self.root), tag=_tag(step), load_optimizer_states=True,
                                                     load_lr_scheduler_states=False)
            folder = self.root / _tag(step)
            client_state["rng"] = torch.load(folder / f"rng_rank{dist.get_rank()}.pt", weights_only=False)
            own = folder / f"state_rank{dist.get_rank()}.pt"
            client_state["rank"] = torch.load(own, weights_only=False) if own.is_file() else {}
            return step, client_state
        return None
