"""With 16-bit weights the teacher's EMA averages the student's fp32 master weights where the engine
keeps them whole on this rank (ZeRO-3 partitions; DeepSpeed's BF16_Optimizer and ZeRO-1/2 on one
rank), not the bf16 copies: real bf16 engines on the CPU, one optimizer step, then the EMA against
a hand computation from the masters."""
import pytest
import torch
from clitools import TINY

from scaling.config import RunConfig
from scaling.models import build_model, crop_geometry
from scaling.models.dino import ema_tensor, student_fp32_master
from scaling.train.engine import build_ds_config, build_engine, init_distributed

M = 0.9


def _crops(cfg):
    geo = crop_geometry(cfg)
    glob = torch.rand(2, 3, geo["global_frames"], geo["global_resolution"], geo["global_resolution"])
    loc = torch.rand(2, 3, geo["local_frames"], geo["local_resolution"], geo["local_resolution"])
    return [c.bfloat16() for c in [glob, glob.flip(-1), *[loc] * cfg.dino.local_crops]]


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_the_bf16_teacher_averages_the_fp32_master(process_group_env, stage):
    init_distributed()
    cfg = RunConfig.load(None, [*TINY, "method=dino", "precision=bf16", f"zero_stage={stage}", "global_batch=2",
                                "micro_batch=2", "lr=0.05", "lr_scaling=none", "warmup_fraction=0"])
    ds = build_ds_config(cfg, 1, device="cuda")
    if stage == 3:
        ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # every parameter partitioned
    torch.manual_seed(0)
    model = build_model(cfg)
    engine, _ = build_engine(cfg, model, ds)
    for group in engine.optimizer.param_groups:
        group["lr"] = 0.05
    student_out, _ = engine(_crops(cfg))
    engine.backward(student_out.float().square().mean())
    engine.step()

    pairs = list(zip(model.student.parameters(), model.teacher.parameters()))
    before = [ema_tensor(pt).float().clone() for _, pt in pairs]
    masters = [student_fp32_master(ps) for ps, _ in pairs]
    trainable = [i for i, (ps, _) in enumerate(pairs) if ps.requires_grad]
    assert trainable and all(masters[i] is not None for i in trainable)
    assert all(masters[i] is None for i, (ps, _) in enumerate(pairs) if not ps.requires_grad)
    # The step moved the masters by less than a bf16 ulp in places: the bf16 copy is not the master.
    assert any((masters[i].view_as(before[i]) - ema_tensor(pairs[i][0]).float()).abs().max() > 0 for i in trainable)

    model.update_teacher(M)
    shadows = dict(model.teacher_shadow_state())
    for i, (ps, _) in enumerate(pairs):
        source = masters[i].view_as(before[i]) if masters[i] is not None else ema_tensor(ps).float()
        expected = before[i].clone().mul_(M).add_(source.cpu(), alpha=1 - M)
        assert torch.equal(shadows[i], expected.cpu()), i
