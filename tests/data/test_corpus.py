"""`scaling data index` and `scaling data check` on a tiny Kinetics-layout corpus of real H.264/AAC
files (written with scaling.data.encode: three classes, one file without audio, one corrupt)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from clitools import run_cli

from scaling.cli import main
from scaling.config import DataConfig
from scaling.data.corpus import check_manifest, check_paths, index_corpus
from scaling.data.encode import write_corrupt, write_video
from scaling.data.manifest import read_manifest
from scaling.validate import ConfigError

# class/file -> (seconds, has audio); cooking/c2.mp4 is a corrupt copy of abseiling/a1.mp4.
FILES = {"abseiling/a1.mp4": (2.0, True), "abseiling/a2.mp4": (1.0, True), "bowling/b1.mp4": (3.0, False),
         "cooking/c1.mp4": (1.5, True)}
CORRUPT = "cooking/c2.mp4"
LABELS = {"abseiling": 0, "bowling": 1, "cooking": 2}
# The check's geometry: small and short, so each decode is quick.
GEOMETRY = dict(frames=8, resolution=32, audio_samples=4096, sample_rate=16000, fps=10.0, decoder="pyav")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kinetics") / "train"
    for name, (seconds, audio) in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        write_video(root / name, seconds=seconds, audio=audio)
    write_corrupt(root / CORRUPT, root / "abseiling/a1.mp4")
    return root


@pytest.fixture(scope="module")
def indexed(corpus) -> tuple[Path, subprocess.CompletedProcess]:
    """The manifest `scaling data index` (the real command line, two worker processes) wrote."""
    out = corpus.parent / "train.jsonl"
    proc = run_cli("data", "index", str(corpus), "--layout", "kinetics", "--out", str(out), "--workers", "2",
                   timeout=300)
    return out, proc


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_index_writes_one_line_per_file_with_label_class_duration_and_streams(indexed):
    out, _ = indexed
    records = lines_of(out)
    # Sorted by path; paths relative to the manifest's folder (the corpus lies inside it).
    assert [r["video"] for r in records] == [f"train/{name}" for name in FILES]
    for record, (name, (seconds, audio)) in zip(records, FILES.items()):
        cls = name.split("/")[0]
        assert record["class"] == cls and record["label"] == LABELS[cls]
        assert record["duration"] == pytest.approx(seconds, abs=0.05)
        video = record["streams"]["video"]
        assert (video["codec"], video["width"], video["height"], video["fps"]) == ("h264", 64, 48, 10.0)
        if audio:
            assert record["streams"]["audio"]["sample_rate"] == 16000
        else:
            assert record["streams"]["audio"] is None
    # The suite's own reader accepts what the index wrote.
    entries = read_manifest(out)
    assert [e.label for e in entries] == [0, 0, 1, 2] and entries[0].video == out.parent / "train/abseiling/a1.mp4"


def test_index_reports_counts_the_file_without_audio_and_the_bad_file(indexed, corpus):
    out, proc = indexed
    assert "indexed 4 files, 3 classes" in proc.stdout
    assert "1 file(s) have no audio track" in proc.stdout and "train/bowling/b1.mp4" in proc.stdout
    assert "could not probe 1 file(s)" in proc.stdout and str(corpus / CORRUPT) in proc.stdout
    bad = lines_of(out.with_name("train.unreadable.jsonl"))
    assert [b["video"] for b in bad] == [str(corpus / CORRUPT)] and bad[0]["error"]
    assert CORRUPT not in out.read_text()
    assert "index" in proc.stderr  # the progress bar goes to stderr, the counts to stdout


def test_index_of_the_flat_layout_has_no_labels_and_absolute_paths_outside_the_manifest_folder(corpus, tmp_path):
    out = tmp_path / "elsewhere" / "flat.jsonl"
    report = index_corpus(corpus, out, layout="flat", workers=1, progress=False)
    records = lines_of(out)
    assert report.indexed == 4 and report.classes == () and len(report.bad) == 1
    assert all("label" not in r and "class" not in r for r in records)
    assert records[0]["video"] == str(corpus / "abseiling/a1.mp4")  # not under the manifest's folder
    assert report.without_audio == (str(corpus / "bowling/b1.mp4"),)


def test_a_second_index_replaces_the_manifest_only_with_force_and_drops_a_stale_unreadable_list(tmp_path):
    root = tmp_path / "corpus"
    (root / "dogs").mkdir(parents=True)
    write_video(root / "dogs/d.mp4", seconds=1)
    write_video(root / "loose.mp4", seconds=1)  # in no class folder: skipped, and said so
    out = tmp_path / "m.jsonl"
    out.write_text("keep\n")
    (tmp_path / "m.unreadable.jsonl").write_text("stale\n")
    with pytest.raises(ConfigError, match="exists; pass --force") as err:
        index_corpus(root, out, layout="kinetics", workers=1, progress=False)
    assert err.value.field == "--out" and out.read_text() == "keep\n"
    report = index_corpus(root, out, layout="kinetics", workers=1, progress=False, force=True)
    assert report.indexed == 1 and report.bad_list is None and not (tmp_path / "m.unreadable.jsonl").exists()
    assert report.stray == (str(root / "loose.mp4"),) and report.classes == ("dogs",)
    assert [r["video"] for r in lines_of(out)] == ["corpus/dogs/d.mp4"]
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temporary file


@pytest.mark.parametrize("case, message", [
    ("missing", "no such folder"),
    ("empty", "no video files"),
    ("no_classes", "no class folders"),
    ("exists", "exists; pass --force"),
])
def test_index_refuses_with_rc_2_naming_the_path_and_writes_nothing(case, message, tmp_path, capsys):
    root = tmp_path / "corpus"
    out = tmp_path / "out.jsonl"
    if case == "empty":
        (root / "dogs").mkdir(parents=True)            # a class folder, but no video in it
        (root / "dogs" / "notes.txt").write_text("x")
    if case in ("no_classes", "exists"):
        root.mkdir()
        write_video(root / "loose.mp4", seconds=1)      # a video, but in no class folder
        (root / "cats").mkdir()
    if case == "no_classes":
        (root / "cats").rmdir()
    if case == "exists":
        write_video(root / "cats" / "c.mp4", seconds=1)
        out.write_text("mine\n")
    rc = main(["data", "index", str(root), "--layout", "kinetics", "--out", str(out), "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert (str(out) if case == "exists" else str(root)) in err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "corpus") == (["out.jsonl"] if case == "exists" else [])
    if case == "exists":
        assert out.read_text() == "mine\n"


@pytest.fixture(scope="module")
def to_check(indexed, corpus) -> Path:
    """The index's manifest with the corrupt file put back (line 3) and a blank line (line 5)."""
    out, _ = indexed
    lines = out.read_text().splitlines()
    bad = json.dumps({"video": f"train/{CORRUPT}", "label": 2, "class": "cooking"})
    text = "\n".join(lines[:2] + [bad, lines[2], ""] + lines[3:]) + "\n"
    path = corpus.parent / "to_check.jsonl"
    path.write_text(text)
    return path


def test_check_writes_the_bad_list_with_lines_and_the_clean_manifest_and_exits_1(to_check):
    # DINO decodes video only: the file without audio is good, the corrupt one is not.
    proc = run_cli("data", "check", str(to_check), "method=dino", "data.frames=8", "data.resolution=32",
                   "--workers", "2", timeout=300, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "checked 5 entries" in proc.stdout and "4 good, 1 bad" in proc.stdout
    bad = lines_of(to_check.with_name("to_check.bad.jsonl"))
    assert [(b["line"], b["video"]) for b in bad] == [(3, f"train/{CORRUPT}")] and bad[0]["error"]
    raw = to_check.read_text().splitlines()
    clean = to_check.with_name("to_check.clean.jsonl").read_text().splitlines()
    assert clean == [raw[0], raw[1], raw[3], raw[5]]  # the good lines, verbatim and in order
    assert "line 3:" in proc.stdout


def test_check_for_vatt_counts_a_file_without_audio_as_bad(to_check, tmp_path):
    report = check_manifest(to_check, out_dir=tmp_path, workers=1, progress=False,
                            modalities=("video", "audio"), **GEOMETRY)
    assert (report.total, report.good) == (5, 3)
    assert [(line, video) for line, video, _ in report.bad] == [(3, f"train/{CORRUPT}"), (4, "train/bowling/b1.mp4")]
    assert "no audio stream" in report.bad[1][2]
    # In another folder the clean lines' relative paths become absolute: they still find the files.
    entries = read_manifest(report.clean)
    assert [e.video for e in entries] == [to_check.parent / "train" / n for n in ("abseiling/a1.mp4", "abseiling/a2.mp4",
                                                                                  "cooking/c1.mp4")]
    assert check_manifest(report.clean, out_dir=tmp_path / "again", workers=1, progress=False,
                          modalities=("video", "audio"), **GEOMETRY).bad == ()


def test_check_all_good_exits_0(to_check, tmp_path, capsys):
    clean = tmp_path / "clean.jsonl"
    clean.write_text("".join(line + "\n" for line in to_check.read_text().splitlines()
                             if line.strip() and CORRUPT not in line))
    (tmp_path / "train").symlink_to(to_check.parent / "train")  # the relative paths resolve here too
    rc = main(["data", "check", str(clean), "method=dino", "data.frames=8", "data.resolution=32", "--decoder", "pyav",
               "--workers", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and "4 good, 0 bad" in out
    assert (tmp_path / "clean.bad.jsonl").read_text() == ""


def test_check_of_a_malformed_manifest_names_the_file_and_line_with_rc_2(tmp_path, capsys):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"video": "a.mp4"}\n{"video": "b.mp4", "lable": 3}\n')
    assert main(["data", "check", str(path), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: line 2" in err and "lable" in err
    assert main(["data", "check", str(tmp_path / "none.jsonl"), "--workers", "1"]) == 2
    assert "manifest not found" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.jsonl"]  # nothing written


def test_check_paths_names_the_missing_field_and_file(tmp_path):
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    check_paths(DataConfig())  # synthetic: nothing to look for
    with pytest.raises(ConfigError, match="train.jsonl: no such manifest") as err:
        check_paths(DataConfig(source="manifest", path=str(train), eval_path=str(val)))
    assert err.value.field == "data.path"
    train.write_text("{}\n")
    with pytest.raises(ConfigError, match="val.jsonl: no such manifest") as err:
        check_paths(DataConfig(source="manifest", path=str(train), eval_path=str(val)))
    assert err.value.field == "data.eval_path"
    with pytest.raises(ConfigError, match="set data.eval_path"):
        check_paths(DataConfig(source="manifest", path=str(train)))
    val.write_text("{}\n")
    check_paths(DataConfig(source="manifest", path=str(train), eval_path=str(val)))
    with pytest.raises(ConfigError, match="no such image folder"):
        check_paths(DataConfig(source="images", path=str(tmp_path), eval_path=str(tmp_path / "val")))


def test_the_entry_point_lists_the_data_commands_without_loading_torch():
    code = ("import sys; from scaling.cli import build_parser; build_parser().parse_args(['data', 'check', 'm.jsonl']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.strip() == "[]"
