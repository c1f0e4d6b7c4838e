"""Part of the `scaling` (one run) layer: caption tokenisation.
Owns the stable word -> id hash and the fixed-length caption encoding every data source shares."""

from __future__ import annotations

import re
import zlib
from functools import lru_cache

import torch

from scaling.validate import integer

PAD_ID = 0

# Words are maximal runs of letters and digits; everything else separates them.
_WORD_SPLIT = re.compile(r"[^0-9a-z]+")


def _check_vocab_size(vocab_size: int) -> None:
    # Ids 1..vocab_size-1 carry words, so at least one word id must exist besides PAD_ID.
    integer("vocab_size", vocab_size, minimum=2, note="PAD_ID=0 plus at least one word id")


@lru_cache(maxsize=65536)
def _cached_word_id(word: str, vocab_size: int) -> int:
    # crc32, unlike hash(), is the same in every process and every Python run (no PYTHONHASHSEED),
    # so workers, ranks and later runs agree on ids without sharing a vocabulary file.
    return 1 + zlib.crc32(word.lower().encode("utf-8")) % (vocab_size - 1)


def word_id(word: str, vocab_size: int) -> int:
    """The stable id of `word` (case-insensitive), in 1..vocab_size-1; 0 is PAD_ID."""
    _check_vocab_size(vocab_size)
    return _cached_word_id(word, vocab_size)


def caption_words(text: str) -> list[str]:
    """Lower-cased words of `text`, split on every non-alphanumeric character."""
    return [w for w in _WORD_SPLIT.split(text.lower()) if w]


def caption_ids(text: str, max_words: int, vocab_size: int) -> list[int]:
    """`encode_caption` as a plain list; batch code builds one tensor from many of these."""
    integer("max_words", max_words, minimum=1)
    _check_vocab_size(vocab_size)
    ids = [_cached_word_id(w, vocab_size) for w in caption_words(text)[:max_words]]
    return ids + [PAD_ID] * (max_words - len(ids))


def encode_caption(text: str, max_words: int, vocab_size: int) -> torch.Tensor:
    """LongTensor (max_words,): the first max_words word ids of `text`, padded with PAD_ID."""
    if not isinstance(text, str):
        raise ValueError(f"caption must be a str, got {type(text).__name__}")
    return torch.tensor(caption_ids(text, max_words, vocab_size), dtype=torch.int64)
