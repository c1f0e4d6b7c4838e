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
            write_json(self.root / tag / MANIFEST, {"step": step, "world_size": dist.get_world_size(),
                                                    "zero_stage": engine.zero_optimization_stage(), "files": files})
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
        for name, meta in manifest["files"].items():
            path = folder / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != meta["size"]:
                return f"{name} is truncated ({path.stat().st_size} of {meta['size']} bytes)"
            if "sha256" in meta and _sha256(path) != meta["sha256"]:
                return f"{name} is corrupt (checksum mismatch)"
        return None

    def manifest(self, step: int) -> dict[str, Any]:
        return json.loads((self.root / _tag(step) / MANIFEST).read_text())

    def latest_sound(self) -> int | None:
        """Collective: the step of the newest checkpoint that every rank finds sound (damaged ones
        are skipped with a message), or None."""
        for step in self.complete():
            reason = self.problem(step)
            if all_true(reason is None):  # all ranks take the same decision
                return step
            if dist.get_rank() == 0:
                log.info("skipping checkpoint %s: %s", _tag(step), reason or "damaged on another rank")
        return None

    def load(self, engine, step: int, *, universal: bool = False) -> dict[str, Any]:
        """Restore the checkpoint of `step` on every rank; returns its client state.

        The client state carries this rank's RNG states under "rng"; apply them with `set_rng_state`
        right before the first step, so nothing in between can draw from them. This rank's own
        state (`save`'s rank_state), if any was saved, is under "rank".

        `universal`: the checkpoint was written by another number of ranks or at another ZeRO stage
        (the engine was built with checkpoint.load_universal): rank 0 converts it, every rank loads
        the conversion, and what it leaves out is restored from the original (scaling.train.reshard).
        The saved ranks' RNG streams are then not restored ("rng" is absent).
        """
        from scaling.train import reshard

        folder = self.root / _tag(step)
        if not universal:
            _, client_state = engine.load_checkpoint(str(self.root), tag=_tag(step), load_optimizer_states=True,
                                                     load_lr_scheduler_states=False)
            client_state["rng"] = torch.load(folder / f"rng_rank{dist.get_rank()}.pt", weights_only=False)
            own = folder / f"state_rank{dist.get_rank()}.pt"
            client_state["rank"] = torch.load(own, weights_only=False) if own.is_file() else {}
            return client_state
        if dist.get_rank() == 0:
            reshard.convert(self.root, _tag(step))
        barrier()
        # DeepSpeed's ZeRO-3 universal load gives every parameter group the first group's settings;
        # ours carry their own flags (no weight decay on norms, DINO's frozen last layer): kept as built.
        settings = [{k: v for k, v in group.items() if k != "params"} for group in engine.optimizer.param_groups]
        try:
            _, client_state = engine.load_checkpoint(str(self.root / reshard.UNIVERSAL), tag=_tag(step),
                                                     load_optimizer_states=True, load_lr_scheduler_states=False)
            for group, kept in zip(engine.optimizer.param_groups, settings, strict=True):
                group.update(kept)
            _unshare_steps(engine.optimizer)
            reshard.restore_outside_optimizer(engine, folder)
            client_state["rank"] = reshard.rank_state(folder, int(self.manifest(step)["world_size"]), engine)
        finally:
            barrier()
            if dist.get_rank() == 0:
                shutil.rmtree(self.root / reshard.UNIVERSAL, ignore_errors=True)
        client_state.pop("rng", None)
        return client_state


def _unshare_steps(optimizer) -> None:
    """Give every optimizer state its own step counter. DeepSpeed's ZeRO-3 universal load hands one
    `step` tensor to all of them, and a fused Adam, which increments each state's counter in place,
    then advanced it once per state each step: from the second step on, the bias correction was wrong."""
    inner = getattr(optimizer, "optimizer", optimizer)
    for state in getattr(inner, "state", {}).values():
        if isinstance(state.get("step"), torch.Tensor):
            state["step"] = state["step"].clone()

