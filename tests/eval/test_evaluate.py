"""The evaluation protocol leaves the run's RNG streams untouched, so a run trains the same with or
without its random-init and intermediate evaluations."""
import torch

from clitools import TINY
from scaling.config import RunConfig
from scaling.evaluate import evaluate
from scaling.models import build_model
from scaling.objectives import build_objective


def test_evaluation_does_not_consume_the_global_torch_rng():
    cfg = RunConfig.load(None, [*TINY, "method=vatt"])
    model = build_model(cfg)
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    metrics = evaluate(cfg, model, build_objective(cfg))
    assert "knn_top1" in metrics and "linear_top1" in metrics
    assert torch.equal(torch.rand(4), expected)
