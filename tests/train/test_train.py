"""`scaling train` on real DeepSpeed engines: ZeRO 0-3, 1 and 2 ranks, the full run directory."""
import json
import os

import pytest
import yaml
from clitools import read_metrics, run_cli

from scaling.train.launch import cpu_share


@pytest.mark.parametrize("method", ["vatt", "dino"])
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("nproc", [1, 2])
def test_train_runs_end_to_end_at_every_zero_stage(tmp_path, tiny, method, stage, nproc):
    run_dir = tmp_path / "run"
    run_cli("train", *tiny, f"method={method}", f"zero_stage={stage}", "steps=2", "eval.linear_probe=false",
            "--run-dir", str(run_dir), "--nproc", str(nproc))
    for name in ("config.yaml", "ds_config.json", "metrics.jsonl", "summary.json", "env.json", "model.pt"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tb").rglob("events.out.tfevents.*"))
    assert [p.name for p in (run_dir / "checkpoints").glob("step_*")] == ["step_00000002"]
    ds = json.loads((run_dir / "ds_config.json").read_text())
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["train_batch_size"] == 8 == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * nproc
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["world_size"] == nproc and cfg["zero_stage"] == stage
    env = json.loads((run_dir / "env.json").read_text())
    assert env["world_size"] == nproc
    assert [r["rank"] for r in env["ranks"]] == list(range(nproc))               # where each rank ran
    assert len({r["pid"] for r in env["ranks"]}) == nproc and {r["local_rank"] for r in env["ranks"]} == set(range(nproc))
    if nproc > 1 and "OMP_NUM_THREADS" not in os.environ:  # local ranks split the cores, not each take all
        assert env["torch_threads"] == cpu_share(nproc) == max(1, len(os.sched_getaffinity(0)) // nproc)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["end_reason"] == "completed" and summary["steps"] == 2 and summary["samples_seen"] == 16
    assert summary["total_flops"] == summary["flops_per_sample"] * 16
    assert "knn_top1" in summary["final"] and "knn_top1" in summary["random_init"]
    steps = [m["step"] for m in read_metrics(run_dir) if "train/loss" in m]
    assert steps == [1, 2]
    if method == "vatt":
        assert summary["negatives_per_positive"] == 4 * nproc - 1
        assert "v2t_r1" in summary["final"] and "t2v_median_rank" in summary["final"]


@pytest.mark.parametrize("method,stage", [("vatt", 0), ("dino", 3)])
def test_bf16_engines_train_and_evaluate(tmp_path, tiny, method, stage):
    """bf16 (what `precision: auto` picks on a GPU) runs here too: DeepSpeed casts the module to
    bf16, so the clips must be cast to it, and the losses computed in fp32."""
    run_dir = tmp_path / "run"
    run_cli("train", *tiny, f"method={method}", f"zero_stage={stage}", "precision=bf16", "steps=2",
            "eval.linear_probe=false", "--run-dir", str(run_dir))
    ds = json.loads((run_dir / "ds_config.json").read_text())
    assert ds["bf16"]["enabled"] is True
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["end_reason"] == "completed" and summary["steps"] == 2, summary
    losses = [m["train/loss"] for m in read_metrics(run_dir) if "train/loss" in m]
    assert len(losses) == 2 and all(loss == loss for loss in losses)
