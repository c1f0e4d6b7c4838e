"""Resume on another number of ranks: 2 ranks to step k, killed, then 1 rank to the end, through
DeepSpeed's universal checkpoint (scaling.train.reshard).

The state the resumed rank starts from equals the killed run's checkpoint gathered over its 2 ranks, bit
for bit: every parameter, buffer (VATT's synchronised BatchNorm statistics) and frozen parameter (DINO's
teacher, VATT's word embeddings). The data order is over the global sample sequence (micro_batch x
world_size is kept) and every random draw is keyed by the global sample (scaling.draws), so the whole
run equals an uninterrupted 1-rank run to floating-point reduction noise (rtol 1e-4; seen: ~1e-6),
with the same final k-NN.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from clitools import TINY, kill_at_checkpoint, read_metrics, run_cli

# The check run in a process of its own (a world of one): load the checkpoint of `step` through a
# universal conversion into an engine on 1 rank, and compare its whole module state with the
# checkpoint's own, consolidated by DeepSpeed's zero_to_fp32 over the ranks that wrote it.
CHECK = r"""
import json, sys
from pathlib import Path
import deepspeed, torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from scaling.config import RunConfig
from scaling.models import build_model
from scaling.objectives import build_objective
from scaling.train.checkpoint import Checkpoints
from scaling.train.engine import build_ds_config, build_engine, end_process_group, init_distributed

run_dir, step, micro = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
init_distributed()
cfg = RunConfig.load(run_dir / "config.yaml", ["world_size=1", f"micro_batch={micro}"])
torch.manual_seed(1234)  # other initial weights than the run's: whatever matches was loaded
engine, _ = build_engine(cfg, build_model(cfg), {**build_ds_config(cfg, 1), "checkpoint": {"load_universal": True}})
Checkpoints(run_dir / "checkpoints").load(engine, step, universal=True)
truth = get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"), tag=f"step_{step:08d}")
params = list(engine.module.parameters())
with deepspeed.zero.GatheredParameters(params, enabled=hasattr(params[0], "ds_id")):
    mine = {k: v.detach().float().clone() for k, v in engine.module.state_dict().items()}
diff = {k: float((mine[k] - truth[k].float()).abs().max()) if mine[k].numel() else 0.0 for k in truth}
print(json.dumps({"diff": diff, "missing": sorted(set(truth) - set(mine)),
                  "universal_left": (run_dir / "checkpoints" / "universal").exists()}))
end_process_group()
"""


def _check_state(run_dir: Path, step: int, micro: int) -> dict:
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    env.pop("MASTER_PORT", None)
    out = subprocess.run([sys.executable, "-c", CHECK, str(run_dir), str(step), str(micro)], capture_output=True,
                         text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _two_ranks_then_one(tmp_path: Path, overrides: list[str]) -> tuple[Path, dict]:
    """2 ranks (micro_batch 4) killed once step 2 is saved; the state check; 1 rank to the end."""
    run_dir = tmp_path / "run"
    kill_at_checkpoint(["train", "--nproc", "2", *TINY, *overrides], run_dir, 2)
    check = _check_state(run_dir, 2, micro=8)
    assert not check["missing"] and not check["universal_left"], check
    assert max(check["diff"].values()) == 0.0, {k: v for k, v in check["diff"].items() if v}
    done = run_cli("train", "--nproc", "1", "--run-dir", str(run_dir))
    assert "written by 2 rank(s)" in done.stdout + done.stderr
    assert "continued on 1 through a universal checkpoint" in done.stdout + done.stderr
    return run_dir, json.loads((run_dir / "summary.json").read_text())


def _assert_continued(run_dir: Path, summary: dict, stage: int) -> None:
    assert summary["end_reason"] == "completed" and summary["steps"] == 6
    steps = [m["step"] for m in read_metrics(run_dir) if "train/loss" in m]
    assert steps == [1, 2, 3, 4, 5, 6]  # every step logged once: the killed run's 1-2, then 3-6
    assert summary["segments"] == [{"start_step": 0, "world_size": 2, "zero_stage": stage},
                                   {"start_step": 2, "world_size": 1, "zero_stage": stage}]
    assert "world_size: 1" in (run_dir / "config.yaml").read_text()
    assert "micro_batch: 8" in (run_dir / "config.yaml").read_text()  # a micro-step spans 8 samples, as before
    assert not (run_dir / "checkpoints" / "universal").exists()


def _assert_same_as_one_rank(tmp_path: Path, run_dir: Path, summary: dict, overrides: list[str]) -> None:
    """The same computation as an uninterrupted 1-rank run, to floating-point reduction noise: every
    random draw is keyed by the global sample (scaling.draws). The gradient norm is the global one at
    every step; the loss is rank 0's, so it is compared where the run had one rank (steps 3-6)."""
    import torch

    alone = tmp_path / "alone"
    run_cli("train", "--nproc", "1", "--run-dir", str(alone), *TINY, *overrides, "micro_batch=8")
    ours, theirs = ({m["step"]: m for m in read_metrics(d) if "train/loss" in m} for d in (run_dir, alone))
    torch.testing.assert_close([ours[s]["train/grad_norm"] for s in range(1, 7)],
                               [theirs[s]["train/grad_norm"] for s in range(1, 7)], rtol=1e-4, atol=0)
    torch.testing.assert_close([ours[s]["train/loss"] for s in range(3, 7)],
                               [theirs[s]["train/loss"] for s in range(3, 7)], rtol=1e-4, atol=0)
    final = json.loads((alone / "summary.json").read_text())["final"]
    assert summary["final"]["knn_top1"] == final["knn_top1"] and summary["final"]["knn_top5"] == final["knn_top5"]


@pytest.mark.parametrize("stage", [1, 2])
def test_a_vatt_zero1_or_zero2_run_of_2_ranks_continues_on_1_as_if_it_had_run_there(tmp_path, stage):
    overrides = ["steps=6", "checkpoint_every=2", f"zero_stage={stage}", "drop_rate=0.5", "eval.linear_probe=false"]
    run_dir, summary = _two_ranks_then_one(tmp_path, overrides)
    _assert_continued(run_dir, summary, stage)
    _assert_same_as_one_rank(tmp_path, run_dir, summary, overrides)


def test_a_dino_zero3_run_of_2_ranks_continues_on_1_with_its_teacher_as_if_it_had_run_there(tmp_path):
    overrides = ["method=dino", "steps=6", "checkpoint_every=2", "zero_stage=3", "eval.linear_probe=false"]
    run_dir, summary = _two_ranks_then_one(tmp_path, overrides)
    _assert_continued(run_dir, summary, 3)
    _assert_same_as_one_rank(tmp_path, run_dir, summary, overrides)


SHARDS = ["data.source=webdataset", "data.path=shards/train-{000000..000001}.tar"]


@pytest.mark.parametrize("change, field, extra", [
    (["--nproc", "3"], "--nproc", []),                      # 2 x 4 samples per micro-step do not split over 3
    (["--nproc", "1", "micro_batch=4"], "micro_batch", []),  # would halve a micro-step's samples
    (["--nproc", "2", "zero_stage=0"], "zero_stage", []),    # ZeRO-2 -> stage 0: no plain optimizer state
    (["--nproc", "2", "lr=0.1"], "run_dir", []),              # not a resharding change: another run
    (["--nproc", "1"], "world_size", SHARDS),                # shards are split by rank: no counterpart on 1
])
def test_a_resume_that_cannot_carry_over_is_refused_before_anything_runs(tmp_path, change, field, extra):
    from scaling.config import RunConfig

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = RunConfig.load(None, [*TINY, "world_size=2", "zero_stage=2", *extra]).to_yaml()
    (run_dir / "config.yaml").write_text(config)
    done = run_cli("train", "--run-dir", str(run_dir), *change, check=False)
    assert done.returncode == 2 and done.stderr.startswith(f"scaling: invalid config: {field}:"), done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]
    assert (run_dir / "config.yaml").read_text() == config
