"""The optimizer's initial hyperparameters, and an engine that changes no weight when it is built.

AdamW applies its decoupled weight decay (p -= lr * wd * p) even on a zero gradient, so any
optimizer step before the schedules' first `apply` (DeepSpeed's stage-0 fp16/bf16 wrapper runs one
at construction) would decay with whatever weight decay the groups start with: torch's default
0.01 on every group, norms and biases included, unless the groups set their own.
"""
import json
import subprocess
import sys

import pytest
import torch
from clitools import TINY

from scaling.config import RunConfig
from scaling.models import build_model
from scaling.optim import Schedules, make_optimizer

# Builds the engine of each (precision, ZeRO stage) on a freshly built DINO (decayed and
# not-decayed groups, a frozen teacher) and reports what changed before any training step.
SCRIPT = """
import json, sys, torch
from scaling.config import RunConfig
from scaling.models import build_model
from scaling.train.consolidate import fp32_master_params
from scaling.train.engine import build_ds_config, build_engine, end_process_group, init_distributed
init_distributed()
out = []
for precision in ("fp32", "bf16"):
    for stage in (0, 1, 2):
        cfg = RunConfig.load(None, [*sys.argv[1:], f"precision={precision}", f"zero_stage={stage}"])
        torch.manual_seed(0)
        model = build_model(cfg)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        fresh = {k: v.detach().clone().to(dtype) for k, v in model.state_dict().items()}
        names = {id(p): n for n, p in model.named_parameters()}
        engine, optimizer = build_engine(cfg, model, build_ds_config(cfg, 1))
        module = engine.module.state_dict()
        masters = {names[i]: t for i, t in fp32_master_params(engine).items()}
        if not masters:  # fp32 at stage 0: the module's parameters are the master weights
            masters = {n: p.detach() for n, p in engine.module.named_parameters() if p.requires_grad}
        inner = getattr(optimizer, "optimizer", optimizer)
        out.append({
            "precision": precision, "stage": stage, "ds_stage": engine.zero_optimization_stage(),
            "optimizer": type(optimizer).__name__,
            "module_changed": [k for k, v in module.items() if not torch.equal(v, fresh[k])],
            "masters": len(masters),
            "masters_changed": [k for k, v in masters.items() if not torch.equal(v, fresh[k].float())],
            "adam_steps": sorted({int(s["step"]) for s in inner.state.values() if "step" in s}),
        })
print(json.dumps(out))
end_process_group()
"""


def test_each_group_starts_with_its_own_weight_decay_of_step_0():
    cfg = RunConfig.load(None, [*TINY, "method=dino"])
    model = build_model(cfg)
    optimizer = make_optimizer(cfg, model)
    wd0 = Schedules(cfg).weight_decay(0)
    assert wd0 == pytest.approx(cfg.weight_decay) and cfg.weight_decay > 0  # the cosine at 0, to rounding
    groups = optimizer.param_groups
    assert {g["apply_decay"] for g in groups} == {True, False}
    for group in groups:
        assert group["weight_decay"] == (wd0 if group["apply_decay"] else 0.0)
        assert group["lr"] == cfg.peak_lr
    # a step on zero gradients, as built (lr = peak_lr), moves only the decayed parameters
    params = {id(p): p.detach().clone() for g in groups for p in g["params"]}
    for group in groups:
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    for group in groups:
        moved = [not torch.equal(p, params[id(p)]) for p in group["params"]]
        assert any(moved) if group["apply_decay"] else not any(moved)
    # the initial weight decays are what Schedules.apply sets before the first step
    before = [g["weight_decay"] for g in groups]
    Schedules(cfg).apply(optimizer, 0)
    assert [g["weight_decay"] for g in groups] == before


def test_building_the_engine_changes_no_weight_at_zero_0_1_2_in_fp32_and_bf16():
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *TINY, "method=dino"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    kinds = {(r["precision"], r["stage"]): (r["ds_stage"], r["optimizer"]) for r in results}
    assert kinds == {("fp32", 0): (0, "AdamW"), ("fp32", 1): (1, "DeepSpeedZeroOptimizer"),
                     ("fp32", 2): (2, "DeepSpeedZeroOptimizer"), ("bf16", 0): (1, "BF16_Optimizer"),
                     ("bf16", 1): (1, "BF16_Optimizer"), ("bf16", 2): (2, "DeepSpeedZeroOptimizer")}
    for r in results:
        assert r["module_changed"] == [], r
        assert r["masters"] > 0 and r["masters_changed"] == [], r
        assert r["adam_steps"] == [], r  # no optimizer step was taken
