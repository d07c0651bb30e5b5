"""Syncs on two "machines" (two state dirs) sharing one embedding cache location on a real local S3 server.

machine A: run_sync → model → SQLite A → segment in s3://bucket/team/embeddings ; machine B: run_sync → segment
→ SQLite B → no model call. Real Paimon tables, the real local search server, moto's ThreadedMotoServer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from elasticsearch import Elasticsearch

from lake_sync.config import TaskFile, parse_task_file
from lake_sync.errors import CacheError, TargetError
from lake_sync.sync import SyncMode, run_sync
from lake_sync_tests.fault_proxy import FaultProxy
from lake_sync_tests.s3_server import S3_SECRET, S3Server
from lake_sync_tests.test_sync import VECTOR, full_error_text, indexed, items, pk_table


@pytest.fixture
def location(s3_server: S3Server) -> str:
    return f"s3://{s3_server.new_bucket()}/team/embeddings"


def machine(
    name: str, tmp_path: Path, warehouse: str, es_url: str, index_name: str, cache: dict[str, Any], **task: Any
) -> TaskFile:
    """The task file as one machine sees it: its own state dir, the shared cache location."""
    return parse_task_file(
        {
            "connections": {
                "lake": {"type": "paimon", "warehouse": warehouse},
                "es": {"type": "elasticsearch", "hosts": [es_url]},
            },
            "tasks": [
                {
                    "name": "items",
                    "source": {"connection": "lake", "database": "db", "table": "items"},
                    "target": {"connection": "es", "index": index_name},
                    "transforms": [VECTOR],
                    **task,
                }
            ],
            "state_dir": str(tmp_path / name),
            "embedding_cache": cache,
        }
    )


def test_second_machine_first_full_sync_of_an_unchanged_table_makes_no_model_call(
    es: Elasticsearch, es_url: str, warehouse: str, index_name: str, tmp_path: Path, s3_server: S3Server, location: str
) -> None:
    pk_table(warehouse, items(range(40)))
    shared = {"location": location, "s3": s3_server.options}
    first = run_sync(machine("a", tmp_path, warehouse, es_url, index_name, shared), "items", mode=SyncMode.FULL)
    vectors_a = {key: doc["description_vec"] for key, doc in indexed(es, index_name).items()}

    second = run_sync(machine("b", tmp_path, warehouse, es_url, index_name, shared), "items", mode=SyncMode.FULL)

    assert (first.model_inputs, first.cache_imported, first.cache_exported) == (40, 0, 40)
    assert (second.model_calls, second.cache_hits, second.cache_imported, second.cache_exported) == (0, 40, 40, 0)
    assert {key: doc["description_vec"] for key, doc in indexed(es, index_name).items()} == vectors_a
    assert second.cache_problems == []


def test_a_failed_index_write_still_shares_the_vectors_it_embedded(
    es_url: str, warehouse: str, index_name: str, tmp_path: Path, s3_server: S3Server, location: str
) -> None:
    pk_table(warehouse, items(range(10)))
    shared = {"location": location, "s3": s3_server.options}
    with FaultProxy(es_url, go_dark_at_bulk=1) as proxy:
        broken = machine("a", tmp_path, warehouse, proxy.url, index_name, shared, bulk={"max_retries": 0})
        with pytest.raises(TargetError):
            run_sync(broken, "items", mode=SyncMode.FULL)

    result = run_sync(machine("b", tmp_path, warehouse, es_url, index_name, shared), "items", mode=SyncMode.FULL)

    assert (result.model_calls, result.cache_imported, result.cache_hits, result.documents_indexed) == (0, 10, 10, 10)


def test_a_foreign_segment_is_reported_in_the_sync_result_and_the_sync_completes(
    es: Elasticsearch, es_url: str, warehouse: str, index_name: str, tmp_path: Path, s3_server: S3Server, location: str
) -> None:
    pk_table(warehouse, items(range(5)))
    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    s3_server.client().put_object(
        Bucket=bucket, Key=f"{prefix}/segments/notes.txt", Body=b"notes about this cache, not vectors"
    )

    result = run_sync(
        machine("a", tmp_path, warehouse, es_url, index_name, {"location": location, "s3": s3_server.options}),
        "items",
        mode=SyncMode.FULL,
    )

    assert result.cache_problems == [
        f"segment {location}/segments/notes.txt skipped: not named *.arrow as lake-sync's segments are"
    ]
    assert (result.documents_indexed, result.cache_exported) == (5, 5)
    assert len(indexed(es, index_name)) == 5


def test_an_unreachable_cache_location_fails_the_sync_naming_the_field_before_any_index_is_created(
    es: Elasticsearch, es_url: str, warehouse: str, index_name: str, tmp_path: Path, s3_server: S3Server
) -> None:
    pk_table(warehouse, items(range(5)))
    unreachable = {"location": "s3://bucket/x", "s3": {**s3_server.options, "endpoint_url": "http://127.0.0.1:9"}}

    with pytest.raises(CacheError, match=r"^embedding_cache.location s3://bucket/x: cannot reach") as raised:
        run_sync(machine("a", tmp_path, warehouse, es_url, index_name, unreachable), "items", mode=SyncMode.FULL)

    assert S3_SECRET not in full_error_text(raised.value)
    assert not es.indices.exists(index=index_name) and not es.indices.exists(index=f"{index_name}-1")
