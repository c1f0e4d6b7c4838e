"""build_dataset from a DataConfig-like object, and deterministic, sharded, batched loading."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from scaling.data.files import ImageFolderDataset
from scaling.data.loader import ShardedEpochSampler, build_dataset, build_loader, collate_batch
from scaling.data.synthetic import SyntheticClips


def data_cfg(**overrides):
    fields = dict(source="synthetic", path=None, eval_path=None, num_classes=10, train_size=48, eval_size=20,
                  difficulty=0.5, frames=4, resolution=16, audio_samples=256, sample_rate=16000, fps=10.0,
                  captions=2, max_words=8, vocab_size=512, num_workers=0, seed=7, decoder="pyav")
    return SimpleNamespace(**{**fields, **overrides})


def shards(length, world_size, *, epoch=0, seed=1, shuffle=True, drop_last=True):
    samplers = [ShardedEpochSampler(length, shuffle=shuffle, seed=seed, epoch=epoch, rank=r, world_size=world_size,
                                    drop_last=drop_last) for r in range(world_size)]
    return [list(s) for s in samplers], samplers


def test_build_dataset_synthetic_uses_split_sizes_and_geometry():
    train, evals = build_dataset(data_cfg(), "train"), build_dataset(data_cfg(), "eval")
    assert isinstance(train, SyntheticClips) and (len(train), len(evals)) == (48, 20)
    assert (train.split, evals.split, train.seed, train.difficulty) == ("train", "eval", 7, 0.5)
    assert train[0]["video"].shape == (3, 4, 16, 16) and train[0]["text"].shape == (2, 8)


def test_build_dataset_reads_path_for_train_and_eval_path_for_eval(tmp_path):
    for split in ("train_imgs", "eval_imgs"):
        (tmp_path / split / "only").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "train_imgs" / "only" / "a.png")
    for name in ("b.png", "c.png"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "eval_imgs" / "only" / name)
    cfg = data_cfg(source="images", path=str(tmp_path / "train_imgs"), eval_path=str(tmp_path / "eval_imgs"))
    train, evals = build_dataset(cfg, "train"), build_dataset(cfg, "eval")
    assert isinstance(train, ImageFolderDataset) and (len(train), len(evals)) == (1, 2)
    assert train[0]["image"].shape == (3, 16, 16)


def test_build_dataset_manifest_passes_the_clip_geometry(tmp_path):
    # Construction reads the manifest only; nothing is opened or decoded.
    (tmp_path / "train.jsonl").write_text(json.dumps({"video": "clip.mp4", "captions": ["x"]}) + "\n")
    dataset = build_dataset(data_cfg(source="manifest", path=str(tmp_path / "train.jsonl")), "train")
    assert (dataset.frames, dataset.resolution, dataset.fps, dataset.captions) == (4, 16, 10.0, 2)
    assert (dataset.decoder, dataset.seed, dataset.views, dataset.modalities) == ("pyav", 7, None, ("video", "audio", "text"))
    views = build_dataset(data_cfg(source="manifest", eval_path=str(tmp_path / "train.jsonl")), "eval",
                          modalities=("video",), views=(4, 3))
    assert (views.views, views.modalities) == ((4, 3), ("video",))


@pytest.mark.parametrize("cfg, split, match", [
    (data_cfg(source="manifest", path="x.jsonl"), "eval", r"data\.eval_path"),
    (data_cfg(source="images"), "train", r"data\.path"),
    (data_cfg(source="s3"), "train", r"data\.source.*synthetic.*manifest.*webdataset.*images"),
    (data_cfg(), "validation", r"split.*train.*eval"),
])
def test_build_dataset_errors_name_the_field_and_allowed_values(cfg, split, match):
    with pytest.raises(ValueError, match=match):
        build_dataset(cfg, split)


@pytest.mark.parametrize("length, world_size", [(40, 4), (37, 3), (10, 1)])
def test_rank_shards_are_disjoint_equal_and_cover_the_epoch(length, world_size):
    parts, samplers = shards(length, world_size)
    flat = [i for part in parts for i in part]
    assert len(flat) == len(set(flat))  # disjoint
    assert all(len(part) == len(s) == length // world_size for part, s in zip(parts, samplers))
    assert len(set(range(length)) - set(flat)) == length % world_size  # only the remainder is dropped


def test_without_drop_last_every_sample_is_seen_exactly_once():
    parts, samplers = shards(37, 4, drop_last=False)
    assert sorted(i for part in parts for i in part) == list(range(37))
    assert [len(p) for p in parts] == [len(s) for s in samplers] == [10, 9, 9, 9]


def test_same_seed_and_epoch_repeat_the_order_and_another_epoch_or_seed_changes_it():
    first, _ = shards(64, 2, epoch=3)
    again, _ = shards(64, 2, epoch=3)
    assert first == again
    assert shards(64, 2, epoch=4)[0] != first
    assert shards(64, 2, epoch=3, seed=2)[0] != first
    assert sorted(first[0]) != first[0]  # actually shuffled


def test_set_epoch_selects_that_epochs_permutation():
    sampler = ShardedEpochSampler(30, shuffle=True, seed=5, rank=1, world_size=2)
    sampler.set_epoch(6)
    assert list(sampler) == shards(30, 2, epoch=6, seed=5)[0][1]


def test_unshuffled_sampler_strides_through_the_data_in_order():
    assert shards(10, 2, shuffle=False)[0] == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]


@pytest.mark.parametrize("rank, world_size", [(2, 2), (-1, 2), (0, 0)])
def test_sampler_rejects_a_rank_outside_the_world(rank, world_size):
    with pytest.raises(ValueError, match="rank|world_size"):
        ShardedEpochSampler(10, shuffle=True, seed=0, rank=rank, world_size=world_size)


def test_loader_batches_come_from_getitems_with_documented_shapes():
    dataset = build_dataset(data_cfg(), "train")
    calls = []
    original = dataset.__getitems__
    dataset.__getitems__ = lambda indices: calls.append(list(indices)) or original(indices)
    loader = build_loader(dataset, 8, shuffle=True, seed=1, rank=1, world_size=2)
    batches = list(loader)
    assert len(batches) == len(loader) == 3  # 24 samples for this rank, 8 per batch
    batch = batches[0]
    assert batch["video"].shape == (8, 3, 4, 16, 16) and batch["audio"].shape == (8, 256)
    assert batch["text"].shape == (8, 2, 8) and batch["label"].shape == (8,) and batch["index"].shape == (8,)
    assert [len(c) for c in calls] == [8, 8, 8]  # one batched fetch per batch, no per-clip calls
    assert [i for b in batches for i in b["index"].tolist()] == list(loader.sampler)


def test_loader_over_a_per_sample_dataset_falls_back_to_default_collation(tmp_path):
    (tmp_path / "a").mkdir()
    for k in range(5):
        Image.fromarray(np.full((6, 6, 3), 40 * k, np.uint8)).save(tmp_path / "a" / f"{k}.png")
    loader = build_loader(ImageFolderDataset(tmp_path, resolution=4), 2, shuffle=False, seed=0, drop_last=False)
    batches = list(loader)
    assert [b["image"].shape[0] for b in batches] == [2, 2, 1]
    assert batches[0]["label"].dtype == torch.int64 and batches[0]["index"].tolist() == [0, 1]


def test_collate_batch_passes_a_batched_dict_through_untouched():
    batch = {"video": torch.zeros(2, 3)}
    assert collate_batch(batch) is batch


def test_loader_leaves_the_global_torch_rng_alone():
    loader = build_loader(build_dataset(data_cfg(), "eval"), 4, shuffle=True, seed=3)
    state = torch.get_rng_state()
    list(loader)
    assert torch.equal(torch.get_rng_state(), state)


def test_worker_processes_yield_the_same_batches_as_the_main_process():
    dataset = build_dataset(data_cfg(), "train")
    in_process = list(build_loader(dataset, 8, shuffle=True, seed=2, epoch=1))
    workers = build_loader(dataset, 8, shuffle=True, seed=2, epoch=1, num_workers=2)
    assert workers.persistent_workers and not workers.pin_memory
    for ours, theirs in zip(in_process, list(workers), strict=True):
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), key


def test_set_epoch_start_resumes_mid_epoch_exactly_where_the_full_order_continues():
    sampler = ShardedEpochSampler(40, shuffle=True, seed=3, rank=1, world_size=2)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2, start=8)
    assert list(sampler) == full[8:]
    with pytest.raises(ValueError, match="start must be in"):
        sampler.set_epoch(2, start=21)


@pytest.mark.parametrize("overrides, split, field", [
    ({"num_classes": 145}, "train", "data.num_classes"),    # more than shapes x directions x speed bands
    ({"frames": True}, "train", "data.frames"),             # a bool is not a count
    ({"eval_size": -1}, "eval", "data.eval_size"),          # the split's size, named by its config path
    ({"difficulty": float("nan")}, "train", "data.difficulty"),
])
def test_build_dataset_names_a_bad_constructor_argument_by_its_config_path(overrides, split, field):
    from scaling.validate import ConfigError

    with pytest.raises(ConfigError) as err:
        build_dataset(data_cfg(**overrides), split)
    assert err.value.field == field


@pytest.mark.parametrize("kwargs, field", [({"rank": True}, "rank"), ({"world_size": 2.0}, "world_size"),
                                           ({"rank": 2, "world_size": 2}, "rank")])
def test_sampler_arguments_are_integers_named_in_the_error(kwargs, field):
    from scaling.validate import ConfigError

    with pytest.raises(ConfigError) as err:
        ShardedEpochSampler(10, shuffle=False, seed=0, **kwargs)
    assert err.value.field == field


def test_loader_settings_for_gpus_are_settable_and_left_out_without_workers():
    from scaling.data.loader import loader_options

    data = SyntheticClips("train", 16, frames=4, resolution=16, audio_samples=256, captions=2, max_words=8, vocab_size=512)
    loader = build_loader(data, 4, shuffle=True, seed=0, num_workers=1, persistent_workers=False, prefetch_factor=5,
                          pin_memory=False)
    assert (loader.persistent_workers, loader.prefetch_factor, loader.pin_memory) == (False, 5, False)
    assert build_loader(data, 4, shuffle=True, seed=0, num_workers=1).persistent_workers is True
    # Without workers DataLoader refuses both, so they are not passed; pinning follows the GPU by default.
    assert loader_options(0, prefetch_factor=5) == {"num_workers": 0, "collate_fn": collate_batch,
                                                    "pin_memory": torch.cuda.is_available()}
