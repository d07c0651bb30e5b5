"""An incremental run SIGKILLed mid-write: the cursor stays, and the next run makes the index whole.

subprocess run_sync → FaultProxy (slow bulks) → noida-db;  SIGKILL after a few bulks → run_sync in-process
→ the WHOLE index compared with a full read of the table
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from elasticsearch import Elasticsearch

from lake_sync.index.cursor import read_cursor
from lake_sync.sync import SyncMode, run_sync
from lake_sync_tests.conftest import TaskFileFactory, commit_rows
from lake_sync_tests.fault_proxy import FaultProxy
from lake_sync_tests.test_sync import VECTOR, items, pk_table
from lake_sync_tests.test_sync_incremental import VECTOR_FIELDS, assert_index_matches_source, index_documents

REPO = Path(__file__).resolve().parents[1]
SYNC_IN_A_SUBPROCESS = """
import sys
from lake_sync.config import load_task_file
from lake_sync.sync import run_sync
result = run_sync(load_task_file(sys.argv[1]), "items")
print("finished", result.snapshot_id, flush=True)
"""
ROWS = 3000


def test_incremental_sync_killed_mid_write_keeps_its_cursor_and_the_rerun_leaves_nothing_lost_stale_or_duplicated(
    es: Elasticsearch, es_url: str, warehouse: str, index_name: str, task_file: TaskFileFactory, tmp_path: Path
):
    table = pk_table(warehouse, items(range(ROWS)), buckets=4)
    bulk = {"max_documents": 100, "max_in_flight": 2}
    run_sync(task_file(transforms=[VECTOR], bulk=bulk), "items")
    commit_rows(table, items(range(ROWS + 100), name="v2"))  # 3000 updates, 100 inserts
    commit_rows(table, items(range(0, ROWS, 10), op="-D"))  # 300 deletes

    with FaultProxy(es_url, bulk_delay=0.25) as proxy:
        through_proxy = tmp_path / "through_proxy.yaml"
        through_proxy.write_text(
            yaml.safe_dump(
                {
                    "connections": {
                        "lake": {"type": "paimon", "warehouse": warehouse},
                        "es": {"type": "elasticsearch", "hosts": [proxy.url]},
                    },
                    "tasks": [
                        {
                            "name": "items",
                            "source": {"connection": "lake", "database": "db", "table": "items"},
                            "target": {"connection": "es", "index": index_name},
                            "transforms": [VECTOR],
                            "bulk": bulk,
                        }
                    ],
                    "state_dir": str(tmp_path / "state"),
                }
            )
        )
        process = subprocess.Popen(
            [sys.executable, "-c", SYNC_IN_A_SUBPROCESS, str(through_proxy)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while proxy.log.bulk_requests < 3 and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert process.poll() is None, f"the sync ended before it was killed: {process.stdout.read()!r}"  # type: ignore[union-attr]
            assert proxy.log.bulk_requests >= 3
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
            process.stdout.close()  # type: ignore[union-attr]
        bulks_before_the_kill = proxy.log.bulk_requests

    assert process.returncode == -signal.SIGKILL
    assert bulks_before_the_kill < (ROWS + 100) // 100  # it really was cut off half-way
    assert read_cursor(es, index_name).snapshot_id == 1  # type: ignore[union-attr]
    half_applied = index_documents(es, index_name)
    assert 0 < sum(body["name"].startswith("v2") for body in half_applied.values()) < ROWS

    result = run_sync(task_file(transforms=[VECTOR], bulk=bulk), "items")

    assert (result.mode, result.from_snapshot, result.snapshot_id) == (SyncMode.INCREMENTAL, 1, 3)
    assert (result.documents_indexed, result.documents_deleted, result.dead_lettered) == (ROWS + 100 - 300, 300, 0)
    assert read_cursor(es, index_name).snapshot_id == 3  # type: ignore[union-attr]
    es.indices.refresh(index=index_name)
    assert es.count(index=index_name)["count"] == ROWS + 100 - 300  # no duplicates, nothing stale
    assert_index_matches_source(es, index_name, warehouse, vectors=VECTOR_FIELDS)
