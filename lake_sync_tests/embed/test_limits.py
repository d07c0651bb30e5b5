"""Long text: inputs over a model's limit are counted (and cut for remote models), texts split into chunks.

The local model is the real bundled all-MiniLM-L6-v2 and its tokenizer; chunk boundaries are pinned with
the word counting of the `hash:` model, whose tokens are easy to write down.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from lake_sync.embed.hashing import HashingEmbedder
from lake_sync.embed.limits import TextChunk, Utf8ByteTokens, WordTokens
from lake_sync.embed.local_text import LocalTextEmbedder

WORDS = " ".join(f"w{number}" for number in range(10))


@pytest.fixture(scope="module")
def minilm() -> LocalTextEmbedder:
    return LocalTextEmbedder("all-MiniLM-L6-v2")


def test_minilm_counts_a_text_over_its_254_text_tokens_and_reads_only_its_beginning(minilm: LocalTextEmbedder) -> None:
    long_text = "the river runs past the old mill " * 60  # 7 tokens a sentence: 420 tokens
    beginning = minilm.text_tokens.fit([long_text]).texts[0]

    fitted = minilm.text_tokens.fit(["a short text", long_text])

    assert minilm.text_tokens.max_tokens == 254  # max_seq_length 256 less [CLS] and [SEP]
    assert fitted.over_limit == [False, True] and fitted.truncated == 1
    # sentence-transformers truncates by itself: the text is passed on whole, and its vector is the
    # vector of its first 254 tokens.
    assert fitted.texts[1] == long_text == beginning
    cut = long_text[: minilm.text_tokens.spans([long_text])[0][253][1]]
    whole, first_tokens = minilm.embed_texts([long_text, cut])
    assert float(np.dot(whole, first_tokens)) > 0.9999


def test_minilm_chunks_hold_at_most_max_tokens_and_repeat_the_overlap(minilm: LocalTextEmbedder) -> None:
    text = " ".join(f"Sentence number {number} is about topic {number * 7}." for number in range(40))

    chunks = minilm.text_tokens.chunks(text, max_tokens=50, overlap=10)

    spans = minilm.text_tokens.spans([text])[0]
    token_starts = [start for start, _ in spans]
    assert len(chunks) > 3 and [chunk.position for chunk in chunks] == list(range(len(chunks)))
    for chunk, following in itertools.pairwise(chunks):
        assert chunk.text == text[chunk.start : chunk.end]
        assert len(minilm.text_tokens.spans([chunk.text])[0]) <= 50
        # The next chunk starts 10 tokens before this one ends, and no later than that if it ended early.
        end_token = next(index for index, (_, end) in enumerate(spans) if end == chunk.end)
        assert following.start == token_starts[end_token + 1 - 10]
    assert chunks[-1].end == len(text)


def test_chunks_split_at_word_ends_with_the_requested_overlap() -> None:
    chunks = WordTokens().chunks(WORDS, max_tokens=4, overlap=1)

    assert [chunk.text for chunk in chunks] == ["w0 w1 w2 w3", "w3 w4 w5 w6", "w6 w7 w8 w9"]
    assert chunks[1] == TextChunk("w3 w4 w5 w6", 1, WORDS.index("w3"), WORDS.index("w6") + 2)


def test_chunks_end_at_a_sentence_end_near_the_full_size_rather_than_mid_sentence() -> None:
    text = "One two three four five six seven. Eight nine ten eleven twelve."

    chunks = WordTokens().chunks(text, max_tokens=8, overlap=0)

    assert [chunk.text for chunk in chunks] == ["One two three four five six seven.", "Eight nine ten eleven twelve."]


def test_a_text_without_tokens_has_no_chunks() -> None:
    assert WordTokens().chunks("", max_tokens=4, overlap=1) == []
    assert WordTokens().chunks("  \n ", max_tokens=4, overlap=1) == []


def test_chunk_overlap_must_be_smaller_than_the_chunk() -> None:
    with pytest.raises(ValueError, match="overlap must be in"):
        WordTokens().chunks(WORDS, max_tokens=4, overlap=4)


def test_remote_byte_counting_cuts_long_texts_itself_on_a_character_boundary() -> None:
    tokens = Utf8ByteTokens(max_tokens=10)

    fitted = tokens.fit(["short", "abcéééé", "0123456789"])

    # "abcéééé" is 11 bytes (é is 2): 10 bytes end inside the last é, which is dropped whole.
    assert fitted.texts == ["short", "abcééé", "0123456789"]
    assert fitted.over_limit == [False, True, False]


def test_remote_byte_counting_chunks_hold_at_most_max_tokens_bytes() -> None:
    text = "Grüße aus München. Viele Grüße zurück aus Köln und Hamburg."

    chunks = Utf8ByteTokens(max_tokens=None).chunks(text, max_tokens=24, overlap=4)

    assert all(len(chunk.text.encode()) <= 24 for chunk in chunks)
    assert chunks[0].text == "Grüße aus München."
    assert chunks[-1].end == len(text)


def test_the_hash_model_reads_whole_texts_so_nothing_is_over_its_limit() -> None:
    fitted = HashingEmbedder(8).text_tokens.fit(["word " * 100_000])

    assert fitted.truncated == 0
