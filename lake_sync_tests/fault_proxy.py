"""A small HTTP proxy in front of the real search server that injects the faults it will not produce.

client → FaultProxy (127.0.0.1, port 0, one thread per connection) → noida-db

It forwards every request unchanged except where a fault is configured:
- `reject_bulk_requests`: answer the first N `_bulk` requests with `reject_status` (429, 503, ...);
- `reject_bulk_items`: for the first N `_bulk` requests, reject every other operation with a
  per-item `reject_item_status` (429, or 400 as for a document the index cannot parse) inside
  an otherwise valid bulk response, forwarding only the accepted operations
  (so a document the proxy rejected really is missing until the client retries it);
- `require_basic_auth`: answer 401 unless the request carries these credentials;
- `bulk_delay`: hold every `_bulk` request this long, to observe requests in flight;
- `go_dark_at_bulk`: from the Nth `_bulk` request on, drop every connection without answering,
  as a cluster that went away mid-run would;
- `cut_bodies`: for the first N GET responses longer than `cut_after_bytes`, send the headers (with the
  full Content-Length) and only `cut_after_bytes` of the body, then drop the connection, as a network
  that failed mid-download would; `on_cut` runs after the partial body is sent, before the drop.
It forwards any HTTP API, so it also stands in front of a local S3 server.
"""

from __future__ import annotations

import base64
import http.client
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import orjson

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
_ES_HEADERS = {
    "Content-Type": "application/vnd.elasticsearch+json;compatible-with=8",
    "X-Elastic-Product": "Elasticsearch",
}


@dataclass
class ProxyLog:
    """What the proxy saw, for assertions."""

    bulk_requests: int = 0
    bulk_bodies: list[bytes] = field(default_factory=list)
    rejected_ids: list[str] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    paths: list[str] = field(default_factory=list)
    #: Each request's headers, in the order of `paths`.
    headers: list[dict[str, str]] = field(default_factory=list)
    cuts: int = 0


class FaultProxy:
    """A threaded proxy to `upstream` with configurable faults; use as a context manager."""

    def __init__(
        self,
        upstream: str,
        *,
        reject_bulk_requests: int = 0,
        reject_status: int = 429,
        reject_bulk_items: int = 0,
        reject_item_status: int = 429,
        require_basic_auth: tuple[str, str] | None = None,
        bulk_delay: float = 0.0,
        go_dark_at_bulk: int = 0,
        cut_bodies: int = 0,
        cut_after_bytes: int = 1024,
        on_cut: Callable[[], None] | None = None,
    ) -> None:
        target = urlsplit(upstream)
        self.upstream_host = target.hostname or "127.0.0.1"
        self.upstream_port = target.port or 80
        self.reject_bulk_requests = reject_bulk_requests
        self.reject_status = reject_status
        self.reject_bulk_items = reject_bulk_items
        self.reject_item_status = reject_item_status
        self.expected_authorization = (
            None
            if require_basic_auth is None
            else "Basic " + base64.b64encode(":".join(require_basic_auth).encode()).decode()
        )
        self.bulk_delay = bulk_delay
        self.go_dark_at_bulk = go_dark_at_bulk
        self.cut_bodies = cut_bodies
        self.cut_after_bytes = cut_after_bytes
        self.on_cut = on_cut
        self.dark = False
        self.log = ProxyLog()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fault-proxy", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- called from handler threads ------------------------------------------------------------

    def handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes] | None:
        """The response to send, or None to drop the connection without one."""
        is_bulk = urlsplit(path).path.rstrip("/").endswith("/_bulk")
        with self._lock:
            self.log.paths.append(f"{method} {path}")
            self.log.headers.append(dict(headers))
            if is_bulk and self.go_dark_at_bulk and self.log.bulk_requests + 1 >= self.go_dark_at_bulk:
                self.dark = True
            if self.dark:
                return None
        if self.expected_authorization is not None and headers.get("authorization") != self.expected_authorization:
            return 401, {**_ES_HEADERS, "WWW-Authenticate": 'Basic realm="security"'}, _error(401, "security_exception")
        if is_bulk:
            return self._bulk(method, path, headers, body)
        return self.forward(method, path, headers, body)

    def forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
        try:
            connection.request(method, path, body=body or None, headers=headers)
            response = connection.getresponse()
            data = response.read()
            kept = {name: value for name, value in response.getheaders() if name.lower() not in _HOP_BY_HOP}
            if method == "HEAD" and response.getheader("content-length") is not None:
                # A HEAD answer has no body, but its Content-Length is the object's size (S3 HeadObject).
                kept["Content-Length"] = response.getheader("content-length") or "0"
            return response.status, kept, data
        finally:
            connection.close()

    def cut_at(self, method: str, data: bytes) -> int | None:
        """How many bytes of this response body to send before dropping the connection, or None for all."""
        with self._lock:
            if method != "GET" or self.log.cuts >= self.cut_bodies or len(data) <= self.cut_after_bytes:
                return None
            self.log.cuts += 1
        return self.cut_after_bytes

    def _bulk(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            self.log.bulk_requests += 1
            number = self.log.bulk_requests
            self.log.bulk_bodies.append(body)
            self.log.in_flight += 1
            self.log.max_in_flight = max(self.log.max_in_flight, self.log.in_flight)
        try:
            if self.bulk_delay:
                time.sleep(self.bulk_delay)
            if number <= self.reject_bulk_requests:
                return (
                    self.reject_status,
                    dict(_ES_HEADERS),
                    _error(self.reject_status, "es_rejected_execution_exception"),
                )
            if number <= self.reject_bulk_items:
                return self._reject_every_other_item(method, path, headers, body)
            return self.forward(method, path, headers, body)
        finally:
            with self._lock:
                self.log.in_flight -= 1

    def _reject_every_other_item(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        operations = _operations(body)
        accepted = [lines for position, lines in enumerate(operations) if position % 2 == 1]
        items: list[dict[str, Any]] = []
        upstream_items: list[dict[str, Any]] = []
        status, response_headers = 200, dict(_ES_HEADERS)
        if accepted:
            status, response_headers, data = self.forward(
                method, path, headers, b"".join(b"".join(a) for a in accepted)
            )
            upstream_items = list(orjson.loads(data).get("items", []))
        upstream = iter(upstream_items)
        for position, lines in enumerate(operations):
            header = orjson.loads(lines[0])
            op = next(iter(header))
            if position % 2 == 1:
                items.append(next(upstream))
                continue
            with self._lock:
                self.log.rejected_ids.append(header[op]["_id"])
            rejection = {"type": "es_rejected_execution_exception", "reason": "rejected execution of bulk item"}
            if self.reject_item_status == 400:
                rejection = {"type": "document_parsing_exception", "reason": "failed to parse field [price]"}
            items.append({op: {"status": self.reject_item_status, "error": rejection}})
        return status, response_headers, orjson.dumps({"errors": True, "items": items})


def _operations(body: bytes) -> list[list[bytes]]:
    """Split an NDJSON bulk body into operations: the action line, plus the source line unless it is a delete."""
    lines = [line + b"\n" for line in body.split(b"\n") if line.strip()]
    operations, position = [], 0
    while position < len(lines):
        op = next(iter(orjson.loads(lines[position])))
        width = 1 if op == "delete" else 2
        operations.append(lines[position : position + width])
        position += width
    return operations


def _error(status: int, kind: str) -> bytes:
    return orjson.dumps({"error": {"type": kind, "reason": f"injected by the test proxy ({status})"}, "status": status})


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {name.lower(): value for name, value in self.headers.items() if name.lower() not in _HOP_BY_HOP}
            response = proxy.handle(self.command, self.path, headers, body)
            if response is None:
                self.close_connection = True
                return
            status, response_headers, data = response
            self.send_response(status)
            for name, value in response_headers.items():
                self.send_header(name, value)
            if "Content-Length" not in response_headers:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            cut = proxy.cut_at(self.command, data)
            if cut is not None:
                self.wfile.write(data[:cut])
                self.wfile.flush()
                if proxy.on_cut is not None:
                    proxy.on_cut()
                self.close_connection = True
                return
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
