"""ShardClips: WebDataset shards written by `scaling data shard` from generated H.264/AAC files,
split over ranks and workers, shuffled from seeds, resumed exactly without decoding what is skipped,
with bad samples replaced and marked, and read once per rank for evaluation."""
import itertools
import json

import pytest
import torch

from scaling.data.encode import frame_index, write_corrupt, write_video
from scaling.data.loader import build_loader
from scaling.data.shards import write_shards
from scaling.data.stream import ShardClips, shard_list

CLIPS = 12
READER = dict(frames=4, resolution=16, captions=1, max_words=4, vocab_size=100, decoder="pyav")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    records = []
    for k in range(CLIPS):
        write_video(folder / f"v{k}.mp4", seconds=2, fps=10, size=(48, 32))
        records.append({"video": f"v{k}.mp4", "captions": [f"clip {k}"], "label": k})
    write_corrupt(folder / "bad.mp4", folder / "v0.mp4")
    records[5] = {"video": "bad.mp4", "captions": ["never decoded"], "label": 99}
    (folder / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    write_shards(folder / "m.jsonl", folder / "out", shard_size_bytes=40000, progress=False)
    return folder / "out"


def clips(shards, **kw):
    return ShardClips(str(shards / "train-shards.json"), **{**READER, **kw})


def test_the_shard_list_comes_from_the_sidecar_or_the_brace_pattern_with_the_same_counts(shards):
    record = json.loads((shards / "train-shards.json").read_text())
    by_sidecar = shard_list(shards / "train-shards.json")
    by_pattern = shard_list(shards / record["pattern"])
    assert by_sidecar == by_pattern and sum(by_sidecar[1]) == CLIPS and len(by_sidecar[0]) >= 4
    (shards / "copy").mkdir(exist_ok=True)  # no sidecar: counted from the tar headers
    for shard in by_sidecar[0]:
        (shards / "copy" / shard.name).write_bytes(shard.read_bytes())
    assert shard_list(shards / "copy" / record["pattern"])[1] == by_sidecar[1]
    with pytest.raises(FileNotFoundError, match="shards not found"):
        shard_list(shards / "train-{000000..000099}.tar")


def _epoch_of(stream, count):
    return [s["index"] for s in itertools.islice(stream, count)]


def test_ranks_read_disjoint_shards_that_cover_each_epoch_in_a_seeded_order(shards):
    seen = []
    for rank in range(2):
        data = clips(shards, shuffle_buffer=0)
        data.place(rank, 2)
        streams = data._worker_stream(0)
        epoch0 = [i for e, i, _ in itertools.takewhile(lambda x: x[0] == 0, streams)]
        seen.append(epoch0)
    assert sorted(seen[0] + seen[1]) == list(range(CLIPS)) and not set(seen[0]) & set(seen[1])
    again = clips(shards, shuffle_buffer=0)
    again.place(0, 2)
    assert [i for e, i, _ in itertools.takewhile(lambda x: x[0] == 0, again._worker_stream(0))] == seen[0]
    other = clips(shards, shuffle_buffer=0)
    other.place(0, 2, order_seed=7)
    by_epoch = {}
    for epoch, index, _ in itertools.islice(other._worker_stream(0), 4 * CLIPS // 2):
        by_epoch.setdefault(epoch, []).append(index)
    assert len({tuple(v) for v in by_epoch.values()}) > 1  # each epoch its own shard order


def test_a_bad_sample_is_replaced_by_the_next_that_decodes_and_marked(shards):
    data = clips(shards, shuffle_buffer=0)
    data.place(0, 1)
    samples = list(itertools.islice(iter(data), CLIPS))
    assert sorted(s["index"] for s in samples) == list(range(CLIPS))  # one sample per raw sample
    marked = [s for s in samples if (s["bad"] >= 0).any()]
    assert len(marked) == 1 and marked[0]["bad"][0] == 5 and marked[0]["label"] != 99
    assert all(s["label"] != 99 for s in samples)
    assert "(sample" in data.describe_clip(5)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_stream_continues_with_exactly_the_batches_it_would_have_seen(shards, workers):
    def batches(skip, count):
        data = clips(shards, shuffle_buffer=3, modalities=("video",))
        loader = build_loader(data, 2, shuffle=True, seed=5, rank=0, world_size=2, num_workers=workers)
        data.resume_at(skip)
        return [(b["index"].tolist(), b["video"]) for b in itertools.islice(loader, count)]

    straight = batches(0, 9)  # 18 samples on a rank with 6 a epoch: three epochs
    resumed = batches(5, 4)
    assert [i for i, _ in resumed] == [i for i, _ in straight[5:9]]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(resumed, straight[5:9]))  # the same windows


def test_evaluation_reads_each_ranks_shards_once_with_views(shards):
    seen = []
    for rank in range(2):
        data = clips(shards, views=(2, 1), modalities=("video",))
        data.place(rank, 2)
        rows = list(iter(data))
        assert len(rows) == data.rank_samples(rank) and rows[0]["video"].shape == (2, 3, 4, 16, 16)
        seen += [r["index"] for r in rows]
    assert sorted(seen) == list(range(CLIPS))
    first = next(r for r in clips(shards, views=(1, 1), modalities=("video",)) if r["index"] == 0)
    assert frame_index(first["video"][:, 0]) == 8  # the centre 0.4-s window of a 2-s clip starts 0.8 s in


def test_too_few_shards_for_the_ranks_and_workers_are_refused(shards):
    data = clips(shards)
    with pytest.raises(ValueError, match=r"shards cannot feed 64 ranks x 2 loader workers"):
        data.place(0, 64, workers=2)
