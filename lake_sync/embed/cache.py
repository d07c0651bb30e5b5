"""The embedding cache: vectors keyed by model identity and a hash of the exact input content.

inputs → sha256(model id, content) → hits from the cache | misses → model → stored → vectors

Model calls are what users pay for, so content seen before by the same model is never sent
again: a full resync of an unchanged table, a re-run after a failed index write, or an
update of a column no transform reads make no model call. The cache is one SQLite file
(`<state_dir>/embeddings.sqlite`): safe for several processes, and fast for the batched
lookups a sync makes.

With a shared location (`segments.py`) the SQLite file stays the working cache and mirrors the
segments other machines uploaded: entering the cache imports the segments not seen yet, and
the vectors the model computed here wait in `unshared` until a run uploads them as a segment
(at its end, and also when it fails: the vectors stay valid). A run killed before uploading
leaves them waiting for the next one, so no vector is lost to the other machines.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from lake_sync.embed import segments
from lake_sync.embed.base import Embedder
from lake_sync.embed.segments import SegmentError, SegmentRow, SegmentStore, SegmentWriter, read_segment
from lake_sync.errors import LakeSyncError

# SQLite caps the number of bound parameters per statement; stay well under it.
LOOKUP_CHUNK = 500
# Writers in other processes may hold the lock for a moment; wait rather than fail.
BUSY_TIMEOUT_SECONDS = 30.0

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedEmbeddings:
    """Vectors for every input, in order, and how many came from the cache."""

    vectors: np.ndarray
    hits: int


class EmbeddingCache:
    """A persistent map (model id, content hash) → float32 vector, optionally mirrored with a shared location.

    As a context manager: entering imports the shared segments not seen yet, leaving uploads what
    this process computed (also after a failure) and closes the file.
    """

    def __init__(self, path: Path, *, shared: SegmentStore | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.shared = shared
        #: Vectors new to this cache from shared segments, and vectors uploaded, by this object.
        self.imported = 0
        self.exported = 0
        #: Segments skipped and uploads that failed, each a sentence for the run's report.
        self.problems: list[str] = []
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
        self._create_sharing_tables()

    def __enter__(self) -> EmbeddingCache:
        try:
            self.import_shared()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        try:
            # An interrupt should stop promptly: its vectors wait in the file for the next run.
            if kind is None or issubclass(kind, Exception):
                self.export_shared()
        finally:
            self.close()

    def embed_texts(self, embedder: Embedder, texts: Sequence[str]) -> CachedEmbeddings:
        """Vectors for `texts`, calling the model only for texts it has not embedded before."""
        contents = [text.encode() for text in texts]
        return self._embed(embedder, contents, lambda misses: embedder.embed_texts([m.decode() for m in misses]))

    def embed_images(self, embedder: Embedder, images: Sequence[bytes]) -> CachedEmbeddings:
        """Vectors for encoded images, calling the model only for images it has not embedded before."""
        return self._embed(embedder, list(images), embedder.embed_images)

    def close(self) -> None:
        self._connection.close()

    def import_shared(self) -> int:
        """Import the shared segments this cache has not seen; the vectors new to it.

        A segment that cannot be used (corrupt, foreign, malformed) is skipped whole, recorded with
        the reason and reported in `problems` on every run while it is listed. An unreachable or
        refusing location raises (CacheError, ConfigError) rather than silently paying the model
        again for vectors another machine has.
        """
        store = self.shared
        if store is None:
            return 0
        with self._lock:
            known = dict(self._connection.execute("SELECT name, problem FROM segments"))
        imported = 0
        for name in store.names():
            if name in known:
                if known[name] is not None:
                    self._skipped(store, name, known[name])
                continue
            if not name.endswith(segments.SEGMENT_SUFFIX):
                # Not downloaded: a stray object may be large, and lake-sync writes no other names.
                self._skipped(store, name, f"not named *{segments.SEGMENT_SUFFIX} as lake-sync's segments are")
                continue
            with tempfile.TemporaryDirectory(prefix="segment-", dir=self.path.parent) as folder:
                local = Path(folder) / name.replace("/", "_")
                try:
                    store.download(name, local)
                    imported += self._import_segment(name, local)
                except SegmentError as problem:
                    self._record_segment(name, 0, str(problem))
                    self._skipped(store, name, str(problem))
        self.imported += imported
        return imported

    def export_shared(self) -> int:
        """Upload the vectors computed here and not shared yet as new segments; how many.

        A failed upload is reported in `problems`, not raised: the vectors stay waiting in the
        local cache and the next run uploads them.
        """
        if self.shared is None:
            return 0
        with self._lock:
            (last,) = self._connection.execute("SELECT max(id) FROM unshared").fetchone()
        exported, after = 0, 0
        try:
            while last is not None and after < last:
                count, after = self._export_segment(self.shared, after, last)
                exported += count
        except (LakeSyncError, OSError) as error:
            with self._lock:
                (waiting,) = self._connection.execute("SELECT count(*) FROM unshared").fetchone()
            problem = f"uploading to {self.shared.location} failed, {waiting} vectors wait for the next run: {error}"
            self.problems.append(problem)
            logger.warning("embedding cache: %s", problem)
        self.exported += exported
        return exported

    def _skipped(self, store: SegmentStore, name: str, reason: str) -> None:
        problem = f"segment {store.uri(name)} skipped: {reason}"
        self.problems.append(problem)
        logger.warning("embedding cache: %s", problem)

    def _create_sharing_tables(self) -> None:
        with self._lock:
            # IMMEDIATE: processes opening the same file at once create and fill `unshared` once.
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                exists = self._connection.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'unshared'"
                ).fetchone()
                # Without a location nothing waits for upload (it would cost a write per vector), unless
                # a location was set before: the first run with one queues every vector cached until then.
                self._tracks_unshared = bool(exists) or self.shared is not None
                if not exists and self.shared is not None:
                    # AUTOINCREMENT: ids never come back, so an export deletes exactly the rows it uploaded.
                    self._connection.execute(
                        "CREATE TABLE unshared (id INTEGER PRIMARY KEY AUTOINCREMENT, key BLOB NOT NULL UNIQUE)"
                    )
                    # Vectors cached before sharing existed go out with the first run that has a location.
                    self._connection.execute("INSERT INTO unshared (key) SELECT key FROM vectors")
                self._connection.execute(
                    "CREATE TABLE IF NOT EXISTS segments "
                    "(name TEXT PRIMARY KEY, vectors INTEGER NOT NULL, problem TEXT)"
                )
                self._connection.commit()
            except BaseException:
                self._connection.rollback()
                raise

    def _import_segment(self, name: str, path: Path) -> int:
        """All rows of one segment file in one transaction, so a bad batch leaves none of them behind."""
        with self._lock:
            before = self._connection.total_changes
            try:
                for rows in read_segment(path):
                    self._connection.executemany(
                        "INSERT OR IGNORE INTO vectors (key, dims, vector) VALUES (?, ?, ?)", rows
                    )
                added = self._connection.total_changes - before
                self._connection.execute(
                    "INSERT OR REPLACE INTO segments (name, vectors, problem) VALUES (?, ?, NULL)", (name, added)
                )
                self._connection.commit()
            except BaseException:
                self._connection.rollback()
                raise
        return added

    def _record_segment(self, name: str, vectors: int, problem: str | None) -> None:
        with self._lock, self._connection:
            self._connection.execute(
                "INSERT OR REPLACE INTO segments (name, vectors, problem) VALUES (?, ?, ?)", (name, vectors, problem)
            )

    def _export_segment(self, store: SegmentStore, after: int, last: int) -> tuple[int, int]:
        """Upload unshared rows with ids in (after, last] up to one segment's size; (rows, last id covered)."""
        covered = last
        with tempfile.TemporaryDirectory(prefix="segment-", dir=self.path.parent) as folder:
            writer = SegmentWriter(Path(folder) / f"segment{segments.SEGMENT_SUFFIX}")
            try:
                for page_last, rows in self._unshared_pages(after, last):
                    writer.write(rows)
                    if writer.vector_bytes >= segments.SEGMENT_MAX_BYTES:
                        covered = page_last
                        break
            finally:
                writer.close()
            name = store.upload(writer.path) if writer.rows else None
        with self._lock, self._connection:
            self._connection.execute("DELETE FROM unshared WHERE id > ? AND id <= ?", (after, covered))
            if name is not None:
                self._connection.execute(
                    "INSERT OR IGNORE INTO segments (name, vectors) VALUES (?, ?)", (name, writer.rows)
                )
        return writer.rows, covered

    def _unshared_pages(self, after: int, last: int) -> Iterator[tuple[int, list[SegmentRow]]]:
        """Unshared vectors with ids in (after, last], a segment batch at a time, with the last id of each."""
        while True:
            with self._lock:
                page = self._connection.execute(
                    "SELECT u.id, v.key, v.dims, v.vector FROM unshared u JOIN vectors v ON v.key = u.key "
                    "WHERE u.id > ? AND u.id <= ? ORDER BY u.id LIMIT ?",
                    (after, last, segments.SEGMENT_BATCH_ROWS),
                ).fetchall()
            if not page:
                return
            after = page[-1][0]
            yield after, [(key, dims, vector) for _, key, dims, vector in page]

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
            if self._tracks_unshared:
                self._connection.executemany(
                    "INSERT OR IGNORE INTO unshared (key) VALUES (?)", [(key,) for key in keys]
                )


def _key(model_id: str, content: bytes) -> bytes:
    return hashlib.sha256(model_id.encode() + b"\0" + content).digest()
