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
    """As the official uvatt.py: one shared transformer, and per modality its own aggregation token,
    a pre-transformer projection (Dense + GELU on the raw projection; for words, the projection of
    the 300-d embedding is that Dense) and a post-transformer projection (Dense + GELU)."""
    ma = VATT(size="nano", shared_backbone=True, vocab_size=1000)
    ms = VATT(size="nano", shared_backbone=False, vocab_size=1000)
    assert ma.video.transformer is ma.audio.transformer is ma.text.transformer
    assert ma.video.transformer.cls_token is None  # the modalities' own tokens replace it
    tokens = [ma.video.agg_token, ma.audio.agg_token, ma.text.agg_token]
    assert len({t.data_ptr() for t in tokens}) == 3 and all(t.shape == (1, 1, 128) for t in tokens)
    d = 128
    n_ma = sum(p.numel() for p in ma.parameters())
    n_ms = sum(p.numel() for p in ms.parameters())
    n_tx = sum(p.numel() for p in ms.audio.transformer.parameters())
    extra = 3 * d + 2 * (d * d + d) + 3 * (d * d + d)  # 3 agg tokens, 2 pre-projections, 3 post
    assert n_ms - n_ma == 2 * n_tx + d - extra     # the transformer's own CLS token is not built
    ma(*_inputs())  # each modality still runs separately through the shared encoder
    # By hand, for audio: pre-projection before the positions, the modality's token, post-projection.
    ma.eval()
    _, audio, _ = _inputs()
    enc = ma.audio
    with torch.no_grad():
        tok = enc.tokenizer
        x = torch.nn.functional.gelu(tok.pre_proj[0](tok.proj(audio.reshape(4, -1, 128)))) + tok.pos
        x = torch.cat([enc.agg_token.expand(4, -1, -1), x], dim=1)
        for block in enc.transformer.blocks:
            x = block(x)
        pooled = enc.transformer.norm(x)[:, 0]
        expected = torch.nn.functional.gelu(enc.post_proj[0](pooled))
        torch.testing.assert_close(enc(audio), expected, rtol=1e-5, atol=1e-5)
        words = _inputs()[2][:, 0]
        t = ma.text.tokenizer
        assert torch.equal(t(words)[0], torch.nn.functional.gelu(t.proj(t.embed(words))) + t.pos[:16])
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


def test_dropout_acts_in_training_only_keyed_by_the_sample_and_never_in_the_dino_teacher():
    """dropout (VATT's 0.1): after the dense layers but qkv and on the embedded tokens, in training
    mode only; its mask is keyed by the global sample (scaling.draws), so the rows a rank holds draw
    what they draw on one rank. DINO's teacher never drops."""
    from scaling import draws
    from scaling.models.dino import DINO
    from scaling.models.vit import Dropout

    torch.manual_seed(0)
    plain = VATT(size="nano", frames=8, resolution=32, audio_samples=1024, vocab_size=100, max_words=6)
    torch.manual_seed(0)
    dropped = VATT(size="nano", frames=8, resolution=32, audio_samples=1024, vocab_size=100, max_words=6, dropout=0.1)
    blocks = len(dropped.video.transformer.blocks)
    assert sum(isinstance(m, Dropout) and m.p == 0.1 for m in dropped.video.modules()) == 1 + 2 * blocks
    video = torch.rand(4, 3, 8, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dropped.eval().encode_video(video), plain.eval().encode_video(video))
        dropped.train()
        torch.manual_seed(1)
        a = dropped.encode_video(video)
        torch.manual_seed(1)
        assert torch.equal(a, dropped.encode_video(video))       # a function of the RNG state
        assert not torch.allclose(a, plain.train().encode_video(video), atol=1e-3)
    x = torch.ones(8, 5, 7)
    torch.manual_seed(2)
    with draws.micro_step(draws.span_of(8, 0, 1)):
        whole = draws.uniform_like(x)
    assert 0.4 < whole.mean() < 0.6 and whole.unique().numel() > 250
    for rank in (0, 1):  # rank r holds samples r, r + 2, ... of the same span
        torch.manual_seed(2)
        with draws.micro_step(draws.span_of(4, rank, 2)):
            assert torch.equal(draws.uniform_like(x[:4]), whole[rank::2])
    teacher = DINO(video_encoder("nano", 8, 32, dropout=0.1), 128, out_dim=64, hidden_dim=32, bottleneck_dim=16).teacher
    assert all(m.p == 0 for m in teacher.modules() if isinstance(m, Dropout))
