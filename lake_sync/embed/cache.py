"""The embedding cache: vectors keyed by model identity and a hash of the exact input content.

inputs → sha256(model id, content) → hits from the cache | misses → model → stored → vectors

Model calls are what users pay for, so content seen before by the same model is never sent
again: a full resync of an unchanged table, a re-run after a failed index write, or an
update of a column no transform reads make no model call. The cache is one SQLite file
(`<state_dir>/embeddings.sqlite`): safe for several processes, and fast for the batched
lookups a sync makes.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lake_sync.embed.base import Embedder

# SQLite caps the number of bound parameters per statement; stay well under it.
LOOKUP_CHUNK = 500
# Writers in other processes may hold the lock for a moment; wait rather than fail.
BUSY_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class CachedEmbeddings:
    """Vectors for every input, in order, and how many came from the cache."""

    vectors: np.ndarray
    hits: int


class EmbeddingCache:
    """A persistent map (model id, content hash) → float32 vector."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, check_same_thread=False)
        with self._connection:
            self._connection.execute("PRAGMA journal_mode=WAL")
            # A lost last transaction after a power cut only costs a few model calls again.
            self._connection.execute("PRAGMA synchronous=NORMAL")
            self._connection.execute(
                # A rowid table: WITHOUT ROWID would store the 1.5 KB vectors inside the key b-tree.
                "CREATE TABLE IF NOT EXISTS vectors (key BLOB PRIMARY KEY, dims INTEGER NOT NULL, vector BLOB NOT NULL)"
            )

    def embed_texts(self, embedder: Embedder, texts: Sequence[str]) -> CachedEmbeddings:
        """Vectors for `texts`, calling the model only for texts it has not embedded before."""
        contents = [text.encode() for text in texts]
        return self._embed(embedder, contents, lambda misses: embedder.embed_texts([m.decode() for m in misses]))

    def embed_images(self, embedder: Embedder, images: Sequence[bytes]) -> CachedEmbeddings:
        """Vectors for encoded images, calling the model only for images it has not embedded before."""
        return self._embed(embedder, list(images), embedder.embed_images)

    def close(self) -> None:
        self._connection.close()

    def _embed(
        self, embedder: Embedder, contents: list[bytes], call: Callable[[list[bytes]], np.ndarray]
    ) -> CachedEmbeddings:
        keys = [_key(embedder.model_id, content) for content in contents]
        found = self._lookup(keys, embedder.dims)
        missing = [position for position, key in enumerate(keys) if key not in found]
        # Equal contents in one batch cost one model input.
        unique = list(dict.fromkeys(keys[position] for position in missing))
        if unique:
            first = {keys[position]: position for position in reversed(missing)}
            fresh = call([contents[first[key]] for key in unique])
            self._store(unique, fresh)
            found.update(zip(unique, fresh, strict=True))
        vectors = np.stack([found[key] for key in keys]) if keys else np.zeros((0, embedder.dims), np.float32)
        return CachedEmbeddings(vectors, len(keys) - len(missing))

    def _lookup(self, keys: list[bytes], dims: int) -> dict[bytes, np.ndarray]:
        found: dict[bytes, np.ndarray] = {}
        distinct = list(dict.fromkeys(keys))
        with self._lock:
            for start in range(0, len(distinct), LOOKUP_CHUNK):
                chunk = distinct[start : start + LOOKUP_CHUNK]
                rows = self._connection.execute(
                    f"SELECT key, vector FROM vectors WHERE dims = ? AND key IN ({','.join('?' * len(chunk))})",
                    [dims, *chunk],
                )
                found.update((key, np.frombuffer(vector, dtype=np.float32)) for key, vector in rows)
        return found

    def _store(self, keys: list[bytes], vectors: np.ndarray) -> None:
        dims = vectors.shape[1]
        rows = [
            (key, dims, np.asarray(vector, np.float32).tobytes()) for key, vector in zip(keys, vectors, strict=True)
        ]
        with self._lock, self._connection:
            self._connection.executemany("INSERT OR IGNORE INTO vectors (key, dims, vector) VALUES (?, ?, ?)", rows)


def _key(model_id: str, content: bytes) -> bytes:
    return hashlib.sha256(model_id.encode() + b"\0" + content).digest()
