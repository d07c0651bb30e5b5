"""Batch ingest end to end: real files, moto S3 (also behind the fault proxy, which drops connections
mid-body) and the model server's Files API → the real noida-db.

Each test writes JSONL in the shape a batch-prediction service produces, runs `run_ingest` on a
request body, and reads back the index and the dead letters.
"""

from __future__ import annotations

import copy
import gzip
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from elasticsearch import Elasticsearch
from openai import OpenAI

from lake_sync.batch import ingest as ingest_module
from lake_sync.batch import readers
from lake_sync.batch.ingest import IngestProgress, IngestState, _verbatim_vectors
from lake_sync.batch.request import parse_request
from lake_sync.errors import ConfigError
from lake_sync.index.mapping import vector_mapping
from lake_sync.local.model_server import ModelServer
from lake_sync_tests.batch.conftest import (
    documents,
    jsonl,
    openai_input,
    openai_output,
    vector,
    write_jsonl,
)
from lake_sync_tests.batch.test_request import OPENAI_MULTI_FILE_EXAMPLE, SAGEMAKER_S3_EXAMPLE
from lake_sync_tests.fault_proxy import FaultProxy

DIMS = 8


@pytest.fixture
def seed_indexes(es: Elasticsearch) -> Iterator[None]:
    """The seed examples name their indexes; remove them after each test."""
    yield
    for name in (SAGEMAKER_S3_EXAMPLE["index_name"], OPENAI_MULTI_FILE_EXAMPLE["index_name"]):
        es.options(ignore_status=404).indices.delete(index=name)


def file_request(index: str, sources: list[Path], field_map: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "index_name": index,
        "field_map": field_map,
        "data_source": {"type": "file", "source": [str(path) for path in sources]},
        **extra,
    }


def qa_files(tmp_path: Path, ids: range, *, input_ids: range | None = None) -> tuple[Path, Path]:
    """An OpenAI Batch output file (two embeddings per line) and its input file (question, answer)."""
    output = write_jsonl(
        tmp_path / "output.jsonl",
        (openai_output(f"r{i}", [vector(DIMS, i), vector(DIMS, -i)]) for i in ids),
    )
    batch_input = write_jsonl(
        tmp_path / "input.jsonl",
        (openai_input(f"r{i}", [f"question {i}", f"answer {i}"]) for i in (input_ids or ids)),
    )
    return output, batch_input


QA_FIELD_MAP = {
    "question": "source[1].$.body.input[0]",
    "answer": "source[1].$.body.input[1]",
    "question_embedding": "source[0].$.response.body.data[0].embedding",
    "answer_embedding": "source[0].$.response.body.data[1].embedding",
    "_id": ["source[0].$.custom_id", "source[1].$.custom_id"],
}


# --- the seed document's examples ---------------------------------------------------------------


def test_ingest_runs_the_sagemaker_s3_example_as_documented(
    ingest: Any, es: Elasticsearch, s3: Any, s3_url: str, seed_indexes: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The ES counterpart of the example's `PUT /my-nlp-index` (knn_vector, 384 dims).
    es.indices.create(
        index="my-nlp-index",
        mappings={
            "properties": {
                "id": {"type": "text"},
                "chapter": {"type": "text"},
                "title": {"type": "text"},
                "chapter_embedding": vector_mapping(384),
                "title_embedding": vector_mapping(384),
            }
        },
    )
    lines = [
        {"SageMakerOutput": [vector(384, i), vector(384, 100 + i)], "content": [f"chapter {i}", f"title {i}"], "id": i}
        for i in range(1, 6)
    ]
    s3.put_object(Bucket="bucket", Key="output/sagemaker_batch.json.out", Body=jsonl(lines))
    # The body stays exactly as documented; boto3 finds the S3-compatible endpoint in the environment.
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_url)

    result = ingest(SAGEMAKER_S3_EXAMPLE)

    assert result.state is IngestState.COMPLETED, result.error
    assert (result.lines_read, result.documents_written, result.failed) == (5, 5, 0)
    assert result.success_rate == 100.0 and not result.index_created
    stored = documents(es, "my-nlp-index")
    assert sorted(stored) == ["1", "2", "3", "4", "5"]
    assert stored["3"]["chapter"] == "chapter 3" and stored["3"]["title"] == "title 3" and stored["3"]["id"] == 3
    assert stored["3"]["title_embedding"] == pytest.approx(vector(384, 103))


def test_ingest_runs_the_openai_multi_file_example_from_openai_files(
    ingest: Any, es: Elasticsearch, model_server: ModelServer, seed_indexes: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [f"request-{i}" for i in range(1, 5)]
    output = [openai_output(i, [vector(DIMS, n), vector(DIMS, -n)]) for n, i in enumerate(ids)]
    batch_input = [openai_input(i, [f"question {i}", f"answer {i}"]) for i in ids]
    metadata = [{"custom_id": i, "custom_field1": f"topic {i}", "custom_field2": n} for n, i in enumerate(ids)]
    with OpenAI(base_url=model_server.base_url, api_key="x") as client:
        file_ids = [
            client.files.create(file=(name, jsonl(lines)), purpose="batch").id
            for name, lines in (("output.jsonl", output), ("input.jsonl", batch_input), ("meta.jsonl", metadata))
        ]
    body = copy.deepcopy(OPENAI_MULTI_FILE_EXAMPLE)
    body["data_source"]["source"] = file_ids  # the server names its files; the rest is as documented
    monkeypatch.setenv("OPENAI_BASE_URL", model_server.base_url)

    result = ingest(body)

    assert result.state is IngestState.COMPLETED, result.error
    assert (result.lines_read, result.documents_written, result.failed, result.orphans.count) == (12, 4, 0, 0)
    assert result.index_created
    stored = documents(es, "my-nlp-index-openai")
    assert stored["request-2"] == {
        "question": "question request-2",
        "answer": "answer request-2",
        "question_embedding": pytest.approx(vector(DIMS, 1)),
        "answer_embedding": pytest.approx(vector(DIMS, -1)),
        "custom_field1": "topic request-2",
        "custom_field2": 1,
    }
    mapping = es.indices.get_mapping(index="my-nlp-index-openai")["my-nlp-index-openai"]["mappings"]["properties"]
    assert mapping["question_embedding"]["type"] == "dense_vector" and mapping["question_embedding"]["dims"] == DIMS


# --- output formats through field maps alone -----------------------------------------------------

FORMATS = {
    # name: (line i, field map, ingest fields, the id of line i, a field only ingest_fields fills)
    "openai_batch": (
        lambda i: openai_output(f"req-{i}", [vector(DIMS, i)]),
        {"embedding": "$.response.body.data[0].embedding", "_id": "$.custom_id"},
        ["$.response.body.model"],
        "req-{}",
        ("model", "text-embedding-3-small"),
    ),
    "sagemaker_batch_transform": (
        lambda i: {"SageMakerOutput": [vector(DIMS, i)], "content": [f"text {i}"], "id": i},
        {"text": "$.content[0]", "embedding": "$.SageMakerOutput[0]", "_id": "$.id"},
        ["$.id"],
        "{}",
        ("id", 7),
    ),
    "bedrock_batch": (
        lambda i: {
            "recordId": f"rec-{i:011d}",
            "modelInput": {"inputText": f"text {i}", "dimensions": DIMS},
            "modelOutput": {"embedding": vector(DIMS, i), "inputTextTokenCount": 2},
        },
        {"text": "$.modelInput.inputText", "embedding": "$.modelOutput.embedding", "_id": "$.recordId"},
        ["$.modelOutput.inputTextTokenCount"],
        "rec-{:011d}",
        ("inputTextTokenCount", 2),
    ),
}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_ingest_reads_each_batch_service_output_format_through_its_field_map(
    name: str, ingest: Any, es: Elasticsearch, index_name: str, tmp_path: Path
) -> None:
    line, field_map, ingest_fields, id_format, (extra_field, extra_value) = FORMATS[name]
    path = write_jsonl(tmp_path / "out.jsonl", (line(i) for i in range(1, 21)))

    result = ingest(file_request(index_name, [path], field_map, ingest_fields=ingest_fields))

    assert result.state is IngestState.COMPLETED, result.error
    assert result.documents_written == 20
    stored = documents(es, index_name)
    assert len(stored) == 20
    seventh = stored[id_format.format(7)]
    assert seventh["embedding"] == pytest.approx(vector(DIMS, 7))
    assert seventh[extra_field] == extra_value
    if "text" in field_map:
        assert seventh["text"] == "text 7"


# --- joins ----------------------------------------------------------------------------------------


def test_join_writes_each_document_once_and_complete_and_reports_orphans_and_duplicates(
    ingest: Any, es: Elasticsearch, es_url: str, index_name: str, tmp_path: Path, dead_letters: Any
) -> None:
    output, batch_input = qa_files(tmp_path, range(0, 30), input_ids=range(3, 45))
    with output.open("ab") as file:  # a re-sent line: the later one wins
        file.write(jsonl([openai_output("r7", [[0.5] * DIMS, [0.25] * DIMS])]))

    with FaultProxy(es_url) as proxy:
        result = ingest(file_request(index_name, [output, batch_input], QA_FIELD_MAP), client=Elasticsearch(proxy.url))

    assert result.state is IngestState.COMPLETED_WITH_ERROR
    assert (result.lines_read, result.documents_written, result.failed) == (73, 27, 18)
    # r0-r2 lack an input line, r30-r44 an output line: all counted, 10 of them named.
    assert result.orphans.count == 18 and result.missing_by_source == (15, 3)
    assert len(result.orphans.samples) == 10
    assert "r31 (in source[1] line 29; not in source[0])" in result.orphans.samples
    assert result.duplicates.count == 1
    assert result.duplicates.samples == ("r7 (source[0] lines 8, 31; the last line wins)",)
    sent = [orjson.loads(line) for body in proxy.log.bulk_bodies for line in body.splitlines()[0::2]]
    assert sorted(action["index"]["_id"] for action in sent) == sorted(f"r{i}" for i in range(3, 30))
    stored = documents(es, index_name)
    assert len(stored) == 27 and all(len(document) == 4 for document in stored.values())
    assert stored["r7"]["question_embedding"] == [0.5] * DIMS and stored["r7"]["question"] == "question 7"
    letters = dead_letters()
    assert {letter["id"] for letter in letters} == {f"r{i}" for i in (*range(3), *range(30, 45))}
    assert {letter["stage"] for letter in letters} == {"join"}
    r0 = next(letter for letter in letters if letter["id"] == "r0")
    assert r0["reason"] == "id in source[0] line 1 but not in source[1]"
    assert r0["document"]["question_embedding"] == pytest.approx(vector(DIMS, 0))


@pytest.mark.parametrize(("policy", "written", "failed"), [("skip", 27, 0), ("partial", 33, 0)])
def test_join_skips_or_partially_writes_orphans_when_asked(
    policy: str, written: int, failed: int, ingest: Any, es: Elasticsearch, index_name: str, tmp_path: Path
) -> None:
    output, batch_input = qa_files(tmp_path, range(0, 30), input_ids=range(3, 33))

    result = ingest(file_request(index_name, [output, batch_input], QA_FIELD_MAP, options={"missing_ids": policy}))

    assert result.state is IngestState.COMPLETED
    assert (result.documents_written, result.failed, result.orphans.count) == (written, failed, 6)
    stored = documents(es, index_name)
    assert len(stored) == written
    if policy == "partial":
        assert set(stored["r0"]) == {"question_embedding", "answer_embedding"}
        assert set(stored["r32"]) == {"question", "answer"}


def test_join_spills_to_partition_files_above_its_memory_bound_and_joins_the_same(
    ingest: Any, es: Elasticsearch, index_name: str, tmp_path: Path
) -> None:
    output, batch_input = qa_files(tmp_path, range(2000))
    body = file_request(index_name, [output, batch_input], QA_FIELD_MAP)
    bound = 64 * 1024
    spill = tmp_path / "spill"
    spill.mkdir()

    in_memory = ingest(body)
    spilled = ingest({**body, "options": {"join_memory_bytes": bound}}, spill_dir=spill)

    assert in_memory.spill_partitions == 0 and in_memory.documents_written == 2000
    assert spilled.state is IngestState.COMPLETED and spilled.documents_written == 2000
    # The records (~440 KB) did not fit: every source went to partition files, each joined within the bound.
    assert spilled.spill_partitions >= 8
    assert 0 < spilled.max_partition_bytes <= bound
    assert list(spill.iterdir()) == []  # partition files are removed
    assert es.count(index=index_name)["count"] == 2000


def test_join_dead_letters_a_document_whose_line_failed_in_one_source(
    ingest: Any, index_name: str, tmp_path: Path, dead_letters: Any
) -> None:
    output, batch_input = qa_files(tmp_path, range(5))
    with output.open("ab") as file:  # OpenAI's shape for a request that failed
        file.write(jsonl([{"custom_id": "r5", "response": None, "error": {"code": "server_error", "message": "boom"}}]))
    with batch_input.open("ab") as file:
        file.write(jsonl([openai_input("r5", ["q", "a"])]))

    result = ingest(file_request(index_name, [output, batch_input], QA_FIELD_MAP))

    assert (result.documents_written, result.failed, result.orphans.count) == (5, 1, 0)
    (letter,) = dead_letters()
    assert letter["id"] == "r5" and letter["stage"] == "line"
    assert "line 6: no value at source[0].$.response.body.data[0].embedding" in letter["reason"]
    assert '"message":"boom"' in letter["reason"]
    assert letter["document"] == {"question": "q", "answer": "a"}


# --- one source -----------------------------------------------------------------------------------


def test_ingest_dead_letters_malformed_lines_with_source_and_line_number_and_writes_the_rest(
    ingest: Any, es: Elasticsearch, index_name: str, tmp_path: Path, dead_letters: Any
) -> None:
    lines: list[Any] = [openai_output(f"r{i}", [vector(DIMS, i)]) for i in range(6)]
    lines[1] = '{"custom_id": "r1", "response": {'
    lines[3] = "[1, 2, 3]"
    lines[4] = {"response": {"body": {"data": [{"embedding": vector(DIMS, 4)}]}}}
    path = write_jsonl(tmp_path / "out.jsonl", lines)
    field_map = {"embedding": "$.response.body.data[0].embedding", "_id": "$.custom_id"}

    result = ingest(file_request(index_name, [path], field_map))

    assert result.state is IngestState.COMPLETED_WITH_ERROR
    assert (result.lines_read, result.documents_written, result.failed) == (6, 3, 3)
    assert result.success_rate == pytest.approx(50.0)
    assert sorted(documents(es, index_name)) == ["r0", "r2", "r5"]
    reasons = [letter["reason"] for letter in dead_letters()]
    assert reasons[0].startswith(f"source[0] ({path}) line 2: malformed JSON")
    assert reasons[1] == f"source[0] ({path}) line 4: expected a JSON object, got list"
    assert reasons[2] == f"source[0] ({path}) line 5: no _id at $.custom_id"
    assert dead_letters()[0]["document"] == {"line": '{"custom_id": "r1", "response": {\n'}


def test_ingest_dead_letters_vectors_whose_dims_differ_from_the_index_mapping(
    ingest: Any, es: Elasticsearch, index_name: str, tmp_path: Path, dead_letters: Any
) -> None:
    es.indices.create(index=index_name, mappings={"properties": {"embedding": vector_mapping(DIMS)}})
    path = write_jsonl(
        tmp_path / "out.jsonl",
        [openai_output(f"r{i}", [vector(DIMS - 1 if i == 2 else DIMS, i)]) for i in range(4)],
    )

    result = ingest(
        file_request(index_name, [path], {"embedding": "$.response.body.data[0].embedding", "_id": "$.custom_id"})
    )

    assert (result.documents_written, result.failed) == (3, 1)
    (letter,) = dead_letters()
    assert letter["id"] == "r2" and letter["stage"] == "line"
    assert (
        letter["reason"] == f"source[0] ({path}) line 3: field 'embedding' has 7 dims, the index's dense_vector has 8"
    )


def test_ingest_dead_letters_documents_the_index_rejects(
    ingest: Any, es_url: str, index_name: str, tmp_path: Path, dead_letters: Any
) -> None:
    path = write_jsonl(tmp_path / "out.jsonl", [openai_output(f"r{i}", [vector(DIMS, i)]) for i in range(6)])
    field_map = {"embedding": "$.response.body.data[0].embedding", "_id": "$.custom_id"}

    with FaultProxy(es_url, reject_bulk_items=1, reject_item_status=400) as proxy:
        result = ingest(file_request(index_name, [path], field_map), client=Elasticsearch(proxy.url))

    assert result.state is IngestState.COMPLETED_WITH_ERROR
    assert (result.documents_written, result.failed) == (3, 3)
    letters = dead_letters()
    assert sorted(letter["id"] for letter in letters) == sorted(proxy.log.rejected_ids)
    assert {(letter["stage"], letter["status"]) for letter in letters} == {("index", 400)}
    assert letters[0]["document"]["embedding"] == pytest.approx(vector(DIMS, int(letters[0]["id"][1:])))


def test_ingest_without_id_derives_ids_from_the_lines_so_a_rerun_overwrites(
    ingest: Any, es: Elasticsearch, index_name: str, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "out.jsonl", [openai_output(f"r{i}", [vector(DIMS, i)]) for i in range(10)])
    body = file_request(
        index_name, [path], {"embedding": "$.response.body.data[0].embedding"}, ingest_fields=["$.custom_id"]
    )

    first, second = ingest(body), ingest(body)

    assert first.documents_written == second.documents_written == 10
    assert es.count(index=index_name)["count"] == 10
    assert sorted(document["custom_id"] for document in documents(es, index_name).values()) == sorted(
        f"r{i}" for i in range(10)
    )


def test_ingest_reports_repeated_ids_of_one_source_and_keeps_the_last(
    ingest: Any, es: Elasticsearch, index_name: str, tmp_path: Path
) -> None:
    lines = [openai_output(f"r{i}", [vector(DIMS, i)]) for i in range(4)] + [openai_output("r1", [[0.5] * DIMS])]
    path = write_jsonl(tmp_path / "out.jsonl", lines)

    result = ingest(
        file_request(index_name, [path], {"embedding": "$.response.body.data[0].embedding", "_id": "$.custom_id"})
    )

    assert result.state is IngestState.COMPLETED
    assert result.duplicates.count == 1 and result.duplicates.samples == ("r1 (source[0] line 5; the last line wins)",)
    assert documents(es, index_name)["r1"]["embedding"] == [0.5] * DIMS


def test_ingest_reads_gzip_from_s3_with_endpoint_url(
    ingest: Any, es: Elasticsearch, index_name: str, s3: Any, s3_url: str
) -> None:
    import gzip

    s3.put_object(
        Bucket="bucket",
        Key="out/part-0.jsonl.gz",
        Body=gzip.compress(jsonl(openai_output(f"r{i}", [vector(DIMS, i)]) for i in range(50))),
    )
    body = {
        "index_name": index_name,
        "field_map": {"embedding": "$.response.body.data[0].embedding", "_id": "$.custom_id"},
        "credential": {"region": "us-east-1", "access_key": "testing", "secret_key": "testing"},
        "data_source": {"type": "s3", "source": ["s3://bucket/out/part-0.jsonl.gz"], "endpoint_url": s3_url},
    }

    result = ingest(body)

    assert result.state is IngestState.COMPLETED and result.documents_written == 50
    assert es.count(index=index_name)["count"] == 50


def s3_body(index: str, endpoint_url: str, key: str) -> dict[str, Any]:
    return {
        "index_name": index,
        "field_map": {"embedding": "$.response.body.data[0].embedding", "_id": "$.custom_id"},
        "credential": {"region": "us-east-1", "access_key": "testing", "secret_key": "testing"},
        "data_source": {"type": "s3", "source": [f"s3://bucket/{key}"], "endpoint_url": endpoint_url},
    }


def test_ingest_from_s3_resumes_dropped_connections_and_writes_every_line_exactly_once(
    ingest: Any, es: Elasticsearch, index_name: str, s3: Any, s3_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readers, "DEFAULT_S3_RESUME_BACKOFF", 0.0)
    compressed = gzip.compress(jsonl(openai_output(f"r{i}", [vector(DIMS, i)]) for i in range(400)))
    s3.put_object(Bucket="bucket", Key="out/part-0.jsonl.gz", Body=compressed)

    with FaultProxy(s3_url, cut_bodies=3, cut_after_bytes=len(compressed) // 4) as proxy:
        result = ingest(s3_body(index_name, proxy.url, "out/part-0.jsonl.gz"))

    assert proxy.log.cuts == 3
    assert result.state is IngestState.COMPLETED
    # A line read twice would be a repeated id, a line lost a missing document.
    assert (result.lines_read, result.documents_written, result.failed, result.duplicates.count) == (400, 400, 0, 0)
    written = documents(es, index_name)
    assert sorted(written) == sorted(f"r{i}" for i in range(400))
    assert written["r399"]["embedding"] == pytest.approx(vector(DIMS, 399))


def test_ingest_from_s3_fails_clearly_when_the_object_is_replaced_between_reconnects(
    ingest: Any, s3: Any, s3_url: str, index_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readers, "DEFAULT_S3_RESUME_BACKOFF", 0.0)
    original = jsonl(openai_output(f"r{i}", [vector(DIMS, i)]) for i in range(200))
    s3.put_object(Bucket="bucket", Key="out.jsonl", Body=original)

    def replace_object() -> None:
        s3.put_object(Bucket="bucket", Key="out.jsonl", Body=jsonl(openai_output("new", [vector(DIMS, 0)])))

    with FaultProxy(s3_url, cut_bodies=1, cut_after_bytes=len(original) // 2, on_cut=replace_object) as proxy:
        result = ingest(s3_body(index_name, proxy.url, "out.jsonl"))

    assert result.state is IngestState.FAILED
    assert result.error is not None
    assert result.error.startswith("s3://bucket/out.jsonl was replaced while it was read (its ETag is no longer")
    assert result.error.endswith("re-run the ingest to read the new object")
    assert result.lines_read < 200


# --- the error budget -------------------------------------------------------------------------------


def test_ingest_stops_writing_and_fails_once_dead_letters_pass_options_max_errors(
    ingest: Any, es: Elasticsearch, index_name: str, tmp_path: Path, dead_letters: Any, dead_letter_path: Path
) -> None:
    lines: list[Any] = [openai_output(f"r{i}", [vector(DIMS, i)]) for i in range(1000)]
    for bad in (100, 200, 300):
        lines[bad] = "not json"
    path = write_jsonl(tmp_path / "out.jsonl", lines)
    field_map = {"embedding": "$.response.body.data[0].embedding", "_id": "$.custom_id"}

    result = ingest(file_request(index_name, [path], field_map, options={"bulk_size": 50, "max_errors": 2}))

    assert result.state is IngestState.FAILED and result.over_budget
    assert result.error == (
        f"ingest into '{index_name}': 3 documents failed, more than options.max_errors=2; writing stopped "
        f"({result.documents_written:,} documents written); the dead letters are in {dead_letter_path}"
    )
    # The third bad line is line 301: nothing read after it was sent.
    assert result.lines_read == 301 and result.failed == 3
    es.indices.refresh(index=index_name)
    assert es.count(index=index_name)["count"] <= 298
    assert [letter["reason"].split(": ")[0] for letter in dead_letters()] == [
        f"source[0] ({path}) line {bad + 1}" for bad in (100, 200, 300)
    ]


@pytest.mark.parametrize(("max_rate", "state"), [(0.2, IngestState.FAILED), (0.3, IngestState.COMPLETED_WITH_ERROR)])
def test_ingest_checks_options_max_error_rate_once_every_document_was_tried(
    ingest: Any, es: Elasticsearch, index_name: str, tmp_path: Path, max_rate: float, state: IngestState
) -> None:
    lines: list[Any] = [openai_output(f"r{i}", [vector(DIMS, i)]) for i in range(10)]
    lines[0] = lines[1] = lines[2] = "not json"
    path = write_jsonl(tmp_path / "out.jsonl", lines)
    field_map = {"embedding": "$.response.body.data[0].embedding", "_id": "$.custom_id"}

    result = ingest(file_request(index_name, [path], field_map, options={"max_error_rate": max_rate}))

    # The first lines alone are 100 % failures; only the whole run's 3/10 is held against the budget.
    assert result.state is state and result.over_budget is (state is IngestState.FAILED)
    assert (result.documents_written, result.failed) == (7, 3)
    if state is IngestState.FAILED:
        assert result.error is not None
        assert result.error.startswith(
            f"ingest into '{index_name}': 3/10 documents failed, above options.max_error_rate=0.2"
        )
    assert len(documents(es, index_name)) == 7


def test_ingest_fails_before_writing_when_a_source_is_missing(
    ingest: Any, es: Elasticsearch, index_name: str, tmp_path: Path
) -> None:
    output, _ = qa_files(tmp_path, range(3))

    result = ingest(file_request(index_name, [output, tmp_path / "gone.jsonl"], QA_FIELD_MAP))

    assert result.state is IngestState.FAILED and result.lines_read == 0
    assert result.error == f"source[1]: {tmp_path / 'gone.jsonl'} does not exist or is not a file"
    assert not es.indices.exists(index=index_name)


def test_ingest_refuses_a_bad_jsonpath_before_reading_anything(tmp_path: Path) -> None:
    body = file_request("i", [tmp_path / "never-read.jsonl"], {"embedding": "$.response.body.data[0.embedding"})

    with pytest.raises(
        ConfigError, match=r"field_map\.embedding: '\$\.response\.body\.data\[0\.embedding' is not a valid JSONPath"
    ):
        parse_request(body)


def test_ingest_cancelled_stops_reading_and_sends_nothing_more(
    ingest: Any, es: Elasticsearch, es_url: str, index_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest_module, "DEFAULT_PROGRESS_SECONDS", 0.0)
    path = write_jsonl(tmp_path / "out.jsonl", [openai_output(f"r{i}", [vector(DIMS, i)]) for i in range(1000)])
    cancel = threading.Event()
    states: list[IngestState] = []

    def watch(progress: IngestProgress) -> None:
        states.append(progress.state)
        if progress.lines_read >= 250:
            cancel.set()

    body = file_request(
        index_name,
        [path],
        {"embedding": "$.response.body.data[0].embedding", "_id": "$.custom_id"},
        options={"bulk_size": 100, "max_in_flight": 1},
    )
    with FaultProxy(es_url) as proxy:
        result = ingest(body, client=Elasticsearch(proxy.url), progress=watch, cancel=cancel)
        sent = proxy.log.bulk_requests

    assert result.state is IngestState.CANCELLED and result.lines_read == 250
    assert states[0] is IngestState.CREATED and states[1] is IngestState.RUNNING and states[-1] is IngestState.CANCELLED
    # Documents 1..249 were taken: two full bulks of 100 at most; the partial third never went out.
    assert sent <= 2
    es.indices.refresh(index=index_name)
    assert es.count(index=index_name)["count"] == 100 * sent


# --- vectors copied verbatim ------------------------------------------------------------------------

TRICKY_LINES = {
    # OpenAI's shape: "embedding" is also a string value; only the key counts.
    "openai": b'{"custom_id":"a","data":[{"object":"embedding","embedding":[0.5,-0.25,1e-3]}]}',
    "spaced": b'{"custom_id": "b", "data": [{"embedding" : [0.5, -0.25, 0.001]}]}',
    # The key twice (another one nested elsewhere): ambiguous, so the parsed value is used.
    "twice": b'{"custom_id":"c","meta":{"embedding":[9,9,9]},"data":[{"embedding":[0.5,-0.25,0.001]}]}',
    # A backslash could hide a key (\u0065mbedding) or a quote: the parsed value is used.
    "escaped": b'{"custom_id":"d","note":"say \\"hi\\"","data":[{"embedding":[0.5,-0.25,0.001]}]}',
    "nested": b'{"custom_id":"e","data":[{"embedding":[[0.5],[-0.25],[0.001]]}]}',
}


def test_verbatim_vectors_copy_only_unambiguous_arrays() -> None:
    keys = [("embedding", b'"embedding"')]
    copied = {
        name: _verbatim_vectors(line, {"embedding": extract_value(line)}, keys)["embedding"]
        for name, line in TRICKY_LINES.items()
    }

    assert {name for name, value in copied.items() if isinstance(value, orjson.Fragment)} == {"openai", "spaced"}
    for name, line in TRICKY_LINES.items():
        assert orjson.loads(orjson.dumps({"v": copied[name]}))["v"] == extract_value(line), name


def extract_value(line: bytes) -> Any:
    return orjson.loads(line)["data"][0]["embedding"]


def test_ingest_stores_the_same_vectors_whether_copied_or_reserialised(
    ingest: Any, es: Elasticsearch, index_name: str, tmp_path: Path
) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"\n".join(line for name, line in TRICKY_LINES.items() if name != "nested") + b"\n")

    result = ingest(file_request(index_name, [path], {"v": "$.data[0].embedding", "_id": "$.custom_id"}))

    assert result.documents_written == 4
    assert {key: value["v"] for key, value in documents(es, index_name).items()} == {
        "a": [0.5, -0.25, 0.001],
        "b": [0.5, -0.25, 0.001],
        "c": [0.5, -0.25, 0.001],
        "d": [0.5, -0.25, 0.001],
    }
