"""AISearchEmbedder against a local AI Search-shaped HTTP server: batching, limits, retries, answer checks.

AISearchEmbedder → HTTP on 127.0.0.1 → AISearchServer (records every request, injects faults)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

from lake_sync.config import AISearchConnection
from lake_sync.embed import build_embedder
from lake_sync.embed.aisearch import AISearchEmbedder
from lake_sync.errors import EmbedError
from lake_sync_tests.embed.aisearch_server import AISearchServer, vector_for
from lake_sync_tests.embed.conftest import png_bytes

TEXT_SERVICE = "ops-text-embedding-002"
API_KEY = "OS-secret-api-key-123456"
PNG = png_bytes()


@contextmanager
def embedder_for(server: AISearchServer, service: str = TEXT_SERVICE, **settings: Any) -> Iterator[AISearchEmbedder]:
    connection = AISearchConnection(
        type="aisearch", host=server.host, api_key=settings.pop("api_key", API_KEY), **settings
    )
    embedder = AISearchEmbedder(service, connection=connection, connection_name="ais")
    try:
        yield embedder
    finally:
        embedder.close()


def texts(count: int) -> list[str]:
    return [f"product {number} is a fine thing" for number in range(count)]


# --- batching, dims, usage -------------------------------------------------------------------------


def test_aisearch_embeds_texts_in_batches_of_32_in_input_order() -> None:
    inputs = texts(100)
    with AISearchServer(api_key=API_KEY) as server, embedder_for(server, requests_per_second=None) as embedder:
        vectors = embedder.embed_texts(inputs)

    assert vectors.shape == (100, 1024) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors[57], vector_for(inputs[57], 1024), rtol=1e-6)
    assert sorted(len(record.inputs) for record in server.log.requests) == [4, 32, 32, 32]
    assert {record.path for record in server.log.requests} == {
        f"/v3/openapi/workspaces/default/text-embedding/{TEXT_SERVICE}"
    }
    assert (embedder.calls, embedder.inputs) == (4, 100)


def test_aisearch_sends_documents_as_document_and_search_queries_as_query_input_type() -> None:
    with AISearchServer(api_key=API_KEY) as server, embedder_for(server, requests_per_second=None) as embedder:
        embedder.embed_texts(texts(3))
        query = embedder.embed_queries(["waterproof boots"])

    assert [record.input_type for record in server.log.requests] == ["document", "query"]
    assert query.shape == (1, 1024)
    assert (embedder.calls, embedder.inputs) == (2, 4)


def test_aisearch_multimodal_service_embeds_queries_through_the_multimodal_endpoint_without_input_type() -> None:
    with (
        AISearchServer(api_key=API_KEY) as server,
        embedder_for(server, "ops-m2-encoder", requests_per_second=None) as embedder,
    ):
        embedder.embed_queries(["red shoes"])

    (record,) = server.log.requests
    assert record.path.endswith("/multi-modal-embedding/ops-m2-encoder")
    assert record.inputs == [{"text": "red shoes"}] and record.input_type is None


def test_aisearch_counts_the_token_usage_the_platform_reports() -> None:
    with AISearchServer(api_key=API_KEY) as server, embedder_for(server, requests_per_second=None) as embedder:
        embedder.embed_texts(texts(40))

    assert embedder.tokens == server.log.tokens_reported == 40 * 6


def test_aisearch_knows_documented_dims_before_the_first_call() -> None:
    with AISearchServer(api_key=API_KEY) as server, embedder_for(server, "ops-text-embedding-001") as embedder:
        assert embedder.dims == 1536
        assert embedder.model_id == "aisearch:ops-text-embedding-001"
        assert server.log.requests == []


def test_aisearch_probes_dims_of_an_unknown_service_once_and_counts_the_call() -> None:
    with (
        AISearchServer(api_key=API_KEY, dims={"ops-custom-embedding": 96}) as server,
        embedder_for(server, "ops-custom-embedding") as embedder,
    ):
        assert embedder.dims == 96
        assert embedder.calls == 1 and len(server.log.requests) == 1


def test_aisearch_connection_dims_override_the_table_and_a_mismatch_is_an_embed_error() -> None:
    with (
        AISearchServer(api_key=API_KEY, dims={TEXT_SERVICE: 768}) as server,
        embedder_for(server, dims={TEXT_SERVICE: 1024}) as embedder,
    ):
        assert embedder.dims == 1024
        with pytest.raises(
            EmbedError, match=r"aisearch:ops-text-embedding-002: answered 768-dim vectors, expected 1024"
        ):
            embedder.embed_texts(["a"])


# --- images ----------------------------------------------------------------------------------------


def test_aisearch_embeds_images_and_texts_of_a_multimodal_service_through_the_multimodal_endpoint() -> None:
    with AISearchServer(api_key=API_KEY) as server, embedder_for(server, "ops-m2-encoder") as embedder:
        assert embedder.embeds_images and embedder.dims == 768
        images = embedder.embed_images([PNG, PNG + b"2"])
        words = embedder.embed_texts(["a red shoe"])

    assert images.shape == (2, 768) and words.shape == (1, 768)
    image_request, text_request = server.log.requests
    assert image_request.path == "/v3/openapi/workspaces/default/multi-modal-embedding/ops-m2-encoder"
    assert image_request.inputs[0]["image"].startswith("data:image/png;base64,")
    assert text_request.inputs == [{"text": "a red shoe"}]
    np.testing.assert_allclose(words[0], vector_for("a red shoe", 768), rtol=1e-6)


def test_aisearch_text_service_refuses_images_without_a_request() -> None:
    with AISearchServer(api_key=API_KEY) as server, embedder_for(server) as embedder:
        assert not embedder.embeds_images
        with pytest.raises(EmbedError, match="does not embed images"):
            embedder.embed_images([PNG])
    assert server.log.requests == []


# --- concurrency and rate -------------------------------------------------------------------------


def test_aisearch_keeps_requests_in_flight_within_max_in_flight() -> None:
    with (
        AISearchServer(api_key=API_KEY, latency_seconds=0.05) as server,
        embedder_for(server, max_in_flight=3, requests_per_second=None) as embedder,
    ):
        embedder.embed_texts(texts(32 * 12))

    assert server.log.max_in_flight == 3
    assert len(server.log.requests) == 12


def test_aisearch_spaces_request_starts_to_the_requests_per_second_cap() -> None:
    rate = 10.0
    with (
        AISearchServer(api_key=API_KEY) as server,
        embedder_for(server, max_in_flight=4, requests_per_second=rate) as embedder,
    ):
        embedder.embed_texts(texts(32 * 12))

    starts = sorted(record.started for record in server.log.requests)
    assert len(starts) == 12
    assert starts[-1] - starts[0] >= 11 / rate * 0.95
    # No one-second window holds more than the cap (plus the request that opens the next window).
    assert max(sum(1 for t in starts if first <= t < first + 1.0) for first in starts) <= rate + 1


# --- retries ------------------------------------------------------------------------------------------


def test_aisearch_retries_429_after_the_retry_after_the_server_asked_for() -> None:
    with (
        AISearchServer(api_key=API_KEY, fail_first=2, retry_after="0.4") as server,
        embedder_for(server, requests_per_second=None) as embedder,
    ):
        vectors = embedder.embed_texts(["a", "b"])

    assert vectors.shape == (2, 1024)
    first, second, third = server.log.requests
    assert [first.status, second.status, third.status] == [429, 429, 200]
    assert second.started - first.finished >= 0.4
    assert third.started - second.finished >= 0.4
    assert (embedder.requests, embedder.retries, embedder.calls) == (3, 2, 1)


def test_aisearch_retries_server_errors_with_backoff() -> None:
    with (
        AISearchServer(api_key=API_KEY, fail_first=1, fail_status=503, retry_after=None) as server,
        embedder_for(server) as embedder,
    ):
        embedder.embed_texts(["a"])
    assert [record.status for record in server.log.requests] == [503, 200]


def test_aisearch_gives_up_after_max_retries_with_the_status_in_the_error() -> None:
    with (
        AISearchServer(api_key=API_KEY, fail_first=10, retry_after="0.05") as server,
        embedder_for(server, max_retries=2) as embedder,
        pytest.raises(EmbedError, match=r"HTTP 429 \(Throttling.User: .*gave up after 3 attempt"),
    ):
        embedder.embed_texts(["a"])
    assert len(server.log.requests) == 3


def test_aisearch_fails_at_once_when_asked_to_wait_longer_than_it_would() -> None:
    with (
        AISearchServer(api_key=API_KEY, fail_first=10, retry_after="3600") as server,
        embedder_for(server) as embedder,
        pytest.raises(EmbedError, match="retry after 3600 s"),
    ):
        embedder.embed_texts(["a"])
    assert len(server.log.requests) == 1


def test_aisearch_does_not_retry_a_bad_request_over_32_inputs() -> None:
    with AISearchServer(api_key=API_KEY) as server, embedder_for(server) as embedder:
        embedder.batch_size = 40
        with pytest.raises(EmbedError, match=r"HTTP 400 \(InvalidParameter: input has 40 items"):
            embedder.embed_texts(texts(40))
    assert len(server.log.requests) == 1


def test_aisearch_retries_a_timeout_then_fails_naming_it() -> None:
    with (
        AISearchServer(api_key=API_KEY, latency_seconds=0.5) as server,
        embedder_for(server, timeout=0.1, max_retries=1) as embedder,
        pytest.raises(EmbedError, match=r"no answer within 0.1 s \(gave up after 2 attempt"),
    ):
        embedder.embed_texts(["a"])
    assert len(server.log.requests) == 2


def test_aisearch_retries_a_refused_connection_then_fails_naming_it() -> None:
    with AISearchServer(api_key=API_KEY) as server:
        host = server.host
    connection = AISearchConnection(type="aisearch", host=host, api_key=API_KEY, max_retries=1)
    embedder = AISearchEmbedder(TEXT_SERVICE, connection=connection)
    with pytest.raises(EmbedError, match=r"connection failed: ConnectError.*gave up after 2 attempt"):
        embedder.embed_texts(["a"])
    embedder.close()


# --- wrong answers and secrets ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "problem"),
    [
        ("missing_result", "answer has no result.embeddings"),
        ("one_short", "answered 2 embeddings for 3 inputs"),
        ("wrong_dims", "answered 1023-dim vectors, expected 1024"),
        ("non_numeric", "embedding 0 is not a flat list of numbers"),
        ("repeated_index", "index 0 is answered twice"),
        ("not_json", "answer is not a JSON object"),
    ],
)
def test_aisearch_malformed_answer_is_an_embed_error_naming_model_and_problem(mode: str, problem: str) -> None:
    with (
        AISearchServer(api_key=API_KEY, malformed=mode) as server,
        embedder_for(server) as embedder,
        pytest.raises(EmbedError, match=f"model aisearch:{TEXT_SERVICE}: {problem}"),
    ):
        embedder.embed_texts(["a", "b", "c"])
    assert len(server.log.requests) == 1


def test_aisearch_api_key_never_appears_in_errors_even_when_the_server_echoes_it() -> None:
    with (
        AISearchServer(api_key="the-right-key") as server,
        embedder_for(server) as embedder,
        pytest.raises(EmbedError, match="HTTP 401") as raised,
    ):
        embedder.embed_texts(["a"])
    assert API_KEY not in str(raised.value) and "***" in str(raised.value)


def test_registry_builds_an_aisearch_embedder_for_a_service_on_an_aisearch_connection() -> None:
    connection = AISearchConnection(type="aisearch", host="http://127.0.0.1:9", api_key=API_KEY)
    embedder = build_embedder("ais:ops-gme-qwen2-vl-2b-instruct", connection)
    assert isinstance(embedder, AISearchEmbedder)
    assert (embedder.model_id, embedder.dims, embedder.embeds_images) == (
        "aisearch:ops-gme-qwen2-vl-2b-instruct",
        1536,
        True,
    )


def test_aisearch_cuts_texts_over_the_services_documented_limit_before_sending_them() -> None:
    # ops-text-embedding-001 reads 300 tokens; without its tokenizer, lake-sync sends at most 300 UTF-8 bytes.
    long_text = "Grüße " * 100  # 700 bytes
    with AISearchServer(api_key=API_KEY) as server, embedder_for(server, "ops-text-embedding-001") as embedder:
        fitted = embedder.text_tokens.fit(["short", long_text])
        embedder.embed_texts(["short", long_text])

    assert fitted.over_limit == [False, True]
    sent = server.log.requests[0].inputs
    assert sent[0] == "short" and long_text.startswith(sent[1]) and 294 <= len(sent[1].encode()) <= 300


def test_aisearch_connection_max_input_tokens_overrides_the_documented_limit() -> None:
    with (
        AISearchServer(api_key=API_KEY) as server,
        embedder_for(server, max_input_tokens={TEXT_SERVICE: 10}) as embedder,
    ):
        embedder.embed_texts(["0123456789abcdef"])

    assert embedder.text_tokens.max_tokens == 10
    assert server.log.requests[0].inputs == ["0123456789"]
