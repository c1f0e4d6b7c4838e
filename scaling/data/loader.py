"""Part of the `scaling` (one run) layer: data sets from config and deterministic distributed loading.
Owns build_dataset, build_loader, the per-epoch sharded sampler and batch collation."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping

import torch
from torch.utils.data import DataLoader, Sampler
from torch.utils.data._utils.collate import default_collate

from scaling.data.corpus import check_paths
from scaling.data.decode import DecodeError
from scaling.data.files import MODALITIES, ImageFolderDataset, ManifestClips
from scaling.data.synthetic import SyntheticClips
from scaling.data.windows import mix_seed
from scaling.validate import ConfigError, choice, integer

SOURCES = ("synthetic", "manifest", "webdataset", "images")
SPLITS = ("train", "eval")


def build_dataset(data_cfg, split: str, *, modalities=MODALITIES, views=None,
                  require_captions: bool = True, repeats: int = 1) -> torch.utils.data.Dataset:
    """The `split` data set that `data_cfg` (a DataConfig-like object, read by attribute) describes.

    A manifest decodes only `modalities`; `views=(temporal, spatial)` gives each clip's evaluation
    views instead of a random training window; `require_captions` refuses entries without captions
    (see ManifestClips); `repeats` cuts that many training windows from each decoded video."""
    choice("split", split, SPLITS)
    source = choice("data.source", data_cfg.source, SOURCES)
    try:
        return _dataset(data_cfg, split, source, modalities, views, require_captions, repeats)
    except ConfigError as err:  # a constructor argument: name it by its DataConfig field
        if err.field == "size":
            raise ConfigError(f"data.{split}_size", err.message) from None
        if hasattr(data_cfg, err.field):
            raise ConfigError(f"data.{err.field}", err.message) from None
        raise


def _dataset(data_cfg, split: str, source: str, modalities, views, require_captions,
             repeats: int) -> torch.utils.data.Dataset:
    if repeats > 1 and source not in ("manifest", "webdataset"):
        raise ConfigError("data.repeats", f"repeated sampling needs decoded videos, not data.source={source!r}")
    if source == "synthetic":
        return SyntheticClips(
            split, data_cfg.train_size if split == "train" else data_cfg.eval_size,
            num_classes=data_cfg.num_classes, frames=data_cfg.frames, resolution=data_cfg.resolution,
            audio_samples=data_cfg.audio_samples, sample_rate=data_cfg.sample_rate, captions=data_cfg.captions,
            max_words=data_cfg.max_words, vocab_size=data_cfg.vocab_size, difficulty=data_cfg.difficulty,
            seed=data_cfg.seed)
    field = "data.path" if split == "train" else "data.eval_path"
    path = data_cfg.path if split == "train" else data_cfg.eval_path
    if path is None:
        raise ConfigError(field, f"must be set to read the {split} split from data.source={source!r}")
    if source == "images":
        return ImageFolderDataset(path, resolution=data_cfg.resolution)
    reader = dict(frames=data_cfg.frames, resolution=data_cfg.resolution, audio_samples=data_cfg.audio_samples,
                  sample_rate=data_cfg.sample_rate, fps=data_cfg.fps, captions=data_cfg.captions,
                  max_words=data_cfg.max_words, vocab_size=data_cfg.vocab_size, decoder=data_cfg.decoder,
                  modalities=modalities, seed=data_cfg.seed, views=views, require_captions=require_captions,
                  repeats=repeats)
    if source == "webdataset":
        from scaling.data.stream import ShardClips  # webdataset is needed only here

        return ShardClips(path, shuffle_buffer=data_cfg.shuffle_buffer, **reader)
    return ManifestClips(path, **reader)


def check_dataset(data_cfg, split: str, *, check_size: bool = True, **options) -> None:
    """Refuse, before any compute, a `split` that cannot be read: a manifest, shard set or image
    folder that is missing, empty or malformed, or whose first entry does not decode (it is decoded
    as a probe); and, with `check_size`, a train split of another size than data.train_size.
    Raises ConfigError naming the field, the file and, for a manifest, the line."""
    if data_cfg.source == "synthetic":
        return
    check_paths(data_cfg, splits=(split,))  # the cheap part first, with the messages `sweep plan` gives
    field = "data.path" if split == "train" else "data.eval_path"
    try:
        dataset = build_dataset(data_cfg, split, **options)
        if isinstance(dataset, ManifestClips):
            dataset.load(0)
        elif isinstance(dataset, torch.utils.data.IterableDataset):
            dataset.probe()
        else:
            dataset[0]
    except ImportError as err:  # the chosen decoder is not installed: its install hint
        raise ConfigError("data.decoder", str(err)) from None
    except (FileNotFoundError, ValueError, DecodeError) as err:
        if isinstance(err, ConfigError):
            raise
        probe = " (the first entry, decoded as a probe)" if isinstance(err, DecodeError) else ""
        line = f" at line {dataset.entries[0].line}" if isinstance(err, DecodeError) and hasattr(dataset, "entries") else ""
        raise ConfigError(field, f"{err}{line}{probe}") from None
    if check_size and split == "train" and len(dataset) != data_cfg.train_size:
        # The epoch count, and with it DINO's schedules in epochs, is samples / data.train_size.
        raise ConfigError("data.train_size", f"is {data_cfg.train_size}, but {data_cfg.path} holds {len(dataset)} "
                                             f"clips: set data.train_size={len(dataset)} (epochs are counted with it)")


class ShardedEpochSampler(Sampler[int]):
    """Rank `rank`'s disjoint share of a per-epoch permutation seeded from (seed, epoch).

    Every rank draws the same permutation and keeps positions rank, rank + world_size, ...
    With drop_last the epoch is first cut to a multiple of world_size, so all ranks get equally
    many samples (what collective training steps need); without it every sample is seen exactly
    once and the first len % world_size ranks get one extra (what exact evaluation needs).
    """

    def __init__(self, length: int, *, shuffle: bool, seed: int, epoch: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = True, epoch_keys: bool = False):
        integer("world_size", world_size, minimum=1)
        integer("rank", rank, minimum=0, maximum=world_size - 1)
        self.length, self.shuffle, self.seed = length, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = epoch
        self.start = 0
        # Data sets whose samples are drawn afresh each epoch (random windows) get (epoch, index) keys.
        self.epoch_keys = epoch_keys

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the permutation of `epoch`; call before iterating each epoch.

        `start` skips the first samples of this rank's share: a resumed run continues mid-epoch
        exactly where it stopped, without loading what it skips.
        """
        if not 0 <= start <= len(self):
            raise ValueError(f"start must be in [0, {len(self)}], got {start}")
        self.epoch, self.start = epoch, start

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.length)
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        return torch.randperm(self.length, generator=generator)

    def __iter__(self) -> Iterator[int]:
        order = self._order()
        if self.drop_last:
            order = order[:self.length - self.length % self.world_size]
        indices = order[self.rank::self.world_size][self.start:].tolist()
        if self.epoch_keys:
            return iter([(self.epoch, i) for i in indices])
        return iter(indices)

    def __len__(self) -> int:
        """Samples in this rank's whole share of an epoch (`start` not subtracted)."""
        if self.drop_last:
            return self.length // self.world_size
        return len(range(self.rank, self.length, self.world_size))


def collate_batch(batch, repeats: int = 1):
    """A dict from a data set's __getitems__ is already a batch; a list of samples is stacked. With
    repeated sampling each sample holds `repeats` windows: (videos, K, ...) becomes (videos x K, ...),
    a video's windows consecutive; "bad" stays one row per video (its clips failed once)."""
    if isinstance(batch, Mapping):
        return batch
    out = default_collate(batch)
    if repeats > 1:
        out = {k: v if k == "bad" else v.flatten(0, 1) for k, v in out.items()}
    return out


def loader_options(num_workers: int, *, persistent_workers: bool = True, prefetch_factor: int = 2,
                   pin_memory: bool | None = None) -> dict:
    """DataLoader keyword arguments: workers kept between epochs, batches each worker prepares
    ahead, and pinned host memory (None: when there is a GPU to copy to, so copies are asynchronous)."""
    integer("num_workers", num_workers, minimum=0)
    options = {"num_workers": num_workers, "collate_fn": collate_batch,
               "pin_memory": torch.cuda.is_available() if pin_memory is None else bool(pin_memory)}
    if num_workers > 0:  # both are errors for a loader without workers
        options.update(persistent_workers=persistent_workers, prefetch_factor=prefetch_factor)
    return options


def build_loader(dataset, batch_size: int, *, shuffle: bool, seed: int, epoch: int = 0, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, drop_last: bool = True, **options) -> DataLoader:
    """A DataLoader over this rank's shard, of `batch_size` clips (videos: with repeated sampling a
    batch holds batch_size x repeats windows); call `loader.sampler.set_epoch(e)` before each epoch.
    A streaming data set (ShardClips) has no sampler: it is placed on its rank and streams for ever.
    `options`: loader_options' (persistent_workers, prefetch_factor, pin_memory)."""
    integer("batch_size", batch_size, minimum=1)
    kwargs = loader_options(num_workers, **options)
    repeats = getattr(dataset, "repeats", 1)
    if repeats > 1:  # batch_size counts videos; each brings `repeats` windows
        kwargs["collate_fn"] = functools.partial(collate_batch, repeats=repeats)
    # The loader draws worker base seeds from this generator; without one it would consume the
    # global torch RNG and shift every later random draw of the run (dropout, init).
    generator = torch.Generator().manual_seed(mix_seed(seed, rank))
    if isinstance(dataset, torch.utils.data.IterableDataset):
        dataset.place(rank, world_size, micro_batch=batch_size, workers=num_workers, order_seed=seed)
        return DataLoader(dataset, batch_size=batch_size, generator=generator, **kwargs)
    sampler = ShardedEpochSampler(len(dataset), shuffle=shuffle, seed=seed, epoch=epoch, rank=rank,
                                  world_size=world_size, drop_last=drop_last,
                                  epoch_keys=getattr(dataset, "per_epoch_draws", False))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, generator=generator,
                      **kwargs)
