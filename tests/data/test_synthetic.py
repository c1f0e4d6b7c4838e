"""SyntheticClips: shapes and ranges, purity, batched == per-clip, nuisance vs class, captions."""

import random

import numpy as np
import pytest
import torch

from scaling.config import SYNTHETIC_MAX_CLASSES, ConfigError, DataConfig
from scaling.data.synthetic import (
    DIRECTION_WORDS,
    DIRECTIONS,
    MAX_CLASSES,
    PAIRS,
    SHAPE_WORDS,
    SHAPES,
    SPEED_WORDS,
    SyntheticClips,
    measure_throughput,
)
from scaling.data.text import encode_caption

SMALL = dict(frames=4, resolution=32, audio_samples=512, captions=3, max_words=12, vocab_size=1000)


def test_clip_has_documented_keys_shapes_dtypes_and_ranges():
    clip = SyntheticClips("train", 10, **SMALL)[3]
    assert set(clip) == {"video", "audio", "text", "label", "index"}
    assert clip["video"].shape == (3, 4, 32, 32) and clip["video"].dtype == torch.float32
    assert clip["video"].min() >= 0.0 and clip["video"].max() <= 1.0
    assert clip["audio"].shape == (512,) and clip["audio"].dtype == torch.float32
    assert clip["audio"].min() >= -1.0 and clip["audio"].max() <= 1.0 and clip["audio"].abs().max() > 0.05
    assert clip["text"].shape == (3, 12) and clip["text"].dtype == torch.int64
    assert clip["text"].min() >= 0 and clip["text"].max() < 1000
    assert clip["label"].dtype == torch.int64 and clip["label"].shape == () and 0 <= clip["label"] < 10
    assert clip["index"] == 3 and isinstance(clip["index"], int)


@pytest.mark.parametrize("difficulty", [0.0, 0.5, 1.0])
def test_getitems_equals_stacking_getitem_exactly(difficulty):
    data = SyntheticClips("eval", 40, difficulty=difficulty, **SMALL)
    indices = [7, 0, 39, 7, -1, 12]  # unsorted, repeated and negative
    batch = data.__getitems__(indices)
    singles = [data[i] for i in indices]
    for key in ("video", "audio", "text", "label"):
        assert torch.equal(batch[key], torch.stack([s[key] for s in singles])), key
    assert batch["index"].tolist() == [7, 0, 39, 7, 39, 12]


def test_clip_is_a_pure_function_of_seed_split_and_index_and_leaves_global_rngs_alone():
    torch_state, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    first = SyntheticClips("train", 100, seed=3, **SMALL)
    second = SyntheticClips("train", 100, seed=3, **SMALL)
    late = second.__getitems__(list(range(50)))  # fetching others first must not change clip 42
    for key in ("video", "audio", "text"):
        assert torch.equal(first[42][key], late[key][42])
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])
    assert random.getstate() == python_state
    other_seed = SyntheticClips("train", 100, seed=4, **SMALL)
    assert not torch.equal(first[42]["video"], other_seed[42]["video"])


def test_train_and_eval_are_disjoint_streams():
    train = SyntheticClips("train", 200, **SMALL).__getitems__(list(range(200)))
    evals = SyntheticClips("eval", 200, **SMALL).__getitems__(list(range(200)))
    train_videos = {v.numpy().tobytes() for v in train["video"]}
    assert len(train_videos) == 200
    assert not train_videos & {v.numpy().tobytes() for v in evals["video"]}


@pytest.mark.parametrize("kwargs, field", [
    ({"difficulty": -0.1}, "difficulty"), ({"difficulty": 1.5}, "difficulty"),
    ({"num_classes": MAX_CLASSES + 1}, "num_classes"), ({"frames": 0}, "frames"),
])
def test_bad_settings_raise_value_error_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SyntheticClips("train", 10, **kwargs)


def test_unknown_split_names_the_allowed_splits():
    with pytest.raises(ValueError, match="eval.*train|train.*eval"):
        SyntheticClips("test", 10)


def test_index_out_of_range_raises_index_error():
    data = SyntheticClips("train", 5, **SMALL)
    with pytest.raises(IndexError, match="5"):
        data[5]
    with pytest.raises(IndexError):
        data.__getitems__([0, -6])


def test_every_class_up_to_the_maximum_is_a_distinct_shape_and_direction_pair():
    data = SyntheticClips("train", 2 * MAX_CLASSES, num_classes=MAX_CLASSES, **SMALL)
    assert len(set(data.class_names)) == MAX_CLASSES
    assert sorted(data.__getitems__(list(range(2 * MAX_CLASSES)))["label"].unique().tolist()) == list(
        range(MAX_CLASSES))
    # Even the first ten classes need both factors: neither shape nor direction alone names them.
    first_ten = set(zip(data.class_shape[:10], data.class_direction[:10]))
    assert len({s for s, _ in first_ten}) < 10 and len({d for _, d in first_ten}) < 10


def test_beyond_48_classes_the_speed_band_joins_the_class_as_a_third_factor():
    data = SyntheticClips("train", MAX_CLASSES, num_classes=MAX_CLASSES, **SMALL)
    assert MAX_CLASSES == 3 * PAIRS == 144
    triples = set(zip(data.class_shape, data.class_direction, data.class_speed))
    assert len(triples) == MAX_CLASSES == len(set(data.class_names))
    # Each class has look-alikes that differ in speed alone: the same pair in the other two bands.
    assert (data.class_shape[:PAIRS] == data.class_shape[PAIRS:2 * PAIRS]).all()
    assert data.describe_class(PAIRS + 1).endswith(", " + SPEED_WORDS[1][0])
    assert SyntheticClips("train", 4, num_classes=PAIRS, **SMALL).class_speed is None
    assert SYNTHETIC_MAX_CLASSES == MAX_CLASSES  # the config refuses beyond it, before any data exists
    with pytest.raises(ConfigError, match="data.num_classes"):
        DataConfig(num_classes=MAX_CLASSES + 1).validate()


def _speed_per_frame(video):
    """The object's speed in pixels per frame, from the phase of the frame-to-frame cross power."""
    background = video[..., ::4, ::4].flatten(3).median(dim=3).values[..., None, None]
    silhouette = ((video - background).abs().amax(dim=1) > 0.2).float()
    spectrum = torch.fft.rfft2(silhouette)
    cross_power = (spectrum[:, 1:] * spectrum[:, :-1].conj()).sum(1)
    phase = torch.stack([torch.angle(cross_power[:, 0, 1]), torch.angle(cross_power[:, 1, 0])], 1)
    return phase.norm(dim=1) * video.shape[-1] / (2 * torch.pi)


def test_speed_bands_are_separated_in_the_video_and_named_by_the_captions():
    data = SyntheticClips("train", 2 * MAX_CLASSES, num_classes=MAX_CLASSES, difficulty=0.0, frames=8,
                          resolution=32, audio_samples=512, captions=3, max_words=12, vocab_size=1000)
    indices = list(range(2 * MAX_CLASSES))
    batch = data.__getitems__(indices)
    band = torch.from_numpy(data.class_speed[batch["label"].numpy()])
    speed = _speed_per_frame(batch["video"])
    for k in range(2):  # every clip of a band is slower than every clip of the next band
        assert speed[band == k].max() < speed[band == k + 1].min(), (k, speed[band == k].max(),
                                                                       speed[band == k + 1].min())
    for texts, k in zip(data.caption_texts(indices), band.tolist()):
        named = [t for t in texts if any(w in t for words in SPEED_WORDS for w in words)]
        assert named and all(any(w in t for w in SPEED_WORDS[k]) for t in named), (texts, k)


def _ridge_accuracy(train_x, train_y, test_x, test_y, num_classes):
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    design = torch.cat([(train_x - mean) / std, torch.ones(len(train_x), 1)], 1).double()
    test = torch.cat([(test_x - mean) / std, torch.ones(len(test_x), 1)], 1).double()
    targets = torch.nn.functional.one_hot(train_y, num_classes).double()
    gram = design.T @ design + 1e-2 * len(design) * torch.eye(design.shape[1], dtype=torch.float64)
    weights = torch.linalg.solve(gram, design.T @ targets)
    return ((test @ weights).argmax(1) == test_y).double().mean().item()


def _shape_and_motion_features(video):
    """Translation-invariant silhouette spectrum plus the direction of frame-to-frame motion."""
    background = video[..., ::4, ::4].flatten(3).median(dim=3).values[..., None, None]
    silhouette = ((video - background).abs().amax(dim=1) > 0.2).float()  # (B, T, H, W)
    spectrum = torch.fft.rfft2(silhouette)
    magnitude = spectrum.abs().mean(1)
    shape = (magnitude[:, :8, :8] / magnitude[:, :1, :1].clamp_min(1e-6)).flatten(1)
    cross_power = (spectrum[:, 1:] * spectrum[:, :-1].conj()).sum(1)  # phase = -2 pi k . velocity / R
    motion = torch.stack([-torch.angle(cross_power[:, 0, 1]), -torch.angle(cross_power[:, 1, 0])], 1)
    return torch.cat([shape, motion / motion.norm(dim=1, keepdim=True).clamp_min(1e-6)], 1)


def test_class_is_carried_by_shape_and_motion_not_by_mean_colour_or_any_single_pixel():
    train = SyntheticClips("train", 600, difficulty=0.0).__getitems__(list(range(600)))
    test = SyntheticClips("eval", 300, difficulty=0.0).__getitems__(list(range(300)))
    chance = 1 / 10
    mean_colour = _ridge_accuracy(train["video"].mean((2, 3, 4)), train["label"],
                                  test["video"].mean((2, 3, 4)), test["label"], 10)
    assert mean_colour < chance + 0.1
    for y, x in [(32, 32), (5, 40), (63, 0)]:  # a pixel's whole colour-over-time trace
        pixel = _ridge_accuracy(train["video"][..., y, x].flatten(1), train["label"],
                                test["video"][..., y, x].flatten(1), test["label"], 10)
        assert pixel < chance + 0.1, (y, x)
    learned = _ridge_accuracy(_shape_and_motion_features(train["video"]), train["label"],
                              _shape_and_motion_features(test["video"]), test["label"], 10)
    assert learned > 0.8


def test_audio_carries_the_class_chord():
    def spectrum(audio):
        return torch.log1p(torch.fft.rfft(audio).abs()[:, :512].reshape(len(audio), 128, 4).mean(2))
    tiny_video = dict(frames=1, resolution=8)  # only the audio is under test
    train = SyntheticClips("train", 400, difficulty=0.5, **tiny_video).__getitems__(list(range(400)))
    test = SyntheticClips("eval", 200, difficulty=0.5, **tiny_video).__getitems__(list(range(200)))
    assert _ridge_accuracy(spectrum(train["audio"]), train["label"],
                           spectrum(test["audio"]), test["label"], 10) > 0.9


def test_difficulty_scales_pixel_noise_distractors_and_audio_noise():
    easy = SyntheticClips("train", 8, difficulty=0.0, **SMALL).__getitems__(list(range(8)))
    hard = SyntheticClips("train", 8, difficulty=1.0, **SMALL).__getitems__(list(range(8)))
    # Without nuisance the background is static: most pixels never change over time.
    static = lambda video: (video.std(dim=2).amax(dim=1) < 1e-6).float().mean()  # noqa: E731
    assert static(easy["video"]) > 0.5 and static(hard["video"]) < 0.05
    assert SyntheticClips("train", 1, difficulty=0.0).num_distractors == 0
    assert SyntheticClips("train", 1, difficulty=1.0).num_distractors > 0
    # A clip's tone does not depend on difficulty, so what differs from the easy clip is the noise.
    medium = SyntheticClips("train", 8, difficulty=0.5, **SMALL).__getitems__(list(range(8)))
    medium_noise, hard_noise = (medium["audio"] - easy["audio"]).std(), (hard["audio"] - easy["audio"]).std()
    assert 0.05 < medium_noise < hard_noise


def test_captions_name_the_clip_shape_and_direction_differ_and_match_the_text_tensor():
    data = SyntheticClips("train", 20, captions=4, max_words=16, vocab_size=65536, frames=2, resolution=16)
    batch = data.__getitems__(list(range(20)))
    for i in range(20):
        label = int(batch["label"][i])
        shape, direction = SHAPES[data.class_shape[label]], DIRECTIONS[data.class_direction[label]]
        texts = data.caption_texts([i])[0]
        assert len(set(texts)) == 4
        for text in texts:
            assert any(word in text for word in SHAPE_WORDS[shape]), (text, shape)
            assert any(word in text for word in DIRECTION_WORDS[direction]), (text, direction)
        assert torch.equal(batch["text"][i], torch.stack([encode_caption(t, 16, 65536) for t in texts]))


def test_measure_throughput_reports_clips_per_second():
    assert measure_throughput(SyntheticClips("train", 16, **SMALL), batch_size=8, seconds=0.05) > 0


@pytest.mark.parametrize("kwargs, field", [
    ({"frames": True}, "frames"), ({"seed": 1.0}, "seed"), ({"difficulty": True}, "difficulty"),
    ({"difficulty": float("nan")}, "difficulty"), ({"vocab_size": 1}, "vocab_size"),
])
def test_bools_floats_and_nan_are_refused_with_a_config_error_naming_the_argument(kwargs, field):
    from scaling.validate import ConfigError

    with pytest.raises(ConfigError) as err:
        SyntheticClips("train", 10, **kwargs)
    assert err.value.field == field


def test_numpy_integers_are_read_as_ints():
    clips = SyntheticClips("train", np.int64(10), num_classes=np.int32(4), **SMALL)
    assert (clips.size, clips.num_classes) == (10, 4) and type(clips.size) is int
