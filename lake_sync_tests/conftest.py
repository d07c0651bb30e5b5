"""Shared fixtures: a real noida-db search server, real Paimon warehouses, task files.

The search server is started once per session on 127.0.0.1 with port 0 and a temporary
data dir, and stopped by its PID; with ES_URL set, the tests use that cluster instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from elasticsearch import Elasticsearch

from lake_sync.config import TaskFile, parse_task_file
from lake_sync.index.aliases import physical_indexes
from lake_sync.local.model_server import ModelServer, running_model_server
from lake_sync.local.search_server import start_search_server
from lake_sync_tests.s3_server import S3Server, running_s3_server


@pytest.fixture(scope="session")
def es_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("ES_URL"):
        yield os.environ["ES_URL"]
        return
    server = start_search_server(tmp_path_factory.mktemp("noida"))
    try:
        yield server.url
    finally:
        server.stop()
        assert server.process.poll() is not None, "the search server outlived the test session"


@pytest.fixture(scope="session")
def es(es_url: str) -> Iterator[Elasticsearch]:
    client = Elasticsearch(es_url, request_timeout=60)
    yield client
    client.close()


@pytest.fixture
def index_name(es: Elasticsearch) -> Iterator[str]:
    """A fresh index name per test; afterwards the alias and every physical index behind it are deleted."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    yield name
    for index in [*physical_indexes(es, name), name]:
        es.options(ignore_status=404).indices.delete(index=index)


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    """A real local S3 server (moto on 127.0.0.1, port 0) for a module's tests; each test makes its own bucket."""
    with running_s3_server() as server:
        yield server


@pytest.fixture
def model_server(tmp_path: Path) -> Iterator[ModelServer]:
    """The project's OpenAI-compatible server on 127.0.0.1, serving the zero-cost `hash:8` as model `hash-8`."""
    with running_model_server(models={"hash-8": "hash:8"}, storage_dir=tmp_path / "models") as server:
        yield server


@pytest.fixture
def warehouse(tmp_path: Path) -> str:
    return str(tmp_path / "warehouse")


def write_paimon_table(
    warehouse: str,
    identifier: str,
    data: pa.Table,
    *,
    primary_keys: list[str] | None = None,
    buckets: int = 2,
    options: dict[str, str] | None = None,
) -> Any:
    """Create a Paimon table in `warehouse` and commit `data` as its first snapshot."""
    from pypaimon import CatalogFactory, Schema

    catalog = CatalogFactory.create({"warehouse": warehouse})
    catalog.create_database(identifier.split(".")[0], True)
    table_options = {"bucket": str(buckets)} if primary_keys else {}
    table_options.update(options or {})
    schema = Schema.from_pyarrow_schema(data.schema, primary_keys=primary_keys, options=table_options)
    catalog.create_table(identifier, schema, False)
    table = catalog.get_table(identifier)
    commit_rows(table, data)
    return table


def commit_rows(table: Any, data: pa.Table) -> None:
    """One commit = one snapshot."""
    builder = table.new_batch_write_builder()
    writer, commit = builder.new_write(), builder.new_commit()
    writer.write_arrow(data)
    commit.commit(writer.prepare_commit())
    writer.close()
    commit.close()


TaskFileFactory = Callable[..., TaskFile]


@pytest.fixture
def task_file(warehouse: str, es_url: str, index_name: str, tmp_path: Path) -> TaskFileFactory:
    """Build a one-task TaskFile against the test warehouse and search server; kwargs override the task."""

    def build(*, connections: dict[str, Any] | None = None, **task: Any) -> TaskFile:
        spec: dict[str, Any] = {
            "name": "items",
            "source": {"connection": "lake", "database": "db", "table": "items"},
            "target": {"connection": "es", "index": index_name},
        }
        spec.update(task)
        return parse_task_file(
            {
                "connections": connections
                or {
                    "lake": {"type": "paimon", "warehouse": warehouse},
                    "es": {"type": "elasticsearch", "hosts": [es_url]},
                },
                "tasks": [spec],
                "state_dir": str(tmp_path / "state"),
            }
        )

    return build
