"""A zero-cost embedder: deterministic pseudo-random unit vectors derived from the text.

For benchmarks that measure everything but the model, and for tests that need vectors
fast. Equal texts give equal vectors; different texts give unrelated ones.
"""

from __future__ import annotations

import hashlib

import numpy as np

from lake_sync.embed.base import Embedder


class HashingEmbedder(Embedder):
    """`hash:<dims>`: a vector seeded by the SHA-256 of the text."""

    batch_size = 1024

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.dims = dims
        self.model_id = f"hash:{dims}"

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        vectors = np.empty((len(texts), self.dims), dtype=np.float32)
        for row, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            vectors[row] = np.random.default_rng(seed).standard_normal(self.dims, dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
