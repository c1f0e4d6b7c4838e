"""DINO on DeepSpeed: teacher EMA and centre once per optimizer step, and the same EMA under ZeRO-3."""
import json
import subprocess
import sys

import torch
from clitools import read_metrics, run_cli

COUNT_SCRIPT = """
import json, sys
from scaling.config import RunConfig
from scaling.losses import DINOLoss
from scaling.models.dino import DINO
from scaling.train.loop import train
calls = {"teacher": 0, "center": [], "micro": 0}
update_teacher, update_center, forward = DINO.update_teacher, DINOLoss.update_center, DINOLoss.forward
def count_teacher(self, m):
    calls["teacher"] += 1
    update_teacher(self, m)
def count_center(self):
    calls["center"].append(self._staged_rows)
    update_center(self)
def count_forward(self, *args):
    calls["micro"] += 1
    return forward(self, *args)
DINO.update_teacher, DINOLoss.update_center, DINOLoss.forward = count_teacher, count_center, count_forward
train(RunConfig.load(None, sys.argv[2:]), sys.argv[1])
print(json.dumps(calls))
"""


def test_teacher_ema_and_centre_update_once_per_optimizer_step_under_accumulation(tmp_path, tiny):
    out = subprocess.run([sys.executable, "-c", COUNT_SCRIPT, str(tmp_path / "run"), *tiny, "method=dino",
                          "steps=3", "global_batch=8", "micro_batch=2", "zero_stage=3"],
                         check=True, capture_output=True, text=True, timeout=300).stdout
    calls = json.loads(out.strip().splitlines()[-1])
    assert calls["micro"] == 12                      # 3 optimizer steps x 4 micro-batches
    assert calls["teacher"] == 3
    # each centre update averages the teacher outputs of all 4 micro-batches: 2 global crops x 2 clips x 4
    assert calls["center"] == [16, 16, 16]


def test_zero3_partitioned_ema_gives_the_same_teacher_as_zero0(tmp_path, tiny):
    weights = {}
    for stage in (0, 3):
        run_dir = tmp_path / f"z{stage}"
        run_cli("train", *tiny, "method=dino", "steps=3", "eval.linear_probe=false", f"zero_stage={stage}",
                "--run-dir", str(run_dir), "--nproc", "2")
        weights[stage] = torch.load(run_dir / "model.pt")
    teacher = [k for k in weights[0] if k.startswith("teacher.")]
    assert teacher and set(weights[0]) == set(weights[3])
    # The teacher the forward reads, not only the one saved: ZeRO-3 keeps small parameters whole on
    # every rank (stage3_param_persistence_threshold), and an EMA of their partitions alone left the
    # forward's copy at its initial value (step 2's gradient then differed by ~1e-3).
    norms = {stage: [m["train/grad_norm"] for m in read_metrics(tmp_path / f"z{stage}") if "train/grad_norm" in m]
             for stage in (0, 3)}
    assert len(norms[0]) == 3
    torch.testing.assert_close(norms[3], norms[0], rtol=2e-5, atol=0)
    moved = 0
    for key in weights[0]:
        torch.testing.assert_close(weights[3][key], weights[0][key], atol=1e-5, rtol=1e-4)
    for key in teacher:
        student = weights[0][key.replace("teacher.", "student.", 1)]
        moved += int(not torch.equal(weights[0][key], student))
    assert moved > 0  # the teacher is an average, not a copy of the student
