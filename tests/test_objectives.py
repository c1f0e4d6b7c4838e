"""Objectives: one step of each method; DINO's EMA and centre move only at optimizer steps."""
import pytest
import torch

from scaling.config import ConfigError, RunConfig
from scaling.data.synthetic import SyntheticClips
from scaling.losses import koleo_loss
from scaling.models import build_model
from scaling.objectives import build_objective

SMALL = ["steps=10", "global_batch=8", "micro_batch=8", "data.train_size=64", "dino.out_dim=64",
         "dino.hidden_dim=32", "dino.local_crops=2", "data.captions=2"]



def _host(loss, metrics):
    """The loss and its metrics as numbers: objectives keep metrics as device tensors, read by the
    loop only on logged steps."""
    assert all(isinstance(v, (torch.Tensor, int, float)) and not (isinstance(v, torch.Tensor) and v.requires_grad)
               for v in metrics.values())
    return loss, {k: float(v) for k, v in metrics.items()}

def _batch(n=8):
    return SyntheticClips("train", 64, captions=2).__getitems__(list(range(n)))


def test_vatt_step_reports_loss_parts_retrieval_and_negatives():
    cfg = RunConfig.load(None, SMALL + ["method=vatt", "data.vocab_size=1000"])
    model, objective = build_model(cfg), build_objective(cfg)
    batch = _batch()
    batch["text"] = batch["text"] % 1000
    loss, metrics = _host(*objective.loss(model, batch, step=0, generator=torch.Generator().manual_seed(0)))
    loss.backward()
    assert metrics["loss"] == pytest.approx(metrics["loss_va"] + metrics["loss_vt"], rel=1e-6)
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
        loss, metrics = _host(*objective.loss(model, _batch(), step=0, generator=torch.Generator().manual_seed(0)))
        loss.backward()
    assert torch.equal(objective.loss_fn.center, torch.zeros_like(objective.loss_fn.center))
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, model.teacher.parameters()))
    out = objective.after_optimizer_step(model, step=0)
    assert out["teacher_momentum"] == cfg.dino.momentum_teacher
    assert not torch.equal(objective.loss_fn.center, torch.zeros_like(objective.loss_fn.center))
    assert not all(torch.equal(a, b) for a, b in zip(teacher_before, model.teacher.parameters()))
    assert {"loss", "teacher_entropy", "teacher_temp"} <= set(metrics)


def test_dino_with_koleo_adds_the_weighted_term_on_the_student_global_cls_features():
    """dino.koleo_weight (DINOv2's KoLeo regulariser; 0, plain DINO, by default) adds weight x the
    *sum* over the two global views of the KoLeo of the student backbone's features, as DINOv2
    (`koleo_loss_weight * sum(...)` over the global crops' chunks): a weight means DINOv2's."""
    # No stochastic depth, so the features can be recomputed below.
    plain_cfg = RunConfig.load(None, SMALL + ["method=dino", "drop_path=0"])
    cfg = RunConfig.load(None, SMALL + ["method=dino", "drop_path=0", "dino.koleo_weight=0.5"])
    torch.manual_seed(0)
    model, objective = build_model(cfg), build_objective(cfg)
    loss, metrics = _host(*objective.loss(model, _batch(), step=0, generator=torch.Generator().manual_seed(0)))
    assert metrics["loss"] == pytest.approx(metrics["loss_dino"] + 0.5 * metrics["loss_koleo"], rel=1e-5)
    # The DINO part is what plain DINO computes on the same crops.
    torch.manual_seed(0)
    plain_model, plain = build_model(plain_cfg), build_objective(plain_cfg)
    _, plain_metrics = _host(*plain.loss(plain_model, _batch(), step=0, generator=torch.Generator().manual_seed(0)))
    assert "loss_koleo" not in plain_metrics
    assert metrics["loss_dino"] == pytest.approx(plain_metrics["loss"], rel=1e-5)
    # And by hand: KoLeo of the two global crops' student backbone features.
    crops = objective.multicrop(_batch()["video"], torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = model.student.backbone(torch.cat(crops[:2]))
    expected = sum(koleo_loss(f) for f in feats.chunk(2)).item()
    assert metrics["loss_koleo"] == pytest.approx(expected, rel=1e-4)
    loss.backward()
    assert model.student.backbone.tokenizer.proj.weight.grad is not None


def test_dino_distill_weight_scales_the_self_distillation_part_only():
    """dino.distill_weight (1 by default) weights DINO's cross-entropy; 0 is the KoLeo-alone ablation.
    loss_dino is logged unweighted, and the centre is still staged and updated."""
    cfg = RunConfig.load(None, SMALL + ["method=dino", "drop_path=0", "dino.koleo_weight=0.5"])
    ablation = RunConfig.load(None, SMALL + ["method=dino", "drop_path=0", "dino.koleo_weight=0.5",
                                             "dino.distill_weight=0"])
    results = []
    for c in (cfg, ablation):
        torch.manual_seed(0)
        model, objective = build_model(c), build_objective(c)
        loss, metrics = _host(*objective.loss(model, _batch(), step=0, generator=torch.Generator().manual_seed(0)))
        objective.after_optimizer_step(model, 0)
        results.append((loss, metrics, objective.loss_fn.center.clone()))
    (_, full, center), (loss, alone, center0) = results
    assert alone["loss_dino"] == pytest.approx(full["loss_dino"], rel=1e-6)
    assert alone["loss"] == pytest.approx(0.5 * alone["loss_koleo"], rel=1e-6)
    assert loss.item() == pytest.approx(0.5 * full["loss_koleo"], rel=1e-5)
    assert torch.equal(center, center0) and center.abs().sum() > 0


def test_image_dino_flips_half_its_crops_as_dino_and_the_synthetic_clips_are_never_flipped():
    """DINO's image augmentation flips horizontally with probability 0.5, and so do both methods on a
    real corpus's clips; the synthetic clips are not flipped (mirroring reverses the motion
    direction, part of their class), for video DINO and VATT; data.p_flip sets it explicitly."""
    from types import SimpleNamespace

    from scaling.config import flip_probability

    image = build_objective(RunConfig.load(None, SMALL + ["method=dino", "dino.input=image", "data.resolution=64"]))
    assert image.multicrop.p_flip == 0.5
    assert build_objective(RunConfig.load(None, SMALL + ["method=dino"])).multicrop.p_flip == 0.0
    assert build_objective(RunConfig.load(None, SMALL + ["method=vatt"])).augment.p_flip == 0.0
    for method in ("vatt", "dino"):
        cfg = RunConfig.load(None, SMALL + [f"method={method}"])
        real = SimpleNamespace(method=method, dino=cfg.dino, data=SimpleNamespace(source="manifest", p_flip=None))
        assert flip_probability(real) == 0.5
        objective = build_objective(RunConfig.load(None, SMALL + [f"method={method}", "data.p_flip=0.25"]))
        assert (objective.augment if method == "vatt" else objective.multicrop).p_flip == 0.25
    with pytest.raises(ConfigError) as err:
        RunConfig.load(None, SMALL + ["data.p_flip=1.5"])
    assert err.value.field == "data.p_flip"
