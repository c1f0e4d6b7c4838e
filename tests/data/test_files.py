"""ManifestClips and ImageFolderDataset read real files written here with PyAV, wave and PIL (each
manifest behaviour with both decoders)."""

import json
import math
import wave

import av
import numpy as np
import pytest
import torch
from PIL import Image

from scaling.data.decode import DecodeError
from scaling.data.files import ImageFolderDataset, ManifestClips
from scaling.data.text import encode_caption

FPS = 10
# Frame k of every test video is filled with COLOURS[k]; neighbours differ by >= 20 per channel.
COLOURS = [(20 + 20 * k, 220 - 15 * k, 60 + (k % 2) * 120) for k in range(10)]


def write_mp4(path, *, audio_hz=None, sample_rate=16000, size=(48, 32)):
    """Solid-colour H.264 frames at FPS (lossless, so colours survive) and, optionally, an AAC sine."""
    width, height = size
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"qp": "0"}
        audio = container.add_stream("aac", rate=sample_rate, layout="mono") if audio_hz else None
        for k, colour in enumerate(COLOURS):
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), colour, np.uint8), format="rgb24")
            frame.pts = k
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio is not None:
            total = sample_rate * len(COLOURS) // FPS
            wave_ = 0.5 * np.sin(2 * math.pi * audio_hz * np.arange(total) / sample_rate).astype(np.float32)
            for start in range(0, total, 1024):
                chunk = wave_[None, start:start + 1024]
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="mono")
                frame.sample_rate, frame.pts = sample_rate, start
                container.mux(audio.encode(frame))
            container.mux(audio.encode(None))


def write_wav(path, samples, *, sample_rate, channels=1):
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(np.repeat(np.asarray(samples, np.int16), channels).tobytes())


def dominant_hz(audio, sample_rate):
    spectrum = np.abs(np.fft.rfft(audio.numpy()))
    return np.argmax(spectrum[1:]) * sample_rate / len(audio) + sample_rate / len(audio)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    write_mp4(folder / "with_audio.mp4", audio_hz=440)
    write_mp4(folder / "silent.mp4")
    ramp = np.arange(-2000, 2000, 7)  # 572 samples, exact in 16-bit
    write_wav(folder / "ramp.wav", ramp, sample_rate=16000)
    tone = 8000 * np.sin(2 * math.pi * 500 * np.arange(8000) / 8000)
    write_wav(folder / "tone_8k_stereo.wav", tone, sample_rate=8000, channels=2)
    return folder


def write_manifest(folder, records, name="clips.jsonl"):
    path = folder / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.fixture(params=["torchcodec", "pyav"])
def decoder(request):
    return request.param


def test_manifest_clip_decodes_frames_at_fps_with_colours_shapes_and_ranges(media, decoder):
    # The segment is exactly the window, so the window's place is fixed.
    manifest = write_manifest(media, [{"video": "with_audio.mp4", "end": 0.8, "captions": ["a red disk"], "label": 3}])
    clip = ManifestClips(manifest, frames=4, resolution=16, fps=5.0, audio_samples=1024, decoder=decoder)[0]
    assert set(clip) == {"video", "audio", "text", "label", "index", "bad"}
    assert clip["bad"].tolist() == [-1] * len(clip["bad"])
    assert clip["video"].shape == (3, 4, 16, 16) and clip["video"].dtype == torch.uint8  # float on the device
    video = clip["video"].float() / 255
    # At 5 fps from a 10 fps file the sampled frames are 0, 2, 4, 6.
    for t, k in enumerate([0, 2, 4, 6]):
        expected = torch.tensor(COLOURS[k], dtype=torch.float32) / 255
        assert (video[:, t] - expected[:, None, None]).abs().max() < 6 / 255, (t, k)
    assert clip["label"].dtype == torch.int64 and clip["label"] == 3 and clip["index"] == 0


def test_video_shorter_than_frames_over_fps_repeats_its_last_frame(media, decoder):
    manifest = write_manifest(media, [{"video": "with_audio.mp4", "captions": ["x"]}])
    video = ManifestClips(manifest, frames=12, resolution=8, fps=10.0, decoder=decoder)[0]["video"].float() / 255
    last = torch.tensor(COLOURS[-1], dtype=torch.float32) / 255
    for t in (9, 10, 11):
        assert (video[:, t] - last[:, None, None]).abs().max() < 6 / 255


def test_audio_from_the_video_track_is_mono_at_sample_rate_with_the_written_pitch(media, decoder):
    manifest = write_manifest(media, [{"video": "with_audio.mp4", "captions": ["x"]}])
    audio = ManifestClips(manifest, audio_samples=8000, sample_rate=16000, decoder=decoder)[0]["audio"]
    assert audio.shape == (8000,) and audio.dtype == torch.float32
    assert audio.min() >= -1.0 and audio.max() <= 1.0 and 0.3 < audio.abs().max() < 0.7
    assert abs(dominant_hz(audio, 16000) - 440) < 5


def test_separate_wav_is_read_exactly_and_zero_padded_when_short(media, decoder):
    # A 3-frame window at 80 fps lasts as long as the 600 audio samples, and the segment is that window.
    manifest = write_manifest(media, [{"video": "silent.mp4", "audio": "ramp.wav", "end": 0.0375, "captions": ["x"]}])
    audio = ManifestClips(manifest, frames=3, fps=80.0, audio_samples=600, sample_rate=16000, decoder=decoder)[0]["audio"]
    expected = torch.arange(-2000, 2000, 7, dtype=torch.float32) / 32768
    assert torch.allclose(audio[:572], expected, atol=1e-6)
    assert torch.equal(audio[572:], torch.zeros(28))


def test_stereo_wav_at_another_rate_is_resampled_to_mono_sample_rate(media, decoder):
    manifest = write_manifest(media, [{"video": "silent.mp4", "audio": "tone_8k_stereo.wav", "captions": ["x"]}])
    audio = ManifestClips(manifest, audio_samples=4000, sample_rate=16000, decoder=decoder)[0]["audio"]
    assert abs(dominant_hz(audio, 16000) - 500) < 5
    assert 0.15 < audio.abs().max() <= 1.0


def test_captions_are_cycled_to_the_requested_count_and_label_defaults_to_minus_one(media):
    manifest = write_manifest(media, [{"video": "with_audio.mp4", "captions": ["a red disk", "it moves left"]}])
    clip = ManifestClips(manifest, captions=3, max_words=5, vocab_size=500, frames=1, resolution=8)[0]
    expected = [encode_caption(c, 5, 500) for c in ("a red disk", "it moves left", "a red disk")]
    assert torch.equal(clip["text"], torch.stack(expected))
    assert clip["label"] == -1


def test_absolute_paths_and_blank_lines_are_accepted(media, tmp_path):
    line = json.dumps({"video": str(media / "with_audio.mp4"), "captions": ["x"]})
    manifest = write_manifest(tmp_path, ["", line, ""])
    assert len(ManifestClips(manifest)) == 1


def test_missing_manifest_raises_file_not_found_with_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        ManifestClips(tmp_path / "nowhere.jsonl")


@pytest.mark.parametrize("bad_line, match", [
    ("{not json", r"line 2: malformed JSON"),
    (json.dumps({"captions": ["x"]}), r"line 2: field 'video' is missing"),
    (json.dumps({"video": "with_audio.mp4", "captions": []}), r"line 2: field 'captions'"),
    (json.dumps({"video": "with_audio.mp4"}), r"line 2 has no 'captions'.*vatt.vt_weight=0"),
    (json.dumps({"video": "with_audio.mp4", "captions": [{"text": "x", "start": 1}]}),
     r"line 2: captions\[0\].*missing \['end'\]"),
    (json.dumps({"video": "with_audio.mp4", "captions": ["x", {"text": "y", "start": 0, "end": 1}]}),
     r"all strings or all objects"),
    (json.dumps({"video": "with_audio.mp4", "captions": ["x"], "start": 5, "end": 2}),
     r"line 2: field 'end' \(2.0\) must be after"),
    (json.dumps({"video": "with_audio.mp4", "captions": ["x"], "start": -1}),
     r"line 2: field 'start' must be a finite number"),
    (json.dumps({"video": "with_audio.mp4", "captions": ["x"], "label": "3"}), r"line 2: field 'label'"),
    (json.dumps({"video": "with_audio.mp4", "captions": ["x"], "lable": 3}), r"line 2 .*'lable'.*allowed"),
    (json.dumps(["with_audio.mp4"]), r"line 2 must be a JSON object"),
])
def test_bad_manifest_line_raises_value_error_naming_line_and_field(media, bad_line, match):
    good = json.dumps({"video": "with_audio.mp4", "captions": ["x"]})
    with pytest.raises(ValueError, match=match):
        ManifestClips(write_manifest(media, [good, bad_line], name="bad.jsonl"))


def test_a_missing_media_file_is_a_bad_clip_named_when_decoded_not_at_construction(media, decoder):
    # Construction reads the manifest only (a million stat() calls on a shared filesystem would
    # delay every rank's start); a missing file fails like a corrupt one, at decode time.
    manifest = write_manifest(media, [{"video": "gone.mp4", "captions": ["x"]}], name="gone.jsonl")
    clips = ManifestClips(manifest, decoder=decoder)
    with pytest.raises(DecodeError, match=r"gone.mp4: file not found"):
        clips.load(0)
    with pytest.raises(DecodeError, match=r"1 clips in a row failed to decode: .*gone.mp4: file not found \(manifest line 1\)"):
        clips[0]  # nothing left to stand in for it


def test_clip_without_audio_file_or_audio_stream_fails_naming_the_file(media, decoder):
    manifest = write_manifest(media, [{"video": "silent.mp4", "captions": ["x"]}], name="silent.jsonl")
    clips = ManifestClips(manifest, decoder=decoder)  # construction stays cheap: nothing is decoded yet
    with pytest.raises(DecodeError, match=r"silent.mp4: no audio stream"):
        clips.load(0)
    # A method that reads no audio (DINO) decodes the same clip.
    assert ManifestClips(manifest, decoder=decoder, modalities=("video",)).load(0)["video"].shape == (3, 8, 64, 64)


def test_undecodable_video_fails_naming_the_file(tmp_path, decoder):
    (tmp_path / "junk.mp4").write_bytes(b"this is not a video")
    manifest = write_manifest(tmp_path, [{"video": "junk.mp4", "captions": ["x"]}])
    with pytest.raises(DecodeError, match="junk.mp4"):
        ManifestClips(manifest, decoder=decoder).load(0)


def _write_image(path, pixels):
    Image.fromarray(np.asarray(pixels, np.uint8)).save(path)


def test_image_folder_labels_sorted_classes_and_centre_crops_the_short_side(tmp_path):
    for name in ("zebra", "apple"):
        (tmp_path / name).mkdir()
    # 60x30 image: red | green | blue thirds of 15, 30, 15 pixels. Short-side resize to 10 gives
    # 20x10, and the centre 10x10 crop is exactly the green middle: squashing would keep red and blue.
    wide = np.zeros((30, 60, 3), np.uint8)
    wide[:, :15, 0] = wide[:, 15:45, 1] = wide[:, 45:, 2] = 255
    _write_image(tmp_path / "apple" / "wide.png", wide)
    _write_image(tmp_path / "zebra" / "grey.JPG", np.full((12, 12, 3), 128))
    data = ImageFolderDataset(tmp_path, resolution=10)
    assert data.classes == ["apple", "zebra"] and len(data) == 2
    sample = data[0]
    assert set(sample) == {"image", "label", "index"}
    assert sample["image"].shape == (3, 10, 10) and sample["image"].dtype == torch.uint8
    assert sample["label"] == 0 and sample["label"].dtype == torch.int64 and sample["index"] == 0
    centre = sample["image"][:, :, 1:-1].float() / 255
    assert centre[1].min() > 0.9 and centre[0].max() < 0.1 and centre[2].max() < 0.1
    grey = data[1]
    assert grey["label"] == 1 and (grey["image"].float() / 255 - 128 / 255).abs().max() < 4 / 255


def test_image_folder_errors_name_root_and_accepted_extensions(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        ImageFolderDataset(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"no class folders.*\.png, \.jpg, \.jpeg"):
        ImageFolderDataset(tmp_path)
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"cats: class folder has no images.*\.png"):
        ImageFolderDataset(tmp_path)


@pytest.mark.parametrize("kwargs, field", [({"fps": True}, "fps"), ({"fps": 0}, "fps"), ({"frames": 2.0}, "frames"),
                                           ({"captions": False}, "captions")])
def test_bad_manifest_settings_raise_a_config_error_naming_the_argument(media, kwargs, field):
    from scaling.validate import ConfigError

    manifest = write_manifest(media, [{"video": "with_audio.mp4", "captions": ["x"]}], name="ok.jsonl")
    with pytest.raises(ConfigError) as err:
        ManifestClips(manifest, **kwargs)
    assert err.value.field == field


def test_image_folder_resolution_must_be_an_integer(tmp_path):
    from scaling.validate import ConfigError

    with pytest.raises(ConfigError) as err:
        ImageFolderDataset(tmp_path, resolution=True)
    assert err.value.field == "resolution"
