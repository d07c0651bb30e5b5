"""The batch-ingestion request: ML Commons bodies accepted unchanged, mistakes refused before any read."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from lake_sync.batch.request import MissingIds, SourceType, extract, parse_request
from lake_sync.config import parse_task_file
from lake_sync.errors import ConfigError

# The two request bodies of the ML Commons batch-ingestion documentation, verbatim.
SAGEMAKER_S3_EXAMPLE: dict[str, Any] = {
    "index_name": "my-nlp-index",
    "field_map": {
        "chapter": "$.content[0]",
        "title": "$.content[1]",
        "chapter_embedding": "$.SageMakerOutput[0]",
        "title_embedding": "$.SageMakerOutput[1]",
        "_id": "$.id",
    },
    "ingest_fields": ["$.id"],
    "credential": {"region": "us-east-1", "access_key": "<ACCESS_KEY>", "secret_key": "<SECRET_KEY>"},
    "data_source": {"type": "s3", "source": ["s3://bucket/output/sagemaker_batch.json.out"]},
}
OPENAI_MULTI_FILE_EXAMPLE: dict[str, Any] = {
    "index_name": "my-nlp-index-openai",
    "field_map": {
        "question": "source[1].$.body.input[0]",
        "answer": "source[1].$.body.input[1]",
        "question_embedding": "source[0].$.response.body.data[0].embedding",
        "answer_embedding": "source[0].$.response.body.data[1].embedding",
        "_id": ["source[0].$.custom_id", "source[1].$.custom_id"],
    },
    "ingest_fields": ["source[2].$.custom_field1", "source[2].$.custom_field2"],
    "credential": {"openAI_key": "<OPENAI_KEY>"},
    "data_source": {"type": "openAI", "source": ["file-output-id", "file-input-id", "file-metadata-id"]},
}


def changed(body: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of `body` with dotted keys set (value None deletes)."""
    body = copy.deepcopy(body)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = body
        for key in parents:
            node = node[key]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return body


def problem(body: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as raised:
        parse_request(body)
    return str(raised.value)


def test_request_accepts_the_sagemaker_s3_example_as_documented() -> None:
    request = parse_request(SAGEMAKER_S3_EXAMPLE)

    (plan,) = request.plan()
    assert request.data_source.type is SourceType.S3
    assert plan.id_path is not None and plan.id_path.steps == ("id",)
    assert [(path.field, path.steps) for path in plan.fields] == [
        ("chapter", ("content", 0)),
        ("title", ("content", 1)),
        ("chapter_embedding", ("SageMakerOutput", 0)),
        ("title_embedding", ("SageMakerOutput", 1)),
        ("id", ("id",)),
    ]
    assert request.s3_client_options() == {
        "region_name": "us-east-1",
        "aws_access_key_id": "<ACCESS_KEY>",
        "aws_secret_access_key": "<SECRET_KEY>",
    }
    assert "<SECRET_KEY>" not in repr(request)


def test_request_accepts_the_openai_multi_file_example_and_joins_the_third_file_on_the_same_key() -> None:
    request = parse_request(OPENAI_MULTI_FILE_EXAMPLE)

    plans = request.plan()
    assert request.data_source.type is SourceType.OPENAI and request.openai_api_key() == "<OPENAI_KEY>"
    assert [plan.id_path.text for plan in plans if plan.id_path] == [
        "source[0].$.custom_id",
        "source[1].$.custom_id",
        "source[2].$.custom_id",
    ]
    assert [path.field for path in plans[0].fields] == ["question_embedding", "answer_embedding"]
    assert [path.field for path in plans[1].fields] == ["question", "answer"]
    assert [path.field for path in plans[2].fields] == ["custom_field1", "custom_field2"]
    assert request.options.missing_ids is MissingIds.DEAD_LETTER


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            changed(SAGEMAKER_S3_EXAMPLE, field_map__title="$.content[1"),
            "field_map.title: '$.content[1' is not a valid JSONPath",
        ),
        (changed(SAGEMAKER_S3_EXAMPLE, field_map__title="content"), "field_map.title: 'content' is not a JSONPath"),
        (
            changed(OPENAI_MULTI_FILE_EXAMPLE, field_map__answer="source[3].$.body.input[1]"),
            "field_map.answer: 'source[3].$.body.input[1]' reads source[3], but data_source.source has 3 entries",
        ),
        (
            changed(OPENAI_MULTI_FILE_EXAMPLE, field_map___id=None),
            "field_map._id: joining 3 sources needs the id of each line",
        ),
        (
            changed(OPENAI_MULTI_FILE_EXAMPLE, field_map__answer="$.body.input[1]"),
            "field_map.answer: with 3 sources, say which one the path reads, e.g. 'source[0].$.body.input[1]'",
        ),
        (
            changed(OPENAI_MULTI_FILE_EXAMPLE, field_map___id=["source[0].$.custom_id", "source[1].$.request_id"]),
            "field_map._id: source(s) [2] have no _id path and the others differ",
        ),
        (
            changed(SAGEMAKER_S3_EXAMPLE, field_map___id="$.ids[*]"),
            "an _id path must name exactly one",
        ),
        (changed(SAGEMAKER_S3_EXAMPLE, data_source__type="gcs"), "data_source.type: unknown type 'gcs'; use one of"),
        (changed(SAGEMAKER_S3_EXAMPLE, data_source__source=["s3://bucket"]), "is not an S3 object URI"),
        (changed(SAGEMAKER_S3_EXAMPLE, credential__openAI_key="x"), "credential: unknown key(s) ['openAI_key']"),
        (changed(SAGEMAKER_S3_EXAMPLE, index_name="My Index"), "index_name: 'My Index' is not a valid index name"),
        (
            changed(OPENAI_MULTI_FILE_EXAMPLE, ingest_fields=["source[1].$.body.answer"]),
            "ingest_fields[0]: 'source[1].$.body.answer' is stored as field 'answer'",
        ),
        (
            changed(OPENAI_MULTI_FILE_EXAMPLE, credential=None, connector_id="abc"),
            "connector_id: ML Commons connectors do not exist here",
        ),
        (changed(SAGEMAKER_S3_EXAMPLE, connection="lake"), "give either 'credential' or 'connection', not both"),
        (changed(SAGEMAKER_S3_EXAMPLE, options={"missing_ids": "drop"}), "options.missing_ids"),
    ],
)
def test_request_refuses_a_mistake_naming_the_field_and_the_fix(body: dict[str, Any], expected: str) -> None:
    assert expected in problem(body)


def test_request_takes_an_unprefixed_id_for_every_source_and_a_prefixed_path_for_a_single_one() -> None:
    body = changed(OPENAI_MULTI_FILE_EXAMPLE, field_map___id="$.custom_id")
    single = changed(SAGEMAKER_S3_EXAMPLE, field_map__title="source[0].$.content[1]")

    assert [plan.id_path.source for plan in parse_request(body).plan() if plan.id_path] == [0, 1, 2]
    assert parse_request(single).plan()[0].fields[1].steps == ("content", 1)


def test_request_resolves_a_connection_into_credentials_and_endpoints() -> None:
    task_file = parse_task_file(
        {
            "connections": {
                "lake": {
                    "type": "paimon",
                    "warehouse": "s3://lake/warehouse",
                    "options": {
                        "fs.s3.endpoint": "http://127.0.0.1:9000",
                        "fs.s3.accessKeyId": "ak",
                        "fs.s3.accessKeySecret": "sk",
                        "fs.s3.region": "eu-west-1",
                    },
                },
                "models": {"type": "openai", "base_url": "http://127.0.0.1:8000/v1", "api_key": "k"},
                "es": {"type": "elasticsearch", "hosts": ["http://127.0.0.1:9200"]},
            }
        }
    )
    s3 = parse_request(changed(SAGEMAKER_S3_EXAMPLE, credential=None, connection="lake")).with_connection(task_file)
    files = parse_request(changed(OPENAI_MULTI_FILE_EXAMPLE, credential=None, connection="models"))

    assert s3.s3_client_options() == {
        "aws_access_key_id": "ak",
        "aws_secret_access_key": "sk",
        "region_name": "eu-west-1",
        "endpoint_url": "http://127.0.0.1:9000",
    }
    resolved = files.with_connection(task_file)
    assert resolved.data_source.base_url == "http://127.0.0.1:8000/v1" and resolved.openai_api_key() == "k"
    with pytest.raises(ConfigError, match="'es' has type 'elasticsearch'; data_source type 'openAI' needs openai"):
        files.model_copy(update={"connection": "es"}).with_connection(task_file)
    with pytest.raises(ConfigError, match="'nope' is not defined"):
        files.model_copy(update={"connection": "nope"}).with_connection(task_file)


def test_extract_follows_keys_and_indexes_only_where_json_has_them() -> None:
    request = parse_request(
        {
            "index_name": "i",
            "field_map": {"a": "$.a[0].b", "s": "$.s[0]", "all": "$.a[*].b", "last": "$.a[-1].b"},
            "data_source": {"type": "file", "source": ["x.jsonl"]},
        }
    )
    paths = {path.field: path for path in request.plan()[0].fields}
    line = {"a": [{"b": 1}, {"b": 2}], "s": "text"}

    assert extract(paths["a"], line) == (True, 1)
    assert extract(paths["last"], line) == (True, 2)
    assert extract(paths["s"], line) == (False, None)
    assert extract(paths["all"], line) == (True, [1, 2])
    assert extract(paths["a"], {"a": []}) == (False, None)
