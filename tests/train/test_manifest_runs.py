"""Whole runs on a real (generated) H.264/AAC corpus: VATT and DINO on 2 ranks from manifests with
segments and timed captions, a corrupt file that is skipped and counted, the bad-fraction stop,
repeated sampling (data.repeats), exact resume after SIGKILL, and bad data refused before any compute."""
import json

import pytest
from clitools import TINY, kill_at_checkpoint, read_metrics, run_cli

from scaling.data.encode import write_corrupt, write_video

GEOMETRY = ["data.source=manifest", "data.frames=4", "data.resolution=32", "data.audio_samples=1024",
            "data.fps=10", "eval.random_init=false"]


def _records(folder, count, prefix, *, seconds=4.0):
    records = []
    for k in range(count):
        name = f"{prefix}{k}.mp4"
        write_video(folder / name, seconds=seconds + (k % 3), fps=10, size=(48, 32), keyint=10)
        captions = [{"text": f"clip {k} part {p}", "start": p * 1.0, "end": p * 1.0 + 0.9} for p in range(4)]
        records.append({"video": name, "start": 0.5, "end": seconds + (k % 3) - 0.2, "captions": captions,
                        "label": k % 4})
    return records


def _write(folder, name, records):
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    train = _records(folder, 16, "train")
    write_corrupt(folder / "broken.mp4", folder / "train0.mp4")
    train.insert(8, {"video": "broken.mp4", "captions": ["never decoded"], "label": 1})  # in the middle
    evaluation = _records(folder, 8, "eval")
    return {"folder": folder, "train": _write(folder, "train.jsonl", train),
            "clean": _write(folder, "clean.jsonl", [r for r in train if r["video"] != "broken.mp4"]),
            "eval": _write(folder, "eval.jsonl", evaluation)}


def data_args(corpus, train="train"):
    size = len(corpus[train].read_text().splitlines())
    return [*TINY, *GEOMETRY, f"data.path={corpus[train]}", f"data.eval_path={corpus['eval']}", f"data.train_size={size}"]


def test_vatt_on_two_ranks_skips_the_corrupt_file_once_and_counts_it(corpus, tmp_path):
    run_dir = tmp_path / "vatt"
    run_cli("train", *data_args(corpus), "method=vatt", "zero_stage=2", "data.num_workers=1",
            "data.max_bad_fraction=0.1", "steps=3", "--nproc", "2", "--run-dir", str(run_dir))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["end_reason"] == "completed"
    # 3 steps x 8 samples = 24 > 17 clips: every clip was drawn, the broken one once per epoch.
    assert summary["data_skipped"] == 1 and summary["bad_clips"] == [f"{corpus['folder'] / 'broken.mp4'} (line 9)"]
    skipped = [m["data/skipped"] for m in read_metrics(run_dir) if "data/skipped" in m]
    assert skipped[-1] == 1 and skipped == sorted(skipped) and len(skipped) == 3
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    assert [e.value for e in events.Scalars("data/skipped")] == skipped
    assert {"v2t_r1", "knn_top1"} <= set(summary["final"])


def test_dino_on_two_ranks_evaluates_on_multiple_views_per_video(corpus, tmp_path):
    run_dir = tmp_path / "dino"
    run_cli("train", *data_args(corpus, "clean"), "method=dino", "zero_stage=3", "eval.temporal_views=2",
            "eval.spatial_views=2", "data.repeats=2", "steps=2", "--nproc", "2", "--run-dir", str(run_dir))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["end_reason"] == "completed" and summary["data_skipped"] == 0
    assert summary["samples_seen"] == 16  # every window counts: 2 steps x 8, from 8 decoded clips
    assert 0 <= summary["final"]["knn_top1"] <= 100


def test_more_bad_clips_than_the_limit_stop_the_run_naming_them(corpus, tmp_path):
    folder = corpus["folder"]
    records = [json.loads(line) for line in corpus["clean"].read_text().splitlines()][:8]
    for k in (1, 4):
        records[k] = {"video": f"missing{k}.mp4", "captions": ["x"], "label": 0}
    manifest = _write(tmp_path, "bad.jsonl", [{**r, "video": str(folder / r["video"])} for r in records])
    run_dir = tmp_path / "run"
    proc = run_cli("train", *TINY, *GEOMETRY, f"data.path={manifest}", f"data.eval_path={corpus['eval']}",
                   "data.train_size=8", "method=dino", "micro_batch=8", "steps=2", "--run-dir", str(run_dir), check=False)
    assert proc.returncode == 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["end_reason"] == "bad_data" and summary["data_skipped"] == 2
    assert "2 of 8 clips failed to decode, more than data.max_bad_fraction=0.01" in proc.stdout
    assert "missing1.mp4 (line 2)" in proc.stdout and "missing4.mp4 (line 5)" in proc.stdout


def test_a_sigkilled_manifest_run_with_repeated_sampling_resumes_to_the_same_result(corpus, tmp_path):
    args = ["train", *data_args(corpus), "method=vatt", "data.max_bad_fraction=0.1", "steps=6", "data.repeats=2",
            "checkpoint_every=2", "--nproc", "2"]
    straight = tmp_path / "straight"
    run_cli(*args, "--run-dir", str(straight))
    killed = tmp_path / "killed"
    kill_at_checkpoint(args, killed, 2)
    run_cli("train", "--run-dir", str(killed), "--nproc", "2")
    a = json.loads((straight / "summary.json").read_text())
    b = json.loads((killed / "summary.json").read_text())
    for key in ("loss", "knn_top1", "v2t_r1"):
        assert abs(a["final"][key] - b["final"][key]) <= 1e-6, (key, a["final"][key], b["final"][key])
    assert a["data_skipped"] == b["data_skipped"] == 1
    losses = {m["step"]: m["train/loss"] for m in read_metrics(straight) if "train/loss" in m}
    resumed = {m["step"]: m["train/loss"] for m in read_metrics(killed) if "train/loss" in m}
    assert sorted(resumed) == list(range(1, 7))
    assert all(abs(losses[s] - resumed[s]) <= 1e-6 for s in losses)  # the same windows, step by step
    # 4 windows per rank from 2 clips: 8 - 1 others, less the one other window of the same video.
    assert {m["train/negatives_per_positive"] for m in read_metrics(straight) if "train/loss" in m} == {6}


@pytest.mark.parametrize("problem, expected", [
    ("missing", r"data.path: .*nowhere.jsonl: no such manifest \(write one with `scaling data index"),
    ("malformed", r"data.path: .*bad.jsonl: line 2: malformed JSON"),
    ("first_corrupt", r"data.path: .*broken.mp4: .* at line 1 \(the first entry, decoded as a probe\)"),
    ("no_eval", r"data.eval_path: data.source='manifest' reads the eval split from a manifest: set data.eval_path"),
    ("size", r"data.train_size: is 16, but .*train.jsonl holds 17 clips: set data.train_size=17"),
])
def test_bad_data_is_refused_before_any_run_directory_exists(corpus, tmp_path, problem, expected):
    from scaling.config import ConfigError
    from scaling.train.launch import resolve_run

    folder = corpus["folder"]
    paths = {"missing": tmp_path / "nowhere.jsonl"}
    if problem == "malformed":
        paths[problem] = tmp_path / "bad.jsonl"
        paths[problem].write_text(json.dumps({"video": str(folder / "train1.mp4"), "captions": ["x"]}) + "\n{oops\n")
    if problem == "first_corrupt":
        paths[problem] = _write(tmp_path, "first.jsonl", [{"video": str(folder / "broken.mp4"), "captions": ["x"]}])
    eval_args = [] if problem == "no_eval" else [f"data.eval_path={corpus['eval']}"]
    overrides = [*TINY, *GEOMETRY, f"data.path={paths.get(problem, corpus['train'])}", *eval_args, "data.train_size=17"]
    if problem == "size":
        overrides.append("data.train_size=16")
    with pytest.raises(ConfigError, match=expected):
        resolve_run(None, overrides, str(tmp_path / "run"), 2)
    assert not (tmp_path / "run").exists()


def test_the_cli_refuses_a_missing_manifest_with_a_message_not_a_traceback(corpus, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("train", *TINY, *GEOMETRY, f"data.path={tmp_path / 'nowhere.jsonl'}", f"data.eval_path={corpus['eval']}",
                   "--nproc", "2", "--run-dir", str(run_dir), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"scaling: invalid config: data.path: {tmp_path / 'nowhere.jsonl'}: no such manifest" in proc.stderr
    assert not run_dir.exists()
