"""A small local stand-in for the AI Search Open Platform embedding APIs, for tests.

client → AISearchServer (127.0.0.1, port 0, one thread per request) → deterministic vectors

It answers the documented shapes on `POST /v3/openapi/workspaces/{workspace}/{text-embedding|
multi-modal-embedding}/{service_id}`: bearer API key, at most 32 inputs (400 above), string inputs
for text services, `{"text"}` / `{"image"}` objects (never both) for multimodal ones, and
`{"result": {"embeddings": [{"index", "embedding"}]}, "usage": {"token_count"}, "request_id"}`.
Equal inputs get equal vectors, so tests can compare against `vector_for`.

Faults on demand:
- `fail_first` / `fail_status` / `retry_after`: the first N requests get that status (429 by
  default) with a `Retry-After` header, as a throttled account does;
- `malformed`: every answer is broken in one named way (see `MALFORMED_MODES`);
- `latency_seconds`: hold every request, to observe requests in flight;
- a wrong key gets 401 with the received Authorization header echoed in the message, the worst
  case for a client that quotes server messages in its errors.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import numpy as np
import orjson

MAX_INPUTS = 32
DOCUMENTED_DIMS = {
    "ops-text-embedding-001": 1536,
    "ops-text-embedding-002": 1024,
    "ops-qwen3-embedding-0.6b": 1024,
    "ops-m2-encoder": 768,
    "ops-gme-qwen2-vl-2b-instruct": 1536,
}
MULTIMODAL = frozenset({"ops-m2-encoder", "ops-gme-qwen2-vl-2b-instruct"})
MALFORMED_MODES = ("missing_result", "one_short", "wrong_dims", "non_numeric", "repeated_index", "not_json")


def vector_for(content: str, dims: int) -> list[float]:
    """The unit vector the server answers for a text or an image string."""
    seed = int.from_bytes(hashlib.sha256(content.encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dims)
    return (vector / np.linalg.norm(vector)).astype(np.float32).tolist()


@dataclass
class RequestRecord:
    """One request as the server saw it."""

    path: str
    started: float
    finished: float = 0.0
    status: int = 0
    inputs: list[Any] = field(default_factory=list)
    input_type: str | None = None


@dataclass
class ServerLog:
    """What the server saw and said, for assertions (times are `time.monotonic()`)."""

    requests: list[RequestRecord] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    tokens_reported: int = 0


class AISearchServer:
    """A threaded AI Search-shaped HTTP server; use as a context manager."""

    def __init__(
        self,
        *,
        api_key: str = "test-key",
        workspace: str = "default",
        dims: dict[str, int] | None = None,
        fail_first: int = 0,
        fail_status: int = 429,
        retry_after: str | None = "1",
        malformed: str | None = None,
        latency_seconds: float = 0.0,
    ) -> None:
        if malformed is not None and malformed not in MALFORMED_MODES:
            raise ValueError(f"malformed must be one of {MALFORMED_MODES}")
        self.api_key = api_key
        self.workspace = workspace
        self.dims = {**DOCUMENTED_DIMS, **(dims or {})}
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.retry_after = retry_after
        self.malformed = malformed
        self.latency_seconds = latency_seconds
        self.log = ServerLog()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        # A short poll keeps `shutdown` (and so every test) fast.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="aisearch-server", daemon=True
        )

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> AISearchServer:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        """Status, extra headers and body for one request; also records it."""
        record = RequestRecord(path=path, started=time.monotonic())
        with self._lock:
            self.log.requests.append(record)
            number = len(self.log.requests)
            self.log.in_flight += 1
            self.log.max_in_flight = max(self.log.max_in_flight, self.log.in_flight)
        try:
            if self.latency_seconds:
                time.sleep(self.latency_seconds)
            status, extra, payload = self._answer(number, path, headers, body, record)
        finally:
            with self._lock:
                self.log.in_flight -= 1
        record.status, record.finished = status, time.monotonic()
        return status, extra, payload if isinstance(payload, bytes) else orjson.dumps(payload)

    def _answer(
        self, number: int, path: str, headers: dict[str, str], body: bytes, record: RequestRecord
    ) -> tuple[int, dict[str, str], Any]:
        request_id = str(uuid.uuid4())
        if headers.get("authorization") != f"Bearer {self.api_key}":
            received = headers.get("authorization", "")
            return 401, {}, _error(request_id, "InvalidApiKey", f"api key not valid: {received!r}")
        if number <= self.fail_first:
            extra = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
            return (
                self.fail_status,
                extra,
                _error(request_id, "Throttling.User", "request was denied due to throttling"),
            )
        parts = path.strip("/").split("/")
        if len(parts) != 6 or parts[:3] != ["v3", "openapi", "workspaces"] or parts[3] != self.workspace:
            return 404, {}, _error(request_id, "NotFound", f"no such path {path}")
        kind, service = parts[4], parts[5]
        if service not in self.dims or kind != ("multi-modal-embedding" if service in MULTIMODAL else "text-embedding"):
            return 404, {}, _error(request_id, "ServiceNotFound", f"no {kind} service {service}")
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            return 400, {}, _error(request_id, "InvalidParameter", "body is not JSON")
        inputs = request.get("input") if isinstance(request, dict) else None
        record.inputs = inputs if isinstance(inputs, list) else []
        record.input_type = request.get("input_type") if isinstance(request, dict) else None
        problem = self._input_problem(inputs, multimodal=service in MULTIMODAL, request=request)
        if problem:
            return 400, {}, _error(request_id, "InvalidParameter", problem)
        contents = [item if isinstance(item, str) else item.get("text", item.get("image")) for item in inputs]
        tokens = sum(len(item.split()) for item in inputs if isinstance(item, str))
        tokens += sum(len(item["text"].split()) for item in inputs if isinstance(item, dict) and "text" in item)
        dims = self.dims[service]
        embeddings: list[dict[str, Any]] = [
            {"index": index, "embedding": vector_for(content, dims)} for index, content in enumerate(contents)
        ]
        if self.malformed == "not_json":
            return 200, {}, b"<html>gateway says hello</html>"
        if self.malformed == "missing_result":
            return 200, {}, {"request_id": request_id, "latency": 1, "usage": {"token_count": tokens}}
        if self.malformed == "one_short":
            embeddings = embeddings[:-1]
        elif self.malformed == "wrong_dims":
            embeddings = [{**item, "embedding": item["embedding"][:-1]} for item in embeddings]
        elif self.malformed == "non_numeric":
            embeddings[0]["embedding"] = ["x"] * dims
        elif self.malformed == "repeated_index":
            embeddings = [{**item, "index": 0} for item in embeddings]
        with self._lock:
            self.log.tokens_reported += tokens
        return (
            200,
            {},
            {
                "request_id": request_id,
                "latency": 1,
                "usage": {"token_count": tokens},
                "result": {"embeddings": embeddings},
            },
        )

    @staticmethod
    def _input_problem(inputs: Any, *, multimodal: bool, request: dict[str, Any]) -> str | None:
        if not isinstance(inputs, list) or not inputs:
            return "input must be a non-empty array"
        if len(inputs) > MAX_INPUTS:
            return f"input has {len(inputs)} items; at most {MAX_INPUTS} are allowed"
        if not multimodal:
            if request.get("input_type", "document") not in ("document", "query"):
                return "input_type must be document or query"
            return None if all(isinstance(item, str) for item in inputs) else "input items must be strings"
        for item in inputs:
            if not isinstance(item, dict) or len(item.keys() & {"text", "image"}) != 1:
                return "each input item must have exactly one of text or image"
            if "image" in item and not str(item["image"]).startswith(("data:image/", "http://", "https://")):
                return "image must be a URL or a base64 data URI"
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {key.lower(): value for key, value in self.headers.items()}
                status, extra, payload = server.answer(self.path, headers, body)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for key, value in extra.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    # The client gave up (its timeout); nothing to answer.
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def _error(request_id: str, code: str, message: str) -> dict[str, Any]:
    return {"request_id": request_id, "latency": 0, "code": code, "message": message}
