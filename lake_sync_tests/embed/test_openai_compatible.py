"""OpenAIEmbedder against lake-sync's own OpenAI-compatible model server, through the official client.

OpenAIEmbedder → openai client → HTTP on 127.0.0.1 → running_model_server (hash models, latency, canned 429s)

Image request shapes and broken answers come from a small recording server below, since the model
server embeds texts only and always answers well.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from lake_sync.config import OpenAIConnection
from lake_sync.embed import build_embedder
from lake_sync.embed.hashing import HashingEmbedder
from lake_sync.embed.openai_compatible import OpenAIEmbedder
from lake_sync.errors import EmbedError, UndecodableImageError
from lake_sync.local.model_server import ModelServer, running_model_server
from lake_sync_tests.embed.conftest import jpeg_with_broken_scan, png_bytes

MODEL = "hash-8"
API_KEY = "sk-test-secret-0123456789"
PNG = png_bytes()
NAN_BASE64 = base64.b64encode(np.full(8, np.nan, dtype="<f4").tobytes()).decode()


@contextmanager
def model_server(tmp_path: Path, **options: Any) -> Iterator[ModelServer]:
    with running_model_server(models={MODEL: "hash:8"}, storage_dir=tmp_path / "models", **options) as server:
        yield server


@contextmanager
def embedder_for(base_url: str, name: str = MODEL, **settings: Any) -> Iterator[OpenAIEmbedder]:
    settings.setdefault("dims", {MODEL: 8})
    embedder = OpenAIEmbedder(
        name, connection=OpenAIConnection(type="openai", base_url=base_url, **settings), connection_name="models"
    )
    try:
        yield embedder
    finally:
        embedder.close()


def texts(count: int) -> list[str]:
    return [f"product {number} is a fine thing" for number in range(count)]


# --- embeddings, dims, identity -------------------------------------------------------------------


def test_openai_embeds_texts_in_batches_through_the_official_client(tmp_path: Path) -> None:
    inputs = texts(70)
    with (
        model_server(tmp_path, api_key=API_KEY) as server,
        embedder_for(server.base_url, api_key=API_KEY, batch_size=32) as embedder,
    ):
        vectors = embedder.embed_texts(inputs)

    np.testing.assert_allclose(vectors, HashingEmbedder(8).embed_texts(inputs), rtol=1e-6)
    assert (server.requests.embeddings, server.requests.inputs) == (3, 70)
    assert (embedder.calls, embedder.inputs, embedder.tokens) == (3, 70, 70 * 6)


def test_openai_uses_configured_dims_without_a_call(tmp_path: Path) -> None:
    with model_server(tmp_path) as server, embedder_for(server.base_url) as embedder:
        assert embedder.dims == 8
        assert server.requests.embeddings == 0 and embedder.calls == 0


def test_openai_probes_dims_with_one_counted_call_when_not_configured(tmp_path: Path) -> None:
    with model_server(tmp_path) as server, embedder_for(server.base_url, dims={}) as embedder:
        assert embedder.dims == 8
        assert server.requests.embeddings == 1 and embedder.calls == 1


def test_openai_model_id_is_host_and_model_without_credentials() -> None:
    connection = OpenAIConnection(type="openai", base_url="https://user:pw@embed.example.com:8443/v1", dims={"m": 4})
    embedder = OpenAIEmbedder("m", connection=connection)
    assert embedder.model_id == "openai:embed.example.com:8443/m"
    embedder.close()


def test_openai_wrong_configured_dims_are_an_embed_error_naming_the_model(tmp_path: Path) -> None:
    with (
        model_server(tmp_path) as server,
        embedder_for(server.base_url, dims={MODEL: 16}) as embedder,
        pytest.raises(EmbedError, match=r"model openai:127\.0\.0\.1:\d+/hash-8: answered 8-dim vectors, expected 16"),
    ):
        embedder.embed_texts(["a"])


# --- retries and failures -------------------------------------------------------------------------


def test_openai_retries_429_after_the_retry_after_the_server_asked_for(tmp_path: Path) -> None:
    with (
        model_server(tmp_path, fail_first=2, retry_after_seconds=0.4) as server,
        embedder_for(server.base_url) as embedder,
    ):
        started = time.monotonic()
        vectors = embedder.embed_texts(["a", "b"])
        elapsed = time.monotonic() - started

    assert vectors.shape == (2, 8)
    assert elapsed >= 2 * 0.4
    assert (server.requests.rejected, server.requests.embeddings) == (2, 1)
    assert (embedder.requests, embedder.retries, embedder.calls) == (3, 2, 1)


def test_openai_gives_up_after_max_retries(tmp_path: Path) -> None:
    with (
        model_server(tmp_path, fail_first=10, fail_status=503, retry_after_seconds=0.05) as server,
        embedder_for(server.base_url, max_retries=1) as embedder,
        pytest.raises(EmbedError, match=r"HTTP 503: .*gave up after 2 attempt"),
    ):
        embedder.embed_texts(["a"])
    assert server.requests.rejected == 2


def test_openai_does_not_retry_an_unknown_model(tmp_path: Path) -> None:
    with (
        model_server(tmp_path) as server,
        embedder_for(server.base_url, name="no-such-model", dims={"no-such-model": 8}) as embedder,
        pytest.raises(EmbedError, match=r"HTTP 400: The model 'no-such-model' does not exist"),
    ):
        embedder.embed_texts(["a"])
    assert embedder.requests == 1


def test_openai_rejected_api_key_is_reported_without_the_key(tmp_path: Path) -> None:
    with (
        model_server(tmp_path, api_key="the-right-key") as server,
        embedder_for(server.base_url, api_key=API_KEY) as embedder,
        pytest.raises(EmbedError, match="HTTP 401") as raised,
    ):
        embedder.embed_texts(["a"])
    assert API_KEY not in str(raised.value)
    assert embedder.requests == 1


def test_openai_retries_a_timeout_then_fails_naming_it(tmp_path: Path) -> None:
    with (
        model_server(tmp_path, latency_seconds=1.0) as server,
        embedder_for(server.base_url, timeout=0.2, max_retries=1) as embedder,
        pytest.raises(EmbedError, match=r"no answer within 0\.2 s \(gave up after 2 attempt"),
    ):
        embedder.embed_texts(["a"])
    assert embedder.requests == 2


# --- concurrency and rate -------------------------------------------------------------------------


def test_openai_keeps_requests_in_flight_within_max_in_flight(tmp_path: Path) -> None:
    # 8 batches held 0.3 s each by the server: long enough for the client to have 2 open at once.
    with (
        model_server(tmp_path, latency_seconds=0.3) as server,
        embedder_for(server.base_url, max_in_flight=2, batch_size=4) as embedder,
    ):
        embedder.embed_texts(texts(32))

    assert server.requests.embeddings == 8
    assert server.requests.max_in_flight == 2


def test_openai_spaces_request_starts_to_the_requests_per_second_cap(tmp_path: Path) -> None:
    rate = 20.0
    with (
        model_server(tmp_path) as server,
        embedder_for(server.base_url, max_in_flight=4, batch_size=4, requests_per_second=rate) as embedder,
    ):
        started = time.monotonic()
        embedder.embed_texts(texts(4 * 16))
        elapsed = time.monotonic() - started

    assert server.requests.embeddings == 16
    assert elapsed >= 15 / rate


# --- images and broken answers (recording server) --------------------------------------------------


class RecordingServer:
    """An OpenAI-shaped `/v1/embeddings` that records bodies and answers `reply(body)` (8-dim floats by default)."""

    def __init__(self, reply: Any = None) -> None:
        self.bodies: list[dict[str, Any]] = []
        self._reply = reply or (
            lambda body: {"data": [{"index": i, "embedding": [0.5] * 8} for i in range(len(body["input"]))]}
        )
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
                recorder.bodies.append(body)
                payload = orjson.dumps(recorder._reply(body))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> RecordingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_openai_sends_images_as_input_objects_when_configured() -> None:
    with (
        RecordingServer() as server,
        embedder_for(server.base_url, name="mm", dims={"mm": 8}, image_input="object") as embedder,
    ):
        assert embedder.embeds_images
        vectors = embedder.embed_images([PNG, PNG])

    assert vectors.shape == (2, 8)
    (body,) = server.bodies
    assert body["model"] == "mm"
    assert body["input"][0]["image"].startswith("data:image/png;base64,")
    assert "modality" not in body


def test_openai_sends_images_with_an_image_modality_when_configured() -> None:
    with (
        RecordingServer() as server,
        embedder_for(server.base_url, name="mm", dims={"mm": 8}, image_input="modality") as embedder,
    ):
        embedder.embed_images([PNG])

    (body,) = server.bodies
    assert body["modality"] == "image"
    assert body["input"][0].startswith("data:image/png;base64,")


def test_openai_refuses_an_image_whose_pixels_do_not_decode_before_any_request() -> None:
    broken = jpeg_with_broken_scan()
    with (
        RecordingServer() as server,
        embedder_for(server.base_url, name="mm", dims={"mm": 8}, image_input="object") as embedder,
        pytest.raises(UndecodableImageError, match="broken data stream") as raised,
    ):
        embedder.embed_images([PNG, broken])

    assert raised.value.image == broken
    assert server.bodies == []


def test_openai_connection_without_image_input_refuses_images_without_a_request() -> None:
    with RecordingServer() as server, embedder_for(server.base_url, name="mm", dims={"mm": 8}) as embedder:
        assert not embedder.embeds_images
        with pytest.raises(EmbedError, match="does not embed images"):
            embedder.embed_images([PNG])
    assert server.bodies == []


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        ({"object": "list"}, "answer has no 'data' list"),
        ({"data": [{"index": 0, "embedding": "not base64!"}]}, "embedding 0 is a string but not base64"),
        ({"data": [{"index": 0, "embedding": [1.0, None] * 4}]}, "embedding 0 is not a flat list of numbers"),
        ({"data": [{"index": 0, "embedding": NAN_BASE64}]}, "answered NaN or infinite values"),
        ({"data": []}, "answered 0 embeddings for 1 inputs"),
    ],
)
def test_openai_malformed_answer_is_an_embed_error_naming_model_and_problem(
    reply: dict[str, Any], problem: str
) -> None:
    with (
        RecordingServer(reply=lambda body: reply) as server,
        embedder_for(server.base_url, name="mm", dims={"mm": 8}) as embedder,
        pytest.raises(EmbedError, match=rf"model openai:127\.0\.0\.1:\d+/mm: {problem}"),
    ):
        embedder.embed_texts(["a"])


def test_registry_builds_an_openai_embedder_for_a_model_on_an_openai_connection() -> None:
    connection = OpenAIConnection(type="openai", base_url="http://127.0.0.1:9/v1", dims={"m": 4}, max_in_flight=6)
    embedder = build_embedder("models:m", connection)
    assert isinstance(embedder, OpenAIEmbedder)
    assert (embedder.model_id, embedder.dims, embedder.max_in_flight) == ("openai:127.0.0.1:9/m", 4, 6)
