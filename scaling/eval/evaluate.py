"""One-run layer: the evaluation protocol shared by both methods: frozen backbone features of whole
clips (the teacher's for DINO), weighted k-NN, a linear probe and, for VATT, video-text retrieval.

In a distributed run every rank embeds its padded shard (all ranks must run the forward under
ZeRO-3) and the features are gathered as tensors (scaling.distributed); without a process group it
runs in one process. Features stay on the model's device: the k-NN and retrieval run there (fp32),
the linear probe copies them to the CPU.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from scaling import distributed
from scaling.data.device import send_batch
from scaling.data.loader import build_dataset, loader_options
from scaling.eval.knn import knn_accuracy
from scaling.eval.linear import linear_probe_accuracy
from scaling.objectives import dataset_options, eval_input, param_dtype, unwrap

EVAL_BATCH = 128


def _shard(n: int, rank: int, world: int) -> list[int]:
    """This rank's indices, padded so every rank runs the same number of forwards."""
    idx = list(range(rank, n, world))
    per_rank = math.ceil(n / world)
    return idx + [idx[-1] if idx else 0] * (per_rank - len(idx))


def _eval_loader(cfg, dataset, rank: int, world: int) -> DataLoader:
    """This rank's padded shard of `dataset` in batches of EVAL_BATCH views (clips of several views
    come fewer per batch), read by `data.num_workers` worker processes into pinned memory (where
    there is a GPU to copy to)."""
    if isinstance(dataset, torch.utils.data.IterableDataset):  # shards: each rank reads its own, once
        dataset.place(rank, world, workers=cfg.data.num_workers)
        sampler = None
    else:
        sampler = _shard(len(dataset), rank, world)
    # One pass per evaluation: its workers are not kept (a new loader is made for each evaluation).
    options = loader_options(cfg.data.num_workers, persistent_workers=False, prefetch_factor=cfg.data.prefetch_factor,
                             pin_memory=cfg.data.pin_memory)
    return DataLoader(
        dataset, batch_size=max(1, EVAL_BATCH // cfg.eval.views), sampler=sampler,
        # A loader draws its base seed from its generator, or else from the global torch RNG,
        # which evaluation must leave as it found it.
        generator=torch.Generator().manual_seed(cfg.seed), **options)


@torch.no_grad()
def embed(cfg, engine, objective, dataset) -> dict[str, torch.Tensor]:
    """Backbone features, labels, clip indices (and VATT's video/text embeddings) of a whole data
    set, on every rank, in index order, on the module's device. A clip of several views (a batch's
    video is (B, V, 3, T, H, W)) is embedded view by view and its features are the mean over them:
    the video, not the view, is the unit of evaluation.

    Every rank embeds its padded shard (the same number of rows on each), the rows are gathered as
    tensors, and the padding's repeats are dropped."""
    module = unwrap(engine)
    device = next(module.parameters()).device
    loader = _eval_loader(cfg, dataset, distributed.rank(), distributed.world_size())
    keys = {"video", "image", "label", "index"} | ({"text"} if cfg.method == "vatt" else set())
    was_training = module.training
    module.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    try:
        for batch in loader:
            batch = send_batch(batch, device, keys)  # asynchronous, from pinned memory
            views = batch["video"].shape[1] if "video" in batch and batch["video"].ndim == 6 else 1
            if views > 1:
                batch["video"] = batch["video"].flatten(0, 1)
            x = eval_input(cfg, batch, device).to(param_dtype(module))  # a bf16 engine's module is bf16
            feats = objective.encode(engine, x)  # the video encoder's one pass over this batch
            if views > 1:
                feats = feats.unflatten(0, (-1, views)).mean(dim=1)
            out = {"feats": feats.float(), "labels": batch["label"],
                   "index": torch.as_tensor(batch["index"], device=device)}
            if cfg.method == "vatt":
                v, t = module.video_text_embeddings_from(feats, batch["text"])
                out.update(video_vt=v.float(), text_vt=t.float())
            for k, v in out.items():
                parts.setdefault(k, []).append(v)
    finally:
        module.train(was_training)
    local = {k: torch.cat(v) for k, v in parts.items()}
    if isinstance(dataset, torch.utils.data.IterableDataset):
        # Ranks read whole shards, so their row counts differ: pad each to the largest with repeats
        # of its last row (dropped below, as the padding of map-style shards is).
        rows = max(dataset.rank_samples(r) for r in range(distributed.world_size()))
        local = {k: torch.cat([v, v[-1:].expand(rows - len(v), *v.shape[1:])]) for k, v in local.items()}
    # Equal shards: every rank gathers the same shapes, rank order.
    local = {k: distributed.all_gather_cat(v) for k, v in local.items()}
    # Padding repeated some rows: keep each clip once, in index order.
    index = local["index"]
    order = torch.argsort(index, stable=True)
    keep = torch.ones(len(order), dtype=torch.bool, device=index.device)
    keep[1:] = index[order][1:] != index[order][:-1]
    rows = order[keep]
    return {k: v[rows] for k, v in local.items()}


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
    bank = embed(cfg, engine, objective,
                 build_dataset(cfg.data, "train", **dataset_options(cfg, evaluation=True, split="train")))
    test = embed(cfg, engine, objective, build_dataset(cfg.data, "eval", **dataset_options(cfg, evaluation=True)))
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
