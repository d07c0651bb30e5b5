"""`lake-sync predict`, run as a real subprocess against the model server in this process, a real
Paimon table and the real local search server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from elasticsearch import Elasticsearch

from lake_sync.local.model_server import ModelServer
from lake_sync_tests.conftest import write_paimon_table


@pytest.fixture
def workdir(tmp_path: Path, warehouse: str, es_url: str, index_name: str, model_server: ModelServer) -> Path:
    rows = pa.table({"sku": ["k1", "k2", "k3"], "name": ["Trail boots", "Tea kettle", "Rain coat"]})
    write_paimon_table(warehouse, "db.goods", rows, primary_keys=None)
    source = {"connection": "lake", "database": "db", "table": "goods"}
    task_file = {
        "connections": {
            "lake": {"type": "paimon", "warehouse": warehouse},
            "es": {"type": "elasticsearch", "hosts": [es_url]},
            "models": {"type": "openai", "base_url": model_server.base_url, "dims": {"hash-8": 8}},
        },
        "tasks": [
            {
                "name": "goods",
                "source": source,
                "target": {"connection": "es", "index": index_name},
                "primary_key": "sku",
                "transforms": [{"field": "name", "embed": "text", "model": "models:hash-8", "to": "name_vec"}],
            },
            {
                "name": "online",
                "source": source,
                "target": {"connection": "es", "index": f"{index_name}-online"},
                "primary_key": "sku",
                "transforms": [{"field": "name", "embed": "text", "model": "hash:8", "to": "name_vec"}],
            },
        ],
    }
    (tmp_path / "lake_sync.yaml").write_text(yaml.safe_dump(task_file))
    return tmp_path


def _predict(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "DAGSTER_HOME"}
    env["COLUMNS"] = "200"  # keep rich from wrapping the summary tables and messages
    command = [sys.executable, "-m", "lake_sync.cli", "predict", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def test_cli_predict_stages_submits_and_ingests_then_prints_both_summaries(
    workdir: Path, es: Elasticsearch, index_name: str
) -> None:
    result = _predict("goods", "--staging", "staged", "--poll-seconds", "0.05", cwd=workdir)

    assert result.returncode == 0, result.stderr
    assert "goods: batch predict" in result.stdout and "goods: batch ingest" in result.stdout
    assert "documents_written │ 3" in result.stdout and "success_rate      │ 100" in result.stdout
    assert list((workdir / "staged").glob("snapshot-1-*/manifest.json"))
    es.indices.refresh(index=index_name)
    assert es.count(index=index_name)["count"] == 3


def test_cli_predict_refuses_a_task_with_transforms_the_batch_api_cannot_run(workdir: Path) -> None:
    result = _predict("online", cwd=workdir)

    assert result.returncode == 2
    assert "batch predict runs text transforms on openai connections only" in result.stderr
