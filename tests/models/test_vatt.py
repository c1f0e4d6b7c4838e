"""VATT: VATT's published sizes, DropToken, the modality-agnostic variant and the FAC heads."""
import pytest
import torch

from scaling.models.sizes import VATT_PUBLISHED_PARAMS
from scaling.models.tokenizers import VoxelTokenizer, kept_tokens
from scaling.models.vatt import VATT, video_encoder


@pytest.mark.parametrize("size", ["small", "base", "medium", "large"])
def test_backbone_params_match_vatt_within_2_percent(size):
    # VATT's geometry: 32 frames at 224 px -> 8 x 14 x 14 voxel grid.
    with torch.device("meta"):
        encoder = video_encoder(size, frames=32, resolution=224)
    n = sum(p.numel() for p in encoder.parameters())
    assert abs(n / VATT_PUBLISHED_PARAMS[size] - 1) < 0.02, (size, n)


def test_cpu_sizes_give_at_least_four_increasing_points_below_small():
    counts = []
    for size in ["nano", "micro", "tiny", "small"]:
        with torch.device("meta"):
            counts.append(sum(p.numel() for p in video_encoder(size, 8, 64).parameters()))
    assert counts == sorted(counts) and len(set(counts)) == 4


def test_droptoken_halves_video_tokens_in_training_and_never_drops_in_eval():
    tok = VoxelTokenizer(dim=32, grid=(2, 4, 4))
    video = torch.rand(3, 3, 8, 64, 64)
    full, _ = tok(video, drop_rate=0.0)
    half, _ = tok(video, drop_rate=0.5)
    assert full.shape == (3, 32, 32) and half.shape == (3, 16, 32)
    # Every kept token is one of the full tokens (same patch, same position).
    for b in range(3):
        dist = torch.cdist(half[b], full[b], compute_mode="donot_use_mm_for_euclid_dist")
        assert torch.all(dist.min(dim=1).values < 1e-4)
    enc = video_encoder("nano", 8, 64, drop_rate=0.5)
    seen = {}
    # The first block sees the CLS token and the kept tokens.
    enc.transformer.blocks[0].register_forward_pre_hook(lambda m, args: seen.__setitem__("n", args[0].shape[1] - 1))
    enc.train()
    enc(video)
    assert seen["n"] == 16
    enc.eval()
    enc(video)
    assert seen["n"] == 32


def test_kept_tokens_rounds_and_keeps_at_least_one():
    assert kept_tokens(1568, 0.5) == 784
    assert kept_tokens(1200, 0.75) == 300
    assert kept_tokens(4, 0.9) == 1


def _inputs(b=4, k=2):
    g = torch.Generator().manual_seed(0)
    text = torch.randint(1, 1000, (b, k, 16), generator=g)
    text[:, :, 10:] = 0  # padding
    return torch.rand(b, 3, 8, 64, 64, generator=g), torch.rand(b, 4096, generator=g) * 2 - 1, text


def test_vatt_outputs_live_in_the_two_common_spaces():
    model = VATT(size="nano", vocab_size=1000)
    out = model(*_inputs())
    assert out["video_va"].shape == (4, 512) and out["audio_va"].shape == (4, 512)
    assert out["video_vt"].shape == (4, 256) and out["text_vt"].shape == (4, 2, 256)


def test_modality_agnostic_variant_shares_one_encoder():
    ma = VATT(size="nano", shared_backbone=True, vocab_size=1000)
    ms = VATT(size="nano", shared_backbone=False, vocab_size=1000)
    assert ma.video.transformer is ma.audio.transformer is ma.text.transformer
    n_ma = sum(p.numel() for p in ma.parameters())
    n_ms = sum(p.numel() for p in ms.parameters())
    n_tx = sum(p.numel() for p in ms.audio.transformer.parameters())
    assert n_ms - n_ma == 2 * n_tx
    ma(*_inputs())  # each modality still runs separately through the shared encoder
    with pytest.raises(ValueError, match="audio_size and text_size"):
        VATT(size="nano", audio_size="tiny", shared_backbone=True)


def test_padding_words_do_not_change_the_text_feature():
    model = VATT(size="nano", vocab_size=1000).eval()
    video, audio, text = _inputs()
    with torch.no_grad():
        before = model(video, audio, text)["text_vt"]
        model.text.tokenizer.embed.weight[0].normal_()  # what a pad position would carry
        after = model(video, audio, text)["text_vt"]
    torch.testing.assert_close(before, after)


def test_word_embeddings_are_frozen_by_default_like_word2vec():
    assert not VATT(size="nano", vocab_size=1000).text.tokenizer.embed.weight.requires_grad
    assert VATT(size="nano", vocab_size=1000, freeze_word_embeddings=False).text.tokenizer.embed.weight.requires_grad


@pytest.mark.parametrize("train", [False, True])
def test_pooled_encoders_equal_the_full_transformer_cls_row(train):
    """Encoders compute only the CLS row in the last block; that must equal row 0 of the full
    transformer for video, audio and padded text, and in training draw the same stochastic depth."""
    torch.manual_seed(0)
    model = VATT(size="nano", frames=8, resolution=32, audio_samples=1024, vocab_size=100, max_words=6,
                 drop_path=0.3)
    model.train(train)
    words = torch.randint(1, 100, (4, 6))
    words[:, 3:] = 0  # padding, masked out of attention
    inputs = {"video": torch.rand(4, 3, 8, 32, 32), "audio": torch.rand(4, 1024) - 0.5, "text": words}
    for name, x in inputs.items():
        enc = getattr(model, name)
        tokens, pad = enc.tokenizer(x, 0.0)
        torch.manual_seed(1)
        full = enc.transformer(tokens, pad)[:, 0]
        torch.manual_seed(1)
        pooled = enc.transformer.pool(tokens, pad)
        assert pooled.shape == full.shape == (4, 128)
        torch.testing.assert_close(pooled, full, rtol=1e-5, atol=1e-5, msg=name)
