"""The decode budget: `scaling data probe` times windows of real (generated) H.264/AAC files and
caches the cost beside the manifest or shards; `scaling describe` and `scaling sweep plan` print the
CPU cores one GPU needs from it (the arithmetic is checked against a probe file the test writes), or
from the stated default; `sweep plan` warns when the profile's CPUs fall short."""
import json
from pathlib import Path

import pytest

from scaling.cli import main
from scaling.config import RunConfig
from scaling.data.budget import (
    DEFAULT_CLIP_S,
    DEFAULT_FRAME_S,
    PLANNED_MFU,
    PLANNED_PEAK_TFLOPS,
    decode_budget,
    probe_file,
    probe_key,
    write_probe,
)
from scaling.data.encode import write_video
from scaling.describe import describe

GEOMETRY = ["method=vatt", "data.frames=8", "data.resolution=32", "data.audio_samples=1024", "steps=1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("budget")
    records = []
    for k in range(4):
        write_video(root / f"c{k}.mp4", seconds=3.0, fps=25, size=(64, 48))
        records.append({"video": f"c{k}.mp4", "captions": [f"clip {k}"], "label": k % 2})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root / "train.jsonl"


def cfg_of(manifest, *overrides) -> RunConfig:
    return RunConfig.load(None, [*GEOMETRY, "data.source=manifest", f"data.path={manifest}", *overrides])


def test_the_probe_is_cached_beside_the_manifest_or_the_shards():
    assert probe_file("/d/train.jsonl") == Path("/d/train.probe.json")
    assert probe_file("/d/s/train-shards.json") == Path("/d/s/train-probe.json")
    assert probe_file("/d/s/val-{000000..000127}.tar") == Path("/d/s/val-probe.json")


def test_probe_times_windows_and_caches_them_per_geometry(corpus, capsys):
    assert main(["data", "probe", str(corpus), *GEOMETRY, "--windows", "6"]) == 0
    assert main(["data", "probe", str(corpus), *GEOMETRY, "data.repeats=2", "micro_batch=2", "--windows", "6"]) == 0
    out = capsys.readouterr().out
    assert "probed 6 windows (6 clips x data.repeats=1)" in out and "probed 6 windows (3 clips x data.repeats=2)" in out
    assert f"probe -> {probe_file(corpus)}" in out and "CPU cores per GPU" in out
    probes = json.loads(probe_file(corpus).read_text())["probes"]
    assert [p["key"]["repeats"] for p in probes] == [1, 2]  # one entry per geometry
    assert probes[0]["key"] == probe_key(cfg_of(corpus))
    for p in probes:
        assert p["windows"] == 6 and p["failed"] == 0 and 0 < p["cpu_s_per_window"] < 10
        assert p["command"].startswith(f"scaling data probe {corpus}")
    # Probing one geometry again replaces its entry, and leaves the other.
    assert main(["data", "probe", str(corpus), *GEOMETRY, "--windows", "2"]) == 0
    probes = json.loads(probe_file(corpus).read_text())["probes"]
    assert sorted((p["key"]["repeats"], p["windows"]) for p in probes) == [(1, 2), (2, 6)]


def test_describe_prints_the_budget_from_a_probe_file(tmp_path, corpus, capsys):
    manifest = tmp_path / "train.jsonl"
    manifest.write_text(corpus.read_text())
    cfg = cfg_of(manifest, "size=base", "drop_rate=0.5")
    write_probe(probe_file(manifest), {"key": probe_key(cfg), "cpu_s_per_window": 0.05, "windows": 32,
                                       "measured_at": "2026-12-02T00:00:00+00:00"})
    assert main(["describe", *GEOMETRY, "size=base", "drop_rate=0.5", "data.source=manifest",
                 f"data.path={manifest}", "--json"]) == 0
    budget = json.loads(capsys.readouterr().out)["decode_budget"]
    flops = describe(cfg)["flops_per_sample"]
    windows = PLANNED_MFU * PLANNED_PEAK_TFLOPS * 1e12 / flops
    assert budget["gpu_windows_per_s"] == pytest.approx(windows)
    assert budget["cpu_s_per_window"] == 0.05 and budget["cores_per_gpu"] == pytest.approx(windows * 0.05)
    assert f"probe {probe_file(manifest)}: 32 windows, 2026-12-02" == budget["basis"]
    # The text, at another MFU and peak.
    assert main(["describe", *GEOMETRY, "size=base", "drop_rate=0.5", "data.source=manifest", f"data.path={manifest}",
                 "--mfu", "0.5", "--peak-tflops", "2000"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    at = 0.5 * 2000e12 / flops
    assert line == (f"decode budget at 50% MFU of 2000 TFLOP/s: one GPU consumes {at:,.0f} windows/s; decoding one "
                    f"costs 50.0 ms of CPU (probe {probe_file(manifest)}: 32 windows, 2026-12-02) -> "
                    f"{at * 0.05:.1f} CPU cores per GPU")


def test_without_a_probe_of_this_geometry_the_stated_default_is_used(corpus):
    cfg = cfg_of(corpus, "data.frames=16", "data.repeats=4", "micro_batch=8")
    budget = decode_budget(cfg, 1e9)
    assert budget.cpu_s_per_window == pytest.approx(DEFAULT_CLIP_S / 4 + 16 * DEFAULT_FRAME_S)
    assert budget.basis.startswith("default") and f"scaling data probe {corpus}" in budget.basis
    assert decode_budget(RunConfig(steps=1), 1e9) is None  # synthetic clips decode nothing


def test_probe_refuses_a_missing_path_or_a_bad_value_before_decoding(tmp_path, capsys):
    assert main(["data", "probe", str(tmp_path / "nowhere.jsonl"), *GEOMETRY]) == 2
    assert f"data.path: {tmp_path / 'nowhere.jsonl'}: no such manifest" in capsys.readouterr().err
    assert main(["data", "probe", str(tmp_path / "s-{000000..000001}.tar"), *GEOMETRY]) == 2
    assert "data.path" in capsys.readouterr().err
    assert main(["data", "probe", str(tmp_path / "x.jsonl"), *GEOMETRY, "--windows", "0"]) == 2
    assert "--windows" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


def test_probe_reads_shards_and_describe_finds_it_by_their_pattern(tmp_path, corpus, capsys):
    assert main(["data", "shard", str(corpus), "--out", str(tmp_path / "shards"), "--shard-size", "1MB"]) == 0
    pattern = capsys.readouterr().out.strip().splitlines()[-1].split("=", 1)[1].strip("'")
    assert main(["data", "probe", pattern, *GEOMETRY, "--windows", "4"]) == 0
    assert (tmp_path / "shards" / "train-probe.json").is_file()
    cfg = RunConfig.load(None, [*GEOMETRY, "data.source=webdataset", f"data.path={pattern}"])
    assert decode_budget(cfg, 1e9).basis.startswith(f"probe {tmp_path / 'shards' / 'train-probe.json'}: 4 windows")


def test_sweep_plan_prints_cores_per_gpu_and_warns_when_the_profile_falls_short(tmp_path, corpus, capsys):
    manifest = tmp_path / "train.jsonl"
    manifest.write_text(corpus.read_text())
    base = ["size=base", "drop_rate=0.5", "global_batch=64", "micro_batch=8"]
    for repeats in (1, 4):
        cfg = cfg_of(manifest, *base, f"data.repeats={repeats}")
        write_probe(probe_file(manifest), {"key": probe_key(cfg), "cpu_s_per_window": 0.1 / repeats, "windows": 32,
                                           "measured_at": "2026-12-02T00:00:00+00:00"})
    profile = tmp_path / "gpu.yaml"
    profile.write_text("partition: gpu\ngpus_per_node: 8\ncpus_per_task: 10\ntime: '01:00:00'\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({
        "name": "budget", "dir": str(tmp_path / "sweep"),
        "fixed": {"method": "vatt", "samples": 64, "data.source": "manifest", "data.path": str(manifest),
                  "data.eval_path": str(manifest), "data.train_size": 4, "data.frames": 8, "data.resolution": 32,
                  "data.audio_samples": 1024, "data.num_workers": 8, "size": "base", "drop_rate": 0.5,
                  "global_batch": 64, "micro_batch": 8},
        "grid": [{"data.repeats": [1, 4]}], "objective": {"metric": "knn_top1", "direction": "maximize"},
        "launcher": {"type": "slurm", "profile": str(profile), "nproc": 8}}))
    assert main(["sweep", "plan", str(spec)]) == 0
    out = capsys.readouterr().out
    flops = describe(cfg)["flops_per_sample"]
    need = [PLANNED_MFU * PLANNED_PEAK_TFLOPS * 1e12 / flops * 0.1 / r for r in (1, 4)]
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["1"], ["4"])]
    assert [float(r[-1]) for r in rows] == [pytest.approx(n, abs=0.06) for n in need]
    assert "cores/GPU" in out and f"probe {probe_file(manifest)}: 32 windows" in out
    assert (f"warning: decoding needs {need[0]:.1f} CPU cores per GPU (data.repeats=1), but the launcher's profile "
            "gives cpus_per_task=10 (9 for loader workers") in out
    assert "warning: data.num_workers=8 decode on at most 8 cores" in out
    assert not (tmp_path / "sweep").exists()
