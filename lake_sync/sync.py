"""The pipeline: Paimon snapshots → documents → vectors → the Elasticsearch index.

full:        pin snapshot → stream it → documents → embed → new physical index → catch up
             → cursor → atomic alias swap
incremental: cursor → changed rows (last event per key) → upserts (embed changed texts only)
             and deletes → cursor

This is the only module that knows both the source and the target. The CLI and the Dagster
assets call `run_sync`; the sensor and `lake-sync status` call `sync_lag`. The cursor is
written only when every document of the range was indexed or dead-lettered within the
task's error budget, and `_id`s come from primary keys, so re-running any range is safe.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
from elasticsearch import Elasticsearch

from lake_sync.config import ChunkConfig, ElasticsearchConnection, Task, TaskFile
from lake_sync.documents import FieldPlan, RowDocument, batch_documents, encode_id, key_problem
from lake_sync.embed import Embedder, build_embedder
from lake_sync.embed.cache import CachedEmbeddings, EmbeddingCache
from lake_sync.embed.segments import open_segment_store
from lake_sync.errors import ConfigError, SourceError, TooManyErrorsError, UndecodableImageError
from lake_sync.index.aliases import (
    TargetKind,
    TargetState,
    delete_unfinished,
    next_physical_index,
    resolve_target,
    swap_alias,
)
from lake_sync.index.client import build_client, check_cluster, target_errors
from lake_sync.index.cursor import SyncCursor, read_cursor, write_cursor
from lake_sync.index.dead_letters import DeadLetter, DeadLetterFile
from lake_sync.index.mapping import CHUNK_VECTOR, build_mappings
from lake_sync.index.target import count_documents, document_ids, ensure_index
from lake_sync.index.writer import BulkLimits, BulkWriter, IndexAction, IndexOutcome
from lake_sync.source.changes import ChangePlan, ChangeRange, collapse_changes, plan_changes, read_changes
from lake_sync.source.paimon import PaimonTable, Snapshot, open_table

if TYPE_CHECKING:
    from lake_sync.embed.images import ImageFetcher, ImageResult

logger = logging.getLogger(__name__)

PREVIEW_DOCUMENTS = 5
EMBEDDING_CACHE_FILE = "embeddings.sqlite"
# A resync catches its new index up with commits that landed while it was built; past this
# many rounds the table is committing faster than we index, and the run says so.
MAX_CATCH_UP_ROUNDS = 5

#: Called with (rows read so far, rows in the snapshot if known).
ProgressCallback = Callable[[int, int | None], None]
#: Per image field, the batch's fetched images by row: being fetched while the batch before is embedded.
FetchedImages = dict[str, "Future[dict[int, ImageResult]]"]


class SyncMode(StrEnum):
    FULL = "full"
    INCREMENTAL = "incremental"


class SyncStatus(StrEnum):
    COMPLETED = "completed"
    COMPLETED_WITH_DEAD_LETTERS = "completed_with_dead_letters"
    UP_TO_DATE = "up_to_date"


@dataclass(frozen=True)
class VectorField:
    """One transform, resolved: read `column` (texts, or images to fetch), embed with `embedder`, write to `field`."""

    column: str
    field: str
    embedder: Embedder
    kind: Literal["text", "image"] = "text"
    #: Set for chunked text: `field` holds a nested list of chunks, each with its own vector.
    chunk: ChunkConfig | None = None


@dataclass(frozen=True)
class SyncPlan:
    """Everything resolved from the task and the table before any data moves."""

    documents: FieldPlan
    vectors: list[VectorField]
    mappings: dict[str, Any]

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys([*self.documents.columns, *(vector.column for vector in self.vectors)]))


@dataclass(frozen=True)
class SyncResult:
    """What one run did, for the CLI, the Dagster metadata and the tests."""

    task: str
    mode: SyncMode
    index: str
    physical_index: str
    from_snapshot: int | None
    snapshot_id: int | None
    reason: str
    rows_read: int
    documents_indexed: int
    documents_deleted: int
    dead_lettered: int
    rejected_keys: int
    #: Inputs (texts or images) that got a vector, from the model or the embedding cache.
    inputs_embedded: int
    cache_hits: int
    model_calls: int
    model_inputs: int
    model_tokens: int
    bulk_requests: int
    seconds: float
    #: Part of `seconds` spent waiting on the cluster's answers (not overlapped with reading or embedding).
    index_wait_seconds: float
    dead_letter_path: str
    preview: list[dict[str, Any]] = field(default_factory=list)
    #: Per vector field: of this run's inputs (cache hits included, the unit of `inputs_embedded`),
    #: those longer than the model reads, so their vector covers only its first `max_tokens` tokens.
    truncated: dict[str, int] = field(default_factory=dict)
    #: Vectors imported from the shared embedding cache at the start, and uploaded to it at the end.
    cache_imported: int = 0
    cache_exported: int = 0
    #: Shared-cache segments skipped (corrupt, foreign) and failed uploads, one sentence each.
    cache_problems: list[str] = field(default_factory=list)

    @property
    def inputs_truncated(self) -> int:
        return sum(self.truncated.values())

    @property
    def status(self) -> SyncStatus:
        if self.dead_lettered:
            return SyncStatus.COMPLETED_WITH_DEAD_LETTERS
        if self.mode is SyncMode.INCREMENTAL and self.from_snapshot == self.snapshot_id:
            return SyncStatus.UP_TO_DATE
        return SyncStatus.COMPLETED


@dataclass(frozen=True)
class SyncLag:
    """How far the index trails the table."""

    cursor: SyncCursor | None
    cursor_snapshot: Snapshot | None
    latest_snapshot: Snapshot | None

    @property
    def snapshots_behind(self) -> int | None:
        if self.latest_snapshot is None:
            return 0
        return None if self.cursor is None else self.latest_snapshot.id - self.cursor.snapshot_id

    @property
    def seconds_behind(self) -> float | None:
        if self.latest_snapshot is None or self.cursor is None:
            return None
        if self.cursor.snapshot_id >= self.latest_snapshot.id:
            return 0.0
        if self.cursor_snapshot is None:
            return None
        return (self.latest_snapshot.time_millis - self.cursor_snapshot.time_millis) / 1000


def plan_sync(task: Task, table: PaimonTable, task_file: TaskFile) -> SyncPlan:
    """Resolve fields, renames, keys, vector fields and the index mapping; ConfigError if they don't fit."""
    available = [name for name in table.column_names if name != table.row_kind_column]
    fields = task.fields if task.fields is not None else available
    key_columns = task.primary_key_columns or table.primary_keys
    if not key_columns:
        raise ConfigError(
            f"task '{task.name}': primary_key: table {table.identifier} has no primary key; "
            "name the column(s) that identify a row, e.g. primary_key: id or primary_key: [shop_id, sku]"
        )
    for setting, names in (
        ("fields", fields),
        ("primary_key", key_columns),
        ("transforms.field", [transform.field for transform in task.transforms]),
        ("mapping", list(task.mapping)),
    ):
        missing = [name for name in names if name not in available]
        if missing:
            raise ConfigError(
                f"task '{task.name}': {setting}: column(s) {missing} are not in table {table.identifier}; "
                f"its columns are {available}"
            )
    unmapped = sorted(set(task.mapping) - set(fields))
    if unmapped:
        raise ConfigError(f"task '{task.name}': mapping renames {unmapped}, which are not in 'fields'; add them there")
    schema = table.schema
    for transform in task.transforms:
        column_type = schema.field(transform.field).type
        if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
            raise ConfigError(
                f"task '{task.name}': transforms.field '{transform.field}' is {column_type}; "
                "text embedding needs a string column"
            )
    renames = {name: task.mapping.get(name, name) for name in fields}
    vectors = [
        VectorField(t.field, t.to, build_embedder(t.model, task_file.model_connection(t.model)), t.embed, t.chunk)
        for t in task.transforms
    ]
    _check_chunk_sizes(task, vectors)
    mappings = build_mappings(
        {renames[name]: schema.field(name).type for name in fields},
        {vector.field: vector.embedder.dims for vector in vectors if vector.chunk is None},
        keyword_fields={renames[name] for name in key_columns if name in renames},
        chunked={vector.field: vector.embedder.dims for vector in vectors if vector.chunk is not None},
    )
    return SyncPlan(FieldPlan(renames, list(key_columns)), vectors, mappings)


def _check_chunk_sizes(task: Task, vectors: list[VectorField]) -> None:
    """A chunk longer than its model reads would be truncated: refuse such a chunk size before any data moves."""
    for number, vector in enumerate(vectors):
        limit = vector.embedder.text_tokens.max_tokens
        if vector.chunk is not None and limit is not None and vector.chunk.max_tokens > limit:
            raise ConfigError(
                f"task '{task.name}': transforms.{number}.chunk.max_tokens: {vector.chunk.max_tokens} is more than "
                f"model {vector.embedder.model_id} reads ({limit} {vector.embedder.text_tokens.unit}); "
                f"set max_tokens to at most {limit} for field '{vector.field}'"
            )


def latest_source_snapshot(task_file: TaskFile, task_name: str) -> Snapshot | None:
    """The newest snapshot of the task's table: one metadata lookup, no data read."""
    return _open_source(task_file, task_file.task(task_name)).latest_snapshot()


def count_target_documents(task_file: TaskFile, task_name: str) -> int:
    """Documents in the task's index right now."""
    task = task_file.task(task_name)
    return count_documents(_connect(task_file.target_connection(task)), task.target.index)


def committed_cursor(task_file: TaskFile, task_name: str) -> SyncCursor | None:
    """The last snapshot fully applied to the task's index, as stored with the index."""
    task = task_file.task(task_name)
    return read_cursor(_connect(task_file.target_connection(task)), task.target.index)


def sync_lag(task_file: TaskFile, task_name: str) -> SyncLag:
    """The committed cursor against the table's latest snapshot, with the commit times of both."""
    table = _open_source(task_file, task_file.task(task_name))
    cursor = committed_cursor(task_file, task_name)
    latest = table.latest_snapshot()
    cursor_snapshot = table.snapshot(cursor.snapshot_id) if cursor else None
    return SyncLag(cursor, cursor_snapshot, latest)


@dataclass(frozen=True)
class SyncVerification:
    """The index against the snapshot its cursor names: one document per row with a usable key."""

    snapshot_id: int | None
    rows_with_valid_key: int
    documents: int

    @property
    def matches(self) -> bool:
        return self.rows_with_valid_key == self.documents


def verify_sync(task_file: TaskFile, task_name: str) -> SyncVerification:
    """Count the cursor snapshot's rows with a usable key (reading only key columns) and the documents."""
    task = task_file.task(task_name)
    table = _open_source(task_file, task)
    key_columns = task.primary_key_columns or table.primary_keys
    client = _connect(task_file.target_connection(task))
    cursor = read_cursor(client, task.target.index)
    rows = 0
    if cursor is not None:
        for batch in table.read_snapshot(cursor.snapshot_id, columns=key_columns, batch_rows=65_536):
            keys = zip(*(batch.column(name).to_pylist() for name in key_columns), strict=True)
            rows += sum(key_problem(list(key), key_columns) is None for key in keys)
    documents = count_documents(client, task.target.index) if cursor is not None else 0
    return SyncVerification(cursor.snapshot_id if cursor else None, rows, documents)


def run_sync(
    task_file: TaskFile,
    task_name: str,
    *,
    mode: SyncMode = SyncMode.INCREMENTAL,
    keep_old_index: bool = False,
    progress: ProgressCallback | None = None,
) -> SyncResult:
    """Bring the task's index up to the table's latest snapshot.

    Incremental applies only the changes since the committed cursor; it falls back to a full
    resync (and says why in `reason`) on a first sync, an expired cursor snapshot, an
    overwrite commit or a schema change. A full resync builds a new physical index behind the
    alias and swaps it in atomically; the old one is deleted unless `keep_old_index`.
    """
    task = task_file.task(task_name)
    connection = task_file.target_connection(task)
    table = _open_source(task_file, task)
    plan = plan_sync(task, table, task_file)
    client = _connect(connection)
    dead_letter_path = Path(task_file.state_dir) / "dead_letters" / f"{task.name}.jsonl"
    doing = f"syncing task '{task.name}' into '{task.target.index}' (the cursor was not moved)"
    # Entering imports what other machines shared; leaving shares this run's vectors, also on failure.
    cache = EmbeddingCache(Path(task_file.state_dir) / EMBEDDING_CACHE_FILE, shared=open_segment_store(task_file))
    with target_errors(connection, doing), DeadLetterFile(dead_letter_path) as dead_letters, cache:
        run = _Run(task, table, plan, client, dead_letters, cache, progress)
        target = resolve_target(client, task.target.index)
        cursor = read_cursor(client, target.write_index) if target.write_index else None
        if mode is SyncMode.INCREMENTAL and cursor is not None:
            change = plan_changes(table, cursor.snapshot_id)
            if change.kind is not ChangeRange.FULL_RESYNC:
                return run.incremental(target, change)
            run.reason = f"full resync: {change.reason}"
        elif mode is SyncMode.INCREMENTAL:
            run.reason = "full sync: the index has no cursor yet (first sync)"
        else:
            run.reason = "full resync requested"
        return run.full(target, cursor, keep_old_index)


class _Run:
    """One sync run: counts, dead letters, and the steps full and incremental syncs share."""

    def __init__(
        self,
        task: Task,
        table: PaimonTable,
        plan: SyncPlan,
        client: Elasticsearch,
        dead_letters: DeadLetterFile,
        cache: EmbeddingCache,
        progress: ProgressCallback | None,
    ) -> None:
        self.started = time.perf_counter()
        self.task, self.table, self.plan, self.client = task, table, plan, client
        self.dead_letters = dead_letters
        self.cache = cache
        self.progress = progress
        self.reason = ""
        self.snapshot_id: int | None = None
        self.rows = self.indexed = self.deleted = self.rejected_keys = 0
        self.inputs_embedded = self.cache_hits = self.bulk_requests = 0
        #: Inputs over their model's limit, per vector field.
        self.truncated: dict[str, int] = {}
        self.index_wait_seconds = 0.0
        self.preview: list[dict[str, Any]] = []
        self.usage_before = self._model_usage()

    @cached_property
    def images(self) -> ImageFetcher:
        """Fetches image column values (paths, URIs, bytes); created for tasks with image transforms only."""
        from lake_sync.embed.images import ImageFetcher

        settings = self.task.images
        return ImageFetcher(
            max_bytes=settings.max_bytes,
            max_in_flight=settings.max_in_flight,
            timeout=settings.timeout,
            s3_options={key: value.get_secret_value() for key, value in settings.s3.items()},
        )

    def full(self, target: TargetState, cursor: SyncCursor | None, keep_old: bool) -> SyncResult:
        """Rebuild behind the alias (or in place for a concrete index), catch up, then swap."""
        snapshot = self.table.latest_snapshot()
        self.snapshot_id = snapshot.id if snapshot else None
        if target.kind is TargetKind.CONCRETE:
            return self._full_in_place(target.name, snapshot, cursor)
        delete_unfinished(self.client, target.name)
        index = next_physical_index(self.client, target.name)
        ensure_index(self.client, index, self.plan.mappings)
        if snapshot is not None:
            self._write(index, self._snapshot_actions(snapshot, seen_ids=None))
            self._catch_up(index, snapshot.id)
        self._finish(index)
        swap_alias(self.client, target.name, index, target.write_index)
        if target.write_index is not None and not keep_old:
            self.client.indices.delete(index=target.write_index)
        return self._result(SyncMode.FULL, target.name, index, cursor.snapshot_id if cursor else None)

    def incremental(self, target: TargetState, change: ChangePlan) -> SyncResult:
        """Apply one range of changes to the index the alias points at."""
        assert target.write_index is not None
        self.snapshot_id = change.end.id if change.end else change.start
        if change.kind is ChangeRange.INCREMENTAL:
            self._apply_changes(target.write_index, change)
        if change.kind is not ChangeRange.UP_TO_DATE:
            self._finish(target.write_index, refresh=False)
        return self._result(SyncMode.INCREMENTAL, target.name, target.write_index, change.start)

    def _full_in_place(self, index: str, snapshot: Snapshot | None, cursor: SyncCursor | None) -> SyncResult:
        self.reason += (
            f"; '{index}' is a concrete index, so it was resynced in place (stale documents deleted). "
            f"For zero-downtime resyncs, reindex it into '{index}-1', delete '{index}' and add the "
            f"alias '{index}' → '{index}-1' (or delete it and sync again)"
        )
        ensure_index(self.client, index, self.plan.mappings)
        if snapshot is not None:
            seen: set[str] = set()
            self._write(index, self._snapshot_actions(snapshot, seen_ids=seen))
            stale = (IndexAction("delete", i) for i in document_ids(self.client, index) if i not in seen)
            self._write(index, stale)
        self._finish(index)
        return self._result(SyncMode.FULL, index, index, cursor.snapshot_id if cursor else None)

    def _catch_up(self, index: str, synced: int) -> None:
        """Apply commits that landed while the new index was built, until none are left."""
        for _ in range(MAX_CATCH_UP_ROUNDS):
            change = plan_changes(self.table, synced)
            if change.kind is ChangeRange.UP_TO_DATE:
                return
            if change.kind is ChangeRange.FULL_RESYNC:
                raise SourceError(f"the table changed under the resync ({change.reason}); run it again")
            if change.kind is ChangeRange.INCREMENTAL:
                self._apply_changes(index, change)
            assert change.end is not None
            synced = self.snapshot_id = change.end.id
        self.reason += f"; still behind after {MAX_CATCH_UP_ROUNDS} catch-up rounds, the next sync continues"

    def _finish(self, index: str, *, refresh: bool = True) -> None:
        """Refresh, enforce the error budget, then (and only then) move the cursor.

        Incremental runs skip the refresh: the index's own refresh interval makes their few
        documents searchable within a second, and an explicit refresh costs in proportion to
        the index, not the change.
        """
        if refresh:
            self.client.indices.refresh(index=index)
        _check_error_budget(self.task, self.rows, self.dead_letters.count)
        if self.snapshot_id is not None:
            write_cursor(
                self.client, index, task=self.task.name, table=self.table.identifier, snapshot_id=self.snapshot_id
            )

    def _snapshot_actions(self, snapshot: Snapshot, *, seen_ids: set[str] | None) -> Iterator[IndexAction]:
        batches = self.table.read_snapshot(snapshot.id, columns=self.plan.columns, batch_rows=self.task.read_batch_rows)
        for batch, images in self._prefetch_images(batches):
            for action in self._upserts(batch, images):
                if seen_ids is not None:
                    seen_ids.add(action.id)
                yield action
            self.rows += batch.num_rows
            if self.progress is not None:
                self.progress(self.rows, snapshot.total_record_count)

    def _apply_changes(self, index: str, change: ChangePlan) -> None:
        batches = read_changes(change, self.table, columns=self.plan.columns, batch_rows=self.task.read_batch_rows)
        changes = collapse_changes(batches, self.plan.documents.key_columns)
        self.rows += changes.events

        def actions() -> Iterator[IndexAction]:
            batches = changes.upserts.to_batches(max_chunksize=self.task.read_batch_rows)
            for batch, images in self._prefetch_images(batches):
                yield from self._upserts(batch, images)
            for key in changes.deletes:
                if key_problem(key, self.plan.documents.key_columns) is None:
                    yield IndexAction("delete", encode_id(key))

        self._write(index, actions())

    def _prefetch_images(self, batches: Iterable[pa.RecordBatch]) -> Iterator[tuple[pa.RecordBatch, FetchedImages]]:
        """Each batch with its images being fetched, one batch ahead: downloads and decode checks of the next
        batch overlap the model embedding this one (one batch of rows more in memory)."""
        image_vectors = [vector for vector in self.plan.vectors if vector.kind == "image"]
        if not image_vectors:
            yield from ((batch, {}) for batch in batches)
            return
        ahead: deque[tuple[pa.RecordBatch, FetchedImages]] = deque()
        with ThreadPoolExecutor(1, thread_name_prefix="lake-sync-prefetch") as pool:
            for batch in batches:
                images = {
                    vector.field: pool.submit(self._fetch_images, batch.column(vector.column).to_pylist())
                    for vector in image_vectors
                }
                ahead.append((batch, images))
                if len(ahead) > 1:
                    yield ahead.popleft()
            yield from ahead

    def _fetch_images(self, values: list[Any]) -> dict[int, ImageResult]:
        rows = [row for row, value in enumerate(values) if value]
        return dict(zip(rows, self.images.fetch([values[row] for row in rows]), strict=True))

    def _upserts(self, batch: pa.RecordBatch, images: FetchedImages) -> Iterator[IndexAction]:
        """Index actions for a batch of rows, with their vectors."""
        documents = list(batch_documents(batch, self.plan.documents))
        for vector in self.plan.vectors:
            fetched = images[vector.field].result() if vector.kind == "image" else {}
            self._attach_vectors(documents, batch.column(vector.column).to_pylist(), vector, fetched)
        for document in documents:
            if document.id is None:
                self.rejected_keys += 1
                self._dead_letter(document, "key", 0, document.rejected or "invalid primary key")
                continue
            if len(self.preview) < PREVIEW_DOCUMENTS:
                self.preview.append({"_id": document.id, **document.body})
            yield IndexAction("index", document.id, document.body)

    def _attach_vectors(
        self, documents: list[RowDocument], values: list[Any], vector: VectorField, images: dict[int, ImageResult]
    ) -> None:
        """Set the vector of every written document with a value, from the cache or the model.

        An image that cannot be fetched or decoded is a dead letter; its document is still
        written, without that vector.
        """
        rows = [row for row, document in enumerate(documents) if document.id is not None and values[row]]
        if vector.kind == "image":
            for row in rows:
                if images[row].error is not None:
                    self._dead_letter(documents[row], "image", 0, f"{vector.column}: {images[row].error}")
            usable = {row: data for row in rows if (data := images[row].data) is not None}
            rows, embedded = self._embed_images(documents, usable, vector)
        elif vector.chunk is not None:
            self._attach_chunks(documents, rows, values, vector, vector.chunk)
            return
        else:
            embedded = self.cache.embed_texts(vector.embedder, self._fit(vector, [values[row] for row in rows]))
        self.inputs_embedded += len(rows)
        self.cache_hits += embedded.hits
        for row, vector_values in zip(rows, embedded.vectors, strict=True):
            documents[row].body[vector.field] = vector_values

    def _embed_images(
        self, documents: list[RowDocument], usable: dict[int, bytes], vector: VectorField
    ) -> tuple[list[int], CachedEmbeddings]:
        """The rows whose images got vectors, and the vectors. An image whose pixels the model cannot decode
        is a dead letter, and the others are embedded again without it: the fetch checks only what is cheap."""
        while True:
            try:
                return list(usable), self.cache.embed_images(vector.embedder, list(usable.values()))
            except UndecodableImageError as error:
                bad = [row for row, data in usable.items() if data == error.image]
                if not bad:
                    raise
                for row in bad:
                    self._dead_letter(documents[row], "image", 0, f"{vector.column}: {error}")
                    del usable[row]

    def _attach_chunks(
        self, documents: list[RowDocument], rows: list[int], values: list[Any], vector: VectorField, chunk: ChunkConfig
    ) -> None:
        """Split each text into chunks and set the document's nested list of them, each with its vector.

        Every chunk is one cache entry, so an unchanged document costs no model call; a text with no
        tokens has no chunks (and no field). The document is written whole, so an update replaces
        its whole chunk list.
        """
        tokens = vector.embedder.text_tokens
        per_row = [tokens.chunks(values[row], max_tokens=chunk.max_tokens, overlap=chunk.overlap) for row in rows]
        texts = self._fit(vector, [piece.text for pieces in per_row for piece in pieces])
        embedded = self.cache.embed_texts(vector.embedder, texts)
        self.inputs_embedded += len(texts)
        self.cache_hits += embedded.hits
        vectors = iter(embedded.vectors)
        for row, pieces in zip(rows, per_row, strict=True):
            if pieces:
                documents[row].body[vector.field] = [{**asdict(piece), CHUNK_VECTOR: next(vectors)} for piece in pieces]

    def _fit(self, vector: VectorField, texts: list[str]) -> list[str]:
        """The texts as the model reads them; those over its limit are counted per field."""
        fitted = vector.embedder.text_tokens.fit(texts)
        if fitted.truncated:
            self.truncated[vector.field] = self.truncated.get(vector.field, 0) + fitted.truncated
        return fitted.texts

    def _write(self, index: str, actions: Iterable[IndexAction]) -> None:
        writer = BulkWriter(self.client, index, bulk_limits(self.task))
        for outcome in writer.write(actions):
            if not outcome.ok:
                self._dead_letter(outcome, "index", outcome.status, outcome.reason or "rejected")
            elif outcome.action.op == "index":
                self.indexed += 1
            else:
                self.deleted += 1
        self.bulk_requests += writer.requests
        self.index_wait_seconds += writer.wait_seconds

    def _dead_letter(self, document: RowDocument | IndexOutcome, stage: str, status: int, reason: str) -> None:
        body = document.body if isinstance(document, RowDocument) else document.action.body
        document_id = document.id if isinstance(document, RowDocument) else document.action.id
        letter = DeadLetter(
            self.task.name, self.snapshot_id, document_id, stage, status, reason, _without_vectors(body, self.plan)
        )
        self.dead_letters.add(letter)

    def _model_usage(self) -> tuple[int, int, int]:
        """Calls, inputs and tokens of this run's models so far (models are shared per process)."""
        embedders = {id(vector.embedder): vector.embedder for vector in self.plan.vectors}.values()
        return (
            sum(embedder.calls for embedder in embedders),
            sum(embedder.inputs for embedder in embedders),
            sum(embedder.tokens for embedder in embedders),
        )

    def _result(self, mode: SyncMode, index: str, physical_index: str, from_snapshot: int | None) -> SyncResult:
        usage = self._model_usage()
        for vector in self.plan.vectors:
            if self.truncated.get(vector.field):
                tokens = vector.embedder.text_tokens
                logger.warning(
                    "task '%s': %d input(s) of column '%s' for field '%s' were longer than the %s %s model %s "
                    "reads and were truncated; a chunk setting on the transform embeds whole texts",
                    self.task.name,
                    self.truncated[vector.field],
                    vector.column,
                    vector.field,
                    tokens.max_tokens,
                    tokens.unit,
                    vector.embedder.model_id,
                )
        # The run succeeded: share its vectors now, so the result can count them.
        exported = self.cache.export_shared()
        return SyncResult(
            task=self.task.name,
            mode=mode,
            index=index,
            physical_index=physical_index,
            from_snapshot=from_snapshot,
            snapshot_id=self.snapshot_id,
            reason=self.reason,
            rows_read=self.rows,
            documents_indexed=self.indexed,
            documents_deleted=self.deleted,
            dead_lettered=self.dead_letters.count,
            rejected_keys=self.rejected_keys,
            inputs_embedded=self.inputs_embedded,
            cache_hits=self.cache_hits,
            model_calls=usage[0] - self.usage_before[0],
            model_inputs=usage[1] - self.usage_before[1],
            model_tokens=usage[2] - self.usage_before[2],
            bulk_requests=self.bulk_requests,
            seconds=time.perf_counter() - self.started,
            index_wait_seconds=self.index_wait_seconds,
            dead_letter_path=str(self.dead_letters.path),
            preview=[_without_vectors(body, self.plan, shown=True) for body in self.preview],
            truncated=dict(self.truncated),
            cache_imported=self.cache.imported,
            cache_exported=exported,
            cache_problems=list(self.cache.problems),
        )


def _without_vectors(body: dict[str, Any] | None, plan: SyncPlan, *, shown: bool = False) -> dict[str, Any] | None:
    if body is None:
        return None
    vector_fields = {vector.field: vector.chunk is not None for vector in plan.vectors}
    return {
        key: (f"<{len(value)} {'chunks' if vector_fields[key] else 'floats'}>" if shown else None)
        if key in vector_fields
        else value
        for key, value in body.items()
        if shown or key not in vector_fields
    }


def _check_error_budget(task: Task, rows: int, failed: int) -> None:
    budget = task.errors
    if budget.max_errors is not None and failed > budget.max_errors:
        raise TooManyErrorsError(
            f"task '{task.name}': {failed} documents failed, more than errors.max_errors={budget.max_errors}; "
            "the cursor was not moved"
        )
    if rows and failed / rows > budget.max_error_rate:
        raise TooManyErrorsError(
            f"task '{task.name}': {failed}/{rows} documents failed, "
            f"above errors.max_error_rate={budget.max_error_rate}; "
            "the cursor was not moved"
        )


def _connect(connection: ElasticsearchConnection) -> Elasticsearch:
    client = build_client(connection)
    check_cluster(client, connection)
    return client


def _open_source(task_file: TaskFile, task: Task) -> PaimonTable:
    source = task_file.source_connection(task)
    return open_table(source.catalog_options(), task.source.database, task.source.table)


def bulk_limits(task: Task) -> BulkLimits:
    """The bulk writer's limits from the task's `bulk` settings."""
    return BulkLimits(
        max_documents=task.bulk.max_documents,
        max_bytes=task.bulk.max_bytes,
        max_in_flight=task.bulk.max_in_flight,
        max_retries=task.bulk.max_retries,
    )
