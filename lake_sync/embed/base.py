"""The one small interface every embedding provider implements.

texts or images → batches of at most `batch_size` → ≤ `max_in_flight` calls at once → float32 rows

Providers implement one call (`_embed_texts`, and `_embed_images` if they take images); the
base class batches, runs calls concurrently where the provider allows it, counts calls,
inputs and tokens, and checks every answer's shape so a wrong-dims model fails clearly.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from lake_sync.embed.limits import TextTokens, WordTokens
from lake_sync.errors import EmbedError

Item = TypeVar("Item", str, bytes)


class Embedder(ABC):
    """Turns texts (and, for multimodal models, images) into float32 vectors of a known dimension."""

    #: Stable identity of the model (provider, name, variant): part of every cache key.
    model_id: str
    #: Vector dimension, known before the first call so the index mapping can be created.
    dims: int
    #: Inputs sent to the model in one call.
    batch_size: int = 64
    #: Calls allowed at once; local models use the CPU fully with one.
    max_in_flight: int = 1
    #: Whether `embed_texts` and `embed_images` work (a CLIP embeds both; an image-only model no text).
    embeds_texts: bool = True
    embeds_images: bool = False
    #: How the model counts a text's tokens and how many it reads (see `limits`); models without a
    #: tokenizer here count words and read whole texts.
    text_tokens: TextTokens = WordTokens()

    def __init__(self) -> None:
        self.calls = 0
        self.inputs = 0
        self.tokens = 0
        self._counter_lock = threading.Lock()

    @abstractmethod
    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        """Embed one batch of at most `batch_size` texts; shape (len(texts), dims)."""

    def _embed_images(self, images: list[bytes]) -> np.ndarray:
        """Embed one batch of at most `batch_size` encoded images (PNG, JPEG, ...)."""
        raise EmbedError(f"model {self.model_id} does not embed images; use a multimodal model for image transforms")

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed any number of texts in model-sized batches."""
        return self._run(list(texts), self._embed_texts)

    def embed_images(self, images: Sequence[bytes]) -> np.ndarray:
        """Embed any number of encoded images in model-sized batches."""
        return self._run(list(images), self._embed_images)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Embed search queries: asymmetric models embed a query differently from a stored document."""
        return self._run(list(texts), self._embed_queries)

    def _embed_queries(self, texts: list[str]) -> np.ndarray:
        """Embed one batch of queries; symmetric models embed them as texts."""
        return self._embed_texts(texts)

    def count_tokens(self, tokens: int) -> None:
        """Providers that learn token usage from their API report it here."""
        with self._counter_lock:
            self.tokens += tokens

    def _run(self, items: list[Item], call: Callable[[list[Item]], np.ndarray]) -> np.ndarray:
        if not items:
            return np.zeros((0, self.dims), dtype=np.float32)
        batches = [items[start : start + self.batch_size] for start in range(0, len(items), self.batch_size)]

        def counted(batch: list[Item]) -> np.ndarray:
            vectors = np.asarray(call(batch), dtype=np.float32)
            with self._counter_lock:
                self.calls += 1
                self.inputs += len(batch)
            if vectors.shape != (len(batch), self.dims):
                raise EmbedError(
                    f"model {self.model_id} answered shape {vectors.shape} for {len(batch)} inputs, "
                    f"expected ({len(batch)}, {self.dims})"
                )
            return vectors

        if self.max_in_flight > 1 and len(batches) > 1:
            workers = min(self.max_in_flight, len(batches))
            with ThreadPoolExecutor(workers, thread_name_prefix="lake-sync-embed") as pool:
                parts = list(pool.map(counted, batches))
        else:
            parts = [counted(batch) for batch in batches]
        return np.concatenate(parts)
