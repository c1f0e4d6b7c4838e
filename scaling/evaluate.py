"""One-run layer: the evaluation protocol shared by both methods: frozen backbone features of the
whole clip, weighted k-NN (DINO's protocol) and an optional linear probe, train split -> eval split.
"""
from __future__ import annotations

import torch
from torch import nn

from scaling.eval.knn import extract_features, knn_accuracy
from scaling.eval.linear import linear_probe_accuracy
from scaling.objectives import eval_input, unwrap


@torch.no_grad()
def backbone_features(cfg, model: nn.Module, objective, loader) -> tuple[torch.Tensor, torch.Tensor]:
    module = unwrap(model)
    device = next(module.parameters()).device
    key = "image" if cfg.data.source == "images" else "video"
    was_training = module.training
    module.eval()
    try:
        feats, labels = extract_features(
            lambda x: objective.encode(module, eval_input(cfg, {key: x}, device)).float().cpu(),
            loader, device="cpu", key=key)
    finally:
        module.train(was_training)
    return feats, labels


def evaluate(cfg, model: nn.Module, objective, train_loader, eval_loader, *, linear: bool | None = None) -> dict[str, float]:
    """k-NN (and linear-probe) top-1 of the eval split against the train split, in percent."""
    train_x, train_y = backbone_features(cfg, model, objective, train_loader)
    test_x, test_y = backbone_features(cfg, model, objective, eval_loader)
    n_classes = int(max(train_y.max(), test_y.max()).item()) + 1
    knn = knn_accuracy(train_x, train_y, test_x, test_y, n_classes, k=cfg.eval.knn_k,
                       temperature=cfg.eval.knn_temperature)
    out = {"knn_top1": knn["top1"]}
    if "top5" in knn:
        out["knn_top5"] = knn["top5"]
    if cfg.eval.linear_probe if linear is None else linear:
        out["linear_top1"] = linear_probe_accuracy(train_x, train_y, test_x, test_y, n_classes, seed=cfg.seed)["top1"]
    return out
