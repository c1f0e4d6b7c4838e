"""Exact resume after SIGKILL, damaged checkpoints, and runs stopped by a non-finite loss."""
import json
import re
import shutil
import subprocess
import sys

import torch
from clitools import kill_at_checkpoint, read_metrics, run_cli

RESUME = ["steps=8", "checkpoint_every=2", "eval.linear_probe=true"]


def test_sigkilled_two_rank_run_resumes_to_the_same_result(tmp_path, tiny):
    args = ["train", *tiny, *RESUME, "method=dino", "zero_stage=2", "gns.every_steps=3", "--nproc", "2"]
    straight = tmp_path / "straight"
    run_cli(*args, "--run-dir", str(straight))

    killed = tmp_path / "killed"
    kill_at_checkpoint(args, killed, 4)

    out = run_cli("train", "--run-dir", str(killed), "--nproc", "2").stdout
    a = json.loads((straight / "summary.json").read_text())["final"]
    b = json.loads((killed / "summary.json").read_text())["final"]
    for key in ("loss", "knn_top1", "linear_top1", "teacher_entropy"):
        assert abs(a[key] - b[key]) <= 1e-6, (key, a[key], b[key])
    # The noise scale measured at step 6, after the resume at 4, from the EMA the checkpoint kept.
    at6 = [next(m for m in read_metrics(d) if m["step"] == 6) for d in (straight, killed)]
    for key in ("gns/b_simple", "gns/grad_sq", "gns/trace_cov"):
        assert abs(at6[0][key] - at6[1][key]) <= 1e-6 * abs(at6[0][key]), (key, at6)
    gns_a, gns_b = (json.loads((d / "summary.json").read_text())["gns"] for d in (straight, killed))
    assert gns_a["measurements"] == gns_b["measurements"] == 2  # steps 3 and 6, the EMA and sums resumed
    assert gns_a["b_simple_mean"] == gns_b["b_simple_mean"] or abs(gns_a["b_simple_mean"] - gns_b["b_simple_mean"]) \
        <= 1e-6 * abs(gns_a["b_simple_mean"])
    steps = [m["step"] for m in read_metrics(killed) if "train/loss" in m]
    assert steps == sorted(set(steps)) == list(range(1, 9))  # each step exactly once
    assert re.search(r"resumed from step [46]\b", out)


def test_a_truncated_latest_checkpoint_is_skipped_for_the_previous_one(tmp_path, tiny):
    run_dir = tmp_path / "run"
    run_cli("train", *tiny, "steps=4", "checkpoint_every=2", "method=vatt", "--run-dir", str(run_dir))
    states = run_dir / "checkpoints" / "step_00000004" / "mp_rank_00_model_states.pt"
    states.write_bytes(states.read_bytes()[: states.stat().st_size // 2])
    (run_dir / "summary.json").unlink()
    out = run_cli("train", "--run-dir", str(run_dir)).stdout
    assert "skipping checkpoint step_00000004: mp_rank_00_model_states.pt is truncated" in out
    assert "resumed from step 2" in out
    assert json.loads((run_dir / "summary.json").read_text())["end_reason"] == "completed"
    steps = [m["step"] for m in read_metrics(run_dir) if "train/loss" in m]
    assert steps == [1, 2, 3, 4]
    before = (run_dir / "metrics.jsonl").read_text()
    again = run_cli("train", "--run-dir", str(run_dir)).stdout
    assert "finished earlier; nothing to do" in again
    assert (run_dir / "metrics.jsonl").read_text() == before
    # `scaling evaluate` reproduces the final evaluation from the consolidated weights.
    run_cli("evaluate", str(run_dir))
    final = json.loads((run_dir / "summary.json").read_text())["final"]
    again = json.loads((run_dir / "eval.json").read_text())
    for key in ("knn_top1", "linear_top1", "v2t_r1", "t2v_median_rank"):
        assert abs(again[key] - final[key]) <= 1e-6, key


def test_a_corrupt_checkpoint_with_intact_size_is_caught_by_its_checksum(tmp_path, tiny):
    run_dir = tmp_path / "run"
    run_cli("train", *tiny, "steps=4", "checkpoint_every=2", "method=vatt", "--run-dir", str(run_dir))
    rng = run_dir / "checkpoints" / "step_00000004" / "rng_rank0.pt"
    data = bytearray(rng.read_bytes())
    data[len(data) // 2] ^= 0xFF
    rng.write_bytes(bytes(data))
    (run_dir / "summary.json").unlink()  # as if the run had died before finishing
    out = run_cli("train", "--run-dir", str(run_dir)).stdout
    assert "skipping checkpoint step_00000004: rng_rank0.pt is corrupt" in out


NAN_SCRIPT = """
import sys, torch
from scaling.config import RunConfig
from scaling.objectives import VATTObjective
from scaling.train.loop import train
original = VATTObjective.loss
def loss(self, model, batch, step, generator=None):
    value, metrics = original(self, model, batch, step, generator)
    return (value * float("nan") if step == 2 else value), metrics
VATTObjective.loss = loss
cfg = RunConfig.load(None, sys.argv[2:])
train(cfg, sys.argv[1])
"""


def test_a_nonfinite_loss_stops_the_run_and_writes_no_checkpoint_of_it(tmp_path, tiny):
    run_dir = tmp_path / "run"
    subprocess.run([sys.executable, "-c", NAN_SCRIPT, str(run_dir), *tiny, "steps=6", "checkpoint_every=1"],
                   check=True, capture_output=True, timeout=300)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["end_reason"] == "nonfinite_loss" and summary["steps"] == 2
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_00000001", "step_00000002"]
    assert not (run_dir / "model.pt").exists()


def test_a_bf16_dino_teacher_resumes_from_its_fp32_shadow(tmp_path, tiny):
    """With 16-bit weights the EMA teacher is averaged in an fp32 shadow (a 0.4% step of a bf16 value
    would round away). Each rank's partition of that shadow is checkpointed, so a resumed run ends
    with the same teacher, bit for bit, as one that never stopped; restarting it from the rounded
    bf16 teacher would not."""
    args = ["train", *tiny, "steps=6", "checkpoint_every=3", "method=dino", "zero_stage=3", "precision=bf16",
            "eval.linear_probe=false", "eval.random_init=false", "--nproc", "2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_cli(*args, "--run-dir", str(straight))
    run_cli(*args, "--run-dir", str(resumed))
    step3 = resumed / "checkpoints" / "step_00000003"
    assert {p.name for p in step3.glob("state_rank*.pt")} == {"state_rank0.pt", "state_rank1.pt"}
    # As if the job had died after the checkpoint of step 3.
    shutil.rmtree(resumed / "checkpoints" / "step_00000006")
    (resumed / "summary.json").unlink()
    (resumed / "model.pt").unlink()
    assert "resumed from step 3" in run_cli("train", "--run-dir", str(resumed), "--nproc", "2").stdout

    a = torch.load(straight / "model.pt", map_location="cpu")
    b = torch.load(resumed / "model.pt", map_location="cpu")
    teacher = [k for k in a if k.startswith("teacher.")]
    assert teacher and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
