"""The bulk writer: chunk actions by documents and bytes, keep a few requests in flight,
retry what the cluster asks to retry, and yield one outcome per action. Documents the index
rejects (400 and the like) are failed outcomes; a cluster still refusing after the retries
(429/5xx/connection errors) raises TargetError.

IndexAction* → serialise (orjson) → chunks ≤ N docs / B bytes → ≤ K `_bulk` requests in flight
             → per-item retry of 429/502/503/504 with capped exponential backoff → IndexOutcome*

Written by hand because `elasticsearch.helpers` offers requests in flight (`parallel_bulk`)
or retries (`streaming_bulk`), not both, and serialises each document with the client's
JSON serializer on the caller's thread; the sync needs all three to keep up with the cluster.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from elasticsearch import ApiError, AuthenticationException, AuthorizationException, Elasticsearch, TransportError
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from lake_sync.errors import TargetError

RETRY_STATUSES = frozenset({429, 502, 503, 504})
DEFAULT_BACKOFF_INITIAL = 0.5
DEFAULT_BACKOFF_MAX = 30.0


@dataclass(frozen=True)
class IndexAction:
    """One document operation: `index` replaces the document, `delete` removes it."""

    op: Literal["index", "delete"]
    id: str
    body: dict[str, Any] | None = None


@dataclass(frozen=True)
class IndexOutcome:
    """What the cluster finally said about one action; the action travels along for dead letters."""

    action: IndexAction
    ok: bool
    status: int
    reason: str | None = None


@dataclass(frozen=True)
class BulkLimits:
    max_documents: int
    max_bytes: int
    max_in_flight: int
    max_retries: int
    backoff_initial: float = DEFAULT_BACKOFF_INITIAL
    backoff_max: float = DEFAULT_BACKOFF_MAX


class _RetryLater(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BulkWriter:
    """Writes actions to one index and reports every action's outcome, in order."""

    def __init__(self, client: Elasticsearch, index: str, limits: BulkLimits) -> None:
        self._client = client
        self._index = index
        self._limits = limits
        self.requests = 0
        #: Time the caller spent blocked on the cluster, i.e. not overlapped with producing actions.
        self.wait_seconds = 0.0

    def write(self, actions: Iterable[IndexAction]) -> Iterator[IndexOutcome]:
        """Send `actions`; yields outcomes while later actions are still being produced."""
        in_flight: deque[Future[list[IndexOutcome]]] = deque()
        with ThreadPoolExecutor(self._limits.max_in_flight, thread_name_prefix="lake-sync-bulk") as pool:
            try:
                for chunk in self._chunks(actions):
                    if len(in_flight) >= self._limits.max_in_flight:
                        yield from self._result(in_flight.popleft())
                    in_flight.append(pool.submit(self._send, *chunk))
                while in_flight:
                    yield from self._result(in_flight.popleft())
            finally:
                for future in in_flight:
                    future.cancel()

    def _result(self, future: Future[list[IndexOutcome]]) -> list[IndexOutcome]:
        started = time.perf_counter()
        try:
            return future.result()
        finally:
            self.wait_seconds += time.perf_counter() - started

    def _chunks(self, actions: Iterable[IndexAction]) -> Iterator[tuple[list[IndexAction], list[bytes]]]:
        chunk: list[IndexAction] = []
        lines: list[bytes] = []
        size = 0
        for action in actions:
            line = _serialise(action)
            if chunk and (len(chunk) >= self._limits.max_documents or size + len(line) > self._limits.max_bytes):
                yield chunk, lines
                chunk, lines, size = [], [], 0
            chunk.append(action)
            lines.append(line)
            size += len(line)
        if chunk:
            yield chunk, lines

    def _send(self, actions: list[IndexAction], lines: list[bytes]) -> list[IndexOutcome]:
        outcomes: dict[int, IndexOutcome] = {}
        pending = list(range(len(actions)))
        retrying = Retrying(
            stop=stop_after_attempt(self._limits.max_retries + 1),
            wait=wait_exponential_jitter(initial=self._limits.backoff_initial, max=self._limits.backoff_max),
            retry=retry_if_exception_type(_RetryLater),
        )
        try:
            for attempt in retrying:
                with attempt:
                    self._attempt(actions, lines, pending, outcomes)
        except RetryError as error:
            # A cluster that keeps refusing is an outage, not bad data: fail the run (the cursor
            # stays, and a re-run is idempotent) rather than dead-letter documents that are fine.
            reason = error.last_attempt.exception().reason  # type: ignore[union-attr]
            raise TargetError(
                f"bulk requests to '{self._index}' still failed after {self._limits.max_retries} retries "
                f"({len(pending)} of {len(actions)} documents unacknowledged): {reason}"
            ) from None
        return [outcomes[position] for position in range(len(actions))]

    def _attempt(
        self, actions: list[IndexAction], lines: list[bytes], pending: list[int], outcomes: dict[int, IndexOutcome]
    ) -> None:
        """Post the pending actions once, record their outcomes, and leave in `pending` only
        those to retry, raising _RetryLater if there are any."""
        self.requests += 1
        try:
            response = self._client.bulk(
                index=self._index,
                operations=b"".join(lines[position] for position in pending),
                filter_path="errors,items.*.status,items.*.error",
            )
        except (AuthenticationException, AuthorizationException) as error:
            raise TargetError(
                f"Elasticsearch refused the bulk request to '{self._index}' ({error.meta.status})"
            ) from None
        except TransportError as error:
            raise _RetryLater(f"connection error: {type(error).__name__}") from None
        except ApiError as error:
            if error.meta.status in RETRY_STATUSES:
                raise _RetryLater(f"bulk request answered {error.meta.status}") from None
            for position in pending:
                outcomes[position] = IndexOutcome(actions[position], False, error.meta.status, _reason(error.body))
            pending.clear()
            return
        if not response.get("errors"):
            for position in pending:
                outcomes[position] = IndexOutcome(actions[position], True, 200)
            pending.clear()
            return
        retry = []
        for position, item in zip(pending, response["items"], strict=True):
            result = next(iter(item.values()))
            status = int(result.get("status", 0))
            action = actions[position]
            if status < 300 or (status == 404 and action.op == "delete"):
                outcomes[position] = IndexOutcome(action, True, status)
            elif status in RETRY_STATUSES:
                retry.append(position)
                outcomes[position] = IndexOutcome(action, False, status, _reason(result.get("error")))
            else:
                outcomes[position] = IndexOutcome(action, False, status, _reason(result.get("error")))
        pending[:] = retry
        if retry:
            raise _RetryLater(f"{len(retry)} item(s) answered {outcomes[retry[0]].status}")


def _serialise(action: IndexAction) -> bytes:
    header = orjson.dumps({action.op: {"_id": action.id}})
    if action.op == "delete":
        return header + b"\n"
    return header + b"\n" + orjson.dumps(action.body, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"


def _reason(error: Any) -> str:
    if isinstance(error, dict):
        detail = error.get("error", error)
        if isinstance(detail, dict):
            return f"{detail.get('type', 'error')}: {detail.get('reason', '')}".strip()
        return str(detail)
    return str(error)
