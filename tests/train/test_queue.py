"""vatt.negatives=queue: the losses with queued negatives against hand computations, the FIFO's
order and state, the refusals, and a 2-rank run whose queue fills and resumes exactly."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from clitools import kill_at_checkpoint, read_metrics, run_cli

from scaling.config import ConfigError, RunConfig
from scaling.describe import describe
from scaling.losses import mil_nce_loss, nce_loss
from scaling.queue import EmbeddingQueue


def _unit(*shape, seed):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_nce_with_a_queue_adds_the_queued_rows_to_each_softmax():
    x, y, xq, yq, t = _unit(3, 4, seed=0), _unit(3, 4, seed=1), _unit(5, 4, seed=2), _unit(5, 4, seed=3), 0.1
    total = 0.0
    for i in range(3):
        # x_i: its own y_i against every y and every queued y; y_i: likewise against x and queued x.
        x_row = [x[i] @ y[j] / t for j in range(3)] + [x[i] @ yq[q] / t for q in range(5)]
        y_row = [y[i] @ x[j] / t for j in range(3)] + [y[i] @ xq[q] / t for q in range(5)]
        total += (torch.logsumexp(torch.stack(x_row), 0) - x[i] @ y[i] / t
                  + torch.logsumexp(torch.stack(y_row), 0) - x[i] @ y[i] / t)
    assert torch.allclose(nce_loss(x, y, t, queue=(xq, yq)), total / 6, atol=1e-6)
    assert not torch.allclose(nce_loss(x, y, t, queue=(xq, yq)), nce_loss(x, y, t))


def test_mil_nce_with_a_queue_adds_every_queued_video_and_caption():
    x, y, xq, yq, t = _unit(3, 4, seed=0), _unit(3, 2, 4, seed=1), _unit(4, 4, seed=2), _unit(4, 2, 4, seed=3), 0.2
    total = 0.0
    for i in range(3):
        pos = torch.logsumexp(torch.stack([x[i] @ y[i, k] / t for k in range(2)]), 0)
        to_y = [x[i] @ y[j, k] / t for j in range(3) for k in range(2)] + [x[i] @ yq[q, k] / t for q in range(4)
                                                                           for k in range(2)]
        to_x = [y[i, k] @ x[j] / t for k in range(2) for j in range(3)] + [y[i, k] @ xq[q] / t for k in range(2)
                                                                           for q in range(4)]
        total += torch.logsumexp(torch.stack(to_y), 0) - pos + torch.logsumexp(torch.stack(to_x), 0) - pos
    assert torch.allclose(mil_nce_loss(x, y, t, queue=(xq, yq)), total / 6, atol=1e-6)


def _out(n, seed):
    return {"video_va": _unit(n, 4, seed=seed), "audio_va": _unit(n, 4, seed=seed + 1),
            "video_vt": _unit(n, 3, seed=seed + 2), "text_vt": _unit(n, 2, 3, seed=seed + 3)}


def test_the_queue_is_a_fifo_that_moves_once_per_optimizer_step_and_round_trips_its_state():
    queue = EmbeddingQueue(5)
    assert queue.negatives(torch.device("cpu")) is None
    first, second, third = _out(2, 0), _out(2, 10), _out(4, 20)
    queue.stage(first)
    queue.stage(second)
    assert queue.negatives(torch.device("cpu")) is None  # staged rows wait for the optimizer step
    queue.push()
    got = queue.negatives(torch.device("cpu"))
    assert queue.filled == 4 and torch.allclose(got["video_va"], torch.cat([first["video_va"], second["video_va"]]))
    saved = queue.state_dict()
    queue.stage(third)
    queue.push()  # 4 more rows into 5 slots: the oldest 3 are overwritten
    assert queue.filled == 5 and queue.head == 3
    rows = queue.buffers["text_vt"]
    assert torch.allclose(rows[4], third["text_vt"][0]) and torch.allclose(rows[:3], third["text_vt"][1:])
    assert torch.allclose(rows[3], second["text_vt"][1])  # the newest of the previous step survives
    restored = EmbeddingQueue(5)
    restored.load_state_dict(saved)
    assert restored.filled == 4 and torch.allclose(restored.negatives(torch.device("cpu"))["audio_va"],
                                                    torch.cat([first["audio_va"], second["audio_va"]]))


def test_queue_settings_are_refused_before_anything_runs():
    with pytest.raises(ConfigError, match="vatt.negatives.*nce only"):
        RunConfig.load(None, ["method=vatt", "vatt.negatives=queue", "vatt.loss=sigmoid"])
    with pytest.raises(ConfigError, match="vatt.queue_size"):
        RunConfig.load(None, ["method=vatt", "vatt.negatives=queue", "vatt.queue_size=0"])
    cfg = RunConfig.load(None, ["method=vatt", "vatt.negatives=queue", "vatt.queue_size=96", "global_batch=32",
                                "micro_batch=32"])
    assert describe(cfg)["batch"]["negatives_per_positive"] == 31 + 96


def test_a_two_rank_queue_run_fills_its_queue_and_resumes_exactly(tmp_path, tiny):
    args = ["train", *tiny, "steps=6", "checkpoint_every=2", "method=vatt", "vatt.negatives=queue",
            "vatt.queue_size=12", "zero_stage=2", "--nproc", "2"]
    straight = tmp_path / "straight"
    run_cli(*args, "--run-dir", str(straight))
    rows = [m for m in read_metrics(straight) if "train/negatives_per_positive" in m]
    # micro-batch 4 x 2 ranks = the global batch of 8 clips per step: the queue holds 0, 8, then 12
    # (full) past clips.
    assert [m["train/negatives_per_positive"] for m in rows][:4] == [7, 7 + 8, 7 + 12, 7 + 12]
    killed = tmp_path / "killed"
    kill_at_checkpoint(args, killed, 4)
    run_cli("train", "--run-dir", str(killed), "--nproc", "2")
    a = json.loads((straight / "summary.json").read_text())["final"]
    b = json.loads((killed / "summary.json").read_text())["final"]
    for key in ("loss", "knn_top1"):
        assert math.isclose(a[key], b[key], abs_tol=1e-6), (key, a[key], b[key])
    losses = lambda d: [m["train/loss"] for m in read_metrics(d) if "train/loss" in m]  # noqa: E731
    assert losses(straight)[4:] == pytest.approx(losses(killed)[-2:], abs=1e-6)
