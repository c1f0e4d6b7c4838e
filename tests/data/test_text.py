"""Caption tokenisation: stable word ids and fixed-length, padded encodings."""

import zlib

import pytest
import torch

from scaling.data.text import PAD_ID, caption_words, encode_caption, word_id


def test_word_id_is_crc32_of_lower_cased_word_in_1_to_vocab_minus_1():
    # crc32, unlike hash(), does not change with PYTHONHASHSEED: ids agree across processes.
    assert word_id("Circle", 1000) == 1 + zlib.crc32(b"circle") % 999
    assert word_id("CIRCLE", 1000) == word_id("circle", 1000)
    ids = [word_id(f"w{i}", 7) for i in range(500)]
    assert min(ids) >= 1 and max(ids) <= 6
    assert set(ids) == set(range(1, 7))


def test_encode_caption_splits_on_non_alphanumerics_truncates_and_pads():
    encoded = encode_caption("A red-disk, moving  LEFT!", max_words=6, vocab_size=100)
    assert encoded.dtype == torch.int64 and encoded.shape == (6,)
    expected = [word_id(w, 100) for w in ("a", "red", "disk", "moving", "left")] + [PAD_ID]
    assert encoded.tolist() == expected
    assert encode_caption("one two three four", max_words=2, vocab_size=100).tolist() == [
        word_id("one", 100), word_id("two", 100)]
    assert encode_caption("", max_words=3, vocab_size=100).tolist() == [PAD_ID] * 3


def test_caption_words_keeps_digits_and_drops_punctuation():
    assert caption_words("Clip #3: x2 fast...") == ["clip", "3", "x2", "fast"]


@pytest.mark.parametrize("kwargs, field", [({"max_words": 0, "vocab_size": 10}, "max_words"),
                                           ({"max_words": 4, "vocab_size": 1}, "vocab_size")])
def test_encode_caption_rejects_bad_sizes_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        encode_caption("a caption", **kwargs)


@pytest.mark.parametrize("kwargs, field", [({"max_words": True, "vocab_size": 10}, "max_words"),
                                           ({"max_words": 4, "vocab_size": 10.0}, "vocab_size")])
def test_bools_and_floats_are_refused_with_a_config_error(kwargs, field):
    from scaling.validate import ConfigError

    with pytest.raises(ConfigError) as err:
        encode_caption("a caption", **kwargs)
    assert err.value.field == field
