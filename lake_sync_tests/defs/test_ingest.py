"""The standalone batch-ingest job and the cap on concurrent ingests.

The job runs in-process with the seed example's body as run config, against a real moto S3 server and
the real local search server; the cap is checked on a real DagsterInstance in a temporary DAGSTER_HOME
configured by the project's own dagster.yaml.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from elasticsearch import Elasticsearch

from lake_sync.defs.definitions import build_defs
from lake_sync.defs.ingest import (
    INGEST_JOB,
    INGEST_OP,
    PoolUsage,
    _free_stale_claims,
    batch_ingest_job,
    ingest_pool_usage,
    ingest_request,
    ingest_slot,
)
from lake_sync.defs.offline import INGEST_POOL, batch_ingest
from lake_sync_tests.batch import conftest as batch_fixtures
from lake_sync_tests.batch.conftest import jsonl, vector
from lake_sync_tests.batch.test_request import SAGEMAKER_S3_EXAMPLE

DAGSTER_YAML = Path(__file__).resolve().parents[2] / "dagster.yaml"
# The batch tests' moto S3 server and bucket, shared rather than copied.
s3_url = batch_fixtures.s3_url
s3 = batch_fixtures.s3


def dagster_home(home: Path) -> Path:
    """A DAGSTER_HOME whose dagster.yaml is the project's, with its storage moved under `home`."""
    settings = yaml.safe_load(DAGSTER_YAML.read_text())
    settings["storage"] = {"sqlite": {"base_dir": str(home / "storage")}}
    settings["local_artifact_storage"]["config"]["base_dir"] = str(home)
    settings["compute_logs"]["config"]["base_dir"] = str(home / "compute_logs")
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(settings))
    return home


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.from_config(str(dagster_home(tmp_path / "dagster_home"))) as instance:
        yield instance


@pytest.fixture
def tasks_path(tmp_path: Path, es_url: str) -> Path:
    document = {
        "connections": {"es": {"type": "elasticsearch", "hosts": [es_url]}},
        "state_dir": str(tmp_path / "state"),
    }
    path = tmp_path / "lake_sync.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture
def seed_index(es: Elasticsearch) -> Iterator[str]:
    name = SAGEMAKER_S3_EXAMPLE["index_name"]
    yield name
    es.options(ignore_status=404).indices.delete(index=name)


def run_config(request: dict[str, Any], **config: Any) -> dict[str, Any]:
    """Run config as a user writes it in the Launchpad: the request body pasted under `request`."""
    return {"ops": {INGEST_OP: {"config": {"request": request, **config}}}}


def op_metadata(result: Any) -> dict[str, Any]:
    for event in result.events_for_node(INGEST_OP):
        if event.is_successful_output:
            return {key: value.value for key, value in event.step_output_data.metadata.items()}
        if event.is_step_failure:
            return {key: value.value for key, value in event.step_failure_data.user_failure_data.metadata.items()}
    raise AssertionError("the op neither succeeded nor failed")


# --- the job ---------------------------------------------------------------------------------------


def test_batch_ingest_job_runs_the_seed_sagemaker_body_pasted_as_run_config(
    tasks_path: Path, s3: Any, s3_url: str, es: Elasticsearch, seed_index: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [
        {"SageMakerOutput": [vector(384, i), vector(384, 100 + i)], "content": [f"chapter {i}", f"title {i}"], "id": i}
        for i in range(1, 6)
    ]
    s3.put_object(Bucket="bucket", Key="output/sagemaker_batch.json.out", Body=jsonl(lines))
    # The body stays exactly as documented (the same the CLI takes); boto3 finds the endpoint in the environment.
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_url)
    job = build_defs(tasks_path).resolve_job_def(INGEST_JOB)

    result = job.execute_in_process(
        run_config=run_config(SAGEMAKER_S3_EXAMPLE), instance=dg.DagsterInstance.ephemeral()
    )

    assert result.success
    assert result.output_for_node(INGEST_OP) == 5
    metadata = op_metadata(result)
    assert (metadata["state"], metadata["lines_read"], metadata["documents_written"]) == ("COMPLETED", 5, 5)
    assert (metadata["dead_lettered"], metadata["success_rate"], metadata["index_created"]) == (0, 100.0, True)
    assert metadata["duration_s"] > 0 and "dead_letter_file" not in metadata
    es.indices.refresh(index=seed_index)
    stored = es.get(index=seed_index, id="3")["_source"]
    assert (stored["chapter"], stored["title"], stored["id"]) == ("chapter 3", "title 3", 3)
    assert stored["title_embedding"] == pytest.approx(vector(384, 103))
    messages = " ".join(str(event.message) for event in result.all_events)
    assert SAGEMAKER_S3_EXAMPLE["credential"]["secret_key"] not in messages + str(metadata)


def test_batch_ingest_job_fails_without_retries_when_the_target_is_not_an_elasticsearch_connection(
    tasks_path: Path, es: Elasticsearch, index_name: str
) -> None:
    body = {"index_name": index_name, "field_map": {"v": "$.v"}, "data_source": {"type": "file", "source": ["x"]}}
    job = build_defs(tasks_path).resolve_job_def(INGEST_JOB)

    result = job.execute_in_process(
        run_config=run_config(body, target="nope"), instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )

    assert not result.success
    failures = [event for event in result.all_events if event.is_step_failure]
    assert len(failures) == 1
    assert "target 'nope' is no elasticsearch connection; those are ['es']" in (
        failures[0].step_failure_data.user_failure_data.description
    )
    assert not any(event.event_type_value == "STEP_UP_FOR_RETRY" for event in result.all_events)
    assert not es.indices.exists(index=index_name)


def test_batch_ingest_job_fails_once_with_the_accounting_when_a_source_is_missing(
    tasks_path: Path, tmp_path: Path, index_name: str
) -> None:
    body = {
        "index_name": index_name,
        "field_map": {"v": "$.v", "_id": "$.id"},
        "data_source": {"type": "file", "source": [str(tmp_path / "missing.jsonl")]},
    }
    job = build_defs(tasks_path).resolve_job_def(INGEST_JOB)

    result = job.execute_in_process(
        run_config=run_config(body), instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )

    assert not result.success
    metadata = op_metadata(result)
    assert (metadata["state"], metadata["documents_written"]) == ("FAILED", 0)
    assert "missing.jsonl does not exist" in metadata["error"]
    assert not any(event.event_type_value == "STEP_UP_FOR_RETRY" for event in result.all_events)


# --- the cap -----------------------------------------------------------------------------------------


def test_every_ingest_op_uses_the_ingest_pool_and_the_daemon_holds_runs_back_by_it(
    instance: dg.DagsterInstance, tasks_path: Path
) -> None:
    assert ingest_request.pool == INGEST_POOL and batch_ingest.pool == INGEST_POOL
    assert build_defs(tasks_path).resolve_job_def(INGEST_JOB).graph.pools == {INGEST_POOL}
    assert batch_ingest_job.executor_def is dg.in_process_executor
    concurrency = instance.get_concurrency_config()
    # op granularity: in-process runs claim per step; the run queue holds back runs whose first step's pool is full.
    assert concurrency.pool_config.pool_granularity.value == "op"
    assert concurrency.pool_config.default_pool_limit == 1
    assert concurrency.run_queue_config is not None
    assert concurrency.run_queue_config.should_block_op_concurrency_limited_runs


def test_ingest_slot_queues_while_the_pool_is_full_and_leaves_no_claim_when_given_up(
    instance: dg.DagsterInstance,
) -> None:
    seen: list[PoolUsage] = []

    def give_up(usage: PoolUsage) -> None:
        seen.append(usage)
        raise KeyboardInterrupt

    with ingest_slot(instance, "run-a", on_queued=seen.append):
        with pytest.raises(KeyboardInterrupt), ingest_slot(instance, "run-b", on_queued=give_up):
            pytest.fail("run-b got a slot of a full pool")
        held = ingest_pool_usage(instance)
    # run-b's given-up claim is gone, so it is not handed the freed slot: run-c gets it at once.
    with ingest_slot(instance, "run-c", on_queued=give_up):
        after = ingest_pool_usage(instance)

    assert seen == [PoolUsage(INGEST_POOL, 1, ("run-a",), 1)]
    assert (held.holders, held.waiting) == (("run-a",), 0)
    assert (after.holders, after.waiting) == (("run-c",), 0)
    info = instance.event_log_storage.get_concurrency_info(INGEST_POOL)
    assert (info.claimed_slots, info.pending_steps) == ([], [])


def test_ingest_slot_frees_a_slot_held_by_a_claim_whose_process_died_before_its_run(
    instance: dg.DagsterInstance,
) -> None:
    dead = str(uuid.uuid4())
    instance.event_log_storage.set_concurrency_slots(INGEST_POOL, 1)
    # What a CLI killed outright leaves: a claim handed the slot, under a run id that never got a run.
    assert instance.event_log_storage.claim_concurrency_slot(INGEST_POOL, dead, INGEST_OP).is_claimed
    seen: list[PoolUsage] = []

    with ingest_slot(instance, "run-b", on_queued=seen.append, poll_seconds=0.01, stale_after_seconds=0):
        usage = ingest_pool_usage(instance)

    assert seen == [PoolUsage(INGEST_POOL, 1, (dead,), 1)]
    assert usage.holders == ("run-b",)


def test_stale_claims_are_only_those_of_run_ids_without_a_run(instance: dg.DagsterInstance) -> None:
    instance.event_log_storage.set_concurrency_slots(INGEST_POOL, 2)
    live = instance.create_run_for_job(batch_ingest_job, run_config=run_config({})).run_id
    dead = str(uuid.uuid4())
    for run_id in (live, dead):
        assert instance.event_log_storage.claim_concurrency_slot(INGEST_POOL, run_id, INGEST_OP).is_claimed

    _free_stale_claims(instance, stale_after_seconds=0)
    _free_stale_claims(instance, stale_after_seconds=3600)

    assert ingest_pool_usage(instance).holders == (live,)


def test_ingest_slot_follows_a_pool_limit_raised_as_dagster_instance_concurrency_set_does(
    instance: dg.DagsterInstance,
) -> None:
    instance.event_log_storage.set_concurrency_slots(INGEST_POOL, 2)
    refused: list[PoolUsage] = []

    with (
        ingest_slot(instance, "run-a", on_queued=refused.append),
        ingest_slot(instance, "run-b", on_queued=refused.append),
    ):
        usage = ingest_pool_usage(instance)

    assert refused == []
    assert (usage.limit, usage.holders) == (2, ("run-a", "run-b"))


def test_an_in_process_run_finds_its_claimed_slot_and_frees_it(
    instance: dg.DagsterInstance, tasks_path: Path, tmp_path: Path, index_name: str
) -> None:
    source = tmp_path / "lines.jsonl"
    source.write_bytes(jsonl({"id": f"d{i}", "v": vector(4, i)} for i in range(3)))
    body = {
        "index_name": index_name,
        "field_map": {"v": "$.v", "_id": "$.id"},
        "data_source": {"type": "file", "source": [str(source)]},
    }
    job = build_defs(tasks_path).resolve_job_def(INGEST_JOB)
    refused: list[PoolUsage] = []

    run_id = str(uuid.uuid4())

    with ingest_slot(instance, run_id, on_queued=refused.append):
        result = job.execute_in_process(run_config=run_config(body), instance=instance, run_id=run_id)
        after_run = ingest_pool_usage(instance)

    assert result.success and result.output_for_node(INGEST_OP) == 3
    assert not any("blocked by limit" in str(event.message) for event in result.all_events)
    assert refused == [] and after_run.holders == ()
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
