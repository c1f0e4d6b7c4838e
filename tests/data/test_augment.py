"""Tests for scaling.data.augment: DINO multi-crop shapes, randomness, and each op's effect."""

import colorsys

import pytest
import torch
import torch.nn.functional as F

from scaling.data.augment import MultiCrop, _hsv_to_rgb, _rgb_to_hsv, measure_throughput, normalize

# Every random op switched off: crops are then plain resizes of the whole frame.
PLAIN = dict(global_scale=(1.0, 1.0), local_scale=(1.0, 1.0), ratio=(1.0, 1.0), p_flip=0.0, p_jitter=0.0,
             p_gray=0.0, p_blur=(0.0, 0.0, 0.0), p_solarize=(0.0, 0.0, 0.0), normalize=False)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_image_batch_gives_two_globals_then_locals_with_requested_sizes():
    x = torch.rand(4, 3, 40, 48)
    out = MultiCrop(32, 16, 3)(x, gen())
    assert len(out) == 5
    assert [tuple(o.shape) for o in out] == [(4, 3, 32, 32)] * 2 + [(4, 3, 16, 16)] * 3
    assert all(o.dtype == torch.float32 and o.device == x.device for o in out)


def test_video_batch_gives_temporal_crops_of_requested_length():
    x = torch.rand(2, 3, 8, 40, 40)
    out = MultiCrop(32, 16, 2, global_frames=4, local_frames=2)(x, gen())
    assert [tuple(o.shape) for o in out] == [(2, 3, 4, 32, 32)] * 2 + [(2, 3, 2, 16, 16)] * 2


def test_frames_none_keeps_every_frame():
    out = MultiCrop(16, 8, 1)(torch.rand(2, 3, 5, 20, 20), gen())
    assert [o.shape[2] for o in out] == [5, 5, 5]


def test_output_keeps_input_dtype():
    for dtype in (torch.float64, torch.bfloat16):
        out = MultiCrop(16, 8, 1)(torch.rand(2, 3, 20, 20).to(dtype), gen())
        assert all(o.dtype == dtype for o in out)


def test_no_locals_gives_only_globals():
    assert len(MultiCrop(16, 8, 0)(torch.rand(2, 3, 20, 20), gen())) == 2


def test_same_seed_gives_identical_crops_and_other_seeds_differ():
    x = torch.rand(3, 3, 6, 24, 24)
    mc = MultiCrop(16, 8, 2, global_frames=4, local_frames=2)
    a, b, c = mc(x, gen(1)), mc(x, gen(1)), mc(x, gen(2))
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert all(not torch.equal(p, q) for p, q in zip(a, c))


def test_crops_of_one_clip_and_clips_of_one_batch_get_independent_boxes():
    # The same image in every row: only the random parameters can make rows or crops differ.
    x = torch.rand(1, 3, 32, 32).expand(6, -1, -1, -1).contiguous()
    g1, g2, *locals_ = MultiCrop(16, 8, 2)(x, gen())
    assert not torch.equal(g1, g2)
    assert not torch.equal(g1[0], g1[1])
    assert not torch.equal(locals_[0], locals_[1])


def test_identical_frames_stay_identical_in_every_crop():
    # One set of box/flip/colour/blur parameters per clip, so a static clip stays static.
    frame = torch.rand(4, 3, 1, 24, 24)
    x = frame.expand(-1, -1, 6, -1, -1).contiguous()
    mc = MultiCrop(16, 8, 3, global_frames=4, local_frames=2, p_solarize=(1.0, 1.0, 1.0), p_gray=0.5)
    for crop in mc(x, gen()):
        assert torch.allclose(crop, crop[:, :, :1].expand_as(crop), atol=1e-6)


def test_temporal_crop_takes_consecutive_frames_with_random_start():
    # Frame i of every clip is the constant i / 10, so each output frame reveals its source index.
    t = torch.arange(10, dtype=torch.float32) / 10
    x = t.view(1, 1, 10, 1, 1).expand(32, 3, 10, 8, 8).contiguous()
    out = MultiCrop(8, 4, 1, global_frames=3, local_frames=2, **PLAIN)(x, gen())
    for crop, length in zip(out, (3, 3, 2)):
        index = torch.round(crop[:, 0, :, 0, 0] * 10)
        assert torch.equal(index[:, 1:] - index[:, :-1], torch.ones(32, length - 1))
        assert index[:, 0].unique().numel() > 3  # starts vary over clips
    assert not torch.equal(out[0], out[1])  # the two globals start independently


def test_full_box_without_random_ops_reproduces_resized_input():
    x = torch.rand(3, 3, 16, 16)
    g1, g2, local = MultiCrop(16, 32, 1, **PLAIN)(x, gen())
    assert torch.allclose(g1, x, atol=1e-6) and torch.allclose(g2, x, atol=1e-6)
    upsampled = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.allclose(local, upsampled, atol=1e-5)


def test_full_box_video_with_normalisation_matches_normalised_input():
    x = torch.rand(2, 3, 4, 12, 12)
    out = MultiCrop(12, 12, 1, **{**PLAIN, "normalize": True})(x, gen())
    for crop in out:
        assert torch.allclose(crop, normalize(x), atol=1e-5)


def test_non_square_input_with_square_ratio_falls_back_to_centre_crop():
    x = torch.rand(1, 3, 8, 12)
    g1, _, _ = MultiCrop(8, 8, 1, **PLAIN)(x, gen())
    assert torch.allclose(g1, x[..., 2:10], atol=1e-6)


def test_flip_mirrors_width():
    x = torch.rand(2, 3, 10, 10)
    g1, _, _ = MultiCrop(10, 5, 1, **{**PLAIN, "p_flip": 1.0})(x, gen())
    assert torch.allclose(g1, x.flip(-1), atol=1e-6)


def test_solarize_inverts_pixels_at_or_above_threshold_only():
    x = torch.rand(2, 3, 10, 10)
    g1, _, _ = MultiCrop(10, 5, 1, **{**PLAIN, "p_solarize": (1.0, 1.0, 1.0)})(x, gen())
    assert torch.allclose(g1, torch.where(x >= 0.5, 1.0 - x, x), atol=1e-6)
    assert (g1 <= 0.5 + 1e-6).all()


def test_default_solarize_only_touches_second_global_crop():
    x = torch.rand(64, 3, 10, 10) * 0.5 + 0.5  # all pixels above the threshold
    g1, g2, local = MultiCrop(10, 10, 1, **{**PLAIN, "p_solarize": (0.0, 0.2, 0.0)})(x, gen())
    def solarized(c):
        return (c < 0.5).flatten(1).all(1)
    assert not solarized(g1).any() and not solarized(local).any()
    assert 3 <= int(solarized(g2).sum()) <= 30  # ~20% of 64 rows


def test_grayscale_gives_equal_channels_with_luma_weights():
    x = torch.rand(2, 3, 10, 10)
    g1, _, _ = MultiCrop(10, 5, 1, **{**PLAIN, "p_gray": 1.0})(x, gen())
    for c in range(3):
        assert torch.allclose(g1[:, c], luma(x), atol=1e-6)


def test_blur_keeps_constants_and_smooths_noise_with_per_sample_sigma():
    flat = torch.full((2, 3, 12, 12), 0.3)
    noise = torch.rand(1, 3, 12, 12).expand(8, -1, -1, -1).contiguous()
    mc = MultiCrop(12, 6, 1, **{**PLAIN, "p_blur": (1.0, 1.0, 1.0)})
    assert torch.allclose(mc(flat, gen())[0], flat, atol=1e-6)
    blurred = mc(noise, gen())[0]
    assert (blurred.flatten(1).std(1) < noise.flatten(1).std(1)).all()
    assert not torch.allclose(blurred[0], blurred[1])  # sigmas differ per sample


def test_colour_jitter_changes_colours_and_stays_in_unit_range():
    x = torch.rand(8, 3, 10, 10)
    g1, _, _ = MultiCrop(10, 5, 1, **{**PLAIN, "p_jitter": 1.0})(x, gen())
    assert not torch.allclose(g1, x, atol=1e-3)
    assert g1.min() >= 0.0 and g1.max() <= 1.0


def test_colour_jitter_with_zero_strengths_is_identity():
    x = torch.rand(4, 3, 10, 10)
    assert torch.allclose(jitter_only()(x, gen())[0], x, atol=1e-6)


def jitter_only(**strengths):
    zero = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    return MultiCrop(10, 5, 1, **{**PLAIN, "p_jitter": 1.0}, **{**zero, **strengths})


def luma(x):
    return 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]


def test_brightness_only_jitter_scales_each_sample_by_one_factor_in_range():
    x = 0.1 + 0.5 * torch.rand(8, 3, 10, 10)  # x * 1.4 stays below 1: no clipping
    ratio = (jitter_only(brightness=0.4)(x, gen())[0] / x).flatten(1)
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-5)
    assert (ratio[:, 0] >= 0.6 - 1e-6).all() and (ratio[:, 0] <= 1.4 + 1e-6).all()
    assert ratio[:, 0].std() > 0.01


def test_saturation_only_jitter_keeps_luma():
    x = 0.4 + 0.2 * torch.rand(8, 3, 10, 10)  # near gray: the blend never clips
    out = jitter_only(saturation=0.2)(x, gen())[0]
    assert torch.allclose(luma(out), luma(x), atol=1e-5)
    assert not torch.allclose(out, x, atol=1e-3)


def test_contrast_only_jitter_keeps_mean_luma_and_scales_spread():
    x = 0.4 + 0.2 * torch.rand(8, 3, 10, 10)
    out = jitter_only(contrast=0.4)(x, gen())[0]
    assert torch.allclose(luma(out).mean((1, 2)), luma(x).mean((1, 2)), atol=1e-5)
    assert not torch.allclose(luma(out).std((1, 2)), luma(x).std((1, 2)), atol=1e-4)


def test_hue_only_jitter_keeps_value_channel():
    # A hue rotation leaves HSV value (max channel) untouched.
    x = torch.rand(4, 3, 10, 10)
    g1 = jitter_only(hue=0.5)(x, gen())[0]
    assert torch.allclose(g1.max(1).values, x.max(1).values, atol=1e-5)
    assert not torch.allclose(g1, x, atol=1e-3)


def test_hsv_conversion_matches_colorsys_and_round_trips():
    x = torch.rand(6, 1, 3, 5, 5, dtype=torch.float64)
    x[0, 0, :, 0, 0] = 0.5  # gray pixel: zero chroma
    x[0, 0, :, 0, 1] = 0.0  # black pixel: zero value
    hsv = _rgb_to_hsv(x)
    pixels = x.permute(0, 1, 3, 4, 2).reshape(-1, 3).tolist()
    expected = torch.tensor([colorsys.rgb_to_hsv(*p) for p in pixels], dtype=torch.float64)
    assert torch.allclose(hsv.permute(0, 1, 3, 4, 2).reshape(-1, 3), expected, atol=1e-12)
    assert torch.allclose(_hsv_to_rgb(hsv), x, atol=1e-12)


def test_normalize_uses_imagenet_statistics():
    x = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert torch.allclose(normalize(x), torch.zeros(1, 3, 2, 2), atol=1e-6)
    assert torch.allclose(normalize(torch.ones(1, 3, 1, 1))[0, :, 0, 0],
                          torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]))


def test_measure_throughput_reports_positive_rate():
    assert measure_throughput(MultiCrop(8, 4, 1), torch.rand(2, 3, 10, 10), seconds=0.01) > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(global_size=0), "global_size"),
        (dict(local_size=-3), "local_size"),
        (dict(n_local=-1), "n_local"),
        (dict(global_scale=(0.0, 1.0)), "global_scale"),
        (dict(local_scale=(0.4, 0.05)), "local_scale"),
        (dict(local_scale=(0.5, 1.5)), "local_scale"),
        (dict(global_frames=0), "global_frames"),
        (dict(local_frames=2.5), "local_frames"),
        (dict(p_flip=1.5), "p_flip"),
        (dict(p_blur=(1.0, 0.1)), "p_blur"),
        (dict(p_solarize=(0.0, 2.0, 0.0)), "p_solarize"),
        (dict(hue=0.7), "hue"),
        (dict(ratio=(4 / 3, 3 / 4)), "ratio"),
    ],
)
def test_bad_constructor_arguments_raise_naming_the_argument(kwargs, match):
    args = dict(global_size=16, local_size=8, n_local=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        MultiCrop(**args)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="x must be"):
        MultiCrop(8, 4, 1)(torch.rand(3, 10, 10))
    with pytest.raises(ValueError, match="uint8 pixels .* or a floating tensor"):
        MultiCrop(8, 4, 1)(torch.zeros(1, 3, 10, 10, dtype=torch.int64))
    with pytest.raises(ValueError, match="global_frames=8 exceeds"):
        MultiCrop(8, 4, 1, global_frames=8)(torch.rand(1, 3, 4, 10, 10))
    with pytest.raises(ValueError, match="frames apply to videos"):
        MultiCrop(8, 4, 1, local_frames=2)(torch.rand(1, 3, 10, 10))
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels"):
        MultiCrop(8, 4, 1)(torch.rand(1, 1, 10, 10))


def test_single_channel_works_with_colour_ops_off():
    x = torch.rand(2, 1, 10, 10)
    out = MultiCrop(8, 4, 1, p_jitter=0.0, p_gray=0.0, normalize=False)(x, gen())
    assert out[0].shape == (2, 1, 8, 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batch_with_cpu_generator_matches_cpu_result():
    x = torch.rand(4, 3, 4, 20, 20)
    mc = MultiCrop(16, 8, 2, global_frames=2, local_frames=2)
    cpu, cuda = mc(x, gen()), mc(x.cuda(), gen())
    assert all(c.is_cuda for c in cuda)
    assert all(torch.allclose(a, b.cpu(), atol=1e-4) for a, b in zip(cpu, cuda))


def test_uint8_pixels_give_the_crops_of_their_float_values():
    """Decoders deliver uint8; the crops are those of x / 255, as floats, made on x's device."""
    pixels = torch.randint(0, 256, (2, 3, 4, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    crop = MultiCrop(16, 8, 2, global_frames=4, local_frames=4)
    from_uint8 = crop(pixels, torch.Generator().manual_seed(1))
    from_float = crop(pixels.float() / 255, torch.Generator().manual_seed(1))
    assert all(a.dtype == torch.float32 for a in from_uint8)
    for a, b in zip(from_uint8, from_float):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kwargs, field", [
    (dict(n_local=True), "n_local"), (dict(global_size=16.0), "global_size"), (dict(p_flip=float("nan")), "p_flip"),
    (dict(brightness=float("inf")), "brightness"), (dict(global_scale=(0.4, True)), "global_scale"),
    (dict(ratio="wide"), "ratio"), (dict(p_blur="abc"), "p_blur"), (dict(solarize_threshold=False), "solarize_threshold"),
])
def test_bad_arguments_raise_a_config_error_naming_the_argument(kwargs, field):
    from scaling.validate import ConfigError

    args = dict(global_size=16, local_size=8, n_local=2)
    args.update(kwargs)
    with pytest.raises(ConfigError) as err:
        MultiCrop(**args)
    assert err.value.field == field


def test_constructor_normalises_numbers_to_floats():
    crop = MultiCrop(16, 8, 1, brightness=1, global_scale=[1, 1], p_blur=[1, 0, 1])
    assert crop.brightness == 1.0 and isinstance(crop.brightness, float)
    assert crop.global_scale == (1.0, 1.0) and crop.p_blur == (1.0, 0.0, 1.0)
