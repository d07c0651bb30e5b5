"""Batch ingest: the lines of batch-prediction output files → documents → the index, each failure a dead letter.

one source:  lines → JSON → field_map / ingest_fields → IndexAction → BulkWriter → IndexOutcome*
sources:     lines → JSON → fields per source → hash(_id) partitions (memory, then disk) → join per partition → same

States: CREATED → RUNNING → COMPLETED | COMPLETED_WITH_ERROR (some dead letters) | FAILED | CANCELLED.

Decisions, where ML Commons leaves them open or gets them wrong:
- Joins are real joins: each document is written once and complete (ML Commons upserts file after file,
  so documents sit half-built and orphans become partial documents). Every source is first
  partitioned by hash(_id); above `options.join_memory_bytes` the partitions spill to temporary
  files, and partitions are then joined one at a time (a partition still too large is split again),
  so memory stays bounded by that setting, not by the files.
- An id that some sources have and others lack is an orphan: counted, sampled (up to 10) and handled
  by `options.missing_ids`: a dead letter (default), skipped, or written partially.
- An id repeated within one source: the last line wins (as re-sent batch lines would), the repeat is
  counted and sampled in `IngestResult.duplicates`, and nothing is dead-lettered: nothing was lost.
  Single-source runs find repeats with a set of 64-bit id hashes (about 60 bytes per document).
- Without an `_id` path, ids are derived from the source location and line number (ML Commons lets the
  cluster pick random ids), so re-running the same ingest overwrites instead of duplicating.
- A missing index is created with a `dense_vector` (cosine) mapping for each field whose value in the
  first document is a list of numbers with a fraction, dims taken from that value; other fields are
  mapped dynamically. Vectors are checked against the index's dense_vector dims before sending.
- Arrays (vectors) are copied as the model wrote them, the array's text in the line where that text is
  unambiguous, into the bulk body (one source) or the join's records, instead of re-serialised floats:
  exact, and cheaper.
- Per-document success rate: documents written / (written + dead-lettered), in percent.
- Cancel stops reading and sends no further bulk request; requests already in flight finish.
- An error budget (the request's `options.max_errors` / `max_error_rate`, or the caller's, e.g. the
  task's `errors` for a predict job) works as the sync's: past `max_errors` the ingest stops writing at
  once (the count can only grow), and above `max_error_rate`, checked once every document was tried
  (a prefix's rate says nothing of the whole), it ends FAILED; the dead letters stay in their file.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, NamedTuple

import orjson
from elasticsearch import ApiError, Elasticsearch, TransportError

from lake_sync.batch.readers import SourceReader, SourceReaders
from lake_sync.batch.request import FieldPath, IngestRequest, MissingIds, SourcePlan, extract
from lake_sync.errors import LakeSyncError, TargetError, TooManyErrorsError
from lake_sync.index.dead_letters import DeadLetter, DeadLetterFile, Stage
from lake_sync.index.mapping import vector_mapping
from lake_sync.index.writer import BulkLimits, BulkWriter, IndexAction

DEFAULT_PROGRESS_SECONDS = 0.5
DEFAULT_SAMPLES = 10
#: Partitions when a spill starts without known source sizes; each is split again if it is too large.
DEFAULT_SPILL_PARTITIONS = 64
MAX_SPILL_PARTITIONS = 512
MAX_SPLIT_DEPTH = 3
#: How much of an unusable line a dead letter keeps.
DEFAULT_DEAD_LETTER_LINE_BYTES = 1 << 20
# Spill record: id length, source, failed flag, line number, payload length; then id and payload.
_RECORD = struct.Struct("<IHBQI")
# Per-record bookkeeping of a buffered partition entry (tuple, str, bytes objects), for the memory bound.
_RECORD_OVERHEAD = 160
_JSON_SPACE = (b" ", b"\t", b"\r", b"\n")


class IngestState(StrEnum):
    CREATED = "CREATED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    COMPLETED_WITH_ERROR = "COMPLETED_WITH_ERROR"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True)
class IngestProgress:
    """A snapshot of a running ingest; `bytes_total` is None when a source's size is unknown."""

    state: IngestState
    lines_read: int
    documents_written: int
    failed: int
    bytes_read: int
    bytes_total: int | None


@dataclass(frozen=True)
class ErrorBudget:
    """How many dead letters an ingest tolerates (see the module docstring); None is no limit."""

    max_errors: int | None = None
    max_error_rate: float | None = None
    #: Who owns the budget and where it is set, for messages: "task 'items'" and "errors".
    owner: str = "the ingest"
    setting: str = "options"
    #: Dead letters an earlier step of the same job counted (staging, earlier parts), within `max_errors`.
    failed_before: int = 0

    def check_errors(self, failed: int) -> None:
        """TooManyErrorsError once `failed` (plus `failed_before`) passes `max_errors`."""
        total = self.failed_before + failed
        if self.max_errors is not None and total > self.max_errors:
            raise TooManyErrorsError(
                f"{self.owner}: {total} documents failed, more than {self.setting}.max_errors={self.max_errors}; "
                "writing stopped"
            )

    def check_rate(self, documents: int, failed: int) -> None:
        """TooManyErrorsError if `failed` of `documents` is above `max_error_rate`."""
        if self.max_error_rate is not None and documents and failed / documents > self.max_error_rate:
            raise TooManyErrorsError(
                f"{self.owner}: {failed}/{documents} documents failed, "
                f"above {self.setting}.max_error_rate={self.max_error_rate}"
            )


@dataclass(frozen=True)
class IdReport:
    """How many ids something happened to, and up to 10 of them with where they were seen."""

    count: int = 0
    samples: tuple[str, ...] = ()


@dataclass(frozen=True)
class IngestResult:
    """How an ingest ended; `failed` counts dead letters (lines and documents)."""

    state: IngestState
    index: str
    lines_read: int
    documents_written: int
    failed: int
    orphans: IdReport
    duplicates: IdReport
    #: Per source, how many joined ids it lacked.
    missing_by_source: tuple[int, ...]
    index_created: bool
    #: Partition files the join spilled to (0: joined in memory), and the largest partition joined.
    spill_partitions: int
    max_partition_bytes: int
    duration_s: float
    dead_letter_file: Path | None
    error: str | None = None
    #: FAILED because the dead letters passed the error budget (`error` names it and the counts).
    over_budget: bool = False

    @property
    def success_rate(self) -> float:
        """Documents written per document attempted, in percent."""
        attempted = self.documents_written + self.failed
        return 100.0 if attempted == 0 else 100.0 * self.documents_written / attempted


def run_ingest(
    request: IngestRequest,
    *,
    client: Elasticsearch,
    dead_letters: DeadLetterFile,
    progress: Callable[[IngestProgress], None] | None = None,
    cancel: threading.Event | None = None,
    spill_dir: Path | None = None,
    budget: ErrorBudget | None = None,
) -> IngestResult:
    """Ingest `request`'s sources into its index; every LakeSyncError ends the run as FAILED, not raised.

    Args:
        request: a validated request whose `connection` is resolved (`request.with_connection(task_file)`).
        client: the target cluster (see `lake_sync.index.client.build_client`).
        dead_letters: receives one record per line or document that did not reach the index.
        progress: called with the state at most every DEFAULT_PROGRESS_SECONDS, and at each state change.
        cancel: when set, reading stops and no further bulk request is sent; the state is CANCELLED.
        spill_dir: where a join's partition files go (default: the system's temporary folder).
        budget: the error budget; default: the request's `options.max_errors` and `options.max_error_rate`.
    """
    if budget is None:
        options = request.options
        budget = ErrorBudget(options.max_errors, options.max_error_rate, f"ingest into '{request.index_name}'")
    return _Ingest(request, client, dead_letters, progress, cancel or threading.Event(), spill_dir, budget).run()


class _Document(NamedTuple):
    # A NamedTuple, not a frozen dataclass: one is built per line, and this is the hot loop.
    id: str
    body: dict[str, Any]
    origin: str
    #: The line it came from, for copying vectors verbatim (one source only).
    line: bytes | None = None


@dataclass
class _Counters:
    lines_read: int = 0
    documents_written: int = 0
    failed: int = 0
    bytes_done: int = 0
    orphans: int = 0
    orphan_samples: list[str] = field(default_factory=list)
    duplicates: int = 0
    duplicate_samples: list[str] = field(default_factory=list)


class _Cancelled(Exception):
    pass


class _Ingest:
    """One run of `run_ingest`: owns the counters, the dead letters and the terminal state."""

    def __init__(
        self,
        request: IngestRequest,
        client: Elasticsearch,
        dead_letters: DeadLetterFile,
        progress: Callable[[IngestProgress], None] | None,
        cancel: threading.Event,
        spill_dir: Path | None,
        budget: ErrorBudget,
    ) -> None:
        self.request = request
        self.client = client
        self.dead_letters = dead_letters
        self.report = progress
        self.cancel = cancel
        self.spill_dir = spill_dir
        self.budget = budget
        self.plan = request.plan()
        self.task = f"ingest:{request.index_name}"
        self.counts = _Counters()
        self.missing_by_source = [0] * len(self.plan)
        self.state = IngestState.CREATED
        self.bytes_total: int | None = None
        self.reading: SourceReader | None = None
        self.target: _Target | None = None
        self.spill_partitions = 0
        self.max_partition_bytes = 0
        self._reported_at = 0.0
        # Per source, the fields whose path ends in a key: candidates for copying a vector's text as it is.
        self.vector_keys = [
            [(path.field, key) for path in plan.fields if (key := _key_text(path)) is not None] for plan in self.plan
        ]

    def run(self) -> IngestResult:
        started = time.perf_counter()
        self._progress(force=True)
        error: str | None = None
        over_budget = False
        try:
            self.budget.check_errors(0)
            with SourceReaders(self.request) as readers:
                # Every source must exist (and be readable) before the first document is written.
                sizes = [readers.size(position) for position in range(len(self.plan))]
                self.bytes_total = None if None in sizes else sum(size or 0 for size in sizes)
                self.target = _Target(self.client, self.request.index_name)
                self._enter(IngestState.RUNNING)
                documents = self._single(readers, sizes[0]) if len(self.plan) == 1 else self._join(readers, sizes)
                self._write(documents)
                self.target.refresh()
            if self.cancel.is_set():
                raise _Cancelled
            self.budget.check_rate(self.counts.documents_written + self.counts.failed, self.counts.failed)
            state = IngestState.COMPLETED_WITH_ERROR if self.counts.failed else IngestState.COMPLETED
        except _Cancelled:
            state = IngestState.CANCELLED
        except TooManyErrorsError as failure:
            state, error, over_budget = IngestState.FAILED, self._over_budget(failure), True
        except LakeSyncError as failure:
            state, error = IngestState.FAILED, str(failure)
        finally:
            self.reading = None
        self._enter(state)
        counts = self.counts
        return IngestResult(
            state=state,
            index=self.request.index_name,
            lines_read=counts.lines_read,
            documents_written=counts.documents_written,
            failed=counts.failed,
            orphans=IdReport(counts.orphans, tuple(counts.orphan_samples)),
            duplicates=IdReport(counts.duplicates, tuple(counts.duplicate_samples)),
            missing_by_source=tuple(self.missing_by_source),
            index_created=bool(self.target and self.target.created),
            spill_partitions=self.spill_partitions,
            max_partition_bytes=self.max_partition_bytes,
            duration_s=time.perf_counter() - started,
            dead_letter_file=self.dead_letters.path if self.dead_letters.count else None,
            error=error,
            over_budget=over_budget,
        )

    def _over_budget(self, failure: TooManyErrorsError) -> str:
        # Earlier steps of the same job (failed_before) wrote theirs to the same file.
        letters = self.dead_letters.count or self.budget.failed_before
        kept = f"; the dead letters are in {self.dead_letters.path}" if letters else ""
        return f"{failure} ({self.counts.documents_written:,} documents written){kept}"

    # --- one source ---------------------------------------------------------------------------

    def _single(self, readers: SourceReaders, size: int | None) -> Iterator[_Document]:
        plan = self.plan[0]
        seen: set[int] = set()
        for number, line, location, text in self._lines(readers, plan, size):
            document_id = self._id(plan, line, number, location) if plan.id_path else _line_id(plan.location, number)
            if document_id is None:
                continue
            body, problem = _map(plan.fields, line)
            if problem is not None:
                self._dead_letter("line", document_id, f"{location} line {number}: {problem}", line)
                continue
            if plan.id_path is not None:
                key = hash(document_id)
                if key in seen:
                    self._duplicate(document_id, f"source[0] line {number}", 1)
                seen.add(key)
            yield _Document(document_id, body, f"{location} line {number}", text)

    # --- several sources: partition by id, then join partition by partition -------------------

    def _join(self, readers: SourceReaders, sizes: list[int | None]) -> Iterator[_Document]:
        known = [size for size in sizes if size is not None]
        with _Partitions(
            len(self.plan),
            self.request.options.join_memory_bytes,
            size_hint=sum(known) if len(known) == len(sizes) else None,
            directory=self.spill_dir,
        ) as partitions:
            for plan, size in zip(self.plan, sizes, strict=True):
                keys = self.vector_keys[plan.position]
                for number, line, location, text in self._lines(readers, plan, size):
                    document_id = self._id(plan, line, number, location)
                    if document_id is None:
                        continue
                    body, problem = _map(plan.fields, line)
                    if problem is not None:
                        partitions.add(
                            document_id, plan.position, number, True, f"{location} line {number}: {problem}".encode()
                        )
                    else:
                        payload = orjson.dumps(_verbatim_vectors(text, body, keys) if keys else body)
                        partitions.add(document_id, plan.position, number, False, payload)
            for group in partitions.groups():
                self._check_cancel()
                for document_id, slots in group.items():
                    document = self._joined(document_id, slots)
                    if document is not None:
                        yield document
            self.spill_partitions = partitions.files
            self.max_partition_bytes = partitions.max_loaded_bytes

    def _joined(self, document_id: str, slots: list[_Slot | None]) -> _Document | None:
        for position, slot in enumerate(slots):
            if slot is not None and slot.repeats:
                lines = ", ".join(map(str, [*slot.repeats, slot.number]))
                self._duplicate(document_id, f"source[{position}] lines {lines}", len(slot.repeats))
        body: dict[str, Any] = {}
        failures = []
        for slot in slots:
            if slot is None:
                continue
            if slot.failed:
                failures.append(slot.payload.decode())
            else:
                body.update(orjson.loads(slot.payload))
        origin = ", ".join(f"source[{p}] line {s.number}" for p, s in enumerate(slots) if s is not None)
        if failures:
            self._dead_letter("line", document_id, "; ".join(failures), body)
            return None
        missing = [position for position, slot in enumerate(slots) if slot is None]
        if missing:
            for position in missing:
                self.missing_by_source[position] += 1
            lacking = ", ".join(f"source[{position}]" for position in missing)
            self.counts.orphans += 1
            if len(self.counts.orphan_samples) < DEFAULT_SAMPLES:
                self.counts.orphan_samples.append(f"{document_id} (in {origin}; not in {lacking})")
            policy = self.request.options.missing_ids
            if policy is MissingIds.SKIP:
                return None
            if policy is MissingIds.DEAD_LETTER:
                self._dead_letter("join", document_id, f"id in {origin} but not in {lacking}", body)
                return None
        return _Document(document_id, body, origin)

    # --- shared steps -------------------------------------------------------------------------

    def _lines(
        self, readers: SourceReaders, plan: SourcePlan, size: int | None
    ) -> Iterator[tuple[int, dict[str, Any], str, bytes]]:
        """(line number, parsed object, location, bytes) of each usable line; unusable lines are dead letters."""
        reader = readers.open(plan.position, size)
        self.reading = reader
        location = f"source[{plan.position}] ({reader.location})"
        try:
            for line in reader.lines():
                self._check_cancel()
                self.counts.lines_read += 1
                self._progress()
                if line.data is None:
                    reason = f"{location} line {line.number}: longer than {reader.max_line_bytes} bytes"
                    self._dead_letter("line", None, reason, None)
                    continue
                try:
                    parsed = orjson.loads(line.data)
                except orjson.JSONDecodeError as error:
                    self._dead_letter(
                        "line", None, f"{location} line {line.number}: malformed JSON ({error})", line.data
                    )
                    continue
                if not isinstance(parsed, dict):
                    reason = f"{location} line {line.number}: expected a JSON object, got {type(parsed).__name__}"
                    self._dead_letter("line", None, reason, line.data)
                    continue
                yield line.number, parsed, location, line.data
        finally:
            self.counts.bytes_done += reader.bytes_read
            self.reading = None
            reader.close()

    def _id(self, plan: SourcePlan, line: dict[str, Any], number: int, location: str) -> str | None:
        assert plan.id_path is not None
        found, value = extract(plan.id_path, line)
        if not found or value is None:
            problem = f"no _id at {plan.id_path.text}{_line_error(line)}"
        elif isinstance(value, str) and value:
            return value
        elif isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        else:
            problem = f"_id at {plan.id_path.text} is {orjson.dumps(value).decode()[:80]}, not a string or integer"
        self._dead_letter("line", None, f"{location} line {number}: {problem}", line)
        return None

    def _write(self, documents: Iterator[_Document]) -> None:
        options = self.request.options
        limits = BulkLimits(options.bulk_size, options.bulk_bytes, options.max_in_flight, options.max_retries)
        writer = BulkWriter(self.client, self.request.index_name, limits)
        for outcome in writer.write(self._actions(documents)):
            if outcome.ok:
                self.counts.documents_written += 1
            else:
                reason = f"index answered {outcome.status}: {outcome.reason or 'rejected'}"
                # A round trip turns verbatim vectors (orjson.Fragment) back into values a dead letter can copy.
                body = orjson.loads(orjson.dumps(outcome.action.body))
                self._dead_letter("index", outcome.action.id, reason, body, status=outcome.status)
            self._progress()

    def _actions(self, documents: Iterator[_Document]) -> Iterator[IndexAction]:
        assert self.target is not None
        for document in documents:
            self.target.prepare(document.body)
            problem = self.target.check(document.body)
            if problem is not None:
                self._dead_letter("line", document.id, f"{document.origin}: {problem}", document.body)
                continue
            # Checked after the document is taken, so a cancel sends nothing more, not even this chunk.
            self._check_cancel()
            body = document.body
            if document.line is not None and self.vector_keys[0]:
                body = _verbatim_vectors(document.line, body, self.vector_keys[0])
            yield IndexAction("index", document.id, body)

    def _duplicate(self, document_id: str, where: str, superseded: int) -> None:
        self.counts.duplicates += superseded
        if len(self.counts.duplicate_samples) < DEFAULT_SAMPLES:
            self.counts.duplicate_samples.append(f"{document_id} ({where}; the last line wins)")

    def _dead_letter(
        self,
        stage: Stage,
        document_id: str | None,
        reason: str,
        document: dict[str, Any] | bytes | None,
        status: int = 0,
    ) -> None:
        if isinstance(document, bytes):
            document = {"line": document[:DEFAULT_DEAD_LETTER_LINE_BYTES].decode("utf-8", errors="replace")}
        self.dead_letters.add(DeadLetter(self.task, None, document_id, stage, status, reason, document))
        self.counts.failed += 1
        self.budget.check_errors(self.counts.failed)

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise _Cancelled

    def _enter(self, state: IngestState) -> None:
        self.state = state
        self._progress(force=True)

    def _progress(self, *, force: bool = False) -> None:
        if self.report is None:
            return
        now = time.monotonic()
        if not force and now - self._reported_at < DEFAULT_PROGRESS_SECONDS:
            return
        self._reported_at = now
        counts = self.counts
        reading = self.reading.bytes_read if self.reading is not None else 0
        self.report(
            IngestProgress(
                self.state,
                counts.lines_read,
                counts.documents_written,
                counts.failed,
                counts.bytes_done + reading,
                self.bytes_total,
            )
        )


def _map(fields: tuple[FieldPath, ...], line: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The fields of one line, or the first missing path."""
    body: dict[str, Any] = {}
    for path in fields:
        found, value = extract(path, line)
        if not found:
            return body, f"no value at {path.text} (field '{path.field}'){_line_error(line)}"
        body[path.field] = value
    return body, None


def _key_text(path: FieldPath) -> bytes | None:
    """The JSON text of the key a plain path ends with, if it has no escapes."""
    if not path.steps or not isinstance(path.steps[-1], str):
        return None
    key = orjson.dumps(path.steps[-1])
    return None if b"\\" in key else key


def _verbatim_vectors(line: bytes, body: dict[str, Any], keys: list[tuple[str, bytes]]) -> dict[str, Any]:
    """`body` with its arrays replaced by their text in `line`, so vectors are never re-serialised.

    Only where the text is unambiguous: a line without backslashes (no escape can hide a key or a
    quote), the key exactly once in it as a key, and a flat array (no brackets, braces or strings in it)
    right after it; that text is then the value itself. Everything else keeps the parsed value.
    """
    if line.find(b"\\") >= 0:
        return body
    copied: dict[str, Any] | None = None
    for name, key in keys:
        if type(body.get(name)) is list:
            text = _array_text(line, key)
            if text is not None:
                copied = copied or dict(body)
                copied[name] = orjson.Fragment(text)
    return copied or body


def _array_text(line: bytes, key: bytes) -> bytes | None:
    """The text of the flat array after the only `key:` in `line`, or None."""
    found = None
    at = line.find(key)
    while at >= 0:
        colon = _skip_space(line, at + len(key))
        if line[colon : colon + 1] == b":":
            if found is not None:
                return None
            found = colon + 1
        at = line.find(key, at + len(key))
    if found is None:
        return None
    start = _skip_space(line, found)
    end = line.find(b"]", start)
    if line[start : start + 1] != b"[" or end < 0:
        return None
    if line.find(b"[", start + 1, end) >= 0 or line.find(b"{", start, end) >= 0 or line.find(b'"', start, end) >= 0:
        return None
    return line[start : end + 1]


def _skip_space(line: bytes, at: int) -> int:
    while line[at : at + 1] in _JSON_SPACE:
        at += 1
    return at


def _line_error(line: dict[str, Any]) -> str:
    """The error a batch output line carries (OpenAI `error`, Bedrock `error`/`modelOutput.error`), if any."""
    error = line.get("error")
    output = line.get("modelOutput")
    if not error and isinstance(output, dict):
        error = output.get("error")
    return f"; the line reports error {orjson.dumps(error).decode()[:300]}" if error else ""


def _line_id(location: str, number: int) -> str:
    """A stable id for a line without `_id`: re-ingesting the same file overwrites instead of duplicating."""
    digest = hashlib.blake2b(f"{location}\n{number}".encode(), digest_size=15).digest()
    return base64.urlsafe_b64encode(digest).decode()


# --- the target index ---------------------------------------------------------------------------


class _Target:
    """The index: created from the first document if missing, and its dense_vector dims."""

    def __init__(self, client: Elasticsearch, index: str) -> None:
        self.client = client
        self.index = index
        self.created = False
        with _target_errors(index, "reading the index mapping"):
            self.exists = bool(client.indices.exists(index=index))
            self.dims = self._vector_dims() if self.exists else {}

    def prepare(self, body: dict[str, Any]) -> None:
        """Create the index from `body` if it does not exist yet."""
        if self.exists:
            return
        vectors = {name: len(value) for name, value in body.items() if _is_vector(value)}
        mappings = {"dynamic": True, "properties": {name: vector_mapping(dims) for name, dims in vectors.items()}}
        with _target_errors(self.index, "creating the index"):
            response = self.client.options(ignore_status=400).indices.create(index=self.index, mappings=mappings)
            if response.meta.status == 400:
                # Someone else may have created it meanwhile: use theirs, and its dims.
                if not self.client.indices.exists(index=self.index):
                    raise TargetError(f"creating index '{self.index}' failed: {response.body}")
                self.dims = self._vector_dims()
            else:
                self.created = True
                self.dims = vectors
        self.exists = True

    def check(self, body: dict[str, Any]) -> str | None:
        """Why `body` does not fit the index's vector fields, or None."""
        for name, dims in self.dims.items():
            value = body.get(name)
            if value is None:
                continue
            if not isinstance(value, list):
                return f"field '{name}' is a dense_vector of {dims} dims, got {type(value).__name__}"
            if len(value) != dims:
                return f"field '{name}' has {len(value)} dims, the index's dense_vector has {dims}"
        return None

    def refresh(self) -> None:
        if self.exists:
            with _target_errors(self.index, "refreshing the index"):
                self.client.indices.refresh(index=self.index)

    def _vector_dims(self) -> dict[str, int]:
        dims: dict[str, int] = {}
        for mapping in self.client.indices.get_mapping(index=self.index).body.values():
            _collect_dims(mapping.get("mappings", {}), "", dims)
        return dims


def _collect_dims(mapping: dict[str, Any], prefix: str, dims: dict[str, int]) -> None:
    for name, spec in mapping.get("properties", {}).items():
        if spec.get("type") == "dense_vector" and "dims" in spec:
            dims[f"{prefix}{name}"] = int(spec["dims"])
        elif "properties" in spec:
            _collect_dims(spec, f"{prefix}{name}.", dims)


def _is_vector(value: Any) -> bool:
    """A non-empty list of numbers with at least one float: a vector, not a list of ids or tags."""
    if not isinstance(value, list) or not value:
        return False
    numbers = all(isinstance(item, (int, float)) and not isinstance(item, bool) for item in value)
    return numbers and any(isinstance(item, float) for item in value)


@contextmanager
def _target_errors(index: str, doing: str) -> Iterator[None]:
    """Client errors while `doing` something to `index` → TargetError."""
    try:
        yield
    except ApiError as error:
        raise TargetError(f"Elasticsearch answered {error.meta.status} while {doing} '{index}'") from None
    except TransportError as error:
        raise TargetError(f"Elasticsearch failed while {doing} '{index}': {type(error).__name__}") from None


# --- hash partitions for the join ---------------------------------------------------------------


class _Slot(NamedTuple):
    """What one source said about one id: its last line (payload: fields, or a failure reason)."""

    number: int
    failed: bool
    payload: bytes
    #: Line numbers of earlier lines with this id in the same source (superseded: the last line wins).
    repeats: tuple[int, ...] = ()


class _Partitions:
    """Records (id, source, line, payload) grouped by id, in memory until `memory_bytes`, then on disk.

    On disk, records go to N files by hash(id) with N sized so each file holds about half of
    `memory_bytes`; a file that still holds more is split again with another hash salt.
    """

    def __init__(self, sources: int, memory_bytes: int, *, size_hint: int | None, directory: Path | None) -> None:
        self.sources = sources
        self.memory_bytes = memory_bytes
        self.size_hint = size_hint
        self.directory = directory
        self.files = 0
        self.max_loaded_bytes = 0
        self._buffer: list[tuple[str, int, int, bool, bytes]] = []
        self._buffered_bytes = 0
        self._spill: tempfile.TemporaryDirectory[str] | None = None
        self._writers: list[IO[bytes]] = []

    def __enter__(self) -> _Partitions:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for writer in self._writers:
            writer.close()
        if self._spill is not None:
            self._spill.cleanup()

    def add(self, document_id: str, source: int, number: int, failed: bool, payload: bytes) -> None:
        if self._writers:
            self._writers[hash(document_id) % len(self._writers)].write(
                _pack(document_id, source, number, failed, payload)
            )
            return
        # A copy: orjson's output keeps its over-allocated buffer (~5x a vector's JSON) while it is held.
        self._buffer.append((document_id, source, number, failed, bytes(memoryview(payload))))
        self._buffered_bytes += len(document_id) + len(payload) + _RECORD_OVERHEAD
        if self._buffered_bytes > self.memory_bytes:
            self._start_spilling()

    def groups(self) -> Iterator[dict[str, list[_Slot | None]]]:
        """The records grouped by id, one partition at a time."""
        if not self._writers:
            self.max_loaded_bytes = self._buffered_bytes
            records, self._buffer = self._buffer, []
            yield self._group(records)
            return
        paths = []
        for writer in self._writers:
            writer.close()
            paths.append(Path(writer.name))
        self._writers = []
        for path in paths:
            yield from self._load(path, depth=1)

    def _start_spilling(self) -> None:
        self._spill = tempfile.TemporaryDirectory(prefix="lake-sync-join-", dir=self.directory)
        count = DEFAULT_SPILL_PARTITIONS
        if self.size_hint is not None:
            # Aim at half the memory bound per partition: hashing is uneven and JSON re-parses bigger.
            count = math.ceil(2 * self.size_hint / self.memory_bytes)
        self._writers = self._open(max(2, min(count, MAX_SPILL_PARTITIONS)), "p")
        records, self._buffer, self._buffered_bytes = self._buffer, [], 0
        for record in records:
            self.add(*record)

    def _open(self, count: int, prefix: str) -> list[IO[bytes]]:
        assert self._spill is not None
        self.files += count
        return [Path(self._spill.name, f"{prefix}{number}").open("wb") for number in range(count)]

    def _load(self, path: Path, depth: int) -> Iterator[dict[str, list[_Slot | None]]]:
        size = path.stat().st_size
        if size > self.memory_bytes // 2 and depth <= MAX_SPLIT_DEPTH:
            count = min(math.ceil(4 * size / self.memory_bytes), MAX_SPILL_PARTITIONS)
            writers = self._open(count, f"{path.name}.")
            for record in _unpack(path):
                writers[hash((depth, record[0])) % count].write(_pack(*record))
            for writer in writers:
                writer.close()
            path.unlink()
            for writer in writers:
                yield from self._load(Path(writer.name), depth + 1)
            return
        self.max_loaded_bytes = max(self.max_loaded_bytes, size)
        groups = self._group(_unpack(path))
        path.unlink()
        yield groups

    def _group(self, records: Iterable[tuple[str, int, int, bool, bytes]]) -> dict[str, list[_Slot | None]]:
        groups: dict[str, list[_Slot | None]] = {}
        for document_id, source, number, failed, payload in records:
            slots = groups.get(document_id)
            if slots is None:
                slots = groups[document_id] = [None] * self.sources
            previous = slots[source]
            repeats = () if previous is None else (*previous.repeats, previous.number)
            slots[source] = _Slot(number, failed, payload, repeats)
        return groups


def _pack(document_id: str, source: int, number: int, failed: bool, payload: bytes) -> bytes:
    key = document_id.encode()
    return _RECORD.pack(len(key), source, failed, number, len(payload)) + key + payload


def _unpack(path: Path) -> Iterator[tuple[str, int, int, bool, bytes]]:
    with path.open("rb", buffering=1 << 20) as file:
        while header := file.read(_RECORD.size):
            key_length, source, failed, number, payload_length = _RECORD.unpack(header)
            key = file.read(key_length).decode()
            yield key, source, number, bool(failed), file.read(payload_length)
