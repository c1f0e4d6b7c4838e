"""model.pt holds the optimizer's fp32 master weights (and a bf16 DINO teacher's fp32 shadow), not
the module's 16-bit rounding of them, at every ZeRO stage."""
import subprocess
import sys

import pytest
import torch
from clitools import run_cli

from scaling.config import RunConfig
from scaling.models import build_model

# A tiny run whose save_consolidated also writes, beside model.pt, what the engine holds: the fp32
# master weights read straight from the optimizer's own flat buffers (a world of one: one partition
# is the whole group), the module's values and the teacher's fp32 shadow.
SCRIPT = """
import sys, torch, deepspeed
import scaling.train.loop as loop
from scaling.config import RunConfig
from scaling.objectives import unwrap
save = loop.save_consolidated

def unflatten(params, flat, stride=lambda p: p.numel(), numel=lambda p: p.numel(), shape=lambda p: p.shape):
    out, offset = {}, 0
    for p in params:
        out[id(p)] = flat.narrow(0, offset, numel(p)).view(shape(p)).detach().float().cpu().clone()
        offset += stride(p)
    return out

def masters(opt):
    kind, full = type(opt).__name__, {}
    if kind == "BF16_Optimizer":
        for params, flat in zip(opt.bf16_groups, opt.fp32_groups_flat_partition):
            full.update(unflatten(params, flat))
    elif kind == "DeepSpeedZeroOptimizer":
        for params, flat in zip(opt.round_robin_bit16_groups, opt.single_partition_of_fp32_groups):
            full.update(unflatten(params, flat))
    elif kind == "DeepSpeedZeroOptimizer_Stage3":  # one rank: a parameter's partition is all of it
        for params, flat in zip(opt.fp16_groups, opt.fp32_partitioned_groups_flat):
            full.update(unflatten(params, flat, lambda p: p.partition_numel(), lambda p: p.ds_numel,
                                  lambda p: p.ds_shape))
    elif kind == "AdamW":  # fp32 at stage 0: the module's parameters are the master weights
        full = {id(p): p.detach().float().cpu().clone() for g in opt.param_groups for p in g["params"]}
    else:
        raise AssertionError(kind)
    return kind, full

def recording_save(engine, path):
    save(engine, path)
    module = unwrap(engine)
    kind, full = masters(engine.optimizer)
    names = {id(p): n for n, p in module.named_parameters()}
    shadow = {names[id(p)]: s.float().cpu().clone() for p, s in module.teacher_fp32_shadows()}
    with deepspeed.zero.GatheredParameters(list(module.parameters())):  # ZeRO-3: the full values
        values = {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
    torch.save({"optimizer": kind, "masters": {names[i]: t for i, t in full.items()}, "module": values,
                "trainable": sorted(n for n, p in module.named_parameters() if p.requires_grad),
                "shadow": shadow}, path.with_name("reference.pt"))

loop.save_consolidated = recording_save
loop.train(RunConfig.load(None, sys.argv[2:]), sys.argv[1])
"""

ARGS = ["method=dino", "steps=3", "eval.linear_probe=false", "eval.random_init=false"]


@pytest.mark.parametrize("precision, zero_stage, optimizer", [
    ("bf16", 0, "BF16_Optimizer"),           # bf16 at stage 0 runs DeepSpeed's stage 1
    ("bf16", 2, "DeepSpeedZeroOptimizer"),
    ("bf16", 3, "DeepSpeedZeroOptimizer_Stage3"),
    ("fp32", 0, "AdamW"),
])
def test_model_pt_holds_the_fp32_master_weights(tmp_path, tiny, precision, zero_stage, optimizer):
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(run_dir), *tiny, *ARGS, f"precision={precision}",
                           f"zero_stage={zero_stage}"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    saved = torch.load(run_dir / "model.pt")
    ref = torch.load(run_dir / "reference.pt")
    assert ref["optimizer"] == optimizer
    assert saved.keys() == ref["module"].keys() and all(v.dtype == torch.float32 for v in saved.values())
    trainable = ref["trainable"]
    assert trainable and set(ref["masters"]) == set(trainable)
    for key in trainable:
        assert torch.equal(saved[key], ref["masters"][key]), key
    teacher = [k for k in saved if k.startswith("teacher.")]
    if precision == "fp32":
        assert all(torch.equal(saved[k], ref["module"][k]) for k in saved)
        assert ref["shadow"] == {}
        return
    # The module holds the bf16 rounding of the masters; at least some master values are finer.
    assert all(torch.equal(saved[k].bfloat16(), ref["module"][k].bfloat16()) for k in trainable)
    assert any(not torch.equal(saved[k], ref["module"][k]) for k in trainable)
    # The teacher (no gradients, not in the optimizer) is its fp32 shadow, which the bf16 teacher rounds.
    assert teacher and set(ref["shadow"]) == set(teacher)
    for key in teacher:
        shadow = ref["shadow"][key].flatten()[:saved[key].numel()]  # ZeRO-3: the (whole) flat partition
        assert torch.equal(saved[key], shadow.view(saved[key].shape)), key
        assert torch.equal(saved[key].bfloat16(), ref["module"][key].bfloat16()), key
    assert any(not torch.equal(saved[k], ref["module"][k]) for k in teacher)
    # Buffers and frozen parameters without a shadow are the module's values.
    others = set(saved) - set(trainable) - set(teacher)
    assert others and all(torch.equal(saved[k], ref["module"][k]) for k in others)


def test_zero3_on_two_ranks_gathers_the_master_partitions_and_the_teacher_shadow(tmp_path, tiny):
    """The same at ZeRO-3 over 2 ranks, against what the run's last checkpoint holds: DeepSpeed's
    zero_to_fp32 for the master weights and every rank's partition of the teacher's fp32 shadow."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    args = [*tiny, *ARGS, "precision=bf16", "zero_stage=3"]
    run_dir = tmp_path / "run"
    run_cli("train", *args, "--run-dir", str(run_dir), "--nproc", "2")
    saved = torch.load(run_dir / "model.pt")
    ckpt = run_dir / "checkpoints" / "step_00000003"
    ref = get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"), tag=ckpt.name)
    student = [k for k in saved if k.startswith("student.") and k != "student.head.last_layer.weight_g"]
    assert student and all(torch.equal(saved[k], ref[k].float()) for k in student)
    assert any(not torch.equal(saved[k], saved[k].bfloat16().float()) for k in student)
    # The shadow: entry i of the teacher's parameters, partitioned in rank order, then unpadded.
    parts = [torch.load(ckpt / f"state_rank{r}.pt", weights_only=False)["teacher_fp32"] for r in (0, 1)]
    teacher = [f"teacher.{n}" for n, _ in build_model(RunConfig.load(None, args)).teacher.named_parameters()]
    assert sorted(parts[0]) == sorted(parts[1]) == list(range(len(teacher)))
    for i, key in enumerate(teacher):
        full = torch.cat([parts[0][i].flatten(), parts[1][i].flatten()])[:saved[key].numel()]
        assert torch.equal(saved[key], full.view(saved[key].shape)), key


# DeepSpeed's own stage 0 for bf16 (which build_ds_config no longer selects: bf16 at zero_stage=0
# runs stage 1) wraps the optimizer in FP16_UnfusedOptimizer, whose fp32 copies are `fp32_groups`.
UNFUSED_SCRIPT = """
import sys, torch
from scaling.config import RunConfig
from scaling.models import build_model
from scaling.train.consolidate import consolidated_state_dict
from scaling.train.engine import build_ds_config, build_engine, end_process_group, init_distributed
init_distributed()
cfg = RunConfig.load(None, sys.argv[2:])
ds = build_ds_config(cfg, 1)
ds["zero_optimization"]["stage"] = 0
ds.pop("data_types", None)
model = build_model(cfg)
engine, optimizer = build_engine(cfg, model, ds)
assert type(optimizer).__name__ == "FP16_UnfusedOptimizer", type(optimizer)
names = {id(p): n for n, p in engine.module.named_parameters()}
masters = {}
with torch.no_grad():
    for lp_group, hp_group in zip(optimizer.fp16_groups, optimizer.fp32_groups):
        for lp, hp in zip(lp_group, hp_group):
            hp.add_(1e-4 * torch.randn_like(hp))  # as a step would: finer than bf16
            lp.copy_(hp)
            masters[names[id(lp)]] = hp.clone()
state = consolidated_state_dict(engine)
module = {k: v.float() for k, v in engine.module.state_dict().items()}
torch.save({"state": state, "masters": masters, "module": module}, sys.argv[1])
end_process_group()
"""


def test_the_stage_0_fp16_wrapper_gives_its_fp32_copies(tmp_path, tiny):
    out = tmp_path / "out.pt"
    proc = subprocess.run([sys.executable, "-c", UNFUSED_SCRIPT, str(out), *tiny, "method=dino", "precision=bf16",
                           "zero_stage=0"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = torch.load(out)
    state, masters, module = got["state"], got["masters"], got["module"]
    assert masters and state.keys() == module.keys()
    assert all(torch.equal(state[k], masters[k]) for k in masters)
    assert any(not torch.equal(state[k], module[k]) for k in masters)
    assert all(torch.equal(state[k], module[k]) for k in state if k not in masters)
