"""Batch predict → batch ingest against the real model server (Files + Batch API, hash model), a real
Paimon table and the real local search server.

Paimon snapshot → run_predict → openai client → running_model_server batches → manifest → ingest_predictions → index
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import openai
import orjson
import pyarrow as pa
import pytest
from elasticsearch import Elasticsearch

from lake_sync.batch.manifest import FileStatus, load_manifest
from lake_sync.batch.predict import (
    BatchLimits,
    BatchPredictError,
    PollPolicy,
    ingest_predictions,
    offline_transforms,
    run_predict,
    supports_offline_inference,
)
from lake_sync.config import TaskFile
from lake_sync.embed.hashing import HashingEmbedder
from lake_sync.errors import ConfigError, TooManyErrorsError
from lake_sync.index.aliases import resolve_target
from lake_sync.index.cursor import read_cursor
from lake_sync.index.dead_letters import read_dead_letters
from lake_sync.local.model_server import ModelServer, running_model_server
from lake_sync.sync import SyncMode, run_sync
from lake_sync_tests.conftest import TaskFileFactory, commit_rows, write_paimon_table

MODEL = "hash-8"
FAST = PollPolicy(first_seconds=0.02, max_seconds=0.1)
TITLES = {f"p{n}": f"product {n}: a fine {kind}" for n, kind in enumerate(["kettle", "teapot", "mug"] * 3)}
ROWS = pa.table(
    {
        "id": [*TITLES, "blank", None],
        "title": [*TITLES.values(), "", "orphan without a key"],
        "price": [float(n) for n in range(len(TITLES) + 2)],
    }
)


@pytest.fixture
def items(warehouse: str) -> Any:
    return write_paimon_table(warehouse, "db.items", ROWS, primary_keys=None)


def offline_tasks(
    task_file: TaskFileFactory, warehouse: str, es_url: str, base_url: str, model: str = MODEL, **task: Any
) -> TaskFile:
    connections = {
        "lake": {"type": "paimon", "warehouse": warehouse},
        "es": {"type": "elasticsearch", "hosts": [es_url]},
        "models": {"type": "openai", "base_url": base_url, "dims": {model: 8}},
    }
    transforms = [{"field": "title", "embed": "text", "model": f"models:{model}", "to": "title_vec"}]
    return task_file(connections=connections, primary_key="id", transforms=transforms, **task)


def server_batches(model_server: ModelServer) -> list[Any]:
    with openai.OpenAI(base_url=model_server.base_url, api_key="unused") as client:
        return list(client.batches.list(limit=100))


def indexed(es: Elasticsearch, index: str) -> dict[str, dict[str, Any]]:
    es.indices.refresh(index=index)
    hits = es.search(index=index, size=100, query={"match_all": {}})["hits"]["hits"]
    return {hit["_id"]: hit["_source"] for hit in hits}


def hash_vectors(texts: list[str]) -> dict[str, np.ndarray]:
    return dict(zip(texts, HashingEmbedder(8).embed_texts(texts), strict=True))


def test_predict_then_ingest_writes_every_document_with_the_models_vector(
    task_file: TaskFileFactory,
    warehouse: str,
    es_url: str,
    es: Elasticsearch,
    index_name: str,
    model_server: ModelServer,
    items: Any,
) -> None:
    tasks = offline_tasks(task_file, warehouse, es_url, model_server.base_url)

    manifest = run_predict(tasks, "items", poll=FAST)
    summary = ingest_predictions(tasks, manifest.path)

    documents = indexed(es, index_name)
    assert set(documents) == {*TITLES, "blank"}
    expected = hash_vectors(list(TITLES.values()))
    for document_id, title in TITLES.items():
        assert documents[document_id]["title"] == title
        np.testing.assert_allclose(documents[document_id]["title_vec"], expected[title], rtol=1e-6)
    assert documents["p4"]["price"] == 4.0
    # An empty text gets no request and no vector; the document is still written, as a sync would.
    assert "title_vec" not in documents["blank"] and documents["blank"]["price"] == 9.0
    assert resolve_target(es, index_name).write_index == f"{index_name}-1"
    assert (manifest.snapshot_id, manifest.requests, manifest.rejected_keys, manifest.empty_texts) == (1, 9, 1, 1)
    assert [file.status for file in manifest.files] == [FileStatus.COMPLETED]
    assert load_manifest(manifest.path) == manifest
    assert (summary.documents, summary.documents_written, summary.success_rate) == (10, 10, 100.0)
    lines = [orjson.loads(line) for line in Path(manifest.files[0].input_path).read_bytes().splitlines()]
    assert lines[0] == {
        "custom_id": "p0",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": MODEL, "input": TITLES["p0"]},
    }
    letters = read_dead_letters(Path(summary.dead_letter_path))
    assert [(letter["stage"], letter["reason"]) for letter in letters] == [("key", "primary key column 'id' is null")]


@pytest.mark.parametrize(
    ("limits", "files"),
    [(BatchLimits(max_requests=3), 3), (BatchLimits(max_bytes=250), 5)],
    ids=["requests", "bytes"],
)
def test_predict_splits_requests_into_files_within_the_limits(
    task_file: TaskFileFactory,
    warehouse: str,
    es_url: str,
    es: Elasticsearch,
    index_name: str,
    model_server: ModelServer,
    items: Any,
    limits: BatchLimits,
    files: int,
) -> None:
    tasks = offline_tasks(task_file, warehouse, es_url, model_server.base_url)

    manifest = run_predict(tasks, "items", limits=limits, poll=FAST)
    summary = ingest_predictions(tasks, manifest)

    assert len(manifest.files) == files == len(server_batches(model_server)) == manifest.batches_created
    for file in manifest.files:
        content = Path(file.input_path).read_bytes()
        assert file.requests == content.count(b"\n") <= limits.max_requests
        assert file.bytes == len(content) <= limits.max_bytes
    assert sum(file.requests for file in manifest.files) == 9
    assert summary.documents_written == 10 and len(indexed(es, index_name)) == 10


class _Crash(Exception):
    pass


def crash_after_batches(count: int) -> Any:
    """A log callback that kills the run once `count` batches were created, before the others are submitted."""
    created = []

    def log(message: str) -> None:
        if message.startswith("batch ") and " created " in message:
            created.append(message)
            if len(created) == count:
                raise _Crash

    return log


def test_resumed_predict_reuses_the_batches_already_submitted(
    task_file: TaskFileFactory,
    warehouse: str,
    es_url: str,
    es: Elasticsearch,
    index_name: str,
    model_server: ModelServer,
    items: Any,
) -> None:
    tasks = offline_tasks(task_file, warehouse, es_url, model_server.base_url)
    limits = BatchLimits(max_requests=4)
    with pytest.raises(_Crash):
        run_predict(tasks, "items", limits=limits, poll=FAST, log=crash_after_batches(2))
    (staged,) = Path(tasks.state_dir, "batch", "items").glob("snapshot-*/manifest.json")
    interrupted = load_manifest(staged)
    assert [file.batch_id is not None for file in interrupted.files] == [True, True, False]
    # A commit after the crash does not start a new job: the submitted batches are already paid for.
    commit_rows(items, pa.table({"id": ["late"], "title": ["a late row"], "price": [99.0]}))

    manifest = run_predict(tasks, "items", limits=limits, poll=FAST)
    batches_after_resume = len(server_batches(model_server))
    ingest_predictions(tasks, manifest)
    again = run_predict(tasks, "items", limits=limits, poll=FAST)

    assert batches_after_resume == 3 == manifest.batches_created
    assert [f.batch_id for f in manifest.files[:2]] == [f.batch_id for f in interrupted.files[:2]]
    assert [f.input_file_id for f in manifest.files[:2]] == [f.input_file_id for f in interrupted.files[:2]]
    assert manifest.is_complete and manifest.snapshot_id == 1
    assert len(indexed(es, index_name)) == 10 and "late" not in indexed(es, index_name)
    # Once snapshot 1's job is finished, the next run stages the latest snapshot.
    assert again.snapshot_id == 2 and len(server_batches(model_server)) == 6


def test_resumed_predict_finds_a_batch_whose_id_a_crash_lost(
    task_file: TaskFileFactory, warehouse: str, es_url: str, model_server: ModelServer, items: Any
) -> None:
    tasks = offline_tasks(task_file, warehouse, es_url, model_server.base_url)
    limits = BatchLimits(max_requests=5)
    with pytest.raises(_Crash):
        run_predict(tasks, "items", limits=limits, poll=FAST, log=crash_after_batches(1))
    (staged,) = Path(tasks.state_dir, "batch", "items").glob("snapshot-*/manifest.json")
    # As if the process died between batches.create and the manifest write.
    lost = load_manifest(staged)
    assert [file.status for file in lost.files] == [FileStatus.VALIDATING, FileStatus.PREPARED]
    lost.with_file(0, status=FileStatus.UPLOADED, batch_id=None).save()

    manifest = run_predict(tasks, "items", limits=limits, poll=FAST)

    assert len(server_batches(model_server)) == 2 == manifest.batches_created
    assert manifest.files[0].batch_id == lost.files[0].batch_id and manifest.is_complete


def test_failed_batch_is_reported_and_resubmitted_by_the_next_run(
    task_file: TaskFileFactory,
    warehouse: str,
    es_url: str,
    es: Elasticsearch,
    index_name: str,
    tmp_path: Path,
    items: Any,
) -> None:
    request = {"method": "POST", "url": "/v1/embeddings", "body": {"model": MODEL, "input": "x"}}
    blocker_lines = b"".join(orjson.dumps({"custom_id": f"b{n}", **request}) + b"\n" for n in range(500))
    with (
        running_model_server(models={MODEL: "hash:8"}, storage_dir=tmp_path / "slow", latency_seconds=0.02) as models,
        openai.OpenAI(base_url=models.base_url, api_key="unused") as client,
    ):
        tasks = offline_tasks(task_file, warehouse, es_url, models.base_url)
        # The server runs one batch at a time: a long one ahead keeps ours queued until its input is gone.
        blocker_file = client.files.create(file=("blocker.jsonl", blocker_lines), purpose="batch")
        blocker = client.batches.create(
            input_file_id=blocker_file.id, endpoint="/v1/embeddings", completion_window="24h"
        )

        def sabotage(done: int, total: int | None) -> None:
            if client.batches.retrieve(blocker.id).status == "in_progress":
                (staged,) = Path(tasks.state_dir, "batch", "items").glob("snapshot-*/manifest.json")
                for file in load_manifest(staged).files:
                    client.files.delete(file.input_file_id or "")
                client.batches.cancel(blocker.id)

        with pytest.raises(BatchPredictError) as failure:
            run_predict(tasks, "items", poll=FAST, progress=sabotage)
        failed = failure.value.manifest
        assert load_manifest(failed.path).files[0].status is FileStatus.FAILED
        with pytest.raises(BatchPredictError, match="did not complete"):
            ingest_predictions(tasks, failed.path)

        manifest = run_predict(tasks, "items", poll=FAST)
        ingest_predictions(tasks, manifest)

    message = str(failure.value)
    assert f"batch {failed.files[0].batch_id} (part-00001.t0.requests.jsonl, 9 requests) failed" in message
    assert f"invalid_file: input file {failed.files[0].input_file_id} was deleted" in message
    assert "run predict again to resubmit" in message
    assert manifest.batches_created == 2 and manifest.files[0].batch_id != failed.files[0].batch_id
    assert len(indexed(es, index_name)) == 10


def test_requests_the_model_rejects_are_dead_letters_and_their_documents_are_written_without_vectors(
    task_file: TaskFileFactory,
    warehouse: str,
    es_url: str,
    es: Elasticsearch,
    index_name: str,
    model_server: ModelServer,
    items: Any,
) -> None:
    tasks = offline_tasks(task_file, warehouse, es_url, model_server.base_url, model="not-served")

    manifest = run_predict(tasks, "items", poll=FAST)
    summary = ingest_predictions(tasks, manifest)

    assert (manifest.completed_requests, manifest.failed_requests, manifest.success_rate) == (0, 9, 0.0)
    assert manifest.files[0].output_path is None and manifest.files[0].error_path is not None
    documents = indexed(es, index_name)
    assert len(documents) == 10 and not any("title_vec" in document for document in documents.values())
    assert summary.failed_requests == 9
    letters = [letter for letter in read_dead_letters(Path(summary.dead_letter_path)) if letter["stage"] == "embed"]
    assert len(letters) == 9 and letters[0]["status"] == 400
    assert "models:not-served → title_vec: model_not_found" in letters[0]["reason"]


def test_ingest_writes_through_the_alias_of_an_index_the_sync_built(
    task_file: TaskFileFactory,
    warehouse: str,
    es_url: str,
    es: Elasticsearch,
    index_name: str,
    model_server: ModelServer,
    items: Any,
) -> None:
    tasks = offline_tasks(task_file, warehouse, es_url, model_server.base_url, fields=["id", "title"])
    run_sync(tasks, "items", mode=SyncMode.FULL)
    commit_rows(items, pa.table({"id": ["p1"], "title": ["a renamed teapot"], "price": [1.0]}))

    manifest = run_predict(tasks, "items", poll=FAST)
    ingest_predictions(tasks, manifest)

    assert resolve_target(es, index_name).write_index == f"{index_name}-1"
    document = indexed(es, index_name)["p1"]
    assert document["title"] == "a renamed teapot" and "price" not in document
    np.testing.assert_allclose(document["title_vec"], hash_vectors(["a renamed teapot"])["a renamed teapot"], rtol=1e-6)


def test_predict_refuses_tasks_whose_transforms_the_batch_api_cannot_run(
    task_file: TaskFileFactory, warehouse: str, es_url: str
) -> None:
    tasks = task_file(transforms=[{"field": "title", "embed": "text", "model": "hash:8", "to": "title_vec"}])

    assert not supports_offline_inference(tasks.task("items"), tasks)
    with pytest.raises(ConfigError, match=r"transform model\(s\) \['hash:8'\] are not"):
        offline_transforms(tasks.task("items"), tasks)


def test_predict_dead_letters_a_request_too_large_for_any_file(
    task_file: TaskFileFactory, warehouse: str, es_url: str, model_server: ModelServer
) -> None:
    write_paimon_table(warehouse, "db.items", pa.table({"id": ["short", "long"], "title": ["a mug", "tea " * 100]}))
    tasks = offline_tasks(task_file, warehouse, es_url, model_server.base_url)

    manifest = run_predict(tasks, "items", limits=BatchLimits(max_bytes=250), poll=FAST)

    assert manifest.requests == 1 and manifest.document_count == 2
    (letter,) = read_dead_letters(Path(tasks.state_dir, "dead_letters", "items.jsonl"))
    assert (letter["id"], letter["stage"]) == ("long", "embed")
    assert "title: the request is" in letter["reason"] and "above 250" in letter["reason"]


# --- the sync cursor and the error budget -----------------------------------------------------------


def test_predict_records_its_snapshot_as_the_cursor_so_the_next_sync_continues_incrementally(
    task_file: TaskFileFactory,
    warehouse: str,
    es_url: str,
    es: Elasticsearch,
    index_name: str,
    model_server: ModelServer,
    items: Any,
) -> None:
    tasks = offline_tasks(task_file, warehouse, es_url, model_server.base_url)

    manifest = run_predict(tasks, "items", poll=FAST)
    summary = ingest_predictions(tasks, manifest)
    # On the physical index behind the alias, where the sync reads and writes it.
    cursor = read_cursor(es, f"{index_name}-1")
    commit_rows(items, pa.table({"id": ["late"], "title": ["a late kettle"], "price": [99.0]}))
    result = run_sync(tasks, "items")

    assert summary.cursor_written and cursor is not None
    assert (cursor.snapshot_id, cursor.task, cursor.table) == (manifest.snapshot_id, "items", manifest.table)
    assert result.mode is SyncMode.INCREMENTAL and "full" not in result.reason
    assert (result.from_snapshot, result.snapshot_id, result.documents_indexed) == (manifest.snapshot_id, 2, 1)
    assert result.physical_index == f"{index_name}-1"
    documents = indexed(es, index_name)
    assert len(documents) == 11 and documents["late"]["title"] == "a late kettle"
    np.testing.assert_allclose(documents["late"]["title_vec"], hash_vectors(["a late kettle"])["a late kettle"])


def test_predict_deletes_documents_its_snapshot_lacks_before_recording_the_cursor(
    task_file: TaskFileFactory,
    warehouse: str,
    es_url: str,
    es: Elasticsearch,
    index_name: str,
    model_server: ModelServer,
    items: Any,
) -> None:
    tasks = offline_tasks(task_file, warehouse, es_url, model_server.base_url)
    run_sync(tasks, "items", mode=SyncMode.FULL)
    # As a row deleted from the table after the sync would leave it (Paimon deletes need a keyed table).
    es.index(index=index_name, id="gone", document={"title": "deleted from the table"}, refresh=True)

    summary = ingest_predictions(tasks, run_predict(tasks, "items", poll=FAST))

    assert summary.documents_deleted == 1 and summary.cursor_written
    assert set(indexed(es, index_name)) == {*TITLES, "blank"}


def test_predict_sets_back_the_cursor_of_a_sync_that_got_further_so_the_next_sync_reapplies_its_changes(
    task_file: TaskFileFactory,
    warehouse: str,
    es_url: str,
    es: Elasticsearch,
    index_name: str,
    model_server: ModelServer,
    items: Any,
) -> None:
    tasks = offline_tasks(task_file, warehouse, es_url, model_server.base_url)
    manifest = run_predict(tasks, "items", poll=FAST)
    commit_rows(items, pa.table({"id": ["late"], "title": ["a late kettle"], "price": [99.0]}))
    run_sync(tasks, "items")

    summary = ingest_predictions(tasks, manifest)
    cursor = read_cursor(es, index_name)
    after_ingest = set(indexed(es, index_name))
    result = run_sync(tasks, "items")

    # The index holds snapshot 1 exactly, and says so; the next sync brings snapshot 2's row back.
    assert manifest.snapshot_id == 1 and summary.cursor_written
    assert cursor is not None and cursor.snapshot_id == 1
    assert summary.documents_deleted == 1 and "late" not in after_ingest
    assert (result.mode, result.from_snapshot, result.snapshot_id) == (SyncMode.INCREMENTAL, 1, 2)
    assert indexed(es, index_name)["late"]["title"] == "a late kettle"


@pytest.mark.parametrize(
    ("errors", "model", "message", "written", "letters"),
    [
        # The null key, dead-lettered while staging, is already one too many: nothing is written.
        ({"max_errors": 0}, MODEL, "1 documents failed, more than errors.max_errors=0; writing stopped", 0, 1),
        # With the model missing, each of the 9 requests is a dead letter too; the rate is the whole job's.
        ({"max_error_rate": 0.5}, "not-served", "10/11 documents failed, above errors.max_error_rate=0.5", 10, 10),
    ],
    ids=["max_errors", "max_error_rate"],
)
def test_predict_ingest_past_the_tasks_error_budget_fails_and_leaves_the_cursor(
    task_file: TaskFileFactory,
    warehouse: str,
    es_url: str,
    es: Elasticsearch,
    index_name: str,
    model_server: ModelServer,
    items: Any,
    errors: dict[str, Any],
    model: str,
    message: str,
    written: int,
    letters: int,
) -> None:
    tasks = offline_tasks(task_file, warehouse, es_url, model_server.base_url, model=model, errors=errors)
    manifest = run_predict(tasks, "items", poll=FAST)

    with pytest.raises(TooManyErrorsError) as failure:
        ingest_predictions(tasks, manifest)

    assert str(failure.value).startswith(f"task 'items': {message}")
    assert str(failure.value).endswith("the cursor was not moved")
    assert read_cursor(es, index_name) is None
    assert len(indexed(es, index_name)) == written
    assert len(read_dead_letters(Path(tasks.state_dir, "dead_letters", "items.jsonl"))) == letters
