"""k-NN evaluation for the `scaling` suite (one run): DINO's weighted k-nearest-neighbour probe.
Owns the cosine-similarity, temperature-weighted vote."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scaling.validate import integer, number


def _check_bank(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                num_classes: int) -> None:
    integer("num_classes", num_classes, minimum=1)
    if train_feats.ndim != 2 or test_feats.ndim != 2:
        raise ValueError(f"train_feats and test_feats must be (N, D), got {tuple(train_feats.shape)} "
                         f"and {tuple(test_feats.shape)}")
    if train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"train_feats and test_feats must share the feature dim D, got "
                         f"{train_feats.shape[1]} and {test_feats.shape[1]}")
    if train_feats.shape[0] == 0:
        raise ValueError("train_feats must hold at least one row (the k-NN bank is empty)")
    if train_labels.shape != (train_feats.shape[0],):
        raise ValueError(f"train_labels must be ({train_feats.shape[0]},) to match train_feats, "
                         f"got {tuple(train_labels.shape)}")
    _check_labels("train_labels", train_labels, num_classes)


def _check_labels(name: str, labels: torch.Tensor, num_classes: int) -> None:
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got dtype {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"{name} must lie in [0, num_classes={num_classes}), "
                         f"got values in [{int(labels.min())}, {int(labels.max())}]")


def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                num_classes: int, k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Summed neighbour votes, (N_test, num_classes): each of the k most cosine-similar bank rows
    votes for its label with weight exp(sim / temperature). k is clipped to the bank size."""
    _check_bank(train_feats, train_labels, test_feats, num_classes)
    integer("k", k, minimum=1, note="k must count at least one neighbour; a larger k than the bank is clipped")
    number("temperature", temperature, exclusive_minimum=0)
    integer("chunk", chunk, minimum=1)
    # float32 at least: half-precision similarities near 1 lose the ranking between close neighbours.
    dtype = torch.promote_types(train_feats.dtype, torch.float32)
    bank = F.normalize(train_feats.to(dtype), dim=1)
    labels = train_labels.to(device=bank.device, dtype=torch.long)
    k = min(k, bank.shape[0])
    scores = []
    # Chunks bound the (rows x bank) similarity matrix, the only large intermediate.
    for rows in test_feats.split(chunk):
        query = F.normalize(rows.to(device=bank.device, dtype=dtype), dim=1)
        sim, idx = (query @ bank.T).topk(k, dim=1)
        votes = torch.zeros(query.shape[0], num_classes, device=bank.device, dtype=dtype)
        votes.scatter_add_(1, labels[idx], (sim / temperature).exp())
        scores.append(votes)
    if not scores:
        return torch.zeros(0, num_classes, device=bank.device, dtype=dtype)
    return torch.cat(scores)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Top-1 (and top-5 when num_classes >= 5) accuracy in percent of (N, num_classes) scores."""
    if scores.shape[0] == 0:
        raise ValueError("cannot score an empty test set (0 rows)")
    labels = labels.to(scores.device).long().view(-1, 1)
    result = {"top1": (scores.argmax(dim=1, keepdim=True) == labels).double().mean().item() * 100.0}
    if num_classes >= 5:
        top5 = scores.topk(5, dim=1).indices
        result["top5"] = (top5 == labels).any(dim=1).double().mean().item() * 100.0
    return result


def knn_accuracy(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: int, k: int = 20,
                 temperature: float = 0.07) -> dict[str, float]:
    """Weighted k-NN accuracy in percent: {"top1": ...} plus "top5" when num_classes >= 5."""
    if test_labels.shape != (test_feats.shape[0],):
        raise ValueError(f"test_labels must be ({test_feats.shape[0]},) to match test_feats, "
                         f"got {tuple(test_labels.shape)}")
    _check_labels("test_labels", test_labels, num_classes)
    scores = knn_predict(train_feats, train_labels, test_feats, num_classes, k=k, temperature=temperature)
    return topk_accuracy(scores, test_labels, num_classes)
