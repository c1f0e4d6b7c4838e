"""Tests for scaling.eval.knn: DINO's weighted k-NN votes, accuracies and feature extraction."""

import math

import pytest
import torch

from scaling.eval.knn import knn_accuracy, knn_predict


def clusters(n_per_class, num_classes, dim=16, spread=0.05, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_classes, dim, generator=gen)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    feats = centers[labels] + spread * torch.randn(len(labels), dim, generator=gen)
    return feats, labels


def test_votes_match_hand_computed_exponential_weights():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    bank_labels = torch.tensor([0, 1, 0, 1])
    # Queries are not unit length: knn_predict must normalise them.
    queries = torch.tensor([[2.0, 0.0], [-1.0, 2.0]])
    t = 0.5
    votes = knn_predict(bank, bank_labels, queries, num_classes=2, k=3, temperature=t)
    # Query 1 = (1, 0): sims 1, 0, 1/sqrt2, -1 -> top-3 are rows 0 (cls 0), 2 (cls 0), 1 (cls 1).
    # Query 2 = (-1, 2)/sqrt5: sims -1/sqrt5, 2/sqrt5, 1/sqrt10, 1/sqrt5 -> rows 1 (1), 3 (1), 2 (0).
    r2, r5, r10 = math.sqrt(2), math.sqrt(5), math.sqrt(10)
    expected = torch.tensor([
        [math.exp(1 / t) + math.exp(1 / r2 / t), math.exp(0.0)],
        [math.exp(1 / r10 / t), math.exp(2 / r5 / t) + math.exp(1 / r5 / t)],
    ])
    assert torch.allclose(votes, expected, rtol=1e-5)


def test_separable_clusters_give_perfect_accuracy():
    train, train_y = clusters(30, 6)
    test, test_y = clusters(10, 6, seed=0)
    test = test + 0.01 * torch.randn(test.shape, generator=torch.Generator().manual_seed(1))
    result = knn_accuracy(train, train_y, test, test_y, num_classes=6)
    assert result == {"top1": 100.0, "top5": 100.0}


def test_random_labels_give_near_chance_accuracy():
    gen = torch.Generator().manual_seed(0)
    train, test = torch.randn(2000, 32, generator=gen), torch.randn(1000, 32, generator=gen)
    train_y, test_y = torch.randint(0, 10, (2000,), generator=gen), torch.randint(0, 10, (1000,), generator=gen)
    result = knn_accuracy(train, train_y, test, test_y, num_classes=10)
    assert 5.0 < result["top1"] < 15.0
    assert 40.0 < result["top5"] < 60.0


def test_top5_only_reported_with_at_least_five_classes():
    train, train_y = clusters(5, 3)
    assert set(knn_accuracy(train, train_y, train, train_y, num_classes=3)) == {"top1"}


def test_k_larger_than_bank_uses_whole_bank():
    bank, labels = clusters(2, 2)
    queries = torch.randn(5, 16)
    assert torch.allclose(knn_predict(bank, labels, queries, 2, k=50), knn_predict(bank, labels, queries, 2, k=4))


def test_chunking_does_not_change_votes():
    bank, labels = clusters(20, 4)
    queries = torch.randn(37, 16)
    assert torch.allclose(knn_predict(bank, labels, queries, 4, chunk=5), knn_predict(bank, labels, queries, 4))


def test_half_precision_features_are_scored_in_float32():
    bank, labels = clusters(10, 3)
    votes = knn_predict(bank.half(), labels, bank.half(), 3)
    assert votes.dtype == torch.float32
    assert torch.equal(votes.argmax(1), labels)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(k=0), "k must"),
        (dict(temperature=0.0), "temperature"),
        (dict(chunk=0), "chunk"),
        (dict(num_classes=0), "num_classes"),
        (dict(num_classes=1), "train_labels must lie"),
        (dict(test_feats=torch.randn(3, 5)), "feature dim"),
        (dict(train_labels=torch.zeros(3, dtype=torch.long)), "train_labels must be"),
        (dict(train_labels=torch.zeros(4)), "integer"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, match):
    args = dict(train_feats=torch.randn(4, 2), train_labels=torch.tensor([0, 1, 0, 1]),
                test_feats=torch.randn(3, 2), num_classes=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        knn_predict(**args)
