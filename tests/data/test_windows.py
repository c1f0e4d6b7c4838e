"""Windows of real videos: random training windows inside segments, seek decoding that lands on the
right frames anywhere in a 70-s file, synchronous audio, evaluation views, timed captions and the
replacement of clips that fail. The files are H.264/AAC, encoded here (scaling.data.encode)."""

import json

import pytest
import torch

from scaling.data import windows
from scaling.data.decode import open_media, probe
from scaling.data.encode import dominant_hz, frame_index, second_hz, write_corrupt, write_video
from scaling.data.files import MAX_ATTEMPTS, ManifestClips
from scaling.data.loader import ShardedEpochSampler, build_loader
from scaling.data.manifest import Caption, nearest_captions

FPS = 10
KEYINT = 20  # frames: a keyframe every 2 s


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    write_video(folder / "long.mp4", seconds=70, fps=FPS, keyint=KEYINT)
    write_video(folder / "short.mp4", seconds=3, fps=FPS)
    write_corrupt(folder / "broken.mp4", folder / "short.mp4")
    return folder


def manifest(folder, records, name="m.jsonl"):
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(params=["torchcodec", "pyav"])
def decoder(request):
    return request.param


@pytest.mark.parametrize("start", [0.3, 19.9, 33.35, 61.0, 69.0])
def test_seeking_anywhere_in_a_long_file_gives_the_frames_shown_at_each_instant(corpus, decoder, start):
    times = [start + k / FPS for k in range(8)]
    with open_media(corpus / "long.mp4", decoder) as media:
        assert media.info.duration == pytest.approx(70.0, abs=0.2)
        frames = media.frames(times, 32)
    assert frames.shape == (8, 3, 32, 43) and frames.dtype == torch.uint8
    # The frame shown at t is the last one at or before it, until the file's last frame.
    expected = [min(int(t * FPS + 1e-6), 699) for t in times]
    assert [frame_index(f) for f in frames] == expected


def test_the_two_decoders_give_the_same_pixels(corpus):
    times = [41.0 + k / FPS for k in range(8)]
    with open_media(corpus / "long.mp4", "torchcodec") as a, open_media(corpus / "long.mp4", "pyav") as b:
        x, y = a.frames(times, 32), b.frames(times, 32)
        u, v = a.audio(41.0, 4096, 16000), b.audio(41.0, 4096, 16000)
    assert (x.float() - y.float()).abs().max() <= 2
    assert (u - v).abs().max() < 0.05


@pytest.mark.parametrize("start", [5.2, 37.6, 66.1])
def test_audio_is_cut_from_the_same_window_as_the_frames(corpus, decoder, start):
    with open_media(corpus / "long.mp4", decoder) as media:
        audio = media.audio(start, 8000, 16000)  # 0.5 s
    assert audio.shape == (8000,) and audio.dtype == torch.float32
    # Second s of the file is a sine of second_hz(s): the window's pitch says where it was cut.
    assert dominant_hz(audio[:4000], 16000) == pytest.approx(second_hz(int(start)), abs=8)


def test_a_training_window_is_a_pure_function_of_seed_epoch_and_index_inside_the_segment():
    draws = {windows.train_start(0, epoch, 3, 10.0, 20.0, 3.2) for epoch in range(50)}
    assert len(draws) == 50 and all(10.0 <= d <= 16.8 for d in draws)
    assert windows.train_start(0, 7, 3, 10.0, 20.0, 3.2) == windows.train_start(0, 7, 3, 10.0, 20.0, 3.2)
    assert windows.train_start(1, 7, 3, 10.0, 20.0, 3.2) != windows.train_start(0, 7, 3, 10.0, 20.0, 3.2)
    assert windows.train_start(0, 7, 3, 10.0, 12.0, 3.2) == 10.0  # a segment shorter than the window


def test_training_windows_cover_the_segment_and_frames_audio_and_captions_agree(corpus, decoder):
    captions = [{"text": f"second {s}", "start": s, "end": s + 1.0} for s in range(30, 60)]
    path = manifest(corpus, [{"video": "long.mp4", "start": 30.0, "end": 60.0, "captions": captions}], f"seg_{decoder}.jsonl")
    clips = ManifestClips(path, frames=8, fps=FPS, resolution=32, audio_samples=3200, sample_rate=16000, captions=1,
                          decoder=decoder, max_words=4, vocab_size=1000)
    starts = []
    for epoch in range(6):
        sample = clips[(epoch, 0)]
        first = frame_index(sample["video"][:, 0])
        starts.append(first)
        assert 300 <= first <= 600 - 8
        assert [frame_index(sample["video"][:, t]) for t in range(8)] == list(range(first, first + 8))
        # Audio (0.32 s, centred on the 0.8-s window: from 0.24 s to 0.56 s into it) and the nearest
        # caption come from the window's seconds (the start lies within a frame after `first`).
        heard = dominant_hz(sample["audio"], 16000)
        spanned = {second_hz(int(first / FPS + offset)) for offset in (0.24, 0.66)}
        assert min(abs(heard - hz) for hz in spanned) < 60, (heard, spanned)
        from scaling.data.text import encode_caption

        nearest = nearest_captions(clips.entries[0].captions, first / FPS, first / FPS + 0.8, 1)[0]
        assert int(nearest.split()[1]) in (int(first / FPS), int(first / FPS + 0.8))
        assert torch.equal(sample["text"][0], encode_caption(nearest, 4, 1000))
    assert len(set(starts)) == 6  # a fresh window every epoch
    assert clips[(3, 0)]["video"].equal(clips[(3, 0)]["video"])  # and the same one again for a resume


def test_nearest_captions_rank_by_gap_then_centre_and_cycle_when_too_few():
    caps = (Caption("early", 0, 1), Caption("inside", 10, 11), Caption("late", 30, 31), Caption("near", 13, 14))
    assert nearest_captions(caps, 9.5, 12.7, 3) == ["inside", "near", "early"]
    assert nearest_captions((Caption("only", 0, 1),), 5, 6, 2) == ["only", "only"]
    assert nearest_captions((Caption("a"), Caption("b")), 5, 6, 3) == ["a", "b", "a"]


def test_evaluation_views_are_evenly_spaced_windows_times_crops_along_the_long_side(corpus, decoder):
    path = manifest(corpus, [{"video": "long.mp4", "start": 10.0, "end": 30.0, "captions": ["x"]}], f"v_{decoder}.jsonl")
    clips = ManifestClips(path, frames=4, fps=FPS, resolution=32, decoder=decoder, views=(4, 3), modalities=("video",))
    video = clips[0]["video"]
    assert video.shape == (12, 3, 4, 32, 32)
    firsts = [frame_index(video[v, :, 0]) for v in range(0, 12, 3)]
    assert firsts == [100, 165, 230, 296]  # starts 10.0, 16.53, 23.07, 29.6 s: the segment's first to last window
    assert windows.view_starts(1, 10.0, 30.0, 0.4) == [19.8]  # one view: the centre
    assert windows.spatial_offsets(3, 43, 32) == [0, 6, 11] and windows.spatial_offsets(1, 43, 32) == [5]
    # The same (temporal) window gives its three crops: identical pixels here, since frames are solid.
    assert torch.equal(video[0], video[1]) and torch.equal(video[0], video[2])
    assert torch.equal(video, clips[0]["video"])  # evaluation is deterministic


def test_a_clip_that_fails_is_replaced_deterministically_and_marked(corpus, decoder):
    records = [{"video": "short.mp4", "captions": ["a"], "label": k} for k in range(5)]
    records[2] = {"video": "broken.mp4", "captions": ["b"], "label": 99}
    clips = ManifestClips(manifest(corpus, records, f"bad_{decoder}.jsonl"), frames=4, resolution=16, decoder=decoder)
    sample = clips[(4, 2)]
    assert sample["index"] == 2 and sample["label"] != 99
    assert sample["bad"].tolist() == [2] + [-1] * (MAX_ATTEMPTS - 1)
    again = clips[(4, 2)]
    assert again["label"] == sample["label"] and torch.equal(again["video"], sample["video"])
    assert clips[(0, 1)]["bad"].tolist() == [-1] * MAX_ATTEMPTS
    assert {windows.replacement(0, 4, 2, a, 5) for a in range(1, 40)} == {0, 1, 3, 4}  # never itself


def test_the_sampler_hands_manifest_clips_their_epoch(corpus):
    path = manifest(corpus, [{"video": "short.mp4", "captions": ["a"]}] * 4, "epochs.jsonl")
    clips = ManifestClips(path, frames=4, resolution=16, modalities=("video",))
    loader = build_loader(clips, 2, shuffle=True, seed=0)
    loader.sampler.set_epoch(5)
    assert all(epoch == 5 for epoch, _ in loader.sampler)
    assert list(ShardedEpochSampler(4, shuffle=False, seed=0)) == [0, 1, 2, 3]  # other data sets: plain indices
    batch = next(iter(loader))
    assert batch["video"].shape == (2, 3, 4, 16, 16) and batch["bad"].shape == (2, MAX_ATTEMPTS)


def test_probe_reads_duration_and_streams_from_the_headers(corpus, decoder):
    info = probe(corpus / "long.mp4", decoder)
    assert info.duration == pytest.approx(70.0, abs=0.2) and info.has_audio and info.fps == pytest.approx(FPS)
    assert info.streams()["audio"]["sample_rate"] == 16000 and info.streams()["video"]["width"] == 64


def test_a_decoder_that_is_not_installed_is_refused_with_its_install_hint(corpus, monkeypatch):
    import sys
    from types import SimpleNamespace

    from scaling.config import ConfigError
    from scaling.data.decode import require
    from scaling.data.loader import check_dataset

    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)  # what an absent package looks like to import
    with pytest.raises(ImportError, match=r"data.decoder='torchcodec' is not usable here .*pip install torchcodec"):
        require("torchcodec")
    path = manifest(corpus, [{"video": "short.mp4", "captions": ["a"]}], "hint.jsonl")
    cfg = SimpleNamespace(source="manifest", path=str(path), eval_path=str(path), frames=4, resolution=16,
                          audio_samples=256, sample_rate=16000, fps=10.0, captions=1, max_words=4, vocab_size=100,
                          decoder="torchcodec", seed=0)
    with pytest.raises(ConfigError, match=r"apt-get install ffmpeg") as err:
        check_dataset(cfg, "train")
    assert err.value.field == "data.decoder"


def test_windows_close_together_share_one_decoding_pass():
    # 0.0-3.2 and 3.0-6.2 overlap, 10.0 starts 3.8 s after 6.2: one run; 30.0 is a seek of its own.
    assert windows.decode_runs([10.0, 0.0, 3.0, 30.0], 3.2, 4.0) == [[1, 2, 0], [3]]
    assert windows.decode_runs([5.0], 3.2, 4.0) == [[0]]


def test_repeated_sampling_cuts_k_windows_from_one_decode_each_as_its_own_draw(corpus, decoder):
    captions = [{"text": f"second {s}", "start": s, "end": s + 1.0} for s in range(20, 50)]
    path = manifest(corpus, [{"video": "long.mp4", "start": 20.0, "end": 50.0, "captions": captions}],
                    f"rep_{decoder}.jsonl")
    geometry = dict(frames=8, fps=FPS, resolution=32, audio_samples=3200, sample_rate=16000, captions=1,
                    decoder=decoder, max_words=4, vocab_size=1000)
    one, sample = ManifestClips(path, **geometry)[(2, 0)], ManifestClips(path, repeats=3, **geometry)[(2, 0)]
    assert sample["video"].shape == (3, 3, 8, 32, 32) and sample["audio"].shape == (3, 3200)
    assert sample["text"].shape == (3, 1, 4) and sample["label"].shape == (3,) and sample["index"].tolist() == [0, 0, 0]
    # Draw 0 is the window a single-window reader cuts: the same frames and captions, and the audio
    # within what cutting a decoded span on the sample grid moves it (under half a sample).
    assert torch.equal(sample["video"][0], one["video"]) and torch.equal(sample["text"][0], one["text"])
    assert (sample["audio"][0] - one["audio"]).abs().max() < 0.1
    firsts = []
    for r in range(3):
        start = windows.train_start(0, 2, 0, 20.0, 50.0, 0.8, draw=r)
        first = frame_index(sample["video"][r][:, 0])
        assert first == int(start * FPS + 1e-6)  # the frame shown at the draw's start
        assert [frame_index(sample["video"][r][:, t]) for t in range(8)] == list(range(first, first + 8))
        heard = dominant_hz(sample["audio"][r], 16000)  # 0.2 s centred on the window
        assert min(abs(heard - second_hz(int(start + off))) for off in (0.3, 0.5)) < 60
        firsts.append(first)
    assert len(set(firsts)) == 3


def test_repeated_windows_are_consecutive_samples_of_one_micro_batch(corpus):
    records = [{"video": "long.mp4", "start": s, "end": s + 10.0, "captions": ["x"], "label": k}
               for k, s in enumerate((0.0, 20.0, 40.0, 60.0))]
    clips = ManifestClips(manifest(corpus, records, "rep_loader.jsonl"), frames=4, fps=FPS, resolution=32, repeats=2,
                          modalities=("video",), decoder="pyav")
    loader = build_loader(clips, 2, shuffle=True, seed=0, epoch=1)
    loader.sampler.set_epoch(1)
    batches = list(loader)
    assert len(batches) == 2  # 4 clips, 2 per batch, each 2 windows
    for batch in batches:
        assert batch["video"].shape == (4, 3, 4, 32, 32) and batch["bad"].shape == (2, MAX_ATTEMPTS)
        index = batch["index"].tolist()
        assert index[0::2] == index[1::2] and batch["label"].tolist() == index
        assert torch.equal(batch["video"][3], clips[(1, index[3])]["video"][1])
