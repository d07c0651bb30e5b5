"""The snapshot sensor and the incremental job: real Paimon commits, the real search server, an ephemeral
Dagster instance.

commits → snapshot sensor (cursor committed with the index → latest snapshot) → RunRequest → sync job
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from elasticsearch import Elasticsearch

from lake_sync.config import load_task_file
from lake_sync.defs.definitions import build_defs
from lake_sync.defs.jobs import TASK_TAG, sync_job_name
from lake_sync.defs.resources import TaskFileResource
from lake_sync.defs.sensors import RANGE_TAG, snapshot_sensor_name
from lake_sync.index.cursor import read_cursor
from lake_sync.sync import run_sync
from lake_sync_tests.conftest import commit_rows
from lake_sync_tests.test_sync import VECTOR, items, pk_table

TASK = "items"


@pytest.fixture
def task_file_path(
    tmp_path: Path, warehouse: str, es_url: str, index_name: str, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """The task file on disk, as `dagster dev` would load it; the search server's URL comes from the environment."""
    monkeypatch.setenv("TEST_ES_URL", es_url)
    document = {
        "connections": {
            "lake": {"type": "paimon", "warehouse": warehouse},
            "es": {"type": "elasticsearch", "hosts": ["${TEST_ES_URL}"]},
        },
        "tasks": [
            {
                "name": TASK,
                "source": {"connection": "lake", "database": "db", "table": "items"},
                "target": {"connection": "es", "index": index_name},
                "transforms": [VECTOR],
            }
        ],
        "state_dir": str(tmp_path / "state"),
    }
    path = tmp_path / "lake_sync.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture
def table(warehouse: str) -> Any:
    return pk_table(warehouse, items(range(10)))


def synced_once(task_file_path: Path) -> None:
    """Commit the table's current snapshot to the index, as a successful run would."""
    run_sync(load_task_file(task_file_path), TASK)


def evaluate(task_file_path: Path, instance: dg.DagsterInstance, *, cursor: str | None) -> Any:
    defs = build_defs(task_file_path)
    sensor = next(s for s in defs.sensors if s.name == snapshot_sensor_name(TASK))
    context = dg.build_sensor_context(
        instance=instance, resources={"lake_sync": TaskFileResource(path=str(task_file_path))}, cursor=cursor
    )
    return sensor.evaluate_tick(context)


def add_run(task_file_path: Path, instance: dg.DagsterInstance, status: dg.DagsterRunStatus, **tags: str) -> str:
    job = build_defs(task_file_path).resolve_job_def(sync_job_name(TASK))
    return instance.create_run_for_job(job_def=job, status=status, tags=tags).run_id


def test_snapshot_sensor_requests_a_run_for_the_range_from_the_committed_cursor_to_the_latest_snapshot(
    task_file_path: Path, table: Any
):
    synced_once(task_file_path)
    commit_rows(table, items([1], name="v2"))
    commit_rows(table, items([2], op="-D"))

    tick = evaluate(task_file_path, dg.DagsterInstance.ephemeral(), cursor="1")

    assert [request.run_key for request in tick.run_requests] == [f"{TASK}:1-3#0"]
    assert tick.run_requests[0].tags[RANGE_TAG] == "1-3"
    assert tick.cursor == "3"
    assert tick.skip_message is None
    observation = tick.asset_events[0]
    assert observation.asset_key == dg.AssetKey([TASK, "source_table"])
    assert observation.tags["dagster/data_version"] == "3"


def test_snapshot_sensor_requests_a_first_run_from_no_cursor_when_the_index_was_never_synced(
    task_file_path: Path, table: Any
):
    tick = evaluate(task_file_path, dg.DagsterInstance.ephemeral(), cursor=None)

    assert [request.run_key for request in tick.run_requests] == [f"{TASK}:none-1#0"]
    assert tick.cursor == "1"


def test_snapshot_sensor_skips_naming_both_snapshot_ids_when_the_index_is_up_to_date(task_file_path: Path, table: Any):
    commit_rows(table, items([1], name="v2"))
    synced_once(task_file_path)

    tick = evaluate(task_file_path, dg.DagsterInstance.ephemeral(), cursor="2")

    assert tick.run_requests == []
    assert tick.skip_message == "up to date: index at snapshot 2, table at snapshot 2"
    assert tick.cursor == "2"
    assert tick.asset_events == []  # snapshot 2 was already reported


def test_snapshot_sensor_skips_while_a_run_of_the_task_is_in_flight(task_file_path: Path, table: Any):
    synced_once(task_file_path)
    commit_rows(table, items([1], name="v2"))
    instance = dg.DagsterInstance.ephemeral()
    in_flight = add_run(task_file_path, instance, dg.DagsterRunStatus.STARTED, **{TASK_TAG: TASK, RANGE_TAG: "1-2"})

    tick = evaluate(task_file_path, instance, cursor="1")

    assert tick.run_requests == []
    assert tick.skip_message == f"a sync of task '{TASK}' is in flight (run {in_flight})"
    assert tick.cursor == "1"  # not moved on to snapshot 2: nothing was requested


def test_snapshot_sensor_requests_a_failed_range_again_under_a_new_run_key(
    es: Elasticsearch, index_name: str, task_file_path: Path, table: Any
):
    synced_once(task_file_path)
    commit_rows(table, items([1], name="v2"))
    commit_rows(table, items([3], op="-D"))
    instance = dg.DagsterInstance.ephemeral()
    # The first request for 1-3 was launched (the sensor cursor moved to 3) and its run failed.
    add_run(task_file_path, instance, dg.DagsterRunStatus.FAILURE, **{TASK_TAG: TASK, RANGE_TAG: "1-3"})

    tick = evaluate(task_file_path, instance, cursor="3")

    assert read_cursor(es, index_name).snapshot_id == 1  # type: ignore[union-attr]
    assert [request.run_key for request in tick.run_requests] == [f"{TASK}:1-3#1"]
    assert tick.run_requests[0].tags[RANGE_TAG] == "1-3"
    assert tick.cursor == "3"


def test_sync_job_applies_a_commit_incrementally_and_records_the_range_in_its_materialization(
    es: Elasticsearch, index_name: str, task_file_path: Path, table: Any
):
    synced_once(task_file_path)
    commit_rows(table, items([4, 5], op="-D"))
    commit_rows(table, items([6], name="v2"))
    defs = build_defs(task_file_path)

    result = defs.resolve_job_def(sync_job_name(TASK)).execute_in_process(instance=dg.DagsterInstance.ephemeral())

    assert result.success
    event = next(e for e in result.get_asset_materialization_events() if e.asset_key.path == [TASK, "search_index"])
    metadata = {key: value.value for key, value in event.materialization.metadata.items()}
    assert metadata["mode"] == "incremental"
    assert (metadata["from_snapshot"], metadata["snapshot_id"]) == (1, 3)
    assert (metadata["documents_deleted"], metadata["documents_indexed"], metadata["rows_read"]) == (2, 1, 3)
    assert metadata["dagster/row_count"] == 8
    assert metadata["reason"] == "incremental"
    assert result.get_asset_check_evaluations() == []  # the count check runs with full resyncs only
    assert read_cursor(es, index_name).snapshot_id == 3  # type: ignore[union-attr]
