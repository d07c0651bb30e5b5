"""The Dagster layer: definitions load from a task file, and the full-sync job runs in-process
against a real Paimon table and the real local search server."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest
import yaml
from elasticsearch import Elasticsearch

from lake_sync.defs.assets import DOCUMENT_COUNT_CHECK
from lake_sync.defs.definitions import build_defs
from lake_sync.defs.jobs import INDEX_TAG, full_sync_job_name
from lake_sync.errors import ConfigError
from lake_sync.index.cursor import read_cursor
from lake_sync_tests.conftest import write_paimon_table

ROWS = pa.table(
    {
        "id": pa.array(["a", "b", "c", None], pa.string()),
        "title": ["Blue kettle", "Red kettle", "Grüner Tee", "orphan"],
    }
)


def _write_task_file(tmp_path: Path, warehouse: str, es_url: str, index: str, **overrides: object) -> Path:
    task = {
        "name": "kettles",
        "source": {"connection": "lake", "database": "db", "table": "kettles"},
        "target": {"connection": "es", "index": index},
        "transforms": [{"field": "title", "embed": "text", "model": "hash:8", "to": "title_vec"}],
        **overrides,
    }
    document = {
        "connections": {
            "lake": {"type": "paimon", "warehouse": warehouse},
            "es": {"type": "elasticsearch", "hosts": ["${TEST_ES_URL}"]},
        },
        "tasks": [task],
        "state_dir": str(tmp_path / "state"),
    }
    path = tmp_path / "lake_sync.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture
def kettles_task_file(
    tmp_path: Path, warehouse: str, es_url: str, index_name: str, monkeypatch: pytest.MonkeyPatch
) -> Path:
    monkeypatch.setenv("TEST_ES_URL", es_url)
    write_paimon_table(warehouse, "db.kettles", ROWS, primary_keys=None)
    return _write_task_file(tmp_path, warehouse, es_url, index_name, primary_key="id")


def test_definitions_load_every_asset_job_and_check_of_each_task(kettles_task_file: Path) -> None:
    defs = build_defs(kettles_task_file)

    keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    assert keys == {"kettles/source_table", "kettles/embedded_batches", "kettles/search_index"}
    job = defs.resolve_job_def(full_sync_job_name("kettles"))
    assert job.tags[INDEX_TAG] == yaml.safe_load(kettles_task_file.read_text())["tasks"][0]["target"]["index"]
    check_keys = defs.resolve_asset_graph().asset_check_keys
    assert dg.AssetCheckKey(dg.AssetKey(["kettles", "search_index"]), DOCUMENT_COUNT_CHECK) in check_keys


def test_definitions_fail_to_load_from_an_invalid_task_file(
    tmp_path: Path, warehouse: str, es_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_ES_URL", es_url)
    path = _write_task_file(
        tmp_path, warehouse, es_url, "x", transforms=[{"field": "title", "embed": "video", "to": "v"}]
    )

    with pytest.raises(ConfigError, match=r"task 'kettles': transforms\.0\.embed"):
        build_defs(path)


def test_full_sync_job_indexes_rows_dead_letters_null_keys_and_records_the_snapshot(
    kettles_task_file: Path, es: Elasticsearch, index_name: str
) -> None:
    progress: list[tuple[int, int | None]] = []
    defs = build_defs(kettles_task_file, progress=lambda rows, total: progress.append((rows, total)))

    result = defs.resolve_job_def(full_sync_job_name("kettles")).execute_in_process(
        instance=dg.DagsterInstance.ephemeral()
    )

    assert result.success
    es.indices.refresh(index=index_name)
    assert sorted(hit["_id"] for hit in es.search(index=index_name, size=10)["hits"]["hits"]) == ["a", "b", "c"]
    index_event = next(
        e for e in result.get_asset_materialization_events() if e.asset_key.path == ["kettles", "search_index"]
    )
    metadata = {key: value.value for key, value in index_event.materialization.metadata.items()}
    assert metadata["rows_read"] == 4
    assert metadata["documents_indexed"] == 3
    assert metadata["dead_lettered"] == 1
    assert metadata["dagster/row_count"] == 3
    assert "Blue kettle" in metadata["preview"]
    embedded_event = next(
        e for e in result.get_asset_materialization_events() if e.asset_key.path == ["kettles", "embedded_batches"]
    )
    assert embedded_event.materialization.metadata["inputs_embedded"].value == 3
    checks = result.get_asset_check_evaluations()
    assert [(c.check_name, c.passed) for c in checks] == [(DOCUMENT_COUNT_CHECK, True)]
    cursor = read_cursor(es, index_name)
    assert cursor is not None and cursor.snapshot_id == 1
    assert progress[-1] == (4, progress[-1][1])


def test_full_sync_job_fails_without_retries_when_a_configured_field_is_missing(
    tmp_path: Path, warehouse: str, es_url: str, index_name: str, monkeypatch: pytest.MonkeyPatch, es: Elasticsearch
) -> None:
    monkeypatch.setenv("TEST_ES_URL", es_url)
    write_paimon_table(warehouse, "db.kettles", ROWS, primary_keys=None)
    path = _write_task_file(tmp_path, warehouse, es_url, index_name, primary_key="id", fields=["id", "colour"])

    result = (
        build_defs(path)
        .resolve_job_def(full_sync_job_name("kettles"))
        .execute_in_process(instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    )

    assert not result.success
    failures = [e for e in result.all_events if e.is_step_failure]
    assert len(failures) == 1
    assert (
        "fields: column(s) ['colour'] are not in table db.kettles"
        in failures[0].step_failure_data.user_failure_data.description
    )
    assert not any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)
    assert not es.indices.exists(index=index_name)


def test_full_sync_job_past_the_error_budget_fails_once_without_retries_and_leaves_no_cursor(
    tmp_path: Path, warehouse: str, es_url: str, index_name: str, monkeypatch: pytest.MonkeyPatch, es: Elasticsearch
) -> None:
    monkeypatch.setenv("TEST_ES_URL", es_url)
    write_paimon_table(warehouse, "db.kettles", ROWS, primary_keys=None)
    # The row with a null id is a dead letter: one more than the budget allows.
    path = _write_task_file(tmp_path, warehouse, es_url, index_name, primary_key="id", errors={"max_errors": 0})

    result = (
        build_defs(path)
        .resolve_job_def(full_sync_job_name("kettles"))
        .execute_in_process(instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    )

    failures = [e for e in result.all_events if e.is_step_failure]
    assert not result.success and len(failures) == 1
    assert "max_errors=0" in failures[0].step_failure_data.user_failure_data.description
    assert not any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)
    assert read_cursor(es, f"{index_name}-1") is None


def test_source_table_observation_reports_the_latest_snapshot_id_as_data_version(kettles_task_file: Path) -> None:
    # `observe` and DATA_VERSION_TAG are not exported at the top level of dagster 1.13.
    from dagster._core.definitions.data_version import DATA_VERSION_TAG
    from dagster._core.definitions.observe import observe

    from lake_sync.defs.resources import TaskFileResource

    defs = build_defs(kettles_task_file)
    source = next(a for a in defs.assets if getattr(a, "key", None) == dg.AssetKey(["kettles", "source_table"]))

    result = observe([source], resources={"lake_sync": TaskFileResource(path=str(kettles_task_file))})

    observations = result.asset_observations_for_node(source.op.name)
    assert observations[0].tags[DATA_VERSION_TAG] == "1"
