"""The offline inference job: built for tasks whose transforms run on openai connections, tagged for
the run queue, and run in-process against the real model server, a real Paimon table and the real
local search server."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest
import yaml
from elasticsearch import Elasticsearch

from lake_sync.defs.definitions import build_defs
from lake_sync.defs.jobs import INDEX_TAG, TASK_TAG
from lake_sync.defs.offline import INGEST_POOL, INGEST_TAG, PredictConfig, offline_job_name
from lake_sync.embed.hashing import HashingEmbedder
from lake_sync.local.model_server import ModelServer
from lake_sync_tests.conftest import write_paimon_table

DAGSTER_YAML = Path(__file__).resolve().parents[2] / "dagster.yaml"
ROWS = pa.table({"id": ["a", "b", "c"], "title": ["Blue kettle", "Red kettle", "Grüner Tee"]})


@pytest.fixture
def offline_task_file(tmp_path: Path, warehouse: str, es_url: str, index_name: str, model_server: ModelServer) -> Path:
    write_paimon_table(warehouse, "db.kettles", ROWS, primary_keys=None)
    source = {"connection": "lake", "database": "db", "table": "kettles"}
    document = {
        "connections": {
            "lake": {"type": "paimon", "warehouse": warehouse},
            "es": {"type": "elasticsearch", "hosts": [es_url]},
            "models": {"type": "openai", "base_url": model_server.base_url, "dims": {"hash-8": 8}},
        },
        "tasks": [
            {
                "name": "kettles",
                "source": source,
                "target": {"connection": "es", "index": index_name},
                "primary_key": "id",
                "transforms": [{"field": "title", "embed": "text", "model": "models:hash-8", "to": "title_vec"}],
            },
            {
                "name": "online",
                "source": source,
                "target": {"connection": "es", "index": f"{index_name}-online"},
                "primary_key": "id",
                "transforms": [{"field": "title", "embed": "text", "model": "hash:8", "to": "title_vec"}],
            },
        ],
        "state_dir": str(tmp_path / "state"),
    }
    path = tmp_path / "lake_sync.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_offline_job_is_built_only_for_tasks_whose_transforms_run_on_openai(
    offline_task_file: Path, index_name: str
) -> None:
    defs = build_defs(offline_task_file)

    job = defs.resolve_job_def(offline_job_name("kettles"))
    assert job.tags == {INDEX_TAG: index_name, TASK_TAG: "kettles", INGEST_TAG: "offline"}
    assert [node.name for node in job.graph.nodes_in_topological_order] == ["batch_predict", "batch_ingest"]
    assert job.graph.pools == {"openai", INGEST_POOL}
    assert offline_job_name("online") not in {job.name for job in defs.resolve_all_job_defs()}
    assert yaml.safe_load(DAGSTER_YAML.read_text())["concurrency"]["pools"] == {"default_limit": 1, "granularity": "op"}


def test_offline_job_predicts_and_ingests_in_process(
    offline_task_file: Path, es: Elasticsearch, index_name: str
) -> None:
    defs = build_defs(offline_task_file)
    run_config = dg.RunConfig(ops={"batch_predict": PredictConfig(poll_seconds=0.05)})

    result = defs.resolve_job_def(offline_job_name("kettles")).execute_in_process(
        run_config=run_config, instance=dg.DagsterInstance.ephemeral()
    )

    assert result.success
    predicted = {
        key: value.value
        for event in result.events_for_node("batch_predict")
        if event.is_successful_output
        for key, value in event.step_output_data.metadata.items()
    }
    assert (predicted["requests"], predicted["files"], predicted["batches"], predicted["success_rate"]) == (
        3,
        1,
        1,
        100,
    )
    assert result.output_for_node("batch_ingest") == 3
    es.indices.refresh(index=index_name)
    hits = es.search(index=index_name, query={"match_all": {}})["hits"]["hits"]
    vectors = {hit["_id"]: hit["_source"]["title_vec"] for hit in hits}
    expected = HashingEmbedder(8).embed_texts(ROWS.column("title").to_pylist())
    np.testing.assert_allclose([vectors[key] for key in ("a", "b", "c")], expected, rtol=1e-6)
