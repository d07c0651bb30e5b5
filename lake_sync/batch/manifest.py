"""The batch-predict manifest: what a predict job staged, submitted and got back, as JSON beside its files.

run_predict → manifest.json (snapshot, request files, batch ids, statuses, output paths) → ingest_predictions

The manifest is rewritten after every step (upload, batch created, status change, download), so a
re-run with the same staging dir picks up exactly where the last one stopped.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson

MANIFEST_FILE = "manifest.json"


class FileStatus(StrEnum):
    """Where one request file stands: staged locally, uploaded, then the OpenAI batch status."""

    PREPARED = "prepared"
    UPLOADED = "uploaded"
    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def is_unsuccessful(self) -> bool:
        return self in _UNSUCCESSFUL


_UNSUCCESSFUL = frozenset({FileStatus.FAILED, FileStatus.EXPIRED, FileStatus.CANCELLED})
_TERMINAL = _UNSUCCESSFUL | {FileStatus.COMPLETED}


@dataclass(frozen=True)
class RequestFile:
    """The embedding requests of one transform for one part of the snapshot, and the batch answering them."""

    part: int
    #: The vector field the answers fill (the transform's `to`).
    vector_field: str
    #: The document field holding the embedded text, when the task syncs that column (else None).
    text_field: str | None
    #: `<connection>:<model>` as written in the task.
    model: str
    input_path: str
    requests: int
    bytes: int
    status: FileStatus = FileStatus.PREPARED
    input_file_id: str | None = None
    batch_id: str | None = None
    completed: int = 0
    failed: int = 0
    #: Local copies of the batch's output and error files, kept for audit; None when the batch had none.
    output_path: str | None = None
    error_path: str | None = None
    #: The batch-level errors OpenAI reported (failed or expired batches).
    errors: str | None = None

    @property
    def connection(self) -> str:
        return self.model.partition(":")[0]

    @property
    def model_name(self) -> str:
        return self.model.partition(":")[2]


@dataclass(frozen=True)
class DocumentsFile:
    """The task's document fields of one part, one `{"custom_id", "document"}` line per document."""

    part: int
    path: str
    documents: int


@dataclass(frozen=True)
class PredictManifest:
    """One predict job: the pinned snapshot, its staged files and where each batch stands."""

    task: str
    index: str
    table: str
    snapshot_id: int
    #: Hash of what shapes the requests (transforms, fields, keys, limits): a job is resumed only if it matches.
    fingerprint: str
    directory: str
    rows_read: int
    rejected_keys: int
    empty_texts: int
    documents: tuple[DocumentsFile, ...] = ()
    files: tuple[RequestFile, ...] = ()
    #: Batches created on the server over the job's life, resubmissions included.
    batches_created: int = 0
    dead_letter_path: str = ""

    @property
    def path(self) -> Path:
        return Path(self.directory) / MANIFEST_FILE

    @property
    def requests(self) -> int:
        return sum(file.requests for file in self.files)

    @property
    def completed_requests(self) -> int:
        return sum(file.completed for file in self.files)

    @property
    def failed_requests(self) -> int:
        return sum(file.failed for file in self.files)

    @property
    def document_count(self) -> int:
        return sum(documents.documents for documents in self.documents)

    @property
    def is_complete(self) -> bool:
        """Every batch completed and its output is downloaded."""
        return all(file.status is FileStatus.COMPLETED for file in self.files)

    @property
    def unsuccessful(self) -> list[RequestFile]:
        return [file for file in self.files if file.status.is_unsuccessful]

    @property
    def success_rate(self) -> float:
        """Answered requests over all requests, in percent (100 for a job without requests)."""
        return 100.0 * self.completed_requests / self.requests if self.requests else 100.0

    def with_file(self, number: int, **changes: Any) -> PredictManifest:
        """A copy with request file `number` changed."""
        files = list(self.files)
        files[number] = replace(files[number], **changes)
        return replace(self, files=tuple(files))

    def save(self) -> Path:
        """Write atomically (temp file, then rename), so a crash never leaves half a manifest."""
        path = self.path
        partial = path.with_suffix(".partial")
        partial.write_bytes(orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2))
        os.replace(partial, path)
        return path


def load_manifest(path: str | os.PathLike[str]) -> PredictManifest:
    """Read a manifest written by `PredictManifest.save`; a directory means its manifest.json."""
    location = Path(path)
    if location.is_dir():
        location = location / MANIFEST_FILE
    data = orjson.loads(location.read_bytes())
    data["documents"] = tuple(DocumentsFile(**item) for item in data["documents"])
    data["files"] = tuple(RequestFile(**{**item, "status": FileStatus(item["status"])}) for item in data["files"])
    return PredictManifest(**data)
