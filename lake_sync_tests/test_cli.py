"""The `lake-sync` command line, run as a real subprocess against real Paimon files and the local server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from lake_sync_tests.conftest import write_paimon_table


def _run(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "lake_sync.cli", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture
def workdir(tmp_path: Path, warehouse: str, es_url: str, index_name: str) -> Path:
    rows = pa.table({"sku": ["k1", "k2"], "shop": [1, 2], "name": ["Trail boots", "Tea kettle"]})
    write_paimon_table(warehouse, "db.goods", rows, primary_keys=None)
    task_file = {
        "connections": {
            "lake": {"type": "paimon", "warehouse": warehouse},
            "es": {
                "type": "elasticsearch",
                "hosts": [es_url],
                "username": "${ES_USER:-}",
                "password": "${ES_PASSWORD:-}",
            },
        },
        "tasks": [
            {
                "name": "goods",
                "source": {"connection": "lake", "database": "db", "table": "goods"},
                "target": {"connection": "es", "index": index_name},
                "primary_key": ["shop", "sku"],
                "transforms": [{"field": "name", "embed": "text", "model": "hash:16", "to": "name_vec"}],
            }
        ],
    }
    (tmp_path / "lake_sync.yaml").write_text(yaml.safe_dump(task_file))
    return tmp_path


def test_cli_sync_then_search_finds_the_synced_document(workdir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}

    synced = _run("sync", "goods", "--full", cwd=workdir, env=env)
    found = _run("search", "goods", "Tea kettle", "-k", "1", cwd=workdir, env=env)

    assert synced.returncode == 0, synced.stderr
    assert "documents_indexed" in synced.stdout and "│ 2" in synced.stdout
    # What the run cost in model calls is in the summary: 2 names, one call of the hashing model.
    assert re.search(r"inputs_embedded\s+│ 2\b", synced.stdout) and re.search(r"model_calls\s+│ 1\b", synced.stdout)
    assert found.returncode == 0, found.stderr
    # The hashing embedder maps equal texts to equal vectors: the exact text is the top hit.
    assert '[2,"k2"]' in found.stdout


def test_cli_sync_reports_a_bad_password_without_revealing_it(workdir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env.update({"ES_USER": "elastic", "ES_PASSWORD": "s3cr3t-Pa55"})
    config = yaml.safe_load((workdir / "lake_sync.yaml").read_text())
    config["connections"]["es"]["hosts"] = ["http://127.0.0.1:9"]
    (workdir / "lake_sync.yaml").write_text(yaml.safe_dump(config))

    result = _run("sync", "goods", "--full", cwd=workdir, env=env)

    assert result.returncode == 1
    assert "cannot reach Elasticsearch at http://127.0.0.1:9" in result.stderr
    assert "s3cr3t-Pa55" not in result.stdout + result.stderr


def test_cli_sync_names_an_unknown_task(workdir: Path) -> None:
    result = _run("sync", "nope", "--full", cwd=workdir, env=dict(os.environ))

    assert result.returncode == 2
    assert "no task named 'nope'" in result.stderr


def test_cli_search_shows_the_best_chunk_of_a_chunked_field_and_sync_reports_truncated_inputs(workdir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    config = yaml.safe_load((workdir / "lake_sync.yaml").read_text())
    chunk = {"max_tokens": 1, "overlap": 0}
    config["tasks"][0]["transforms"] = [
        {"field": "name", "embed": "text", "model": "hash:16", "to": "name_chunks", "chunk": chunk}
    ]
    (workdir / "lake_sync.yaml").write_text(yaml.safe_dump(config))

    synced = _run("sync", "goods", "--full", cwd=workdir, env=env)
    found = _run("search", "goods", "boots", "-k", "1", cwd=workdir, env=env)

    assert synced.returncode == 0, synced.stderr
    assert "inputs_truncated" in synced.stdout
    assert found.returncode == 0, found.stderr
    # One word per chunk: the hashing embedder matches the query to the chunk "boots" of "Trail boots" exactly.
    assert '[1,"k1"]' in found.stdout and "name_chunks #1" in found.stdout and ": boots" in found.stdout
