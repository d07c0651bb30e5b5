"""Long text: how many tokens a model reads, which inputs exceed that, and splitting texts into chunks.

text → token spans (the model's tokenizer | UTF-8 bytes | words) → over the limit? (counted; cut where the
model would not cut itself) | chunks of ≤ max_tokens tokens with overlap, ending at sentence or word ends

Every embedder has a `TextTokens`: local models count with their real tokenizer (sentence-transformers and
CLIP truncate by themselves, so lake-sync only counts); remote models have no tokenizer here, so lake-sync
counts one token per UTF-8 byte, an upper bound for the byte-level BPE and SentencePiece tokenizers those
APIs use (every token is at least one byte), and cuts longer texts itself so a provider never refuses a
request for its length. The zero-cost `hash:` model reads whole texts and splits chunks at words.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: A token's characters in its text: [start, end).
Span = tuple[int, int]

_SENTENCE_END = frozenset(".!?;:。！？；")
# A chunk may end this far before its full size (as a share of it) to end at a sentence or word boundary.
BOUNDARY_LOOKBACK = 0.25
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class FittedTexts:
    """Texts as the model will read them, and which of them exceeded its limit."""

    texts: list[str]
    over_limit: list[bool]

    @property
    def truncated(self) -> int:
        return sum(self.over_limit)


@dataclass(frozen=True)
class TextChunk:
    """One chunk of a text: its characters `text[start:end]` and its place among the text's chunks."""

    text: str
    position: int
    start: int
    end: int


class TextTokens(ABC):
    """How one model counts a text's tokens, and how many it reads (`max_tokens`, special tokens excluded)."""

    #: Text tokens the model reads per input; None: it reads every token.
    max_tokens: int | None = None
    #: What a token is here, for messages ("tokens", "UTF-8 bytes", "words").
    unit: str = "tokens"
    #: Whether the model truncates long inputs itself; otherwise lake-sync cuts them before sending.
    model_truncates: bool = True

    @abstractmethod
    def spans(self, texts: Sequence[str]) -> list[list[Span]]:
        """The character spans of every token of each text."""

    def fit(self, texts: Sequence[str]) -> FittedTexts:
        """Flag the texts longer than `max_tokens`, and cut them unless the model cuts them itself."""
        texts = list(texts)
        if self.max_tokens is None:
            return FittedTexts(texts, [False] * len(texts))
        limit = self.max_tokens
        # No tokenizer here makes more tokens than a text has UTF-8 bytes: short texts need no tokenizing.
        long_rows = [row for row, text in enumerate(texts) if len(text.encode()) > limit]
        over = [False] * len(texts)
        fitted = list(texts)
        for row, spans in zip(long_rows, self.spans([texts[row] for row in long_rows]), strict=True):
            if len(spans) > limit:
                over[row] = True
                if not self.model_truncates:
                    fitted[row] = texts[row][: spans[limit - 1][1]]
        return FittedTexts(fitted, over)

    def chunks(self, text: str, *, max_tokens: int, overlap: int) -> list[TextChunk]:
        """Consecutive chunks of at most `max_tokens` tokens, each repeating the last `overlap` tokens of
        the one before; a chunk ends at a sentence end, else a word end, when one is near its full size."""
        if not 0 <= overlap < max_tokens:
            raise ValueError(f"overlap must be in [0, max_tokens), got {overlap} with max_tokens {max_tokens}")
        spans = self.spans([text])[0]
        chunks: list[TextChunk] = []
        start = 0
        while start < len(spans):
            end = min(start + max_tokens, len(spans))
            if end < len(spans):
                end = _boundary(text, spans, start, end, max_tokens)
            first, last = spans[start][0], spans[end - 1][1]
            # Byte counting makes spaces tokens of their own; a chunk neither starts nor ends with one.
            while first < last and text[first].isspace():
                first += 1
            while last > first and text[last - 1].isspace():
                last -= 1
            if first < last:
                chunks.append(TextChunk(text[first:last], len(chunks), first, last))
            if end == len(spans):
                break
            start = max(end - overlap, start + 1)
        return chunks


class TokenizerTokens(TextTokens):
    """A Hugging Face tokenizer (fast, with offsets): the exact count of a local model."""

    def __init__(self, tokenizer: Any, *, max_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens

    def spans(self, texts: Sequence[str]) -> list[list[Span]]:
        if not texts:
            return []
        encoded = self.tokenizer(
            list(texts), add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False
        )
        return [[(int(start), int(end)) for start, end in offsets] for offsets in encoded["offset_mapping"]]


class Utf8ByteTokens(TextTokens):
    """One token per UTF-8 byte: a bound no byte-level BPE or SentencePiece tokenizer exceeds, for remote
    models whose tokenizer is not here. Texts over the limit are cut at a character boundary."""

    unit = "UTF-8 bytes"
    model_truncates = False

    def __init__(self, *, max_tokens: int | None) -> None:
        self.max_tokens = max_tokens

    def spans(self, texts: Sequence[str]) -> list[list[Span]]:
        # A character of n bytes counts n times, so a chunk of max_tokens "tokens" is at most max_tokens bytes.
        return [[(at, at + 1) for at, char in enumerate(text) for _ in range(len(char.encode()))] for text in texts]

    def fit(self, texts: Sequence[str]) -> FittedTexts:
        if self.max_tokens is None:
            return super().fit(texts)
        over = [len(text.encode()) > self.max_tokens for text in texts]
        fitted = [
            text.encode()[: self.max_tokens].decode(errors="ignore") if long else text
            for text, long in zip(texts, over, strict=True)
        ]
        return FittedTexts(fitted, over)


class WordTokens(TextTokens):
    """Whitespace-separated words, no limit: for the zero-cost `hash:` model, which reads whole texts."""

    unit = "words"

    def spans(self, texts: Sequence[str]) -> list[list[Span]]:
        return [[match.span() for match in _WORD.finditer(text)] for text in texts]


def _boundary(text: str, spans: list[Span], start: int, end: int, max_tokens: int) -> int:
    """The chunk end (exclusive token index) nearest `end` that follows a sentence end, else a word end,
    looking back at most BOUNDARY_LOOKBACK of a chunk; `end` itself if there is none."""
    earliest = max(start + 1, end - int(max_tokens * BOUNDARY_LOOKBACK))
    word_end = None
    for candidate in range(end, earliest - 1, -1):
        # Whitespace between two tokens, or a whitespace token (byte counting has those), separates words.
        between = text[spans[candidate - 1][1] : spans[candidate][1]]
        if not any(char.isspace() for char in between):
            continue
        before = text[spans[candidate - 1][0] : spans[candidate - 1][1]].rstrip()
        if "\n" in between or (before and before[-1] in _SENTENCE_END):
            return candidate
        if word_end is None:
            word_end = candidate
    return word_end if word_end is not None else end
