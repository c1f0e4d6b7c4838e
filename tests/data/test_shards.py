"""`scaling data shard` on a tiny manifest of real H.264/AAC files (scaling.data.encode): the shards
read back with webdataset hold the source files' exact bytes and the entries' metadata, in manifest
order; the size limit sets the shard count; the sidecar counts them; refusals write nothing."""
import json
import math
import shutil
import tarfile
import wave
from pathlib import Path

import pytest
import webdataset as wds
from clitools import run_cli

from scaling.cli import main
from scaling.data.encode import write_video
from scaling.data.shards import parse_size, write_shards
from scaling.validate import ConfigError

# Manifest lines (one blank line after the first, so the manifest lines are 1, 3, 4, 5).
RECORDS = [
    {"video": "clips/a.mp4", "captions": ["a dog barks", "then it sits"], "label": 0, "class": "dog"},
    {"video": "clips/b.mp4", "audio": "clips/b.wav", "start": 0.2, "end": 0.9,
     "captions": [{"text": "hello", "start": 0.1, "end": 0.5}, {"text": "world", "start": 0.5, "end": 0.8}]},
    {"video": "clips/c.mp4", "audio": "clips/c.m4a", "label": 2, "class": "cat", "duration": 3.0,
     "streams": {"video": {"codec": "h264"}, "audio": None}},
    {"video": "clips/d.mkv", "label": -1},
]
LINES = [1, 3, 4, 5]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The manifest (its folder holds the clips)."""
    root = tmp_path_factory.mktemp("shards")
    clips = root / "clips"
    clips.mkdir()
    write_video(clips / "a.mp4", seconds=2.0)
    write_video(clips / "b.mp4", seconds=1.0, audio=False)
    write_video(clips / "c.mp4", seconds=3.0, audio=False)
    write_video(clips / "d.mkv", seconds=1.0)
    shutil.copyfile(clips / "a.mp4", clips / "c.m4a")  # an MPEG-4 file as a separate audio file's bytes
    with wave.open(str(clips / "b.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(bytes(range(256)) * 40)
    manifest = root / "train.jsonl"
    lines = [json.dumps(r) for r in RECORDS]
    manifest.write_text("\n".join([lines[0], "", *lines[1:]]) + "\n")
    return manifest


def expected_members(manifest: Path, k: int) -> dict[str, bytes]:
    """What sample k must hold: the files' bytes, the metadata and the text members."""
    record, folder = RECORDS[k], manifest.parent
    members = {"mp4": (folder / record["video"]).read_bytes()}  # .m4v and .mkv too: the bytes, under .mp4
    if "audio" in record:
        members[Path(record["audio"]).suffix[1:]] = (folder / record["audio"]).read_bytes()
    meta = {}
    if "captions" in record:
        first = record["captions"][0]
        meta["caption"] = first if isinstance(first, str) else first["text"]
        meta["captions"] = record["captions"]
        members["txt"] = meta["caption"].encode()
    meta.update({key: record[key] for key in ("start", "end", "label", "class", "duration", "streams") if key in record})
    meta["source"] = record["video"]
    if "audio" in record:
        meta["audio_source"] = record["audio"]
    meta["line"] = LINES[k]
    members["json"] = meta
    if record.get("label", -1) >= 0:
        members["cls"] = str(record["label"]).encode()
    return members


def read_back(pattern: str) -> list[dict]:
    """Every sample of the shards `pattern` names (a brace pattern), with webdataset's own reader."""
    return list(wds.WebDataset(pattern, shardshuffle=False))


def sample_bytes(tar_path: Path) -> dict[str, int]:
    """Each sample's bytes in the tar (headers and padding included), by key."""
    out = {}
    with tarfile.open(tar_path) as tar:
        for member in tar.getmembers():
            key = member.name.split(".")[0]
            out[key] = out.get(key, 0) + 512 + math.ceil(member.size / 512) * 512
    return out


def check_samples(manifest: Path, samples: list[dict]) -> None:
    assert [s["__key__"] for s in samples] == [f"{k:09d}" for k in range(len(RECORDS))]  # manifest order
    for k, sample in enumerate(samples):
        want = expected_members(manifest, k)
        got = {ext: value for ext, value in sample.items() if not ext.startswith("__")}
        assert set(got) == set(want), k
        assert json.loads(got.pop("json")) == want.pop("json")
        assert got == want  # the files' bytes, unchanged


def test_cli_writes_the_shards_the_sidecar_and_prints_data_path(corpus, tmp_path):
    out = tmp_path / "shards"
    proc = run_cli("data", "shard", str(corpus), "--out", str(out), "--shard-size", "1", timeout=300)
    # A one-byte limit: every sample is a shard of its own.
    names = [f"train-{k:06d}.tar" for k in range(4)]
    assert sorted(p.name for p in out.iterdir()) == [*names, "train-shards.json"]
    index = json.loads((out / "train-shards.json").read_text())
    assert index["pattern"] == "train-{000000..000003}.tar"
    assert index["samples"] == 4 and index["manifest"] == str(corpus)
    assert index["shards"] == [{"name": n, "samples": 1, "bytes": (out / n).stat().st_size} for n in names]
    assert "sharded 4 samples" in proc.stdout and "into 4 shard(s)" in proc.stdout
    data_path = f"{out}/train-{{000000..000003}}.tar"
    assert proc.stdout.splitlines()[-1] == f"data.path='{data_path}'"  # quoted: the shell would expand the braces
    assert "shard" in proc.stderr  # the progress bar goes to stderr
    check_samples(corpus, read_back(data_path))


def test_shard_count_follows_the_size_limit(corpus, tmp_path):
    one = write_shards(corpus, tmp_path / "one", shard_size_bytes=parse_size("1GB"), progress=False)
    assert [(n, k) for n, k, _ in one.shards] == [("train-000000.tar", 4)]
    assert one.pattern == "train-{000000..000000}.tar" and one.samples == 4
    check_samples(corpus, read_back(one.data_path))
    sizes = sample_bytes(tmp_path / "one" / "train-000000.tar")

    first_two = sizes["000000000"] + sizes["000000001"]
    limit = math.ceil((first_two + 1024) / 10240) * 10240  # a tar file of the first two samples
    report = write_shards(corpus, tmp_path / "some", shard_size_bytes=limit, prefix="part", progress=False)
    assert report.shards[0][1] >= 2 and 2 <= len(report.shards) < 4 and report.samples == 4
    sidecar = json.loads(report.sidecar.read_text())
    assert sidecar["samples"] == 4 and sum(s["samples"] for s in sidecar["shards"]) == 4
    keys = []
    for k, shard in enumerate(sidecar["shards"]):
        path = tmp_path / "some" / shard["name"]
        assert shard["name"] == f"part-{k:06d}.tar" and shard["bytes"] == path.stat().st_size
        in_shard = list(sample_bytes(path))
        assert len(in_shard) == shard["samples"]
        assert shard["bytes"] <= limit or shard["samples"] == 1
        if k + 1 < len(sidecar["shards"]):  # closed only because the next sample would not fit
            following = next(iter(sample_bytes(tmp_path / "some" / sidecar["shards"][k + 1]["name"]).values()))
            assert shard["bytes"] - 1024 + following > limit - 10240
        keys += in_shard
    assert keys == [f"{k:09d}" for k in range(4)]
    check_samples(corpus, read_back(report.data_path))


@pytest.mark.parametrize("text, value", [("123456", 123456), ("500MB", 500 * 10**6), ("1GB", 10**9), ("1gb", 10**9),
                                         ("1.5GiB", 3 * 2**29), ("64 KiB", 65536), ("2TB", 2 * 10**12)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "1G", "ten", "-5MB", "0", "0.1", "1.5.2GB", "nanGB"])
def test_parse_size_refuses(text):
    with pytest.raises(ConfigError, match="--shard-size"):
        parse_size(text)


def test_refusals_write_nothing(corpus, tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    proc = run_cli("data", "shard", str(corpus), "--out", str(busy), check=False, timeout=300)
    assert proc.returncode == 2 and "scaling: invalid config: --out:" in proc.stderr and "--force" in proc.stderr
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]

    out = tmp_path / "new"
    assert main(["data", "shard", str(corpus), "--out", str(out), "--shard-size", "1GiB!"]) == 2
    assert "invalid config: --shard-size: got '1GiB!'" in capsys.readouterr().err
    assert not out.exists()

    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"video": str(corpus.parent / "clips/a.mp4")}) + "\n{not json\n")
    assert main(["data", "shard", str(broken), "--out", str(out)]) == 2
    assert f"invalid config: MANIFEST: {broken}: line 2: malformed JSON" in capsys.readouterr().err
    assert not out.exists()

    missing = tmp_path / "missing.jsonl"
    missing.write_text("\n".join(json.dumps({**r, "video": str(corpus.parent / r["video"]),
                                              **({"audio": str(corpus.parent / r["audio"])} if "audio" in r else {})})
                                 for r in RECORDS[:2])
                       + "\n" + json.dumps({"video": str(tmp_path / "gone.mp4")}) + "\n")
    assert main(["data", "shard", str(missing), "--out", str(out)]) == 2
    assert f"line 3: video file {tmp_path / 'gone.mp4'} not found" in capsys.readouterr().err
    assert not out.exists()

    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({"video": str(corpus.parent / "clips/a.mp4"), "audio": str(corpus)}) + "\n")
    with pytest.raises(ConfigError, match=r"MANIFEST: .*line 1: audio file .*train\.jsonl has extension '\.jsonl'"):
        write_shards(odd, out, shard_size_bytes=10**9, progress=False)
    assert not out.exists()


def test_force_replaces_only_the_prior_set_of_its_prefix(corpus, tmp_path, monkeypatch):
    out = tmp_path / "shards"
    write_shards(corpus, out, shard_size_bytes=1, progress=False)
    write_shards(corpus, out, shard_size_bytes=1, prefix="val", force=True, progress=False)
    (out / "notes.txt").write_text("mine")
    (out / "train-extra-000000.tar").write_bytes(b"another prefix's")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len([n for n in before if n.startswith("train-0")]) == 4

    # A failure while writing (a file that cannot be read) leaves the folder exactly as it was.
    real = Path.read_bytes

    def failing(path):
        if path.name == "c.mp4":
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", failing)
    with pytest.raises(ConfigError, match=r"MANIFEST: .*line 4: cannot read .*c\.mp4: Permission denied"):
        write_shards(corpus, out, shard_size_bytes=10**9, force=True, progress=False)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    report = write_shards(corpus, out, shard_size_bytes=10**9, force=True, progress=False)
    assert sorted(report.removed) == sorted(n for n in before if n.startswith("train-0") or n == "train-shards.json")
    after = sorted(p.name for p in out.iterdir())
    assert after == sorted(["train-000000.tar", "train-shards.json", "notes.txt", "train-extra-000000.tar",
                            *(n for n in before if n.startswith("val-"))])
    assert json.loads((out / "train-shards.json").read_text())["shards"][0]["samples"] == 4
    check_samples(corpus, read_back(report.data_path))
    assert (out / "val-shards.json").read_bytes() == before["val-shards.json"]
