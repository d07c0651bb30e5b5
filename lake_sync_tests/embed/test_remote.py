"""The remote-call machinery without a server: rate spacing, retry decisions, answer checks, Retry-After.

The HTTP paths through it are covered in test_aisearch.py and test_openai_compatible.py.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from typing import Any

import numpy as np
import pytest
from PIL import Image

from lake_sync.embed.remote import (
    RateLimiter,
    RemoteCaller,
    TransientError,
    image_data_uri,
    is_transient_status,
    parse_retry_after,
    vectors_from_items,
)
from lake_sync.errors import EmbedError


def fail(problem: str) -> EmbedError:
    return EmbedError(f"model m: {problem}")


def test_rate_limiter_spaces_starts_across_threads() -> None:
    limiter = RateLimiter(50.0)
    starts: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            limiter.acquire()
            with lock:
                starts.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    starts.sort()
    gaps = np.diff(starts)
    assert len(starts) == 20
    assert starts[-1] - starts[0] >= 19 / 50 * 0.95
    assert gaps.min() >= 0.5 / 50


def test_rate_limiter_hold_pauses_every_caller() -> None:
    limiter = RateLimiter(None)
    limiter.hold(0.2)
    started = time.monotonic()
    limiter.acquire()
    assert time.monotonic() - started >= 0.19


def test_remote_caller_retries_transient_errors_then_answers() -> None:
    caller = RemoteCaller("m", requests_per_second=None, max_retries=3, backoff_seconds=0.01)
    outcomes: list[Any] = [TransientError("HTTP 503"), TransientError("HTTP 429", retry_after=0.1), "vectors"]

    def send() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    started = time.monotonic()
    assert caller.call(send) == "vectors"
    assert time.monotonic() - started >= 0.1
    assert (caller.requests, caller.retries) == (3, 2)


def test_remote_caller_does_not_retry_an_embed_error() -> None:
    caller = RemoteCaller("m", requests_per_second=None, max_retries=3)

    def send() -> None:
        raise caller.fail("HTTP 400: bad input")

    with pytest.raises(EmbedError, match="model m: HTTP 400: bad input"):
        caller.call(send)
    assert caller.requests == 1


def test_remote_caller_masks_secrets_in_errors() -> None:
    caller = RemoteCaller("m", requests_per_second=None, max_retries=0, secrets=["s3cr3t", None])

    def send() -> None:
        raise TransientError("HTTP 500: bad key Bearer s3cr3t")

    with pytest.raises(EmbedError) as raised:
        caller.call(send)
    assert "s3cr3t" not in str(raised.value) and "Bearer ***" in str(raised.value)


@pytest.mark.parametrize(
    ("status", "transient"),
    [(408, True), (429, True), (500, True), (503, True), (501, False), (400, False), (401, False), (404, False)],
)
def test_transient_statuses_are_timeouts_throttling_and_server_errors(status: int, transient: bool) -> None:
    assert is_transient_status(status) is transient


def test_retry_after_is_read_as_seconds_milliseconds_or_an_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after({"retry-after": "2.5"}) == 2.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 30))
    assert parse_retry_after({"retry-after": date}, now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_vectors_come_back_in_input_order_from_floats_or_base64() -> None:
    second = base64.b64encode(np.array([3, 4], dtype="<f4").tobytes()).decode()
    items = [{"index": 1, "embedding": second}, {"index": 0, "embedding": [1, 2.0]}]
    vectors = vectors_from_items(items, count=2, dims=2, fail=fail)
    assert vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors, [[1, 2], [3, 4]])


@pytest.mark.parametrize(
    ("items", "problem"),
    [
        ({"embeddings": []}, "answer has no list of embeddings"),
        ([{"index": 0}], "embedding #0 has no 'embedding' field"),
        ([{"index": 5, "embedding": [1.0]}], "index 5, expected 0..0"),
        ([{"index": 0, "embedding": [True, False]}], "not a flat list of numbers"),
        ([{"index": 0, "embedding": ["1.5", "2"]}], "not a flat list of numbers"),
        ([{"index": 0, "embedding": [[1.0], [2.0]]}], "not a flat list of numbers"),
        ([{"index": 0, "embedding": {"values": [1.0]}}], "embedding 0 is dict"),
        ([{"index": 0, "embedding": base64.b64encode(b"abc").decode()}], "not a whole number of float32"),
        ([{"index": 0, "embedding": [float("inf"), 1.0]}], "NaN or infinite"),
        ([{"index": 0, "embedding": []}], "empty vectors"),
    ],
)
def test_malformed_embeddings_are_refused(items: Any, problem: str) -> None:
    with pytest.raises(EmbedError, match=problem):
        vectors_from_items(items, count=1, dims=None, fail=fail)


def test_vectors_of_different_lengths_are_refused() -> None:
    items = [{"index": 0, "embedding": [1.0, 2.0]}, {"index": 1, "embedding": [1.0]}]
    with pytest.raises(EmbedError, match=r"different lengths \[1, 2\]"):
        vectors_from_items(items, count=2, dims=None, fail=fail)


@pytest.mark.parametrize(
    ("image_format", "media_type"),
    [
        ("PNG", "image/png"),
        ("JPEG", "image/jpeg"),
        ("GIF", "image/gif"),
        ("WEBP", "image/webp"),
        ("BMP", "image/bmp"),
        # A format Pillow reads but the magic-byte sniffing does not name.
        ("TIFF", "application/octet-stream"),
    ],
)
def test_images_are_sent_as_data_uris_with_their_media_type(image_format: str, media_type: str) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(buffer, image_format)
    image = buffer.getvalue()

    uri = image_data_uri(image)

    assert uri.startswith(f"data:{media_type};base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == image


def test_remote_caller_gives_up_at_once_on_a_pause_beyond_its_cap_without_stalling_later_calls() -> None:
    caller = RemoteCaller("m", requests_per_second=None, max_retries=5, max_retry_after_seconds=1.0)

    def throttled() -> None:
        raise TransientError("HTTP 429", retry_after=60.0)

    with pytest.raises(EmbedError, match="asked to retry after 60 s, longer than the 1 s"):
        caller.call(throttled)
    started = time.monotonic()
    assert caller.call(lambda: "ok") == "ok"
    assert time.monotonic() - started < 0.5
    assert caller.requests == 2
