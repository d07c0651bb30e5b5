"""lake-sync's own OpenAI-compatible embedding server: batch inference for air-gapped sites, and the tests' model.

client → /v1/embeddings → lake-sync embedder → vectors;  client → /v1/files → /v1/batches → worker → output/error files

Any lake-sync model spec (`local:all-MiniLM-L6-v2`, `hash:384`, ...) is served under an OpenAI model
name, with the Files and Batch APIs on top, so the official `openai` client and lake-sync's OpenAI
embedder work unchanged without network access. Files and batches live under `storage_dir`
(metadata JSON beside the content), so a restarted server still knows them and re-runs the batches
it left unfinished. One worker thread runs batches one at a time, streaming each input file line by
line. Knobs for tests and benchmarks: a fixed latency per request, canned failures with
`Retry-After`, and a latency-only mode that answers with canned vectors and runs no model.
One server owns its `storage_dir`; two servers must not share one.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import math
import os
import queue
import re
import secrets
import shutil
import threading
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from lake_sync.embed import build_embedder
from lake_sync.errors import ConfigError, EmbedError, LakeSyncError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MODELS = {"all-MiniLM-L6-v2": "local:all-MiniLM-L6-v2"}
DEFAULT_STORAGE_DIR = Path(".lake_sync/model_server")
#: The CLI reads the bearer key from here, so it stays out of the process list.
API_KEY_ENV = "LAKE_SYNC_MODEL_SERVER_API_KEY"

#: OpenAI's own limit on inputs per embeddings request.
DEFAULT_MAX_INPUTS_PER_REQUEST = 2048
#: Distinct canned vectors in latency-only mode: identical vectors for every document would
#: degenerate an ANN graph, and a lookup by CRC32 of the text costs next to nothing.
DEFAULT_CANNED_VECTORS = 1024
DEFAULT_BATCH_PAGE_SIZE = 20
MAX_BATCH_PAGE_SIZE = 100
COMPLETION_WINDOW = "24h"
COMPLETION_WINDOW_SECONDS = 24 * 3600
BATCH_ENDPOINT = "/v1/embeddings"
COPY_CHUNK_BYTES = 1 << 20
DEFAULT_START_TIMEOUT_SECONDS = 20.0
DEFAULT_STOP_TIMEOUT_SECONDS = 10.0

_FILE_ID = re.compile(r"file-[0-9a-f]{24}")
_BATCH_ID = re.compile(r"batch_[0-9a-f]{24}")


class BatchStatus(StrEnum):
    """OpenAI batch statuses; `expired` is never reached, since this server has no deadline to miss."""

    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


@dataclass
class RequestCounters:
    """What the server answered on `/v1/embeddings`, for tests and benchmarks to assert on."""

    #: Requests answered with vectors.
    embeddings: int = 0
    #: Texts embedded in those requests.
    inputs: int = 0
    #: Requests refused on purpose (`fail_first`).
    rejected: int = 0
    #: Embeddings requests being answered now, and the most there ever were at once.
    in_flight: int = 0
    max_in_flight: int = 0


@dataclass(frozen=True)
class ModelServer:
    """A model server running in a background thread: where to reach it and what it has served."""

    base_url: str
    requests: RequestCounters


class _ApiError(LakeSyncError):
    """An OpenAI-shaped error answer: HTTP status plus the `error` object's message, type, param and code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


# --- embeddings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _EmbeddingsRequest:
    model: str
    texts: list[str]
    encoding_format: str
    dimensions: int | None


def _parse_embeddings_request(body: object, served: Mapping[str, str]) -> _EmbeddingsRequest:
    """Check an embeddings request body the way OpenAI does; token-array inputs are not supported."""
    if not isinstance(body, dict):
        raise _ApiError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or model not in served:
        raise _ApiError(
            400,
            f"The model '{model}' does not exist; this server serves {', '.join(sorted(served))}",
            param="model",
            code="model_not_found",
        )
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not texts or not all(isinstance(text, str) and text for text in texts):
        raise _ApiError(
            400, "'input' must be a non-empty string or a non-empty list of non-empty strings", param="input"
        )
    if len(texts) > DEFAULT_MAX_INPUTS_PER_REQUEST:
        raise _ApiError(
            400,
            f"'input' holds {len(texts)} texts; at most {DEFAULT_MAX_INPUTS_PER_REQUEST} per request",
            param="input",
        )
    encoding_format = body.get("encoding_format") or "float"
    if encoding_format not in ("float", "base64"):
        raise _ApiError(400, "'encoding_format' must be 'float' or 'base64'", param="encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and (type(dimensions) is not int or dimensions < 1):
        raise _ApiError(400, "'dimensions' must be a positive integer", param="dimensions")
    return _EmbeddingsRequest(model, texts, encoding_format, dimensions)


class _Models:
    """Served model names → lake-sync embedders, built on first use; or canned vectors in latency-only mode."""

    def __init__(self, specs: Mapping[str, str], latency_only_dims: int | None) -> None:
        self.specs = dict(specs)
        self._canned: np.ndarray | None = None
        if latency_only_dims is not None:
            vectors = np.random.default_rng(0).standard_normal((DEFAULT_CANNED_VECTORS, latency_only_dims))
            self._canned = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)

    def embed(self, request: _EmbeddingsRequest) -> np.ndarray:
        """Vectors for the request's texts, one row each; blocking, so the server calls it in a thread."""
        if self._canned is not None:
            self._check_dimensions(request, int(self._canned.shape[1]))
            rows = [zlib.crc32(text.encode()) % len(self._canned) for text in request.texts]
            return self._canned[rows]
        spec = self.specs[request.model]
        try:
            embedder = build_embedder(spec)
        except LakeSyncError as error:
            message = f"model '{request.model}' ({spec}) cannot be loaded: {error}"
            raise _ApiError(500, message, kind="server_error") from error
        self._check_dimensions(request, embedder.dims)
        try:
            return embedder.embed_texts(request.texts)
        except LakeSyncError as error:
            raise _ApiError(500, f"model '{request.model}' failed: {error}", kind="server_error") from error

    @staticmethod
    def _check_dimensions(request: _EmbeddingsRequest, dims: int) -> None:
        if request.dimensions is not None and request.dimensions != dims:
            raise _ApiError(
                400,
                f"model '{request.model}' answers {dims}-dim vectors; dimensions={request.dimensions} is not supported",
                param="dimensions",
            )


def _embeddings_body(request: _EmbeddingsRequest, vectors: np.ndarray) -> dict[str, Any]:
    """The OpenAI embeddings response; base64 is the little-endian float32 bytes, as OpenAI sends them."""
    rows: list[Any]
    if request.encoding_format == "base64":
        little_endian = np.ascontiguousarray(vectors, dtype="<f4")
        rows = [base64.b64encode(row.tobytes()).decode("ascii") for row in little_endian]
    else:
        rows = list(vectors)
    # Whitespace words stand in for tokens: counting real ones would need each model's tokenizer.
    tokens = sum(len(text.split()) for text in request.texts)
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": index, "embedding": row} for index, row in enumerate(rows)],
        "model": request.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


# --- storage ---------------------------------------------------------------------------------


def _now() -> int:
    return int(time.time())


def _new_id(prefix: str) -> str:
    """An id that sorts by creation time, so listings need no separate sequence."""
    return f"{prefix}{time.time_ns():016x}{secrets.token_hex(4)}"


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


def _write_json(path: Path, value: Any) -> None:
    """Replace `path` atomically, so a crash never leaves half a metadata file."""
    scratch = path.with_suffix(".tmp")
    scratch.write_bytes(_dumps(value))
    os.replace(scratch, path)


class _FileStore:
    """Files as `<id>.content` plus `<id>.json` (the OpenAI file object) in one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def scratch_path(self) -> Path:
        """A path in the store's folder for content being written; `adopt` turns it into a file."""
        return self.root / f".{secrets.token_hex(8)}.partial"

    def adopt(self, path: Path, *, filename: str, purpose: str) -> dict[str, Any]:
        """Make the finished content at `path` a file; content first, so metadata always has its content."""
        file_id = _new_id("file-")
        os.replace(path, self.content_path(file_id))
        metadata = {
            "id": file_id,
            "object": "file",
            "bytes": self.content_path(file_id).stat().st_size,
            "created_at": _now(),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }
        _write_json(self._metadata_path(file_id), metadata)
        return metadata

    def get(self, file_id: str) -> dict[str, Any]:
        """The file object, or a 404 answer (also for ids that could not be ours, such as paths)."""
        path = self._metadata_path(file_id) if _FILE_ID.fullmatch(file_id) else None
        if path is None or not path.exists():
            raise _ApiError(404, f"No such File object: {file_id}", param="id")
        return cast(dict[str, Any], orjson.loads(path.read_bytes()))

    def delete(self, file_id: str) -> dict[str, Any]:
        self.get(file_id)
        self._metadata_path(file_id).unlink()
        self.content_path(file_id).unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}

    def content_path(self, file_id: str) -> Path:
        return self.root / f"{file_id}.content"

    def _metadata_path(self, file_id: str) -> Path:
        return self.root / f"{file_id}.json"


_UNFINISHED = (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING, BatchStatus.CANCELLING)


class _BatchStore:
    """Batch objects in memory, written through to `<id>.json` on every status change.

    Top-level values are replaced, never mutated in place, so a shallow copy taken under the lock
    can be serialised while the worker moves on.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._batches: dict[str, dict[str, Any]] = {}
        for path in sorted(root.glob("batch_*.json")):
            batch = orjson.loads(path.read_bytes())
            self._batches[batch["id"]] = batch

    def recover(self) -> list[str]:
        """Settle what a stopped server left unfinished: cancelling → cancelled; the rest start over."""
        pending = []
        for batch_id, batch in list(self._batches.items()):
            if batch["status"] == BatchStatus.CANCELLING:
                self.update(batch_id, status=BatchStatus.CANCELLED, cancelled_at=_now())
            elif batch["status"] in _UNFINISHED:
                self.update(batch_id, **_fresh_progress())
                pending.append(batch_id)
        return pending

    def create(self, batch: dict[str, Any]) -> None:
        with self._lock:
            self._batches[batch["id"]] = batch
            _write_json(self._path(batch["id"]), batch)

    def get(self, batch_id: str) -> dict[str, Any]:
        with self._lock:
            batch = self._batches.get(batch_id) if _BATCH_ID.fullmatch(batch_id) else None
            if batch is None:
                raise _ApiError(404, f"No such Batch object: {batch_id}", param="id")
            return dict(batch)

    def page(self, *, after: str | None, limit: int) -> dict[str, Any]:
        """Newest first, continuing after the id `after`, as OpenAI's cursor pages do."""
        with self._lock:
            ordered = [dict(batch) for _, batch in sorted(self._batches.items(), reverse=True)]
        if after:
            ordered = [batch for batch in ordered if batch["id"] < after]
        data = ordered[:limit]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(ordered) > limit,
        }

    def status(self, batch_id: str) -> str:
        with self._lock:
            return str(self._batches[batch_id]["status"])

    def update(self, batch_id: str, **fields: Any) -> dict[str, Any]:
        with self._lock:
            batch = self._batches[batch_id]
            batch.update(fields)
            _write_json(self._path(batch_id), batch)
            return dict(batch)

    def advance(self, batch_id: str, status: BatchStatus, **fields: Any) -> str:
        """Move the worker's batch on to `status`, unless a cancel came first; returns the status it has now."""
        with self._lock:
            batch = self._batches[batch_id]
            if batch["status"] != BatchStatus.CANCELLING:
                batch.update(fields, status=status)
                _write_json(self._path(batch_id), batch)
            return str(batch["status"])

    def progress(self, batch_id: str, request_counts: dict[str, int]) -> None:
        """Counts while a batch runs, in memory only: a restart re-runs the batch from its first line."""
        with self._lock:
            self._batches[batch_id]["request_counts"] = request_counts

    def cancel(self, batch_id: str) -> dict[str, Any]:
        """Ask the worker to stop the batch; it keeps the lines answered so far, as OpenAI does."""
        self.get(batch_id)
        with self._lock:
            batch = self._batches[batch_id]
            if batch["status"] in (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS):
                batch.update(status=BatchStatus.CANCELLING, cancelling_at=_now())
                _write_json(self._path(batch_id), batch)
            elif batch["status"] not in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
                raise _ApiError(400, f"Cannot cancel a batch with status '{batch['status']}'", param="id")
            return dict(batch)

    def _path(self, batch_id: str) -> Path:
        return self.root / f"{batch_id}.json"


def _fresh_progress() -> dict[str, Any]:
    return {
        "status": BatchStatus.VALIDATING,
        "in_progress_at": None,
        "finalizing_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
    }


def _batch_errors(code: str, message: str) -> dict[str, Any]:
    return {"object": "list", "data": [{"code": code, "message": message, "param": None, "line": None}]}


# --- batch worker ----------------------------------------------------------------------------


class _BatchWorker:
    """Runs batches one at a time in a background thread, streaming each input file line by line."""

    def __init__(self, files: _FileStore, batches: _BatchStore, models: _Models, *, latency_seconds: float) -> None:
        self._files = files
        self._batches = batches
        self._models = models
        self._latency_seconds = latency_seconds
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lake-sync-model-batches", daemon=True)

    def start(self, pending: list[str]) -> None:
        for batch_id in pending:
            self._queue.put(batch_id)
        self._thread.start()

    def submit(self, batch_id: str) -> None:
        self._queue.put(batch_id)

    def stop(self) -> None:
        """Stop between two lines; a batch cut short stays unfinished on disk and re-runs on the next start."""
        self._stop.set()
        self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        while (batch_id := self._queue.get()) is not None and not self._stop.is_set():
            try:
                self._run(batch_id)
            except Exception as error:  # noqa: BLE001 - one broken batch must end as failed, not stop the worker
                self._batches.update(
                    batch_id,
                    status=BatchStatus.FAILED,
                    failed_at=_now(),
                    errors=_batch_errors("server_error", f"{type(error).__name__}: {error}"),
                )

    def _run(self, batch_id: str) -> None:
        batch = self._batches.get(batch_id)
        source = self._files.content_path(batch["input_file_id"])
        if not source.exists():
            self._batches.update(
                batch_id,
                status=BatchStatus.FAILED,
                failed_at=_now(),
                errors=_batch_errors("invalid_file", f"input file {batch['input_file_id']} was deleted"),
            )
            return
        with source.open("rb") as lines:
            total = sum(1 for line in lines if line.strip())
        counts = {"total": total, "completed": 0, "failed": 0}
        started = self._batches.advance(batch_id, BatchStatus.IN_PROGRESS, in_progress_at=_now(), request_counts=counts)
        if started == BatchStatus.CANCELLING:
            self._batches.update(batch_id, status=BatchStatus.CANCELLED, cancelled_at=_now())
            return
        output_path, error_path = self._files.scratch_path(), self._files.scratch_path()
        tokens = 0
        try:
            with source.open("rb") as lines, output_path.open("wb") as output, error_path.open("wb") as errors:
                for number, line in enumerate(lines, 1):
                    if not line.strip():
                        continue
                    # wait(0) only reads the flag; with a latency it also ends the wait early on stop.
                    if self._stop.wait(self._latency_seconds):
                        return
                    if self._batches.status(batch_id) == BatchStatus.CANCELLING:
                        break
                    answer = self._answer(line, number, batch["endpoint"])
                    succeeded = answer["response"] is not None and answer["response"]["status_code"] == 200
                    (output if succeeded else errors).write(_dumps(answer) + b"\n")
                    if succeeded:
                        tokens += answer["response"]["body"]["usage"]["total_tokens"]
                    outcome = "completed" if succeeded else "failed"
                    counts = {**counts, outcome: counts[outcome] + 1}
                    self._batches.progress(batch_id, counts)
            self._finish(batch_id, counts, tokens, output_path, error_path)
        finally:
            output_path.unlink(missing_ok=True)
            error_path.unlink(missing_ok=True)

    def _finish(self, batch_id: str, counts: dict[str, int], tokens: int, output_path: Path, error_path: Path) -> None:
        """Publish the output and error files (each only if it has lines, as OpenAI does) and end the batch."""
        finalizing = self._batches.advance(batch_id, BatchStatus.FINALIZING, finalizing_at=_now())
        cancelled = finalizing == BatchStatus.CANCELLING
        output = self._adopt(output_path, batch_id, "output") if counts["completed"] else None
        error = self._adopt(error_path, batch_id, "error") if counts["failed"] else None
        ended = (
            {"status": BatchStatus.CANCELLED, "cancelled_at": _now()}
            if cancelled
            else {"status": BatchStatus.COMPLETED, "completed_at": _now()}
        )
        usage = {
            "input_tokens": tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 0,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": tokens,
        }
        self._batches.update(
            batch_id, request_counts=counts, output_file_id=output, error_file_id=error, usage=usage, **ended
        )

    def _adopt(self, path: Path, batch_id: str, kind: str) -> str:
        return str(self._files.adopt(path, filename=f"{batch_id}_{kind}.jsonl", purpose="batch_output")["id"])

    def _answer(self, line: bytes, number: int, endpoint: str) -> dict[str, Any]:
        """The output or error line for one input line; a bad line is an answer, never an exception."""
        line_id = _new_id("batch_req_")
        try:
            request = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            return _error_line(line_id, None, "invalid_json", f"line {number} is not valid JSON: {error}")
        if not isinstance(request, dict) or not isinstance(request.get("custom_id"), str):
            return _error_line(line_id, None, "missing_custom_id", f"line {number} has no string 'custom_id'")
        custom_id = request["custom_id"]
        method, url = request.get("method"), request.get("url")
        if method != "POST" or url != endpoint:
            message = f"line {number} asks for {method} {url}; this batch runs POST {endpoint}"
            return _error_line(line_id, custom_id, "invalid_url", message)
        try:
            parsed = _parse_embeddings_request(request.get("body"), self._models.specs)
            status, body = 200, _embeddings_body(parsed, self._models.embed(parsed))
        except _ApiError as error:
            status, body = error.status, error.body()
        response = {"status_code": status, "request_id": _new_id("req_"), "body": body}
        return {"id": line_id, "custom_id": custom_id, "response": response, "error": None}


def _error_line(line_id: str, custom_id: str | None, code: str, message: str) -> dict[str, Any]:
    return {"id": line_id, "custom_id": custom_id, "response": None, "error": {"code": code, "message": message}}


# --- HTTP ------------------------------------------------------------------------------------

_Handler = Callable[[Request], Awaitable[Response]]


def _json(value: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(_dumps(value), status_code=status, headers=headers, media_type="application/json")


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as error:
        raise _ApiError(400, f"the request body is not valid JSON: {error}") from error
    if not isinstance(body, dict):
        raise _ApiError(400, "the request body must be a JSON object")
    return body


def _copy_into(source: IO[bytes], path: Path) -> None:
    with path.open("wb") as target:
        shutil.copyfileobj(source, target, COPY_CHUNK_BYTES)


class _Service:
    """The endpoints, over one model pool, file store, batch store and batch worker."""

    def __init__(
        self,
        *,
        models: _Models,
        storage_dir: Path,
        latency_seconds: float,
        fail_first: int,
        fail_status: int,
        retry_after_seconds: float,
        api_key: str | None,
    ) -> None:
        self.models = models
        self.files = _FileStore(storage_dir / "files")
        self.batches = _BatchStore(storage_dir / "batches")
        self.worker = _BatchWorker(self.files, self.batches, models, latency_seconds=latency_seconds)
        self.counters = RequestCounters()
        self.created_at = _now()
        self._latency_seconds = latency_seconds
        self._failures_left = fail_first
        self._fail_status = fail_status
        # Retry-After in whole seconds for standard clients, retry-after-ms for OpenAI's exact wait.
        self._retry_headers = {
            "Retry-After": str(math.ceil(retry_after_seconds)),
            "retry-after-ms": str(round(retry_after_seconds * 1000)),
        }
        self._api_key = api_key

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.worker.start(self.batches.recover())
        try:
            yield
        finally:
            await run_in_threadpool(self.worker.stop)

    def guarded(self, handler: _Handler) -> _Handler:
        """`handler` behind the bearer key, when the server has one."""

        async def endpoint(request: Request) -> Response:
            if self._api_key is not None:
                given = request.headers.get("authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {self._api_key}".encode()):
                    raise _ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
            return await handler(request)

        return endpoint

    async def embeddings(self, request: Request) -> Response:
        if self._failures_left > 0:
            self._failures_left -= 1
            self.counters.rejected += 1
            throttled = self._fail_status == 429
            raise _ApiError(
                self._fail_status,
                "Injected failure: retry after the time in Retry-After",
                kind="requests" if throttled else "server_error",
                code="rate_limit_exceeded" if throttled else "injected_failure",
                headers=self._retry_headers,
            )
        parsed = _parse_embeddings_request(await _json_body(request), self.models.specs)
        counters = self.counters
        counters.in_flight += 1
        counters.max_in_flight = max(counters.max_in_flight, counters.in_flight)
        try:
            if self._latency_seconds:
                await asyncio.sleep(self._latency_seconds)
            # Embedding and encoding run in a thread, so slow requests overlap instead of queueing.
            body = await run_in_threadpool(lambda: _dumps(_embeddings_body(parsed, self.models.embed(parsed))))
        finally:
            counters.in_flight -= 1
        self.counters.embeddings += 1
        self.counters.inputs += len(parsed.texts)
        return Response(body, media_type="application/json")

    async def list_models(self, request: Request) -> Response:
        return _json({"object": "list", "data": [self._model(name) for name in self.models.specs]})

    async def retrieve_model(self, request: Request) -> Response:
        name = request.path_params["model"]
        if name not in self.models.specs:
            raise _ApiError(404, f"The model '{name}' does not exist", param="model", code="model_not_found")
        return _json(self._model(name))

    async def upload_file(self, request: Request) -> Response:
        async with request.form(max_files=1, max_fields=8) as form:
            upload, purpose = form.get("file"), form.get("purpose")
            if not isinstance(upload, UploadFile):
                raise _ApiError(400, "a multipart field 'file' is required", param="file")
            if purpose != "batch":
                raise _ApiError(400, "'purpose' must be 'batch': this server only runs batches", param="purpose")
            scratch = self.files.scratch_path()
            await run_in_threadpool(_copy_into, upload.file, scratch)
        filename = upload.filename or "upload.jsonl"
        return _json(await run_in_threadpool(lambda: self.files.adopt(scratch, filename=filename, purpose="batch")))

    async def retrieve_file(self, request: Request) -> Response:
        return _json(self.files.get(request.path_params["file_id"]))

    async def file_content(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        self.files.get(file_id)
        return FileResponse(self.files.content_path(file_id), media_type="application/octet-stream")

    async def delete_file(self, request: Request) -> Response:
        return _json(self.files.delete(request.path_params["file_id"]))

    async def create_batch(self, request: Request) -> Response:
        body = await _json_body(request)
        if body.get("endpoint") != BATCH_ENDPOINT:
            raise _ApiError(
                400, f"'endpoint' must be {BATCH_ENDPOINT}: the only one this server runs", param="endpoint"
            )
        if body.get("completion_window") != COMPLETION_WINDOW:
            raise _ApiError(400, f"'completion_window' must be '{COMPLETION_WINDOW}'", param="completion_window")
        metadata = body.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise _ApiError(400, "'metadata' must be an object of strings", param="metadata")
        input_file_id = str(body.get("input_file_id"))
        try:
            purpose = self.files.get(input_file_id)["purpose"]
        except _ApiError as error:
            raise _ApiError(400, error.message, param="input_file_id") from error
        if purpose != "batch":
            raise _ApiError(400, f"file {input_file_id} has purpose '{purpose}', not 'batch'", param="input_file_id")
        now = _now()
        batch = {
            "id": _new_id("batch_"),
            "object": "batch",
            "endpoint": BATCH_ENDPOINT,
            "errors": None,
            "input_file_id": input_file_id,
            "completion_window": COMPLETION_WINDOW,
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "expires_at": now + COMPLETION_WINDOW_SECONDS,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "metadata": metadata,
            "usage": None,
            **_fresh_progress(),
        }
        self.batches.create(batch)
        self.worker.submit(batch["id"])
        return _json(batch)

    async def retrieve_batch(self, request: Request) -> Response:
        return _json(self.batches.get(request.path_params["batch_id"]))

    async def list_batches(self, request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit", DEFAULT_BATCH_PAGE_SIZE))
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_BATCH_PAGE_SIZE:
            raise _ApiError(400, f"'limit' must be an integer from 1 to {MAX_BATCH_PAGE_SIZE}", param="limit")
        return _json(self.batches.page(after=request.query_params.get("after"), limit=limit))

    async def cancel_batch(self, request: Request) -> Response:
        return _json(self.batches.cancel(request.path_params["batch_id"]))

    def _model(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self.created_at, "owned_by": "lake-sync"}


async def _api_error_response(request: Request, error: Exception) -> Response:
    api_error = cast(_ApiError, error)
    return _json(api_error.body(), api_error.status, api_error.headers)


async def _http_error_response(request: Request, error: Exception) -> Response:
    """Unknown paths, wrong methods and unreadable forms, in the same error shape as everything else."""
    http_error = cast(HTTPException, error)
    return _json(
        _ApiError(http_error.status_code, http_error.detail).body(), http_error.status_code, http_error.headers
    )


def create_app(
    *,
    models: dict[str, str],
    storage_dir: Path,
    latency_seconds: float = 0.0,
    latency_only_dims: int | None = None,
    fail_first: int = 0,
    fail_status: int = 429,
    retry_after_seconds: float = 1.0,
    api_key: str | None = None,
) -> Starlette:
    """The server as an ASGI app; its lifespan starts and stops the batch worker.

    Args:
        models: served model name → lake-sync model spec; each embedder loads on its first request.
        storage_dir: where files and batches are kept across restarts.
        latency_seconds: added to every embeddings request and batch line, to mimic a remote model.
        latency_only_dims: answer with canned unit vectors of this many dims and run no model at all.
        fail_first: the first N embeddings requests get `fail_status` with `Retry-After`.
        api_key: when set, every request needs `Authorization: Bearer <api_key>`.
    """
    if not models:
        raise ConfigError("the model server needs at least one model")
    if latency_only_dims is not None and latency_only_dims < 1:
        raise ConfigError(f"latency_only_dims must be positive, got {latency_only_dims}")
    if latency_seconds < 0 or fail_first < 0 or retry_after_seconds < 0 or not 400 <= fail_status <= 599:
        raise ConfigError("latency, fail_first and retry_after must not be negative; fail_status must be 4xx or 5xx")
    service = _Service(
        models=_Models(models, latency_only_dims),
        storage_dir=storage_dir,
        latency_seconds=latency_seconds,
        fail_first=fail_first,
        fail_status=fail_status,
        retry_after_seconds=retry_after_seconds,
        api_key=api_key,
    )
    endpoints: list[tuple[str, str, _Handler]] = [
        ("POST", "/v1/embeddings", service.embeddings),
        ("GET", "/v1/models", service.list_models),
        ("GET", "/v1/models/{model}", service.retrieve_model),
        ("POST", "/v1/files", service.upload_file),
        ("GET", "/v1/files/{file_id}", service.retrieve_file),
        ("DELETE", "/v1/files/{file_id}", service.delete_file),
        ("GET", "/v1/files/{file_id}/content", service.file_content),
        ("POST", "/v1/batches", service.create_batch),
        ("GET", "/v1/batches", service.list_batches),
        ("GET", "/v1/batches/{batch_id}", service.retrieve_batch),
        ("POST", "/v1/batches/{batch_id}/cancel", service.cancel_batch),
    ]
    app = Starlette(
        routes=[Route(path, service.guarded(handler), methods=[method]) for method, path, handler in endpoints],
        exception_handlers={_ApiError: _api_error_response, HTTPException: _http_error_response},
        lifespan=service.lifespan,
    )
    app.state.counters = service.counters
    return app


@contextmanager
def running_model_server(*, host: str = DEFAULT_HOST, port: int = 0, **app_options: Any) -> Iterator[ModelServer]:
    """Serve `create_app(**app_options)` with uvicorn in a background thread (port 0: any free port)."""
    app = create_app(**app_options)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=int(DEFAULT_STOP_TIMEOUT_SECONDS),
    )
    server = uvicorn.Server(config)
    threads_before = set(threading.enumerate())
    thread = threading.Thread(target=server.run, name="lake-sync-model-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + DEFAULT_START_TIMEOUT_SECONDS
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not server.started:
        server.should_exit = True
        thread.join(DEFAULT_STOP_TIMEOUT_SECONDS)
        raise EmbedError(f"the model server did not start on {host}:{port}")
    bound_port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield ModelServer(base_url=f"http://{host}:{bound_port}/v1", requests=app.state.counters)
    finally:
        server.should_exit = True
        thread.join(DEFAULT_STOP_TIMEOUT_SECONDS)
        if thread.is_alive():
            raise EmbedError(f"the model server on {host}:{bound_port} did not stop")
        # Starlette's request threads (AnyIO's) are told to stop with the event loop, not joined: wait for
        # them too, so the server leaves no thread behind.
        for leftover in set(threading.enumerate()) - threads_before:
            if leftover.name.startswith("AnyIO worker"):
                leftover.join(DEFAULT_STOP_TIMEOUT_SECONDS)
