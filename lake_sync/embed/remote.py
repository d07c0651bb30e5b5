"""What every remote embedding provider needs around its HTTP call: a rate cap, retries and answer checks.

batch → RateLimiter (spaced starts) → send() → TransientError? → wait (backoff | Retry-After) → send() … → checked rows

Providers (`openai_compatible`, `aisearch`) only build a request and turn the answer into a list of
`{"index", "embedding"}` items; `RemoteCaller` decides when a request may start and whether a failure
is worth another attempt, and `vectors_from_items` refuses any answer that is not exactly one
finite vector of the expected dimension per input. Error messages name the model and never carry
the API key, even when a server echoes it back.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import logging
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from lake_sync.embed.base import Embedder
from lake_sync.embed.images import undecodable_pixels
from lake_sync.errors import EmbedError, UndecodableImageError

if TYPE_CHECKING:
    from lake_sync.config import AISearchConnection, OpenAIConnection

T = TypeVar("T")

logger = logging.getLogger(__name__)

# Full-jitter exponential backoff: retry n waits a random time in [0, 0.5 * 2**(n-1)] s, at most 30 s,
# so callers that failed together do not come back together.
DEFAULT_BACKOFF_SECONDS = 0.5
DEFAULT_MAX_BACKOFF_SECONDS = 30.0
# A server asking for a longer pause than this is treated as down: the run fails now with a clear
# message instead of sleeping for an hour while holding a sync open.
DEFAULT_MAX_RETRY_AFTER_SECONDS = 300.0
# 501 (not implemented) is permanent; every other 5xx may pass.
_TRANSIENT_STATUSES = frozenset({408, 429})
_REDACTED = "***"


class TransientError(Exception):
    """A failure another attempt may cure: 408, 429, 5xx, a timeout or a dropped connection."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def is_transient_status(status: int) -> bool:
    """Whether an HTTP status is worth retrying."""
    return status in _TRANSIENT_STATUSES or (status >= 500 and status != 501)


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms` (OpenAI) or `Retry-After` (seconds or an HTTP date), if given."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass
    value = (headers.get("retry-after") or "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.now(UTC).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)


class RateLimiter:
    """Spaces request starts at least 1/`requests_per_second` apart across threads; `hold` pauses all starts.

    Spacing (rather than a bucket that allows bursts) keeps every one-second window within the
    cap, which is how per-account QPS quotas such as AI Search's are enforced.
    """

    def __init__(self, requests_per_second: float | None) -> None:
        self.interval = 1.0 / requests_per_second if requests_per_second else 0.0
        self._next_start = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        """Block until this caller may start a request."""
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_start)
            self._next_start = start + self.interval
        if start > now:
            time.sleep(start - now)

    def hold(self, seconds: float) -> None:
        """Start no request for `seconds`: the server said it is overloaded, so nobody should knock."""
        with self._lock:
            self._next_start = max(self._next_start, time.monotonic() + seconds)


class RemoteCaller:
    """Rate-limited, retried calls for one model, shared by all its worker threads."""

    def __init__(
        self,
        model_id: str,
        *,
        requests_per_second: float | None,
        max_retries: int,
        secrets: Iterable[str | None] = (),
        backoff_seconds: float = DEFAULT_BACKOFF_SECONDS,
        max_backoff_seconds: float = DEFAULT_MAX_BACKOFF_SECONDS,
        max_retry_after_seconds: float = DEFAULT_MAX_RETRY_AFTER_SECONDS,
    ) -> None:
        self.model_id = model_id
        self.max_retries = max_retries
        self.limiter = RateLimiter(requests_per_second)
        self.max_retry_after_seconds = max_retry_after_seconds
        self._secrets = [secret for secret in secrets if secret]
        self._backoff = wait_random_exponential(multiplier=backoff_seconds, max=max_backoff_seconds)
        self._lock = threading.Lock()
        #: HTTP requests sent, and how many of them were retries.
        self.requests = 0
        self.retries = 0

    def call(self, send: Callable[[], T]) -> T:
        """`send()` once the rate cap allows, again after each TransientError, up to `max_retries` more times."""
        retrying = Retrying(
            retry=retry_if_exception_type(TransientError),
            stop=stop_after_attempt(self.max_retries + 1) | self._asked_to_wait_too_long,
            wait=self._wait,
            before_sleep=self._before_sleep,
            reraise=True,
        )
        try:
            return retrying(self._attempt, send)
        except TransientError as error:
            attempts = retrying.statistics.get("attempt_number", 1)
            if error.retry_after is not None and error.retry_after > self.max_retry_after_seconds:
                raise EmbedError(
                    f"model {self.model_id}: {self.redact(error.reason)}; the server asked to retry after "
                    f"{error.retry_after:.0f} s, longer than the {self.max_retry_after_seconds:.0f} s lake-sync waits"
                ) from None
            raise EmbedError(
                f"model {self.model_id}: {self.redact(error.reason)} (gave up after {attempts} attempt(s); "
                "the connection's max_retries, timeout, requests_per_second and max_in_flight tune this)"
            ) from None

    def fail(self, problem: str) -> EmbedError:
        """An EmbedError naming the model, with any secret in `problem` masked."""
        return EmbedError(f"model {self.model_id}: {self.redact(problem)}")

    def redact(self, text: str) -> str:
        """`text` with every configured secret replaced by ***."""
        for secret in self._secrets:
            text = text.replace(secret, _REDACTED)
        return text

    def _attempt(self, send: Callable[[], T]) -> T:
        self.limiter.acquire()
        with self._lock:
            self.requests += 1
        try:
            return send()
        except TransientError as error:
            # A pause longer than the cap ends the call instead (see `call`), so it must not stall later calls.
            if error.retry_after and error.retry_after <= self.max_retry_after_seconds:
                self.limiter.hold(error.retry_after)
            raise

    def _wait(self, state: RetryCallState) -> float:
        backoff = self._backoff(state)
        error = state.outcome.exception() if state.outcome else None
        retry_after = error.retry_after if isinstance(error, TransientError) else None
        return max(backoff, retry_after or 0.0)

    def _asked_to_wait_too_long(self, state: RetryCallState) -> bool:
        error = state.outcome.exception() if state.outcome else None
        return (
            isinstance(error, TransientError)
            and error.retry_after is not None
            and error.retry_after > self.max_retry_after_seconds
        )

    def _before_sleep(self, state: RetryCallState) -> None:
        with self._lock:
            self.retries += 1
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        logger.warning(
            "model %s: %s; retry %d of %d in %.1f s",
            self.model_id,
            self.redact(str(error)),
            state.attempt_number,
            self.max_retries,
            wait,
        )


def vectors_from_items(items: Any, *, count: int, dims: int | None, fail: Callable[[str], EmbedError]) -> np.ndarray:
    """One float32 row per input from `[{"index": i, "embedding": [...] | base64}]`, in input order.

    Anything else (missing or extra items, repeated or out-of-range indexes, non-numeric, non-finite
    or wrongly sized vectors) raises `fail(problem)`: a model that answers wrongly must stop the
    run rather than put misplaced vectors into the index.
    """
    if not isinstance(items, list):
        raise fail(f"answer has no list of embeddings (got {type(items).__name__})")
    if len(items) != count:
        raise fail(f"answered {len(items)} embeddings for {count} inputs")
    rows: list[Any] = [None] * count
    for position, item in enumerate(items):
        if not isinstance(item, Mapping) or "embedding" not in item:
            raise fail(f"embedding #{position} has no 'embedding' field")
        index = item.get("index", position)
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
            raise fail(f"embedding #{position} has index {index!r}, expected 0..{count - 1}")
        if rows[index] is not None:
            raise fail(f"index {index} is answered twice")
        rows[index] = _decode(item["embedding"], index, fail)
    lengths = {len(row) for row in rows}
    if len(lengths) != 1:
        raise fail(f"vectors of different lengths {sorted(lengths)} in one answer")
    length = lengths.pop()
    if dims is not None and length != dims:
        raise fail(f"answered {length}-dim vectors, expected {dims}")
    if length == 0:
        raise fail("answered empty vectors")
    vectors = np.stack(rows)
    if not np.isfinite(vectors).all():
        raise fail("answered NaN or infinite values")
    return vectors


def _decode(embedding: Any, index: int, fail: Callable[[str], EmbedError]) -> np.ndarray:
    if isinstance(embedding, str):
        # encoding_format=base64: little-endian float32, as the OpenAI API defines it.
        try:
            raw = base64.b64decode(embedding, validate=True)
        except (binascii.Error, ValueError):
            raise fail(f"embedding {index} is a string but not base64") from None
        if len(raw) % 4:
            raise fail(f"embedding {index} has {len(raw)} bytes, not a whole number of float32 values")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if not isinstance(embedding, list):
        raise fail(f"embedding {index} is {type(embedding).__name__}, expected a list of numbers")
    try:
        # Without a dtype, numpy reports strings, None or nested lists as a non-numeric kind instead of casting them.
        row = np.asarray(embedding)
    except ValueError:
        raise fail(f"embedding {index} is not a flat list of numbers") from None
    if row.ndim != 1 or (row.size and row.dtype.kind not in "iuf"):
        raise fail(f"embedding {index} is not a flat list of numbers")
    return row.astype(np.float32)


def image_data_uri(image: bytes) -> str:
    """An encoded image as a `data:` URI, its media type sniffed from the magic bytes.

    Raises UndecodableImageError for an image whose pixels do not decode, before any request.
    """
    problem = undecodable_pixels(image)
    if problem is not None:
        raise UndecodableImageError(image, problem)
    return f"data:{_media_type(image)};base64,{base64.b64encode(image).decode('ascii')}"


def _media_type(image: bytes) -> str:
    if image.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if image.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if image.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if image[:4] == b"RIFF" and image[8:12] == b"WEBP":
        return "image/webp"
    if image.startswith(b"BM"):
        return "image/bmp"
    return "application/octet-stream"


PROBE_TEXT = "dimension probe"


class RemoteEmbedder(Embedder):
    """An embedder behind an HTTP API: one RemoteCaller (rate cap, retries, redaction) per model,
    request counters, a dims probe and a connection pool to close."""

    def __init__(
        self, model_id: str, *, connection: OpenAIConnection | AISearchConnection, api_key: str | None
    ) -> None:
        super().__init__()
        self.model_id = model_id
        self.batch_size = connection.batch_size
        self.max_in_flight = connection.max_in_flight
        self._caller = RemoteCaller(
            model_id,
            requests_per_second=connection.requests_per_second,
            max_retries=connection.max_retries,
            secrets=[api_key],
        )

    @property
    def requests(self) -> int:
        """HTTP requests sent, retries included."""
        return self._caller.requests

    @property
    def retries(self) -> int:
        return self._caller.retries

    @abstractmethod
    def close(self) -> None:
        """Close the connection pool."""

    @abstractmethod
    def _texts_request(self, texts: list[str], *, dims: int | None) -> np.ndarray:
        """One embeddings request for texts (through `self._caller`), checked against `dims` if known."""

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        # Cut here too (a no-op for texts a sync already fitted), so no caller has a request refused for length.
        return self._texts_request(self.text_tokens.fit(texts).texts, dims=self.dims)

    def _probe_dims(self) -> int:
        """One (counted) call to learn the vector size of a model nobody configured dims for."""
        vectors = self._texts_request([PROBE_TEXT], dims=None)
        with self._counter_lock:
            self.calls += 1
        return int(vectors.shape[1])

    def _count_usage(self, tokens: Any) -> None:
        if isinstance(tokens, int) and not isinstance(tokens, bool):
            self.count_tokens(tokens)
