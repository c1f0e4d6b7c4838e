"""Part of the `scaling` (one run) layer: clips streamed from WebDataset tar shards.
Owns ShardClips: the per-epoch shard order, the split over ranks and loader workers, the seeded
shuffle buffer, skipping what a resumed run already consumed without decoding it, and bad samples.

The layout is video2dataset's: per sample KEY.mp4, KEY.json (the manifest line's metadata: caption,
timed captions, start, end, label), optional KEY.txt (a caption), KEY.cls (the label) and a separate
KEY.m4a / KEY.wav audio track. `scaling data shard` writes it from a manifest, with a sidecar
PREFIX-shards.json that counts each shard's samples.

Determinism. Worker w of rank r (of W workers and R ranks) reads, in epoch e, the shards at
positions r*W + w, r*W + w + R*W, ... of a permutation seeded by (seed, e), through a shuffle buffer
seeded by (seed, e, r, w); its stream runs on through the epochs without end. Every raw sample it
reads yields exactly one training sample (itself, or, when it does not decode, the next sample of
the stream that does, drawn at the bad one's own window), so the DataLoader's round-robin over
workers makes a rank's b-th batch a pure function of b. A run resumed after b batches skips the
first b_w * micro_batch raw samples of each worker's stream (b_w: the batches worker w served),
reading the tar members without decoding them, and continues with exactly the batch it would have
seen next. This holds for the same world size and `data.num_workers`, which resume keeps.
"""

from __future__ import annotations

import itertools
import json
import logging
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from webdataset.filters import _shuffle
from webdataset.shardlists import expand_urls
from webdataset.tariterators import tarfile_samples

from scaling.data.decode import DecodeError
from scaling.data.files import MAX_ATTEMPTS, ClipReader
from scaling.data.manifest import ManifestError, parse_entry
from scaling.data.windows import mix_seed

AUDIO_MEMBERS = ("m4a", "wav", "mp3", "flac", "ogg", "aac")
SIDECAR_SUFFIX = "-shards.json"
log = logging.getLogger(__name__)


def shard_list(path) -> tuple[list[Path], list[int]]:
    """The shards a `data.path` names (a brace pattern such as train-{000000..000127}.tar, or a
    PREFIX-shards.json sidecar) and each shard's sample count (from the sidecar when there is one,
    else from the tar headers). FileNotFoundError / ValueError name the path."""
    path = str(path)
    sidecar = None
    if path.endswith(".json"):
        sidecar = Path(path)
        if not sidecar.is_file():
            raise FileNotFoundError(f"shard list not found: {sidecar}")
        listed = _read_sidecar(sidecar)
        shards = [sidecar.parent / name for name, _ in listed]
        counts = [samples for _, samples in listed]
    else:
        shards = [Path(u) for u in expand_urls(path)]
        counts = None
        candidates = sorted(Path(path).parent.glob(f"*{SIDECAR_SUFFIX}")) if shards else []
        for candidate in candidates:
            try:
                by_name = dict(_read_sidecar(candidate))
            except ValueError:  # another set's broken sidecar: these shards' headers are counted instead
                continue
            if all(s.name in by_name for s in shards):
                counts = [by_name[s.name] for s in shards]
                break
    if not shards:
        raise ValueError(f"{path}: names no shards")
    missing = [str(s) for s in shards if not s.is_file()]
    if missing:
        raise FileNotFoundError(f"{path}: {len(missing)} of {len(shards)} shards not found, first {missing[0]}")
    if counts is None:
        counts = [_count_samples(s) for s in shards]
    return shards, counts


def _read_sidecar(sidecar: Path) -> list[tuple[str, int]]:
    """(shard file name, samples) of each shard a PREFIX-shards.json lists; ValueError naming the file
    when it is no such list."""
    try:
        record = json.loads(sidecar.read_text())
        listed = [(str(s["name"]), int(s["samples"])) for s in record["shards"]]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        why = f"no {err} key" if isinstance(err, KeyError) else str(err)
        raise ValueError(f"{sidecar}: not a shard list written by `scaling data shard` ({why})") from None
    if any(not name or samples < 0 for name, samples in listed):
        raise ValueError(f"{sidecar}: not a shard list written by `scaling data shard` (a shard without a name "
                         "or with a negative sample count)")
    return listed


def _count_samples(shard: Path) -> int:
    """Distinct sample keys in a tar, from its member headers (no member is read)."""
    try:
        with tarfile.open(shard) as tar:
            return len({name.split("/")[-1].split(".", 1)[0] for name in tar.getnames()})
    except (tarfile.TarError, OSError) as err:
        raise ValueError(f"{shard}: not a readable tar shard ({' '.join(str(err).split())})") from None


class ShardClips(ClipReader, torch.utils.data.IterableDataset):
    """Clips streamed from WebDataset shards (see the module docstring); decoding as ClipReader.

    Training (`views=None`): the endless, shuffled, per-rank-and-worker stream; call `place(rank,
    world, first_sample_of_rank, micro_batch, workers)` before the loader starts. Evaluation
    (`views` given): each rank reads its shards once, in order, unshuffled (`place` with the eval rank).
    """

    per_epoch_draws = True

    def __init__(self, path, *, shuffle_buffer: int = 1000, **reader):
        super().__init__(**reader)
        self.path = str(path)
        self.shards, self.counts = shard_list(path)
        self.offsets = [0, *itertools.accumulate(self.counts)][:-1]
        self.shuffle_buffer = shuffle_buffer
        self.rank, self.world, self.skip_batches, self.micro_batch, self.workers = 0, 1, 0, 1, 1
        self.order_seed = self.seed

    def __len__(self) -> int:
        return sum(self.counts)

    def describe_clip(self, index: int) -> str:
        shard = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return f"{self.shards[shard]} (sample {index - self.offsets[shard]} of that shard)"

    def place(self, rank: int, world: int, *, skip_batches: int = 0, micro_batch: int = 1, workers: int = 0,
              order_seed: int | None = None) -> None:
        """This rank's part of the stream: `skip_batches` of `micro_batch` already consumed, read by
        `workers` loader workers (0: the main process); shard orders and shuffles seeded by
        `order_seed` (the run's; by default the data set's)."""
        self.rank, self.world, self.skip_batches, self.micro_batch = rank, world, skip_batches, micro_batch
        self.workers = max(1, workers)
        self.order_seed = self.seed if order_seed is None else order_seed
        ways = world * (self.workers if self.views is None else 1)
        if len(self.shards) < ways:
            raise ValueError(f"{self.path}: {len(self.shards)} shards cannot feed {world} ranks"
                             + (f" x {self.workers} loader workers" if self.views is None else "")
                             + " (each reads whole shards): write more, smaller shards (scaling data shard "
                             "--shard-size) or lower data.num_workers")

    def resume_at(self, batches: int) -> None:
        """Start after this rank's first `batches` micro-batches (call before the loader iterates)."""
        self.skip_batches = batches

    def probe(self) -> None:
        """Decode the first sample of the first shard (no replacement): what a run checks before compute."""
        index, sample = next(iter(self._raw([0])), (0, None))
        if sample is None:
            raise DecodeError(self.shards[0], "holds no samples")
        entry, video, audio = self._entry(index, sample)
        self.decode(entry, 0, index, video, audio)

    def rank_samples(self, rank: int) -> int:
        """Samples rank `rank` reads in evaluation (its shards, one pass)."""
        return sum(self.counts[rank::self.world])

    # ------------------------------------------------------------------ streams

    def _raw(self, shards: list[int]) -> Iterator[tuple[int, dict]]:
        """(global index, raw sample) of `shards` in order; a damaged tar ends its shard, logged."""
        for shard in shards:
            position = 0
            try:
                for sample in tarfile_samples([{"url": str(self.shards[shard])}]):
                    yield self.offsets[shard] + position, sample
                    position += 1
            except (tarfile.TarError, OSError, ValueError) as err:
                log.warning("%s: unreadable after %d samples (%s); the rest of the shard is skipped",
                            self.shards[shard], position, err)

    def _worker_stream(self, worker: int) -> Iterator[tuple[int, int, dict]]:
        """(epoch, global index, raw sample) for ever: this rank's and worker's shards of each epoch."""
        slot, ways = self.rank * self.workers + worker, self.world * self.workers
        for epoch in itertools.count():
            order = np.random.default_rng(mix_seed(self.order_seed, epoch)).permutation(len(self.shards))
            raw = self._raw([int(s) for s in order[slot::ways]])
            if self.shuffle_buffer > 1:
                raw = _shuffle(raw, bufsize=self.shuffle_buffer, initial=self.shuffle_buffer,
                               seed=mix_seed(self.order_seed, epoch, self.rank, worker))
            for index, sample in raw:
                yield epoch, index, sample

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        if self.views is not None:
            return self._evaluation(worker, 1 if info is None else info.num_workers)
        if info is not None and info.num_workers != self.workers:
            raise RuntimeError(f"ShardClips was placed for {self.workers} workers, the loader has {info.num_workers}")
        # The DataLoader takes batch i of its iteration from worker i % workers. Batch `skip_batches`
        # of the run was due from logical worker skip_batches % workers, so loader worker w plays
        # logical worker (w + skip_batches) % workers, which served these batches before.
        logical = (worker + self.skip_batches) % self.workers
        served = len(range(logical, self.skip_batches, self.workers)) * self.micro_batch
        stream = itertools.islice(self._worker_stream(logical), served, None)  # read, never decoded
        return self._decoded(stream)

    def _decoded(self, stream) -> Iterator[dict]:
        """One sample per raw sample: a bad one waits for the next that decodes, which stands in for it."""
        pending: list[tuple[int, int]] = []  # (epoch, index) of bad samples not yet replaced
        for epoch, index, sample in stream:
            try:
                entry, video, audio = self._entry(index, sample)
                decoded = [(e, i, self.decode(entry, e, i, video, audio)) for e, i in [*pending, (epoch, index)]]
            except (DecodeError, ManifestError) as err:
                log.warning("skipping a sample that does not decode: %s", err)
                pending.append((epoch, index))
                if len(pending) > MAX_ATTEMPTS:
                    raise DecodeError(self.path, f"{len(pending)} samples in a row failed to decode, last: {err}") from None
                continue
            bad = [i for _, i in pending]
            for _, i, out in decoded:
                yield self.mark(out, i, bad)
                bad = []
            pending = []

    def _evaluation(self, worker: int, workers: int) -> Iterator[dict]:
        """This rank's shards once, in order, split over the workers; bad samples stand in as in training."""
        mine = list(range(len(self.shards)))[self.rank::self.world][worker::workers]
        return self._decoded((0, index, sample) for index, sample in self._raw(mine))

    def _entry(self, index: int, sample: dict):
        """(ManifestEntry, video bytes, audio bytes or None) of a raw sample."""
        where = f"{sample.get('__url__', self.path)}: {sample.get('__key__')}"
        if "mp4" not in sample:
            raise DecodeError(where, f"no .mp4 member (members: {sorted(k for k in sample if not k.startswith('__'))})")
        meta = json.loads(sample["json"]) if "json" in sample else {}
        if not isinstance(meta, dict):
            raise ManifestError(f"{where}.json must be a JSON object")
        record = {k: meta[k] for k in ("start", "end", "captions", "label", "class", "duration") if k in meta}
        if "captions" not in record:
            caption = meta.get("caption") or (sample["txt"].decode("utf-8") if "txt" in sample else None)
            if caption:
                record["captions"] = [caption]
        if "label" not in record and "cls" in sample:
            record["label"] = int(sample["cls"].decode().strip())
        entry = parse_entry({"video": f"{where}.mp4", **record}, index, where, Path("."))
        if self.require_captions and "text" in self.modalities and not entry.captions:
            raise ManifestError(f"{where}: no caption (VATT's video-text loss needs one; set vatt.vt_weight=0 "
                                "to train on video and audio only)")
        audio = next((sample[k] for k in AUDIO_MEMBERS if k in sample), None)
        return entry, bytes(sample["mp4"]), None if audio is None else bytes(audio)
