"""Linear-probe evaluation for the `scaling` suite (one run): a linear classifier on frozen features.
Owns feature standardisation and the full-batch, seeded L-BFGS fit of the probe."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scaling.eval.knn import _check_labels, topk_accuracy
from scaling.validate import integer, number


def _check_split(name: str, feats: torch.Tensor, labels: torch.Tensor) -> None:
    if feats.ndim != 2:
        raise ValueError(f"{name}_feats must be (N, D), got {tuple(feats.shape)}")
    if labels.shape != (feats.shape[0],):
        raise ValueError(f"{name}_labels must be ({feats.shape[0]},) to match {name}_feats, got {tuple(labels.shape)}")


def linear_probe_accuracy(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                          test_labels: torch.Tensor, num_classes: int, *, epochs: int = 100, lr: float = 1.0,
                          weight_decay: float = 1e-4, seed: int = 0) -> dict[str, float]:
    """Top-1 (and top-5 when num_classes >= 5) test accuracy in percent of a linear classifier
    trained on the standardised train features.

    The probe minimises cross-entropy + weight_decay/2 * ||W||^2 with full-batch L-BFGS (strong-Wolfe
    line search), `epochs` iterations at most; `lr` scales L-BFGS's step. The problem is convex, so
    this converges without a learning-rate schedule, and full-batch steps make it deterministic.
    """
    integer("num_classes", num_classes, minimum=2)
    _check_split("train", train_feats, train_labels)
    _check_split("test", test_feats, test_labels)
    if train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"train_feats and test_feats must share the feature dim D, got "
                         f"{train_feats.shape[1]} and {test_feats.shape[1]}")
    if train_feats.shape[0] < 2 or test_feats.shape[0] == 0:
        raise ValueError(f"need >= 2 train rows and >= 1 test row, got {train_feats.shape[0]} and "
                         f"{test_feats.shape[0]}")
    _check_labels("train_labels", train_labels, num_classes)
    _check_labels("test_labels", test_labels, num_classes)
    integer("epochs", epochs, minimum=1)
    number("lr", lr, exclusive_minimum=0)
    number("weight_decay", weight_decay, minimum=0)

    # The probe is small enough for the CPU in float32, whatever device/dtype produced the features.
    train_x = train_feats.detach().float().cpu()
    test_x = test_feats.detach().float().cpu()
    # Train statistics only: the test set must not leak into the probe.
    mean = train_x.mean(dim=0)
    std = train_x.std(dim=0, unbiased=False).clamp(min=1e-6)  # constant dims become 0, not inf
    train_x = (train_x - mean) / std
    test_x = (test_x - mean) / std
    train_y = train_labels.long().cpu()

    gen = torch.Generator().manual_seed(seed)
    dim = train_x.shape[1]
    weight = (torch.randn(num_classes, dim, generator=gen) * dim**-0.5 * 0.01).requires_grad_()
    bias = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=lr, max_iter=epochs, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(F.linear(train_x, weight, bias), train_y)
        loss = loss + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        scores = F.linear(test_x, weight, bias)
    return topk_accuracy(scores, test_labels.cpu(), num_classes)
