"""Fixtures for batch ingest: JSONL writers, a bucket of the real local S3 server, and dead letters.

The S3 server (`s3_server`) and the model server (`model_server`, the hashing model only) are the
root conftest's: moto and uvicorn on 127.0.0.1 with port 0, stopped after the module or test.
"""

from __future__ import annotations

import gzip
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
from elasticsearch import Elasticsearch

from lake_sync.batch.ingest import IngestResult, run_ingest
from lake_sync.batch.request import parse_request
from lake_sync.index.dead_letters import DeadLetterFile, read_dead_letters
from lake_sync_tests.s3_server import S3Server

S3_CREDENTIAL = {"region": "us-east-1", "access_key": "testing", "secret_key": "testing"}


# --- input files --------------------------------------------------------------------------------


def vector(dims: int, seed: int) -> list[float]:
    generator = random.Random(seed)
    return [round(generator.uniform(-1, 1), 6) for _ in range(dims)]


def jsonl(records: Iterable[dict[str, Any] | str]) -> bytes:
    """JSON lines; a str record is written as it is (for malformed lines)."""
    return b"".join((r.encode() if isinstance(r, str) else orjson.dumps(r)) + b"\n" for r in records)


def write_jsonl(path: Path, records: Iterable[dict[str, Any] | str], *, compress: bool = False) -> Path:
    data = jsonl(records)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def openai_output(custom_id: str, vectors: list[list[float]]) -> dict[str, Any]:
    """A line of an OpenAI Batch output file for /v1/embeddings."""
    return {
        "id": f"batch_req_{custom_id}",
        "custom_id": custom_id,
        "response": {
            "status_code": 200,
            "request_id": f"req_{custom_id}",
            "body": {
                "object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
                "model": "text-embedding-3-small",
                "usage": {"prompt_tokens": 4, "total_tokens": 4},
            },
        },
        "error": None,
    }


def openai_input(custom_id: str, texts: list[str]) -> dict[str, Any]:
    """A line of an OpenAI Batch input file for /v1/embeddings."""
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "text-embedding-3-small", "input": texts},
    }


# --- running an ingest --------------------------------------------------------------------------


@pytest.fixture
def dead_letter_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "dead_letters" / "ingest.jsonl"


@pytest.fixture
def ingest(es: Elasticsearch, dead_letter_path: Path) -> Any:
    """Validate a request body and run it against the test cluster (or `client`)."""

    def run(body: dict[str, Any], *, client: Elasticsearch | None = None, **options: Any) -> IngestResult:
        with DeadLetterFile(dead_letter_path) as letters:
            return run_ingest(parse_request(body), client=client or es, dead_letters=letters, **options)

    return run


@pytest.fixture
def dead_letters(dead_letter_path: Path) -> Any:
    return lambda: read_dead_letters(dead_letter_path)


def documents(es: Elasticsearch, index: str) -> dict[str, dict[str, Any]]:
    es.indices.refresh(index=index)
    hits = es.search(index=index, size=1000, query={"match_all": {}})["hits"]["hits"]
    return {hit["_id"]: hit["_source"] for hit in hits}


# --- servers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_url(s3_server: S3Server) -> str:
    return s3_server.endpoint_url


@pytest.fixture
def s3(s3_url: str) -> Any:
    """A boto3 client of the moto server with a fresh bucket `bucket`, emptied afterwards."""
    client = boto3.client(
        "s3",
        endpoint_url=s3_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket="bucket")
    yield client
    for item in client.list_objects_v2(Bucket="bucket").get("Contents", []):
        client.delete_object(Bucket="bucket", Key=item["Key"])
    client.delete_bucket(Bucket="bucket")
