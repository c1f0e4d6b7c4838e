"""Tests for scaling.eval.linear: the standardised, seeded linear probe on frozen features."""

import pytest
import torch

from scaling.eval.linear import linear_probe_accuracy


def split(num_classes=5, n_train=400, n_test=200, dim=32, noise=1.0, seed=0, random_labels=False):
    gen = torch.Generator().manual_seed(seed)
    centers = 3.0 * torch.randn(num_classes, dim, generator=gen)
    y = torch.randint(0, num_classes, (n_train + n_test,), generator=gen)
    x = centers[y] + noise * torch.randn(len(y), dim, generator=gen)
    if random_labels:
        y = torch.randint(0, num_classes, (len(y),), generator=gen)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def test_separable_classes_are_probed_perfectly():
    result = linear_probe_accuracy(*split(), num_classes=5)
    assert result["top1"] >= 99.0 and result["top5"] == 100.0


def test_badly_scaled_features_are_standardised_first():
    # One dimension dwarfs the rest and carries no signal; without standardisation L-BFGS would
    # spend its iterations on it.
    train_x, train_y, test_x, test_y = split(num_classes=4)
    scale = torch.ones(train_x.shape[1])
    scale[0] = 1e4
    shift = 1e3
    result = linear_probe_accuracy(train_x * scale + shift, train_y, test_x * scale + shift, test_y, 4)
    assert result["top1"] >= 99.0


def test_random_labels_give_near_chance_accuracy():
    result = linear_probe_accuracy(*split(num_classes=4, n_test=2000, random_labels=True), num_classes=4)
    assert 19.0 < result["top1"] < 31.0


def test_same_seed_gives_identical_result():
    data = split(num_classes=6, noise=4.0)
    a = linear_probe_accuracy(*data, num_classes=6, seed=3)
    b = linear_probe_accuracy(*data, num_classes=6, seed=3)
    assert a == b


def test_top5_only_reported_with_at_least_five_classes():
    assert set(linear_probe_accuracy(*split(num_classes=3), num_classes=3)) == {"top1"}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_classes=1), "num_classes"),
        (dict(epochs=0), "epochs"),
        (dict(lr=0.0), "lr"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(test_feats=torch.randn(5, 3)), "test_labels must be"),
        (dict(train_labels=torch.full((10,), 7)), "train_labels must lie"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, match):
    args = dict(train_feats=torch.randn(10, 4), train_labels=torch.arange(10) % 2, test_feats=torch.randn(6, 4),
                test_labels=torch.arange(6) % 2, num_classes=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        linear_probe_accuracy(**args)
