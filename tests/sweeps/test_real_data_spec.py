"""The shipped real-data spec (sweeps/kinetics_batch_sensitivity.yaml): it parses as the papers'
Kinetics-400 study, `sweep plan` names a missing manifest (rc 2) instead of crashing, and with its
placeholder paths edited to real manifests it plans."""
from pathlib import Path

import pytest
from clitools import run_cli

from scaling.cli import main
from scaling.data.corpus import index_corpus
from scaling.data.encode import write_video
from sweeps.spec import SPECS, SpecError, check_data, load_spec

SPEC = SPECS / "kinetics_batch_sensitivity.yaml"
TRAIN, VAL = "/path/to/kinetics400/train.jsonl", "/path/to/kinetics400/val.jsonl"


def test_the_kinetics_spec_is_the_batch_study_on_kinetics_with_audio():
    spec = load_spec(SPEC, check_storage=False)
    cfgs = [spec.run_config(p) for p in spec.grid]
    assert {c.method for c in cfgs} == {"vatt", "dino"}
    assert {c.global_batch for c in cfgs} == {64, 128, 256, 512, 1024, 2048}
    assert len({c.total_samples for c in cfgs}) == 1 and all(c.accumulation == 1 for c in cfgs)
    for c in cfgs:
        d = c.data
        assert (d.source, d.path, d.eval_path, d.decoder) == ("manifest", TRAIN, VAL, "torchcodec")
        assert (d.frames, d.fps, d.resolution, d.sample_rate) == (32, 10.0, 224, 48000)
        assert d.audio_samples == d.sample_rate * d.frames / d.fps  # the audio covers the clip's 3.2 s
        assert (c.eval.temporal_views, c.eval.spatial_views) == (4, 3)
        assert c.vatt.vt_weight == 0  # Kinetics has no captions


def test_plan_names_the_missing_manifest_and_exits_2():
    proc = run_cli("sweep", "plan", str(SPEC), check=False, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "fixed/data.path" in proc.stderr and TRAIN in proc.stderr and "no such manifest" in proc.stderr
    assert "Traceback" not in proc.stderr


def write_manifest(folder: Path) -> Path:
    (folder / "videos" / "dogs").mkdir(parents=True)
    write_video(folder / "videos" / "dogs" / "d.mp4", seconds=1)
    return index_corpus(folder / "videos", folder / "m.jsonl", layout="kinetics", workers=1, progress=False).manifest


def edited(tmp_path: Path, train: Path, val: Path) -> Path:
    """The shipped spec with its two placeholder paths edited, as the README shows."""
    text = SPEC.read_text()
    assert text.count(TRAIN) == 1 and text.count(VAL) == 1
    path = tmp_path / "kinetics.yaml"
    path.write_text(text.replace(TRAIN, str(train)).replace(VAL, str(val)) + f"dir: {tmp_path / 'sweep'}\n")
    return path


def test_plan_names_the_missing_eval_manifest_when_the_train_one_exists(tmp_path):
    manifest = write_manifest(tmp_path)
    with pytest.raises(SpecError) as err:
        check_data(load_spec(edited(tmp_path, manifest, tmp_path / "val.jsonl"), check_storage=False))
    assert err.value.field == "fixed/data.eval_path" and str(tmp_path / "val.jsonl") in err.value.message


def test_plan_succeeds_once_the_paths_point_at_real_manifests(tmp_path, capsys):
    manifest = write_manifest(tmp_path)
    assert main(["sweep", "plan", str(edited(tmp_path, manifest, manifest))]) == 0
    out = capsys.readouterr().out
    assert "sweep kinetics_batch_sensitivity: 36 trial(s)" in out and "GPU-hours" in out
    assert not (tmp_path / "sweep").exists()  # planning creates nothing
