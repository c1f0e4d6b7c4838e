"""Whole runs on WebDataset shards written by `scaling data shard` from generated H.264/AAC files:
VATT and DINO on 2 ranks with an eval shard set, a corrupt member counted, and exact resume after
SIGKILL on 2 ranks with a loader worker each."""
import json

import pytest
from clitools import TINY, kill_at_checkpoint, read_metrics, run_cli

from scaling.data.encode import write_corrupt, write_video

GEOMETRY = ["data.source=webdataset", "data.frames=4", "data.resolution=32", "data.audio_samples=1024",
            "data.fps=10", "eval.random_init=false", "data.shuffle_buffer=4"]


def _manifest(folder, name, count, *, corrupt_at=None):
    records = []
    for k in range(count):
        video = folder / f"{name}{k}.mp4"
        write_video(video, seconds=2 + k % 3, fps=10, size=(48, 32), keyint=10)
        captions = [{"text": f"clip {k} part {p}", "start": p * 0.5, "end": p * 0.5 + 0.4} for p in range(4)]
        records.append({"video": video.name, "start": 0.2, "captions": captions, "label": k % 4})
    if corrupt_at is not None:
        write_corrupt(folder / "broken.mp4", folder / f"{name}0.mp4")
        records.insert(corrupt_at, {"video": "broken.mp4", "captions": ["never decoded"], "label": 1})
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shard_corpus")
    train = _manifest(folder, "train", 16, corrupt_at=7)
    evaluation = _manifest(folder, "eval", 8)
    run_cli("data", "shard", str(train), "--out", str(folder / "train_shards"), "--shard-size", "60KB")
    run_cli("data", "shard", str(evaluation), "--out", str(folder / "eval_shards"), "--prefix", "eval",
            "--shard-size", "60KB")
    return {"train": folder / "train_shards" / "train-shards.json", "eval": folder / "eval_shards" / "eval-shards.json",
            "samples": 17}


def args(shards):
    return [*TINY, *GEOMETRY, f"data.path={shards['train']}", f"data.eval_path={shards['eval']}",
            f"data.train_size={shards['samples']}", "data.max_bad_fraction=0.1"]


def test_vatt_and_dino_train_on_shards_on_two_ranks_and_count_the_corrupt_member(shards, tmp_path):
    for method, stage in (("vatt", 2), ("dino", 3)):
        run_dir = tmp_path / method
        run_cli("train", *args(shards), f"method={method}", f"zero_stage={stage}", "steps=3", "eval.temporal_views=2",
                "--nproc", "2", "--run-dir", str(run_dir))
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["end_reason"] == "completed", method
        # 3 steps x 8 samples over 17: the whole train set was streamed, the corrupt member once or twice.
        assert summary["data_skipped"] == 1 and "train-0" in summary["bad_clips"][0], summary["bad_clips"]
        assert 0 <= summary["final"]["knn_top1"] <= 100
        assert [m["data/skipped"] for m in read_metrics(run_dir) if "data/skipped" in m][-1] == 1


def test_a_sigkilled_run_on_shards_resumes_to_the_same_result(shards, tmp_path):
    train = ["train", *args(shards), "method=vatt", "data.num_workers=1", "steps=6", "checkpoint_every=2",
             "--nproc", "2"]
    straight = tmp_path / "straight"
    run_cli(*train, "--run-dir", str(straight))
    killed = tmp_path / "killed"
    kill_at_checkpoint(train, killed, 2)
    run_cli("train", "--run-dir", str(killed), "--nproc", "2")
    losses = {m["step"]: m["train/loss"] for m in read_metrics(straight) if "train/loss" in m}
    resumed = {m["step"]: m["train/loss"] for m in read_metrics(killed) if "train/loss" in m}
    assert sorted(resumed) == list(range(1, 7))
    assert all(abs(losses[s] - resumed[s]) <= 1e-6 for s in losses), (losses, resumed)  # the same samples, in order
    a, b = (json.loads((d / "summary.json").read_text())["final"] for d in (straight, killed))
    assert abs(a["knn_top1"] - b["knn_top1"]) <= 1e-6 and abs(a["v2t_r1"] - b["v2t_r1"]) <= 1e-6
