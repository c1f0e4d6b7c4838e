"""Objectives: one step of each method; DINO's EMA and centre move only at optimizer steps."""
import pytest
import torch

from scaling.config import RunConfig
from scaling.data.synthetic import SyntheticClips
from scaling.models import build_model
from scaling.objectives import build_objective

SMALL = ["steps=10", "global_batch=8", "micro_batch=8", "data.train_size=64", "dino.out_dim=64",
         "dino.hidden_dim=32", "dino.local_crops=2", "data.captions=2"]


def _batch(n=8):
    return SyntheticClips("train", 64, captions=2).__getitems__(list(range(n)))


def test_vatt_step_reports_loss_parts_retrieval_and_negatives():
    cfg = RunConfig.load(None, SMALL + ["method=vatt", "data.vocab_size=1000"])
    model, objective = build_model(cfg), build_objective(cfg)
    batch = _batch()
    batch["text"] = batch["text"] % 1000
    loss, metrics = objective.loss(model, batch, step=0, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert metrics["loss"] == pytest.approx(metrics["loss_nce"] + metrics["loss_mil_nce"], rel=1e-6)
    assert metrics["negatives_per_positive"] == 7
    assert 0 <= metrics["retrieval_va_top1"] <= 100
    assert model.video.tokenizer.proj.weight.grad is not None


def test_dino_teacher_and_centre_move_only_in_after_optimizer_step():
    cfg = RunConfig.load(None, SMALL + ["method=dino"])
    model, objective = build_model(cfg), build_objective(cfg)
    teacher_before = [p.clone() for p in model.teacher.parameters()]
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(0.01)
    for _ in range(2):  # two micro-batches of one optimizer step
        loss, metrics = objective.loss(model, _batch(), step=0, generator=torch.Generator().manual_seed(0))
        loss.backward()
    assert torch.equal(objective.loss_fn.center, torch.zeros_like(objective.loss_fn.center))
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, model.teacher.parameters()))
    out = objective.after_optimizer_step(model, step=0)
    assert out["teacher_momentum"] == cfg.dino.momentum_teacher
    assert not torch.equal(objective.loss_fn.center, torch.zeros_like(objective.loss_fn.center))
    assert not all(torch.equal(a, b) for a, b in zip(teacher_before, model.teacher.parameters()))
    assert {"loss", "teacher_entropy", "teacher_temp"} <= set(metrics)
