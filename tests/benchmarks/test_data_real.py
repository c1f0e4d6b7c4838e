"""`scaling bench data_real`: the smoke run fills every column it promises and finds the two decoders
equal; its pieces (the texture pattern's frame band, the audio alignment) measure what they say."""
import numpy as np
import pytest
import torch

from benchmarks import run_one
from benchmarks.data_budget import REPEATS, SOURCES, cached_kb, drop_cache
from benchmarks.data_real import COLUMNS, DECODERS, audio_alignment, band_indices
from scaling.data.decode import open_media
from scaling.data.encode import write_video


def test_smoke_run_compares_both_decoders_at_both_geometries_then_files_shards_and_repeats():
    result = run_one("data_real", "smoke")
    assert result.status == "ok", "\n".join([result.status, *result.notes])
    decoders = [r for r in result.rows if "case" not in r]
    assert result.met is None and [(r["decoder"], r["geometry"].split(":")[0]) for r in decoders] == [
        (d, g) for g in ("demo", "vatt") for d in DECODERS]
    assert all(set(row) <= set(COLUMNS) for row in result.rows)
    cases = [r["case"] for r in result.rows if "case" in r]
    assert cases == ["manifest: 16 clips, cold", "shards: 16 clips, cold"] + [
        f"{source}, data.repeats={k}" for source in SOURCES for k in REPEATS]
    repeated = [r for r in result.rows if "repeats" in r.get("case", "")]
    assert all(r["clips/s per core"] > 0 and r["cores per GPU"] > 0 for r in repeated)
    assert any(n.startswith("5. Manifest vs shards: 16 clips") and "evicted" in n for n in result.notes)
    assert any(n.startswith("6. Repeated sampling") and "the fewest:" in n for n in result.notes)
    assert any(n.startswith("Default cost model") for n in result.notes)
    for row in decoders:
        assert row["equal output"] and row["frames same"] == "1/1" and row["clips/s per core"] > 0
        assert row["seek start s"] > 0 and row["seek end s"] > 0
    vatt = [r for r in decoders if r["geometry"].startswith("vatt")]
    assert all(r["cores per GPU"] > 0 for r in vatt)
    assert vatt[0]["torchcodec / PyAV"] == pytest.approx(vatt[0]["clips/s per core"] / vatt[1]["clips/s per core"])
    if not torch.cuda.is_available():
        assert vatt[0]["CUDA clips/s"] == "skipped (no GPU)"
        assert "4. CUDA decode: skipped (no GPU)" in result.notes
    assert any(n.startswith("3. Cores per GPU") and "GPU clips/s = 0.4 x 9.89e+14 /" in n for n in result.notes)
    assert any(n.startswith("Versions: torchcodec") and "PyAV" in n for n in result.notes)


@pytest.fixture(scope="module")
def texture(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("texture") / "t.mp4", seconds=1.2, fps=25, size=(64, 48),
                       sample_rate=16000, lossless=False, pattern="texture")


@pytest.mark.parametrize("decoder", DECODERS)
def test_texture_frames_carry_their_index_through_lossy_encoding(texture, decoder):
    with open_media(texture, decoder) as media:
        frames = media.frames([0.0, 0.41, 1.0], 48)  # short side unchanged: (3, 3, 48, 64)
    assert band_indices(frames.permute(1, 0, 2, 3), 48, 48) == [0, 10, 25]
    assert frames[:, :, 24:].float().std() > 10  # below the band: texture, not a flat colour


def test_an_unknown_pattern_is_refused(tmp_path):
    with pytest.raises(ValueError, match="pattern"):
        write_video(tmp_path / "x.mp4", seconds=0.2, pattern="stripes")


def test_both_decoders_give_the_same_audio_from_the_first_sample(texture):
    # AAC's priming frame sits before 0 s: a seek clamped at 0 skipped it (PyAV's first ~500 samples were wrong).
    out = {}
    for decoder in DECODERS:
        with open_media(texture, decoder) as media:
            media.frames([0.8], 32)  # the window's video first, as ManifestClips.load does
            out[decoder] = media.audio(0.0, 4096, 16000).numpy()
    assert np.abs(out["pyav"]).max() > 0.3 and np.abs(out["torchcodec"] - out["pyav"]).max() < 0.02


def test_audio_alignment_recovers_a_fractional_lag():
    t = np.arange(8192) / 16000
    signal = np.sin(2 * np.pi * 440 * t) + 0.5 * np.sin(2 * np.pi * 1300 * t)
    lag, residual = audio_alignment(signal, np.sin(2 * np.pi * 440 * (t - 0.3 / 16000))
                                    + 0.5 * np.sin(2 * np.pi * 1300 * (t - 0.3 / 16000)))
    assert lag == pytest.approx(0.3) and residual < 0.02
    assert audio_alignment(signal, signal) == (0.0, pytest.approx(0.0, abs=1e-9))


def test_dropping_a_file_from_the_page_cache_shrinks_the_cache(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(np.random.default_rng(0).bytes(64 << 20))
    path.read_bytes()  # cached now
    assert cached_kb([path]) > 32 << 10
    assert drop_cache([path]) > 32 << 10  # kB: most of the 64 MB left the cache
    assert cached_kb([path]) < 1 << 10
