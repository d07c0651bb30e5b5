"""The one small interface every embedding provider implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Embedder(ABC):
    """Turns texts into L2-normalised float32 vectors of a fixed, known dimension."""

    #: Stable identity of the model (provider, name, variant): part of every cache key.
    model_id: str
    #: Vector dimension, known before the first call so the index mapping can be created.
    dims: int
    #: Inputs sent to the model in one call.
    batch_size: int = 64

    def __init__(self) -> None:
        self.calls = 0

    @abstractmethod
    def _embed(self, texts: list[str]) -> np.ndarray:
        """Embed one batch of at most `batch_size` texts; shape (len(texts), dims)."""

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Embed any number of texts in model-sized batches, counting model calls."""
        if not texts:
            return np.zeros((0, self.dims), dtype=np.float32)
        parts = []
        for start in range(0, len(texts), self.batch_size):
            self.calls += 1
            parts.append(self._embed(texts[start : start + self.batch_size]))
        vectors = np.concatenate(parts).astype(np.float32, copy=False)
        if vectors.shape != (len(texts), self.dims):
            from lake_sync.errors import EmbedError

            raise EmbedError(
                f"model {self.model_id} returned shape {vectors.shape}, expected ({len(texts)}, {self.dims})"
            )
        return vectors
