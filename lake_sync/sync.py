"""The pipeline: a Paimon snapshot → documents → vectors → the Elasticsearch index.

pin snapshot → stream Arrow batches → documents (`_id`, renames, JSON values) → embed
→ bulk writer → outcomes → counts + dead letters → cursor (only when all is accounted for)

This is the only module that knows both the source and the target. The CLI and the
Dagster assets call `run_full_sync` and nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from lake_sync.config import Task, TaskFile
from lake_sync.documents import FieldPlan, RowDocument, batch_documents
from lake_sync.embed import Embedder, build_embedder
from lake_sync.errors import ConfigError, TooManyErrorsError
from lake_sync.index.client import build_client, check_cluster, target_errors
from lake_sync.index.cursor import write_cursor
from lake_sync.index.dead_letters import DeadLetter, DeadLetterFile
from lake_sync.index.mapping import build_mappings
from lake_sync.index.target import count_documents, document_ids, ensure_index
from lake_sync.index.writer import BulkLimits, BulkWriter, IndexAction, IndexOutcome
from lake_sync.source.paimon import PaimonTable, Snapshot, open_table

PREVIEW_DOCUMENTS = 5

#: Called with (rows read so far, rows in the snapshot if known).
ProgressCallback = Callable[[int, int | None], None]


class SyncMode(StrEnum):
    FULL = "full"


class SyncStatus(StrEnum):
    COMPLETED = "completed"
    COMPLETED_WITH_DEAD_LETTERS = "completed_with_dead_letters"


@dataclass(frozen=True)
class VectorField:
    """One transform, resolved: read `column`, embed with `embedder`, write to `field`."""

    column: str
    field: str
    embedder: Embedder


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
    snapshot_id: int | None
    rows_read: int
    documents_indexed: int
    documents_deleted: int
    dead_lettered: int
    rejected_keys: int
    texts_embedded: int
    model_calls: int
    bulk_requests: int
    seconds: float
    dead_letter_path: str
    preview: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> SyncStatus:
        return SyncStatus.COMPLETED_WITH_DEAD_LETTERS if self.dead_lettered else SyncStatus.COMPLETED


def plan_sync(task: Task, table: PaimonTable) -> SyncPlan:
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
    vectors = [VectorField(t.field, t.to, build_embedder(t.model)) for t in task.transforms]
    mappings = build_mappings(
        {renames[name]: schema.field(name).type for name in fields},
        {vector.field: vector.embedder.dims for vector in vectors},
        keyword_fields={renames[name] for name in key_columns if name in renames},
    )
    return SyncPlan(FieldPlan(renames, list(key_columns)), vectors, mappings)


def latest_source_snapshot(task_file: TaskFile, task_name: str) -> Snapshot | None:
    """The newest snapshot of the task's table: one metadata lookup, no data read."""
    return _open_source(task_file, task_file.task(task_name)).latest_snapshot()


def count_target_documents(task_file: TaskFile, task_name: str) -> int:
    """Documents in the task's index right now."""
    task = task_file.task(task_name)
    connection = task_file.target_connection(task)
    client = build_client(connection)
    check_cluster(client, connection)
    return count_documents(client, task.target.index)


def run_full_sync(task_file: TaskFile, task_name: str, *, progress: ProgressCallback | None = None) -> SyncResult:
    """Make the task's index equal to the table's latest snapshot, then record that snapshot.

    The snapshot is pinned first, so commits landing during the run wait for the next one.
    Documents whose keys are gone from the snapshot are deleted. The cursor is written only
    when every row was indexed or dead-lettered within the task's error budget.
    """
    started = time.perf_counter()
    task = task_file.task(task_name)
    table = _open_source(task_file, task)
    plan = plan_sync(task, table)
    connection = task_file.target_connection(task)
    client = build_client(connection)
    check_cluster(client, connection)
    snapshot = table.latest_snapshot()
    index = task.target.index
    with target_errors(connection, f"preparing index '{index}'"):
        existed = ensure_index(client, index, plan.mappings)
    calls_before = sum(vector.embedder.calls for vector in plan.vectors)

    writer = BulkWriter(client, index, _limits(task))
    run = _RunState(progress=progress, total=snapshot.total_record_count if snapshot else None, track_ids=existed)
    dead_letter_path = Path(task_file.state_dir) / "dead_letters" / f"{task.name}.jsonl"
    doing = f"syncing task '{task.name}' into index '{index}' (the cursor was not moved)"
    with target_errors(connection, doing), DeadLetterFile(dead_letter_path) as dead_letters:
        snapshot_id = snapshot.id if snapshot else None

        def dead_letter(document: RowDocument | IndexOutcome, stage: str, status: int, reason: str) -> None:
            body = document.body if isinstance(document, RowDocument) else document.action.body
            document_id = document.id if isinstance(document, RowDocument) else document.action.id
            dead_letters.add(
                DeadLetter(task.name, snapshot_id, document_id, stage, status, reason, _without_vectors(body, plan))
            )

        if snapshot is not None:
            actions = _index_actions(table, snapshot.id, task, plan, run, dead_letter)
            run.consume(writer.write(actions), dead_letter)
            if existed:
                stale = (IndexAction("delete", i) for i in document_ids(client, index) if i not in run.seen_ids)
                run.consume(writer.write(stale), dead_letter)
        client.indices.refresh(index=index)
        _check_error_budget(task, run.rows, dead_letters.count)
        if snapshot is not None:
            write_cursor(client, index, task=task.name, table=table.identifier, snapshot_id=snapshot.id)
        return SyncResult(
            task=task.name,
            mode=SyncMode.FULL,
            index=index,
            snapshot_id=snapshot_id,
            rows_read=run.rows,
            documents_indexed=run.indexed,
            documents_deleted=run.deleted,
            dead_lettered=dead_letters.count,
            rejected_keys=run.rejected_keys,
            texts_embedded=run.texts_embedded,
            model_calls=sum(vector.embedder.calls for vector in plan.vectors) - calls_before,
            bulk_requests=writer.requests,
            seconds=time.perf_counter() - started,
            dead_letter_path=str(dead_letter_path),
            preview=[_without_vectors(body, plan, shown=True) for body in run.preview],
        )


DeadLetterSink = Callable[[Any, str, int, str], None]


@dataclass
class _RunState:
    """Running counts of one sync; `seen_ids` only when stale documents must be found afterwards."""

    progress: ProgressCallback | None
    total: int | None
    track_ids: bool
    rows: int = 0
    indexed: int = 0
    deleted: int = 0
    rejected_keys: int = 0
    texts_embedded: int = 0
    seen_ids: set[str] = field(default_factory=set)
    preview: list[dict[str, Any]] = field(default_factory=list)

    def consume(self, outcomes: Iterator[IndexOutcome], dead_letter: DeadLetterSink) -> None:
        for outcome in outcomes:
            if not outcome.ok:
                dead_letter(outcome, "index", outcome.status, outcome.reason or "rejected")
            elif outcome.action.op == "index":
                self.indexed += 1
            else:
                self.deleted += 1


def _index_actions(
    table: PaimonTable, snapshot_id: int, task: Task, plan: SyncPlan, run: _RunState, dead_letter: DeadLetterSink
) -> Iterator[IndexAction]:
    for batch in table.read_snapshot(snapshot_id, columns=plan.columns, batch_rows=task.read_batch_rows):
        documents = list(batch_documents(batch, plan.documents))
        for vector in plan.vectors:
            run.texts_embedded += _attach_vectors(documents, batch.column(vector.column).to_pylist(), vector)
        for document in documents:
            if document.id is None:
                run.rejected_keys += 1
                dead_letter(document, "key", 0, document.rejected or "invalid primary key")
                continue
            if run.track_ids:
                run.seen_ids.add(document.id)
            if len(run.preview) < PREVIEW_DOCUMENTS:
                run.preview.append({"_id": document.id, **document.body})
            yield IndexAction("index", document.id, document.body)
        run.rows += batch.num_rows
        if run.progress is not None:
            run.progress(run.rows, run.total)


def _attach_vectors(documents: list[RowDocument], texts: list[Any], vector: VectorField) -> int:
    """Embed the non-empty texts of documents that will be written; returns how many were embedded."""
    rows = [row for row, document in enumerate(documents) if document.id is not None and texts[row]]
    if not rows:
        return 0
    embedded: np.ndarray = vector.embedder.embed_texts([texts[row] for row in rows])
    for row, values in zip(rows, embedded, strict=True):
        documents[row].body[vector.field] = values
    return len(rows)


def _without_vectors(body: dict[str, Any] | None, plan: SyncPlan, *, shown: bool = False) -> dict[str, Any] | None:
    if body is None:
        return None
    vector_fields = {vector.field for vector in plan.vectors}
    return {
        key: (f"<{len(value)} floats>" if shown else None) if key in vector_fields else value
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


def _open_source(task_file: TaskFile, task: Task) -> PaimonTable:
    source = task_file.source_connection(task)
    return open_table(source.catalog_options(), task.source.database, task.source.table)


def _limits(task: Task) -> BulkLimits:
    return BulkLimits(
        max_documents=task.bulk.max_documents,
        max_bytes=task.bulk.max_bytes,
        max_in_flight=task.bulk.max_in_flight,
        max_retries=task.bulk.max_retries,
    )
