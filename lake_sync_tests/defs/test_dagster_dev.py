"""Smoke test of the real stack: `dagster dev` (webserver + daemon) on 127.0.0.1, the snapshot
sensor launching runs by itself, a real Paimon table and the local search server."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pyarrow as pa
import yaml
from elasticsearch import Elasticsearch

from lake_sync.local.dagster_dev import isolated_dagster_env, start_dagster_dev
from lake_sync_tests.conftest import commit_rows, write_paimon_table

PROJECT = Path(__file__).resolve().parents[2]
SCHEMA = pa.schema([pa.field("id", pa.string(), nullable=False), ("title", pa.string()), ("_op", pa.string())])


def _rows(*pairs: tuple[str, str]) -> pa.Table:
    return pa.Table.from_pylist([{"id": i, "title": t, "_op": "+I"} for i, t in pairs], schema=SCHEMA)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(condition: object, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(f"not reached within {timeout} s")


def test_dagster_dev_sensor_syncs_a_new_commit_by_itself_and_stops_every_process(
    tmp_path: Path, warehouse: str, es_url: str, es: Elasticsearch, index_name: str
) -> None:
    table = write_paimon_table(
        warehouse,
        "db.docs",
        _rows(("a", "first"), ("b", "second")),
        primary_keys=["id"],
        options={"rowkind.field": "_op"},
    )
    task_file = tmp_path / "lake_sync.yaml"
    task_file.write_text(
        yaml.safe_dump(
            {
                "connections": {
                    "lake": {"type": "paimon", "warehouse": warehouse},
                    "es": {"type": "elasticsearch", "hosts": [es_url]},
                },
                "tasks": [
                    {
                        "name": "docs",
                        "source": {"connection": "lake", "database": "db", "table": "docs"},
                        "target": {"connection": "es", "index": index_name},
                        "transforms": [{"field": "title", "embed": "text", "model": "hash:8", "to": "title_vec"}],
                        "schedule": {"poll_seconds": 1},
                    }
                ],
                "state_dir": str(tmp_path / "state"),
            }
        )
    )
    workspace, env = isolated_dagster_env(tmp_path, task_file=task_file, instance_yaml=PROJECT / "dagster.yaml")

    def documents() -> int:
        if not es.indices.exists(index=index_name):
            return 0
        es.indices.refresh(index=index_name)
        return int(es.count(index=index_name)["count"])

    dev = start_dagster_dev(workspace, port=_free_port(), env=env, log=tmp_path / "dagster.log")
    try:
        dev.wait_until_ready()
        _wait_for(lambda: documents() == 2, timeout=120)  # first tick: no cursor yet, so a full sync
        commit_rows(table, _rows(("c", "third")))
        seconds = _wait_for(lambda: es.exists(index=index_name, id="c"), timeout=60)
    finally:
        dev.stop()

    assert documents() == 3
    assert seconds < 60
    assert not dev.is_group_alive(), "a dagster process outlived the test"
