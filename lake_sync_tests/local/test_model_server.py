"""The model server, driven by the official `openai` client: embeddings, faults, files, batches, restarts.

Every test runs the real server (uvicorn on 127.0.0.1, port 0, in a background thread) and stops
it again; an autouse fixture fails any test that leaves a server, batch-worker or request thread behind.
"""

from __future__ import annotations

import base64
import json
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import openai
import pytest
from openai import OpenAI
from openai.types import Batch

from lake_sync import cli
from lake_sync.embed import build_embedder
from lake_sync.local.model_server import ModelServer, running_model_server

HASH_MODELS = {"hash-8": "hash:8", "hash-384": "hash:384"}
ENDED = ("completed", "failed", "cancelled", "expired")
# uvicorn's thread, the batch worker, and the threads Starlette runs blocking calls in.
SERVER_THREADS = ("lake-sync-model-", "AnyIO worker")


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_server_thread_outlives_the_test() -> Iterator[None]:
    yield
    left = [thread.name for thread in threading.enumerate() if thread.name.startswith(SERVER_THREADS)]
    assert not left, f"server threads left running: {left}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ModelServer]:
    with running_model_server(models=HASH_MODELS, storage_dir=tmp_path / "models") as running:
        yield running


@pytest.fixture
def client(server: ModelServer) -> Iterator[OpenAI]:
    with OpenAI(base_url=server.base_url, api_key="x", max_retries=0) as openai_client:
        yield openai_client


def _request_line(custom_id: str, body: dict[str, Any], *, url: str = "/v1/embeddings") -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def _upload(client: OpenAI, lines: list[str]) -> str:
    return client.files.create(file=("requests.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch").id


def _start_batch(client: OpenAI, lines: list[str]) -> Batch:
    return client.batches.create(
        input_file_id=_upload(client, lines), endpoint="/v1/embeddings", completion_window="24h"
    )


def _wait_for_batch(client: OpenAI, batch_id: str, statuses: tuple[str, ...] = ENDED, timeout: float = 15.0) -> Batch:
    deadline = time.monotonic() + timeout
    while (batch := client.batches.retrieve(batch_id)).status not in statuses:
        assert time.monotonic() < deadline, f"batch still {batch.status} after {timeout}s"
        time.sleep(0.02)
    return batch


def _jsonl(client: OpenAI, file_id: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


# --- embeddings ------------------------------------------------------------------------------


def test_embeddings_return_model_vectors_in_input_order_with_usage(server: ModelServer, client: OpenAI) -> None:
    texts = ["red trail shoes", "a kettle", "green tea leaves in tins"]
    response = client.embeddings.create(model="hash-384", input=texts, encoding_format="float")

    assert response.model == "hash-384"
    assert [item.index for item in response.data] == [0, 1, 2]
    vectors = np.array([item.embedding for item in response.data])
    np.testing.assert_allclose(vectors, build_embedder("hash:384").embed_texts(texts), rtol=1e-6)
    assert response.usage.prompt_tokens == response.usage.total_tokens == 3 + 2 + 5
    assert (server.requests.embeddings, server.requests.inputs) == (1, 3)


def test_embeddings_in_base64_decode_to_the_float_vectors(server: ModelServer, client: OpenAI) -> None:
    as_floats = client.embeddings.create(model="hash-8", input="one text", encoding_format="float").data[0].embedding
    # The openai client asks for base64 unless told otherwise, and decodes it itself.
    assert client.embeddings.create(model="hash-8", input="one text").data[0].embedding == pytest.approx(as_floats)

    raw = httpx2.post(
        f"{server.base_url}/embeddings", json={"model": "hash-8", "input": ["one text"], "encoding_format": "base64"}
    )
    encoded = raw.json()["data"][0]["embedding"]
    assert isinstance(encoded, str)
    np.testing.assert_allclose(np.frombuffer(base64.b64decode(encoded), dtype="<f4"), as_floats, rtol=1e-6)


def test_embeddings_reject_unknown_model_and_bad_input_as_bad_request(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as unknown:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert unknown.value.code == "model_not_found"
    assert "hash-8" in unknown.value.message

    for bad_input in ([], [""], [101, 102]):
        with pytest.raises(openai.BadRequestError) as rejected:
            client.embeddings.create(model="hash-8", input=bad_input)
        assert rejected.value.param == "input"
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="hash-8", input="x", dimensions=4)


def test_local_minilm_places_related_sentences_closer_than_unrelated(tmp_path: Path) -> None:
    models = {"all-MiniLM-L6-v2": "local:all-MiniLM-L6-v2"}
    with (
        running_model_server(models=models, storage_dir=tmp_path) as server,
        OpenAI(base_url=server.base_url, api_key="x", max_retries=0) as client,
    ):
        texts = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply today."]
        response = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)

    eating, bread, market = (np.array(item.embedding) for item in response.data)
    assert eating.shape == (384,)
    assert float(eating @ bread) > float(eating @ market) + 0.3


def test_fail_first_answers_429_with_retry_after_until_the_client_retries(tmp_path: Path) -> None:
    options = {"models": HASH_MODELS, "storage_dir": tmp_path, "fail_first": 2, "retry_after_seconds": 0.05}
    with running_model_server(**options) as server:
        raw = httpx2.post(f"{server.base_url}/embeddings", json={"model": "hash-8", "input": "x"})
        assert raw.status_code == 429
        assert (raw.headers["retry-after"], raw.headers["retry-after-ms"]) == ("1", "50")
        assert raw.json()["error"]["code"] == "rate_limit_exceeded"

        with OpenAI(base_url=server.base_url, api_key="x", max_retries=3) as client:
            response = client.embeddings.create(model="hash-8", input=["x", "y"])

        assert len(response.data) == 2
        assert (server.requests.rejected, server.requests.embeddings, server.requests.inputs) == (2, 1, 2)


def test_latency_only_mode_answers_canned_vectors_without_loading_a_model(tmp_path: Path) -> None:
    # Loading this spec would fail: every answer below comes without touching a model.
    models = {"ghost": "local:/no/such/model"}
    options = {"models": models, "storage_dir": tmp_path, "latency_only_dims": 48, "latency_seconds": 0.3}
    with (
        running_model_server(**options) as server,
        OpenAI(base_url=server.base_url, api_key="x", max_retries=0) as client,
    ):
        texts = ["alpha", "beta", "alpha"]
        with ThreadPoolExecutor(5) as pool:
            answers = list(pool.map(lambda _: client.embeddings.create(model="ghost", input=texts), range(5)))

    # Held 0.3 s each, the 5 requests overlap rather than queue behind each other.
    assert server.requests.max_in_flight > 1
    vectors = np.array([item.embedding for item in answers[0].data])
    assert vectors.shape == (3, 48)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert vectors[0] == pytest.approx(vectors[2])
    assert vectors[0] != pytest.approx(vectors[1])
    assert server.requests.embeddings == 5


def test_api_key_is_required_when_configured(tmp_path: Path) -> None:
    with running_model_server(models=HASH_MODELS, storage_dir=tmp_path, api_key="s3cret") as server:
        for path in ("/models", "/batches"):
            unauthorised = httpx2.get(f"{server.base_url}{path}")
            assert unauthorised.status_code == 401
            assert unauthorised.json()["error"]["code"] == "invalid_api_key"
        with (
            OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0) as intruder,
            pytest.raises(openai.AuthenticationError),
        ):
            intruder.embeddings.create(model="hash-8", input="x")
        with OpenAI(base_url=server.base_url, api_key="s3cret", max_retries=0) as client:
            assert [model.id for model in client.models.list()] == ["hash-8", "hash-384"]
            assert len(client.embeddings.create(model="hash-8", input="x").data) == 1


# --- files -----------------------------------------------------------------------------------


def test_files_upload_retrieve_download_and_delete(server: ModelServer, client: OpenAI) -> None:
    content = b'{"custom_id": "a"}\n{"custom_id": "b"}\n'
    uploaded = client.files.create(file=("input.jsonl", content), purpose="batch")

    assert (uploaded.bytes, uploaded.filename, uploaded.purpose) == (len(content), "input.jsonl", "batch")
    assert client.files.retrieve(uploaded.id) == uploaded
    assert client.files.content(uploaded.id).content == content
    assert client.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content("../../etc/passwd")
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("input.jsonl", content), purpose="fine-tune")


# --- batches ---------------------------------------------------------------------------------


def test_batch_round_trip_writes_answers_to_output_and_bad_lines_to_errors(client: OpenAI) -> None:
    lines = [
        _request_line("one", {"model": "hash-8", "input": "red trail shoes"}),
        _request_line("two", {"model": "hash-8", "input": ["a kettle", "green tea"]}),
        _request_line("three", {"model": "hash-384", "input": "a tin", "encoding_format": "base64"}),
        "{not json",
        _request_line("unknown-model", {"model": "text-embedding-3-small", "input": "x"}),
        _request_line("wrong-url", {"model": "hash-8", "input": "x"}, url="/v1/chat/completions"),
    ]
    batch = client.batches.create(
        input_file_id=_upload(client, lines),
        endpoint="/v1/embeddings",
        completion_window="24h",
        metadata={"task": "products"},
    )
    assert batch.status == "validating"

    done = _wait_for_batch(client, batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (6, 3, 3)
    assert None not in (done.in_progress_at, done.finalizing_at, done.completed_at)
    assert done.metadata == {"task": "products"}
    assert done.usage is not None and done.usage.input_tokens == 3 + 4 + 2

    assert done.output_file_id is not None and done.error_file_id is not None
    assert client.files.retrieve(done.output_file_id).purpose == "batch_output"
    outputs = {line["custom_id"]: line for line in _jsonl(client, done.output_file_id)}
    assert list(outputs) == ["one", "two", "three"]
    assert all(line["response"]["status_code"] == 200 and line["error"] is None for line in outputs.values())
    two = [item["embedding"] for item in outputs["two"]["response"]["body"]["data"]]
    np.testing.assert_allclose(two, build_embedder("hash:8").embed_texts(["a kettle", "green tea"]), rtol=1e-6)
    three = outputs["three"]["response"]["body"]["data"][0]["embedding"]
    np.testing.assert_allclose(
        np.frombuffer(base64.b64decode(three), dtype="<f4"), build_embedder("hash:384").embed_texts(["a tin"])[0]
    )

    errors = {line["custom_id"]: line for line in _jsonl(client, done.error_file_id)}
    assert errors[None]["error"]["code"] == "invalid_json"
    assert errors["unknown-model"]["response"]["status_code"] == 400
    assert errors["unknown-model"]["response"]["body"]["error"]["code"] == "model_not_found"
    assert errors["wrong-url"]["error"]["code"] == "invalid_url"

    assert [listed.id for listed in client.batches.list()] == [batch.id]
    with pytest.raises(openai.BadRequestError):
        client.batches.cancel(batch.id)


def test_batch_create_rejects_unknown_file_and_other_endpoints(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as missing:
        client.batches.create(input_file_id="file-" + "0" * 24, endpoint="/v1/embeddings", completion_window="24h")
    assert missing.value.param == "input_file_id"
    with pytest.raises(openai.BadRequestError) as other:
        client.batches.create(
            input_file_id=_upload(client, ["{}"]), endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert other.value.param == "endpoint"
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_" + "0" * 24)


def test_cancelled_batch_stops_early_and_keeps_the_answers_so_far(tmp_path: Path) -> None:
    lines = [_request_line(f"row-{row}", {"model": "hash-8", "input": f"text {row}"}) for row in range(200)]
    with (
        running_model_server(models=HASH_MODELS, storage_dir=tmp_path, latency_seconds=0.02) as server,
        OpenAI(base_url=server.base_url, api_key="x", max_retries=0) as client,
    ):
        batch = _start_batch(client, lines)
        _wait_for_batch(client, batch.id, ("in_progress",))
        assert client.batches.cancel(batch.id).status == "cancelling"
        cancelled = _wait_for_batch(client, batch.id)

        assert cancelled.status == "cancelled"
        assert cancelled.cancelling_at is not None and cancelled.cancelled_at is not None
        assert cancelled.request_counts is not None
        answered = cancelled.request_counts.completed
        assert cancelled.request_counts.total == 200 and answered < 200
        kept = _jsonl(client, cancelled.output_file_id) if cancelled.output_file_id else []
        assert len(kept) == answered


def test_batch_fails_when_its_input_file_is_deleted_before_it_runs(tmp_path: Path) -> None:
    slow_lines = [_request_line(f"row-{row}", {"model": "hash-8", "input": "x"}) for row in range(5)]
    with (
        running_model_server(models=HASH_MODELS, storage_dir=tmp_path, latency_seconds=0.05) as server,
        OpenAI(base_url=server.base_url, api_key="x", max_retries=0) as client,
    ):
        # The worker runs one batch at a time: the second waits while its input file disappears.
        first = _start_batch(client, slow_lines)
        second = _start_batch(client, slow_lines[:1])
        client.files.delete(second.input_file_id)

        failed = _wait_for_batch(client, second.id)
        assert failed.status == "failed" and failed.failed_at is not None
        assert failed.errors is not None and failed.errors.data is not None
        assert failed.errors.data[0].code == "invalid_file"
        assert _wait_for_batch(client, first.id).status == "completed"


def test_restarted_server_still_serves_earlier_files_and_batches(tmp_path: Path) -> None:
    storage = tmp_path / "models"
    lines = [_request_line("only", {"model": "hash-8", "input": "kept across restarts"})]
    with (
        running_model_server(models=HASH_MODELS, storage_dir=storage) as first,
        OpenAI(base_url=first.base_url, api_key="x", max_retries=0) as client,
    ):
        batch = _wait_for_batch(client, _start_batch(client, lines).id)
        output = client.files.content(batch.output_file_id or "").content

    with (
        running_model_server(models=HASH_MODELS, storage_dir=storage) as second,
        OpenAI(base_url=second.base_url, api_key="x", max_retries=0) as client,
    ):
        assert client.files.content(batch.input_file_id).text == lines[0] + "\n"
        assert client.batches.retrieve(batch.id) == batch
        assert client.files.content(batch.output_file_id or "").content == output


def test_restarted_server_reruns_a_batch_it_left_unfinished(tmp_path: Path) -> None:
    storage = tmp_path / "models"
    lines = [_request_line(f"row-{row}", {"model": "hash-8", "input": f"text {row}"}) for row in range(40)]
    with (
        running_model_server(models=HASH_MODELS, storage_dir=storage, latency_seconds=0.05) as slow,
        OpenAI(base_url=slow.base_url, api_key="x", max_retries=0) as client,
    ):
        batch = _wait_for_batch(client, _start_batch(client, lines).id, ("in_progress",))

    with (
        running_model_server(models=HASH_MODELS, storage_dir=storage) as restarted,
        OpenAI(base_url=restarted.base_url, api_key="x", max_retries=0) as client,
    ):
        done = _wait_for_batch(client, batch.id)
        assert done.status == "completed"
        assert done.request_counts is not None and done.request_counts.completed == 40
        assert [line["custom_id"] for line in _jsonl(client, done.output_file_id or "")] == [
            f"row-{row}" for row in range(40)
        ]


# --- command line ----------------------------------------------------------------------------


def test_serve_models_command_serves_until_terminated(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "lake_sync.cli", "serve-models", "--port", "0", "--model", "h=hash:8"]
    process = subprocess.Popen([*command, "--storage", str(tmp_path)], stderr=subprocess.PIPE, text=True)
    try:
        url, log, deadline = None, "", time.monotonic() + 30
        while url is None and time.monotonic() < deadline and process.poll() is None:
            if select.select([process.stderr], [], [], 0.5)[0]:
                log += process.stderr.readline() if process.stderr else ""
                found = re.search(r"running on (http://127\.0\.0\.1:\d+)", log)
                url = found.group(1) if found else None
        assert url is not None, f"no address in the server log: {log}"
        with OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:
            assert [model.id for model in client.models.list()] == ["h"]
            assert len(client.embeddings.create(model="h", input="x").data[0].embedding) == 8
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal so the exit status reports it.
        assert process.wait(10) == -signal.SIGTERM
        assert "Application shutdown complete" in (process.stderr.read() if process.stderr else "")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_models_command_rejects_a_model_without_spec() -> None:
    assert cli.main(["serve-models", "--model", "all-MiniLM-L6-v2"]) == 2
