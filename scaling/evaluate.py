"""One-run layer: the evaluation protocol shared by both methods: frozen backbone features of whole
clips (the teacher's for DINO), weighted k-NN, a linear probe and, for VATT, video-text retrieval.

In a distributed run every rank embeds its shard (all ranks must run the forward under ZeRO-3) and
the features are gathered; without a process group it runs in one process.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader

from scaling.data.loader import build_dataset, collate_batch
from scaling.eval.knn import knn_accuracy
from scaling.eval.linear import linear_probe_accuracy
from scaling.objectives import eval_input, param_dtype, unwrap

EVAL_BATCH = 128


def _shard(n: int, rank: int, world: int) -> list[int]:
    """This rank's indices, padded so every rank runs the same number of forwards."""
    idx = list(range(rank, n, world))
    per_rank = math.ceil(n / world)
    return idx + [idx[-1] if idx else 0] * (per_rank - len(idx))


@torch.no_grad()
def embed(cfg, engine, objective, dataset) -> dict[str, torch.Tensor]:
    """Backbone features, labels (and VATT's video/text embeddings) of a whole data set, on every rank."""
    module = unwrap(engine)
    device = next(module.parameters()).device
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    loader = DataLoader(dataset, batch_size=EVAL_BATCH, sampler=_shard(len(dataset), rank, world),
                        collate_fn=collate_batch)
    was_training = module.training
    module.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    try:
        for batch in loader:
            x = eval_input(cfg, batch, device).to(param_dtype(module))  # a bf16 engine's module is bf16
            out = {"feats": objective.encode(engine, x).float().cpu(), "labels": batch["label"].cpu(),
                   "index": torch.as_tensor(batch["index"]).cpu()}
            if cfg.method == "vatt":
                v, t = module.video_text_embeddings(x, batch["text"].to(device))
                out.update(video_vt=v.float().cpu(), text_vt=t.float().cpu())
            for k, v in out.items():
                parts.setdefault(k, []).append(v)
    finally:
        module.train(was_training)
    local = {k: torch.cat(v) for k, v in parts.items()}
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, local)
        local = {k: torch.cat([g[k] for g in gathered]) for k in local}
    # Padding repeated some rows: keep each clip once, in index order.
    order = torch.argsort(local["index"], stable=True)
    keep = torch.ones(len(order), dtype=torch.bool)
    keep[1:] = local["index"][order][1:] != local["index"][order][:-1]
    return {k: v[order][keep] for k, v in local.items()}


def retrieval_metrics(video: torch.Tensor, text: torch.Tensor) -> dict[str, float]:
    """Video->text and text->video R@1/5/10 (percent) and median rank of the paired item."""
    sim = F.normalize(video, dim=-1) @ F.normalize(text, dim=-1).t()
    out = {}
    for name, s in (("v2t", sim), ("t2v", sim.t())):
        ranks = (s > s.diagonal()[:, None]).sum(dim=1) + 1
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = (ranks <= k).float().mean().item() * 100
        out[f"{name}_median_rank"] = ranks.float().median().item()
    return out


def evaluate(cfg, engine, objective) -> dict[str, float]:
    """k-NN (k=20, T=0.07, cosine), linear probe and, for VATT, retrieval: train split -> eval split.

    It leaves torch's RNG streams as it found them (a DataLoader draws its base seed from them), so
    a run trains the same with or without its random-init and intermediate evaluations."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        return _evaluate(cfg, engine, objective)


def _evaluate(cfg, engine, objective) -> dict[str, float]:
    bank = embed(cfg, engine, objective, build_dataset(cfg.data, "train"))
    test = embed(cfg, engine, objective, build_dataset(cfg.data, "eval"))
    out: dict[str, float] = {}
    if bank["labels"].min() >= 0 and test["labels"].min() >= 0:
        n_classes = int(max(bank["labels"].max(), test["labels"].max())) + 1
        knn = knn_accuracy(bank["feats"], bank["labels"], test["feats"], test["labels"], n_classes,
                           k=cfg.eval.knn_k, temperature=cfg.eval.knn_temperature)
        out.update({f"knn_{k}": v for k, v in knn.items()})
        if cfg.eval.linear_probe:
            probe = linear_probe_accuracy(bank["feats"], bank["labels"], test["feats"], test["labels"],
                                          n_classes, seed=cfg.seed)
            out["linear_top1"] = probe["top1"]
    if cfg.method == "vatt":
        out.update(retrieval_metrics(test["video_vt"], test["text_vt"]))
    return out
