"""Batch predict: a pinned Paimon snapshot → OpenAI Batch API embeddings → staged files → the task's index.

snapshot → request + documents JSONL (parts) → files.create → batches.create → poll → output/error files
         → manifest.json → ML Commons ingest request per part (output ⋈ input ⋈ documents on custom_id) → index

`run_predict` stages, submits and waits; `ingest_predictions` consumes its manifest. Both are safe to
re-run: predict resumes an unfinished job from its manifest (no second upload, no second batch,
failed batches resubmitted), and ingest writes by document `_id`. Every file stays in the staging
dir for audit. Only text transforms on `openai` connections run this way; the online sync
embeds everything else.

An ingest leaves the index equal to the predicted snapshot S, as an in-place full sync would (documents
whose ids S lacks are deleted), and then records S as the sync cursor, so the next incremental sync
starts after S. Like the sync, it does so only within the task's error budget. A sync that got past S
while the batches ran has its cursor set back to S: the ingest rewrote its documents with S's values,
and the next incremental sync applies the later changes again (idempotent, last event per key wins).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import openai
import orjson
from elasticsearch import Elasticsearch

from lake_sync.batch.ingest import ErrorBudget, IngestProgress, IngestState, run_ingest
from lake_sync.batch.manifest import (
    MANIFEST_FILE,
    DocumentsFile,
    FileStatus,
    PredictManifest,
    RequestFile,
    load_manifest,
)
from lake_sync.batch.request import ID_FIELD, IngestRequest, MissingIds, SourceType, parse_request
from lake_sync.config import OpenAIConnection, Task, TaskFile, Transform
from lake_sync.documents import batch_documents
from lake_sync.embed.openai_compatible import NO_API_KEY
from lake_sync.errors import ConfigError, EmbedError, LakeSyncError, SourceError, TooManyErrorsError
from lake_sync.index.aliases import next_physical_index, resolve_target, swap_alias
from lake_sync.index.client import build_client, check_cluster, target_errors
from lake_sync.index.cursor import read_cursor, write_cursor
from lake_sync.index.dead_letters import DeadLetter, DeadLetterFile
from lake_sync.index.target import document_ids, ensure_index
from lake_sync.index.writer import BulkWriter, IndexAction
from lake_sync.source.paimon import PaimonTable, open_table
from lake_sync.sync import ProgressCallback, SyncPlan, bulk_limits, plan_sync

#: OpenAI's limits on one batch input file.
DEFAULT_MAX_REQUESTS_PER_FILE = 50_000
DEFAULT_MAX_FILE_BYTES = 200 * 1024 * 1024
# Batches take minutes to hours: start polling fast for small jobs, back off to a minute.
DEFAULT_FIRST_POLL_SECONDS = 1.0
DEFAULT_MAX_POLL_SECONDS = 60.0
POLL_BACKOFF = 2.0
# Batches scanned for one lost after a crash between batches.create and the manifest write.
DEFAULT_BATCH_LOOKUP = 1000
BATCH_ENDPOINT = "/v1/embeddings"
COMPLETION_WINDOW = "24h"
STAGING_DIR = "batch"

#: Called with one human-readable line per step (upload, batch created, status change, download).
LogCallback = Callable[[str], None]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class BatchPredictError(EmbedError):
    """Some batches ended failed, expired or cancelled; the manifest says which, a re-run resubmits them."""

    def __init__(self, message: str, manifest: PredictManifest) -> None:
        super().__init__(message)
        self.manifest = manifest


class BatchIngestError(LakeSyncError):
    """Ingesting a part of a finished predict job failed; re-running the ingest rewrites the same documents."""


@dataclass(frozen=True)
class IngestSummary:
    """What `ingest_predictions` wrote, for the CLI, the Dagster metadata and the tests."""

    task: str
    index: str
    snapshot_id: int
    documents: int
    documents_written: int
    #: Documents and requests that did not make it, each one a record in `dead_letter_path`.
    dead_lettered: int
    failed_requests: int
    #: Documents written without some vector: an empty text, or a request the model failed.
    partial_documents: int
    parts: int
    seconds: float
    dead_letter_path: str
    #: Documents deleted because snapshot `snapshot_id` no longer has their ids.
    documents_deleted: int = 0
    #: Whether the index's sync cursor now names `snapshot_id` (False: the job ended before).
    cursor_written: bool = False

    @property
    def success_rate(self) -> float:
        """Documents written per document staged, in percent."""
        return 100.0 * self.documents_written / self.documents if self.documents else 100.0


@dataclass(frozen=True)
class BatchLimits:
    """How big one uploaded request file may get (OpenAI's limits by default; small ones in tests)."""

    max_requests: int = DEFAULT_MAX_REQUESTS_PER_FILE
    max_bytes: int = DEFAULT_MAX_FILE_BYTES


@dataclass(frozen=True)
class PollPolicy:
    """Capped exponential backoff between two status checks of the job's batches."""

    first_seconds: float = DEFAULT_FIRST_POLL_SECONDS
    max_seconds: float = DEFAULT_MAX_POLL_SECONDS


@dataclass(frozen=True)
class _BatchTransform:
    """A transform the Batch API runs: read `column`, send it to `model`, fill `vector_field`."""

    column: str
    vector_field: str
    text_field: str | None
    model: str
    connection: OpenAIConnection

    @property
    def model_name(self) -> str:
        return self.model.partition(":")[2]


def offline_transforms(task: Task, task_file: TaskFile) -> list[Transform]:
    """The task's transforms, if all of them are text transforms on `openai` connections; ConfigError otherwise."""
    chunked = [t.to for t in task.transforms if t.chunk is not None]
    if chunked:
        raise ConfigError(
            f"task '{task.name}': transforms: batch predict writes one vector per document, and {chunked} "
            "are chunked; sync this task with `lake-sync sync` instead"
        )
    others = [t.model for t in task.transforms if not _runs_offline(t, task_file)]
    if others or not task.transforms:
        reason = f"transform model(s) {others} are not" if others else "the task has no transforms; they must be"
        raise ConfigError(
            f"task '{task.name}': batch predict runs text transforms on openai connections only, and {reason} "
            "(`<openai connection>:<model>`); sync this task with `lake-sync sync` instead"
        )
    return list(task.transforms)


def supports_offline_inference(task: Task, task_file: TaskFile) -> bool:
    """Whether `run_predict` can embed every transform of the task."""
    return bool(task.transforms) and all(_runs_offline(t, task_file) for t in task.transforms)


def default_staging_dir(task_file: TaskFile, task_name: str) -> Path:
    return Path(task_file.state_dir) / STAGING_DIR / task_name


def run_predict(
    task_file: TaskFile,
    task_name: str,
    *,
    staging: Path | None = None,
    limits: BatchLimits = BatchLimits(),
    poll: PollPolicy = PollPolicy(),
    progress: ProgressCallback | None = None,
    log: LogCallback | None = None,
) -> PredictManifest:
    """Embed the latest snapshot's texts with the OpenAI Batch API and stage the answers for ingest.

    An unfinished job in `staging` (default `<state_dir>/batch/<task>`) is resumed, whatever the
    latest snapshot is now: its batches are already paid for. A finished job of the latest
    snapshot is returned as it is. `progress` gets (requests answered, requests in the job) at
    every poll, the last time with all answered. Raises BatchPredictError, after saving the
    manifest, if a batch did not complete.
    """
    task = task_file.task(task_name)
    offline = offline_transforms(task, task_file)
    table = _open_source(task_file, task)
    plan = plan_sync(task, table, task_file)
    transforms = [
        _BatchTransform(t.field, t.to, plan.documents.renames.get(t.field), t.model, _connection(task_file, t))
        for t in offline
    ]
    fingerprint = _fingerprint(plan, transforms, limits)
    root = staging or default_staging_dir(task_file, task.name)
    notify = log or (lambda message: None)
    manifest = _resumable_job(root, fingerprint, table)
    if manifest is None:
        snapshot = table.latest_snapshot()
        if snapshot is None:
            raise SourceError(f"task '{task.name}': table {table.identifier} has no snapshot yet; nothing to predict")
        directory = root / f"snapshot-{snapshot.id}-{fingerprint[:12]}"
        dead_letter_path = Path(task_file.state_dir) / "dead_letters" / f"{task.name}.jsonl"
        with DeadLetterFile(dead_letter_path) as dead_letters:
            manifest = _stage(task, table, plan, transforms, snapshot.id, directory, limits, dead_letters)
        manifest = replace(manifest, fingerprint=fingerprint, dead_letter_path=str(dead_letter_path))
        manifest.save()
        notify(
            f"staged snapshot {snapshot.id}: {manifest.document_count:,} documents, {manifest.requests:,} requests "
            f"in {len(manifest.files)} file(s) under {directory}"
        )
    elif manifest.is_complete:
        notify(f"snapshot {manifest.snapshot_id} was already predicted ({manifest.path}); nothing to submit")
        if progress is not None:
            progress(manifest.completed_requests + manifest.failed_requests, manifest.requests)
        return manifest
    else:
        notify(f"resuming the job of snapshot {manifest.snapshot_id} from {manifest.path}")
    clients = {t.model.partition(":")[0]: _client(t.connection) for t in transforms}
    try:
        manifest = _submit(manifest, clients, notify)
        manifest = _wait(manifest, clients, poll, progress, notify)
    finally:
        for client in clients.values():
            client.close()
    if manifest.unsuccessful:
        raise BatchPredictError(_failure_message(manifest), manifest)
    return manifest


def _runs_offline(transform: Transform, task_file: TaskFile) -> bool:
    return (
        transform.embed == "text"
        and transform.chunk is None
        and isinstance(task_file.model_connection(transform.model), OpenAIConnection)
    )


def _connection(task_file: TaskFile, transform: Transform) -> OpenAIConnection:
    connection = task_file.model_connection(transform.model)
    assert isinstance(connection, OpenAIConnection)  # offline_transforms checked it
    return connection


def _open_source(task_file: TaskFile, task: Task) -> PaimonTable:
    source = task_file.source_connection(task)
    return open_table(source.catalog_options(), task.source.database, task.source.table)


def _client(connection: OpenAIConnection) -> openai.OpenAI:
    api_key = connection.api_key.get_secret_value() if connection.api_key else None
    # Unlike embedding calls (retried by RemoteCaller), uploads and status checks are rare: the client's own retries do.
    return openai.OpenAI(
        base_url=connection.base_url,
        api_key=api_key or NO_API_KEY,
        max_retries=connection.max_retries,
        timeout=connection.timeout,
    )


def _fingerprint(plan: SyncPlan, transforms: list[_BatchTransform], limits: BatchLimits) -> str:
    """What decides the staged files' content: a job staged under other settings is not resumed."""
    shape = {
        "renames": plan.documents.renames,
        "keys": plan.documents.key_columns,
        "transforms": [(t.column, t.vector_field, t.model, t.connection.base_url) for t in transforms],
        "limits": (limits.max_requests, limits.max_bytes),
    }
    return hashlib.sha256(orjson.dumps(shape, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _resumable_job(root: Path, fingerprint: str, table: PaimonTable) -> PredictManifest | None:
    """The newest unfinished job staged with these settings, else the finished job of the latest snapshot."""
    jobs = [load_manifest(path) for path in sorted(root.glob(f"snapshot-*/{MANIFEST_FILE}"))]
    jobs = [job for job in jobs if job.fingerprint == fingerprint]
    unfinished = [job for job in jobs if not job.is_complete]
    if unfinished:
        return max(unfinished, key=lambda job: job.snapshot_id)
    latest = table.latest_snapshot()
    return next((job for job in jobs if latest is not None and job.snapshot_id == latest.id), None)


# --- staging --------------------------------------------------------------------------------


def _stage(
    task: Task,
    table: PaimonTable,
    plan: SyncPlan,
    transforms: list[_BatchTransform],
    snapshot_id: int,
    directory: Path,
    limits: BatchLimits,
    dead_letters: DeadLetterFile,
) -> PredictManifest:
    """Write the request and documents files of every part; rows with unusable keys become dead letters."""
    # A directory without a manifest is what a crash during staging left: start it over.
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    rows = rejected = empty = 0
    with _PartWriter(directory, transforms, limits) as writer:
        batches = table.read_snapshot(snapshot_id, columns=plan.columns, batch_rows=task.read_batch_rows)
        for batch in batches:
            texts = [batch.column(t.column).to_pylist() for t in transforms]
            for row, document in enumerate(batch_documents(batch, plan.documents)):
                if document.id is None:
                    rejected += 1
                    reason = document.rejected or "invalid primary key"
                    dead_letters.add(DeadLetter(task.name, snapshot_id, None, "key", 0, reason, document.body))
                    continue
                lines: list[bytes | None] = []
                for number, transform in enumerate(transforms):
                    text = texts[number][row]
                    if not text:
                        empty += 1
                        lines.append(None)
                        continue
                    line = _request_line(document.id, transform.model_name, text)
                    if len(line) > limits.max_bytes:
                        reason = f"{transform.column}: the request is {len(line):,} bytes, above {limits.max_bytes:,}"
                        dead_letters.add(DeadLetter(task.name, snapshot_id, document.id, "embed", 0, reason, None))
                    lines.append(line if len(line) <= limits.max_bytes else None)
                writer.add(_documents_line(document.id, document.body), lines)
            rows += batch.num_rows
    return PredictManifest(
        task=task.name,
        index=task.target.index,
        table=table.identifier,
        snapshot_id=snapshot_id,
        fingerprint="",
        directory=str(directory),
        rows_read=rows,
        rejected_keys=rejected,
        empty_texts=empty,
        documents=tuple(writer.documents),
        files=tuple(writer.files),
    )


def _request_line(custom_id: str, model: str, text: str) -> bytes:
    request = {"custom_id": custom_id, "method": "POST", "url": BATCH_ENDPOINT, "body": {"model": model, "input": text}}
    return orjson.dumps(request) + b"\n"


def _documents_line(custom_id: str, body: dict[str, Any]) -> bytes:
    # Fields sit under "document", so a column called custom_id cannot clash with the join key.
    return orjson.dumps({"custom_id": custom_id, "document": body}) + b"\n"


class _PartWriter:
    """Streams lines into part files; a new part starts when any request file would pass the limits.

    A part is one documents file plus one request file per transform (if it has requests), so
    each part joins on its own and every document lands in exactly one part.
    """

    def __init__(self, directory: Path, transforms: list[_BatchTransform], limits: BatchLimits) -> None:
        self.directory = directory
        self.transforms = transforms
        self.limits = limits
        self.documents: list[DocumentsFile] = []
        self.files: list[RequestFile] = []
        self._files = ExitStack()
        self._part = 0
        self._start()

    def add(self, document: bytes, lines: list[bytes | None]) -> None:
        if self._documents_count and not self._fits(lines):
            self._finish()
            self._start()
        self._documents.write(document)
        self._documents_count += 1
        for number, line in enumerate(lines):
            if line is None:
                continue
            if self._handles[number] is None:
                self._handles[number] = self._files.enter_context(self._request_path(number).open("wb"))
            self._handles[number].write(line)  # type: ignore[union-attr]
            self._counts[number] += 1
            self._bytes[number] += len(line)

    def _fits(self, lines: list[bytes | None]) -> bool:
        return all(
            line is None
            or (
                self._counts[number] < self.limits.max_requests
                and self._bytes[number] + len(line) <= self.limits.max_bytes
            )
            for number, line in enumerate(lines)
        )

    def _start(self) -> None:
        self._part += 1
        self._documents_path = self.directory / f"part-{self._part:05d}.documents.jsonl"
        self._documents = self._files.enter_context(self._documents_path.open("wb"))
        self._documents_count = 0
        self._handles: list[IO[bytes] | None] = [None] * len(self.transforms)
        self._counts = [0] * len(self.transforms)
        self._bytes = [0] * len(self.transforms)

    def _finish(self) -> None:
        self._files.close()
        if not self._documents_count:
            self._documents_path.unlink()
            return
        self.documents.append(DocumentsFile(self._part, str(self._documents_path), self._documents_count))
        for number, transform in enumerate(self.transforms):
            if self._counts[number]:
                self.files.append(
                    RequestFile(
                        part=self._part,
                        vector_field=transform.vector_field,
                        text_field=transform.text_field,
                        model=transform.model,
                        input_path=str(self._request_path(number)),
                        requests=self._counts[number],
                        bytes=self._bytes[number],
                    )
                )

    def _request_path(self, transform: int) -> Path:
        return self.directory / f"part-{self._part:05d}.t{transform}.requests.jsonl"

    def __enter__(self) -> _PartWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._finish()


# --- submitting and waiting -----------------------------------------------------------------


def _submit(manifest: PredictManifest, clients: dict[str, openai.OpenAI], log: LogCallback) -> PredictManifest:
    """Upload and create a batch for every file that has none; resubmit the ones that did not complete."""
    for number in range(len(manifest.files)):
        file = manifest.files[number]
        if file.status.is_unsuccessful:
            log(f"resubmitting {Path(file.input_path).name}: batch {file.batch_id} ended {file.status.value}")
            manifest = manifest.with_file(
                number,
                status=FileStatus.PREPARED,
                input_file_id=None,
                batch_id=None,
                completed=0,
                failed=0,
                output_path=None,
                error_path=None,
                errors=None,
            )
        file = manifest.files[number]
        client = clients[file.connection]
        # Only a file uploaded by an earlier run may already have a batch (a crash before the manifest write).
        found = _existing_batch(client, file.input_file_id) if file.status is FileStatus.UPLOADED else None
        if file.status is FileStatus.PREPARED:
            path = Path(file.input_path)
            with path.open("rb") as content:
                uploaded = client.files.create(file=(path.name, content), purpose="batch")
            manifest = manifest.with_file(number, status=FileStatus.UPLOADED, input_file_id=uploaded.id)
            manifest.save()
            log(f"uploaded {path.name} ({file.requests:,} requests) as {uploaded.id}")
        file = manifest.files[number]
        if file.status is FileStatus.UPLOADED:
            assert file.input_file_id is not None
            batch = found or client.batches.create(
                input_file_id=file.input_file_id,
                endpoint=BATCH_ENDPOINT,
                completion_window=COMPLETION_WINDOW,
                metadata={"lake_sync_task": manifest.task, "lake_sync_file": Path(file.input_path).name},
            )
            if found is None:
                manifest = replace(manifest, batches_created=manifest.batches_created + 1)
            manifest = manifest.with_file(number, batch_id=batch.id, status=FileStatus(batch.status))
            manifest.save()
            log(f"batch {batch.id} {'found' if found else 'created'} for {Path(file.input_path).name}")
    return manifest


def _existing_batch(client: openai.OpenAI, input_file_id: str | None) -> Any:
    """A batch already created from `input_file_id`, among the most recent ones; None if there is none."""
    for seen, batch in enumerate(client.batches.list(limit=100)):
        if seen >= DEFAULT_BATCH_LOOKUP:
            break
        if batch.input_file_id == input_file_id:
            return batch
    return None


def _wait(
    manifest: PredictManifest,
    clients: dict[str, openai.OpenAI],
    poll: PollPolicy,
    progress: ProgressCallback | None,
    log: LogCallback,
) -> PredictManifest:
    """Poll every unfinished batch until all are terminal; download each one's output and error files."""
    delay = poll.first_seconds
    while True:
        for number, file in enumerate(manifest.files):
            if file.status.is_terminal:
                continue
            client = clients[file.connection]
            batch = client.batches.retrieve(file.batch_id or "")
            counts = batch.request_counts
            changes: dict[str, Any] = {
                "status": FileStatus(batch.status),
                "completed": counts.completed if counts else 0,
                "failed": counts.failed if counts else 0,
            }
            if changes["status"].is_terminal:
                changes.update(_download(client, batch, Path(file.input_path)))
                log(f"batch {batch.id} {batch.status}: {changes['completed']:,} answered, {changes['failed']:,} failed")
            if any(getattr(file, key) != value for key, value in changes.items()):
                manifest = manifest.with_file(number, **changes)
                manifest.save()
        if progress is not None:
            progress(manifest.completed_requests + manifest.failed_requests, manifest.requests)
        if all(file.status.is_terminal for file in manifest.files):
            return manifest
        time.sleep(delay)
        delay = min(delay * POLL_BACKOFF, poll.max_seconds)


def _download(client: openai.OpenAI, batch: Any, input_path: Path) -> dict[str, Any]:
    """Keep the batch's output and error files beside its input (also for failed batches: partial answers)."""
    stem = input_path.name.removesuffix(".requests.jsonl")
    paths: dict[str, Any] = {"output_path": None, "error_path": None, "errors": _batch_errors(batch)}
    for key, file_id, suffix in (
        ("output_path", batch.output_file_id, "output"),
        ("error_path", batch.error_file_id, "errors"),
    ):
        if file_id:
            path = input_path.with_name(f"{stem}.{suffix}.jsonl")
            partial = path.with_suffix(".partial")
            with client.files.with_streaming_response.content(file_id) as response:
                response.stream_to_file(partial)
            partial.replace(path)
            paths[key] = str(path)
    return paths


def _batch_errors(batch: Any) -> str | None:
    errors = getattr(batch.errors, "data", None) or []
    messages = [f"{e.code}: {e.message}" + (f" (line {e.line})" if e.line else "") for e in errors]
    return "; ".join(messages) or None


def _failure_message(manifest: PredictManifest) -> str:
    failed = manifest.unsuccessful
    details = "; ".join(
        f"batch {file.batch_id} ({Path(file.input_path).name}, {file.requests:,} requests) {file.status.value}"
        + (f": {file.errors}" if file.errors else "")
        for file in failed
    )
    return (
        f"task '{manifest.task}': {len(failed)} of {len(manifest.files)} batch(es) of snapshot {manifest.snapshot_id} "
        f"did not complete: {details}. The completed ones are kept in {manifest.directory}; run predict again to "
        "resubmit the others (delete that directory to start over from the latest snapshot)"
    )


# --- ingest ---------------------------------------------------------------------------------


def ingest_predictions(
    task_file: TaskFile,
    manifest: PredictManifest | str | os.PathLike[str],
    *,
    progress: ProgressCallback | None = None,
    log: LogCallback | None = None,
) -> IngestSummary:
    """Write a finished predict job into its task's index: one batch-ingestion request per part.

    Each part joins its output files (vectors), request files (texts) and documents file on
    `custom_id` = `_id`. Documents are written whole, by `_id`, so a re-run rewrites the same
    documents. A missing index is created as the sync would (`<index>-1` behind the alias, the
    task's mapping); an alias is written through. Requests the model failed are dead letters
    (stage `embed`), and their documents are written without that vector. Then documents the
    snapshot lacks are deleted and the snapshot becomes the sync cursor (see the module docstring).
    Raises TooManyErrorsError, with the cursor unmoved, past the task's error budget.
    """
    started = time.perf_counter()
    manifest = manifest if isinstance(manifest, PredictManifest) else load_manifest(manifest)
    if not manifest.is_complete:
        raise BatchPredictError(
            _failure_message(manifest) if manifest.unsuccessful else _unfinished(manifest), manifest
        )
    task = task_file.task(manifest.task)
    plan = plan_sync(task, _open_source(task_file, task), task_file)
    connection = task_file.target_connection(task)
    notify = log or (lambda message: None)
    client = build_client(connection)
    check_cluster(client, connection)
    doing = f"ingesting snapshot {manifest.snapshot_id} of task '{task.name}' into '{task.target.index}'"
    budget = ErrorBudget(task.errors.max_errors, task.errors.max_error_rate, f"task '{task.name}'", "errors")
    written = failed = embed_failures = partial = deleted = 0
    cursor_written = False
    dead_letter_path = Path(task_file.state_dir) / "dead_letters" / f"{task.name}.jsonl"
    with target_errors(connection, doing), DeadLetterFile(dead_letter_path) as dead_letters:
        index = _prepare_index(client, task.target.index, plan.mappings)
        for file in manifest.files:
            for line in _lines(file.error_path):
                dead_letters.add(_embed_dead_letter(manifest, file, line))
                embed_failures += 1
        for documents in manifest.documents:
            request = _ingest_request(task, manifest, documents, list(plan.documents.renames.values()))

            def report(state: IngestProgress, done: int = written) -> None:
                if progress is not None:
                    progress(done + state.documents_written, manifest.document_count)

            # Rows without a key and failed requests count too, as in the sync; the rate is the whole job's, below.
            so_far = replace(
                budget, max_error_rate=None, failed_before=manifest.rejected_keys + embed_failures + failed
            )
            result = run_ingest(request, client=client, dead_letters=dead_letters, progress=report, budget=so_far)
            if result.over_budget:
                raise TooManyErrorsError(f"{result.error}; the cursor was not moved")
            if result.state is IngestState.FAILED or result.state is IngestState.CANCELLED:
                raise BatchIngestError(
                    f"task '{task.name}': ingesting part {documents.part} of {manifest.directory} ended "
                    f"{result.state.value}: {result.error or 'cancelled'}; re-run the ingest (it rewrites by _id)"
                )
            written += result.documents_written
            failed += result.failed
            partial += result.orphans.count
            notify(f"part {documents.part}: {result.documents_written:,} documents written, {result.failed:,} failed")
        deleted, failed_deletes = _delete_stale(client, index, task, manifest, dead_letters)
        failed += failed_deletes
        dead_lettered = manifest.rejected_keys + embed_failures + failed
        try:
            budget.check_errors(dead_lettered)
            budget.check_rate(manifest.rows_read, dead_lettered)
        except TooManyErrorsError as error:
            raise TooManyErrorsError(f"{error}; the cursor was not moved") from None
        _record_cursor(client, index, manifest, notify)
        cursor_written = True
    return IngestSummary(
        task=task.name,
        index=task.target.index,
        snapshot_id=manifest.snapshot_id,
        documents=manifest.document_count,
        documents_written=written,
        dead_lettered=failed + embed_failures,
        failed_requests=embed_failures,
        partial_documents=partial,
        parts=len(manifest.documents),
        seconds=time.perf_counter() - started,
        dead_letter_path=str(dead_letter_path),
        documents_deleted=deleted,
        cursor_written=cursor_written,
    )


def _delete_stale(
    client: Elasticsearch, index: str, task: Task, manifest: PredictManifest, dead_letters: DeadLetterFile
) -> tuple[int, int]:
    """Delete the documents of `index` whose ids the snapshot lacks; (deleted, dead-lettered)."""
    # The documents files hold every id of the snapshot with a usable key, written or not.
    ids = {line["custom_id"] for documents in manifest.documents for line in _lines(documents.path)}
    stale = (IndexAction("delete", found) for found in document_ids(client, index) if found not in ids)
    writer = BulkWriter(client, index, bulk_limits(task))
    deleted = failed = 0
    for outcome in writer.write(stale):
        if outcome.ok:
            deleted += 1
            continue
        failed += 1
        reason = f"deleting a document snapshot {manifest.snapshot_id} lacks: {outcome.reason or 'rejected'}"
        dead_letters.add(
            DeadLetter(manifest.task, manifest.snapshot_id, outcome.action.id, "index", outcome.status, reason, None)
        )
    return deleted, failed


def _record_cursor(client: Elasticsearch, index: str, manifest: PredictManifest, notify: LogCallback) -> None:
    """Record the job's snapshot as the sync cursor of `index`: the index now holds exactly that snapshot."""
    current = read_cursor(client, index)
    if current is not None and current.snapshot_id > manifest.snapshot_id:
        notify(
            f"the cursor of '{index}' was at snapshot {current.snapshot_id}, past {manifest.snapshot_id}: set back, "
            f"so the next sync applies the changes after snapshot {manifest.snapshot_id} again"
        )
    write_cursor(client, index, task=manifest.task, table=manifest.table, snapshot_id=manifest.snapshot_id)
    notify(f"cursor of '{index}' set to snapshot {manifest.snapshot_id}: the next sync starts after it")


def _unfinished(manifest: PredictManifest) -> str:
    return (
        f"task '{manifest.task}': the predict job in {manifest.directory} is not finished "
        f"({manifest.completed_requests + manifest.failed_requests:,} of {manifest.requests:,} requests answered); "
        "run predict to completion first"
    )


def _prepare_index(client: Elasticsearch, name: str, mappings: dict[str, Any]) -> str:
    """Make `name` writable with the task's mapping: `<name>-1` behind a new alias, or the existing target.

    Returns the physical index behind `name`, which holds the cursor, as for the sync.
    """
    target = resolve_target(client, name)
    if target.write_index is None:
        index = next_physical_index(client, name)
        ensure_index(client, index, mappings)
        swap_alias(client, name, index, None)
        return index
    ensure_index(client, target.write_index, mappings)
    return target.write_index


def _ingest_request(
    task: Task, manifest: PredictManifest, documents: DocumentsFile, document_fields: list[str]
) -> IngestRequest:
    """The ML Commons request of one part: [output, input] per transform, then the documents, joined on custom_id."""
    sources: list[str] = []
    field_map: dict[str, str | list[str]] = {}
    for file in manifest.files:
        if file.part != documents.part:
            continue
        # A batch whose every request failed has no output file: its documents get no vector.
        if file.output_path is not None:
            field_map[file.vector_field] = f"source[{len(sources)}].$.response.body.data[0].embedding"
            sources.append(file.output_path)
        if file.text_field is not None:
            field_map[file.text_field] = f"source[{len(sources)}].$.body.input"
        sources.append(file.input_path)
    documents_source = len(sources)
    sources.append(documents.path)
    filled = set(field_map)
    for name in document_fields:
        if name not in filled:
            field_map[name] = f"source[{documents_source}].$.document{_json_key(name)}"
    field_map[ID_FIELD] = [f"source[{position}].$.custom_id" for position in range(len(sources))]
    bulk = task.bulk
    return parse_request(
        {
            "index_name": task.target.index,
            "field_map": field_map,
            "data_source": {"type": SourceType.FILE.value, "source": sources},
            "options": {
                "bulk_size": bulk.max_documents,
                "bulk_bytes": bulk.max_bytes,
                "max_in_flight": bulk.max_in_flight,
                "max_retries": bulk.max_retries,
                # Documents with an empty text, or whose request failed, are in fewer sources: write what they have.
                "missing_ids": MissingIds.PARTIAL.value,
            },
        },
        source=f"the ingest request of part {documents.part}",
    )


def _json_key(name: str) -> str:
    """`name` as a JSONPath step: `.name`, or quoted when it is not a plain identifier."""
    if _IDENTIFIER.match(name):
        return f".{name}"
    quote = '"' if "'" in name else "'"
    return f".{quote}{name}{quote}"


def _lines(path: str | None) -> Iterator[dict[str, Any]]:
    if path is None:
        return
    with open(path, "rb") as lines:
        for line in lines:
            if line.strip():
                yield orjson.loads(line)


def _embed_dead_letter(manifest: PredictManifest, file: RequestFile, line: dict[str, Any]) -> DeadLetter:
    """A request the batch answered with an error: OpenAI puts them in the batch's error file."""
    response = line.get("response") or {}
    error = line.get("error") or (response.get("body") or {}).get("error") or {}
    reason = f"{file.model} → {file.vector_field}: {error.get('code') or 'error'}: {error.get('message') or error}"
    status = int(response.get("status_code") or 0)
    return DeadLetter(manifest.task, manifest.snapshot_id, line.get("custom_id"), "embed", status, reason, None)
