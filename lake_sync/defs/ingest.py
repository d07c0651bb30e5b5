"""The standalone batch-ingest job, and the cap on concurrent ingests.

run config {request: <ML Commons _batch_ingestion body>, target} → ingest_request (pool lake_sync_ingest)
    → resolve_ingest → execute_ingest → documents in the index, dead letters in <state_dir>/dead_letters/

The cap is the limit of the Dagster pool `lake_sync_ingest` (`concurrency.pools.default_limit` in
dagster.yaml until set per pool with `dagster instance concurrency set lake_sync_ingest N`). This
op and the offline job's `batch_ingest` use that pool, with `granularity: op`:
- runs launched by the daemon (UI, sensors) wait in the run queue while the pool is full, because
  the run coordinator holds back runs whose first step needs a full pool (the offline job's
  `batch_ingest` is not a first step: it waits at the step, shown as blocked by the pool);
- in-process runs (`lake-sync ingest`) claim the slot with `ingest_slot` before the run starts,
  in the same instance tables, so they queue with the daemon's runs in one line.
"""

# No `from __future__ import annotations`: Dagster reads the op's config and resource types at definition time.
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from lake_sync.batch.ingest import IngestProgress, IngestResult, IngestState
from lake_sync.batch.target import execute_ingest, resolve_ingest
from lake_sync.defs.failures import no_retry_on_bad_input
from lake_sync.defs.offline import INGEST_POOL, INGEST_TAG
from lake_sync.defs.resources import TaskFileResource

INGEST_JOB = "batch_ingest_job"
INGEST_OP = "ingest_request"
#: How often a queued CLI ingest asks the instance for a slot.
DEFAULT_SLOT_POLL_SECONDS = 0.5
#: A slot of the pool held this long by a run id with no run is a CLI's that died before starting its run
#: (a live CLI starts its run within a second or two of getting the slot).
DEFAULT_STALE_CLAIM_SECONDS = 60.0


class IngestRequestConfig(dg.Config):
    """An ML Commons `_batch_ingestion` body as it is, and the task file's elasticsearch connection to write to.

    Paste the body under `request` in the Launchpad. The run config is stored with the run and shown in
    the UI: name a task-file `connection` (secrets from the environment) rather than a `credential`.
    """

    request: dict[str, Any]
    target: str | None = None


@dataclass(frozen=True)
class IngestControl:
    """What an in-process caller (the CLI) hands the op beside the run config; none of it is stored with the run."""

    progress: Callable[[IngestProgress], None] | None = None
    cancel: threading.Event | None = None
    #: The request's `credential`, kept out of the stored run config.
    credential: dict[str, Any] | None = None


def ingest_control_resource(control: IngestControl | None) -> dg.ResourceDefinition:
    """A resource holding the CLI's progress callback, cancel event and credential (empty under the daemon)."""
    return dg.ResourceDefinition.hardcoded_resource(
        control or IngestControl(), description="Progress, cancel and credential of an in-process ingest"
    )


@dg.op(
    name=INGEST_OP,
    pool=INGEST_POOL,
    retry_policy=dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL),
    tags={"dagster/kind/elasticsearch": ""},
    out=dg.Out(int, description="Documents written."),
)
def ingest_request(
    context: dg.OpExecutionContext,
    config: IngestRequestConfig,
    lake_sync: TaskFileResource,
    ingest_control: dg.ResourceParam[IngestControl],
) -> dg.Output[int]:
    """Stream the request's JSONL sources, map and join them, and write the documents into its index.

    A run that ends FAILED (sources unreadable, cluster refusing after the writer's retries) or
    CANCELLED is not retried: the readers and the writer have retried already, and a re-run
    rewrites the same documents by _id. Only an unreachable cluster at the start is retried.
    """
    body = config.request
    if ingest_control.credential is not None:
        body = {**body, "credential": ingest_control.credential}
    with no_retry_on_bad_input():
        resolved = resolve_ingest(body, lake_sync.load(), target=config.target, source=f"{INGEST_OP} config 'request'")
        result = execute_ingest(resolved, progress=ingest_control.progress, cancel=ingest_control.cancel)
    metadata = ingest_metadata(result)
    context.log.info(
        f"{result.state.value}: {result.documents_written:,} documents written into '{result.index}', "
        f"{result.failed:,} dead letters"
    )
    if result.state in (IngestState.FAILED, IngestState.CANCELLED):
        reason = result.error or "cancelled"
        raise dg.Failure(
            description=f"ingest into '{result.index}' ended {result.state.value}: {reason}",
            metadata=metadata,
            allow_retries=False,
        )
    return dg.Output(result.documents_written, metadata=metadata)


def ingest_metadata(result: IngestResult) -> dict[str, Any]:
    """The op's metadata: the per-document accounting of the ingest (also what the CLI prints)."""
    metadata: dict[str, Any] = {
        "state": result.state.value,
        "index": result.index,
        "lines_read": dg.MetadataValue.int(result.lines_read),
        "documents_written": dg.MetadataValue.int(result.documents_written),
        "dead_lettered": dg.MetadataValue.int(result.failed),
        "success_rate": dg.MetadataValue.float(round(result.success_rate, 2)),
        "orphan_ids": dg.MetadataValue.int(result.orphans.count),
        "orphan_samples": dg.MetadataValue.json(list(result.orphans.samples)),
        "duplicate_ids": dg.MetadataValue.int(result.duplicates.count),
        "duplicate_samples": dg.MetadataValue.json(list(result.duplicates.samples)),
        "index_created": dg.MetadataValue.bool(result.index_created),
        "duration_s": dg.MetadataValue.float(round(result.duration_s, 3)),
    }
    if result.dead_letter_file is not None:
        metadata["dead_letter_file"] = dg.MetadataValue.path(str(result.dead_letter_file))
    if result.error:
        metadata["error"] = dg.MetadataValue.text(result.error)
    return metadata


@dg.job(
    name=INGEST_JOB,
    description=(
        "Ingest batch-prediction output files into an index: the run config is an OpenSearch ML Commons "
        f"_batch_ingestion body. At most as many at a time as pool '{INGEST_POOL}' allows; more wait queued."
    ),
    tags={INGEST_TAG: "request"},
    executor_def=dg.in_process_executor,
)
def batch_ingest_job() -> None:
    ingest_request()


# --- the cap, for in-process runs ----------------------------------------------------------------


@dataclass(frozen=True)
class PoolUsage:
    """Who holds the ingest pool's slots, for telling a queued user what they wait for."""

    pool: str
    limit: int | None
    #: Runs holding a slot now.
    holders: tuple[str, ...]
    #: Steps waiting for a slot, this one included.
    waiting: int


def ingest_pool_usage(instance: dg.DagsterInstance) -> PoolUsage:
    """The ingest pool's limit, the runs holding its slots and how many steps wait."""
    info = instance.event_log_storage.get_concurrency_info(INGEST_POOL)
    return PoolUsage(
        pool=INGEST_POOL, limit=info.limit, holders=tuple(sorted(info.active_run_ids)), waiting=info.pending_step_count
    )


@contextmanager
def ingest_slot(
    instance: dg.DagsterInstance,
    run_id: str,
    *,
    on_queued: Callable[[PoolUsage], None],
    poll_seconds: float = DEFAULT_SLOT_POLL_SECONDS,
    stale_after_seconds: float = DEFAULT_STALE_CLAIM_SECONDS,
) -> Iterator[None]:
    """Hold a slot of the ingest pool for run `run_id`'s ingest step, queueing while the pool is full.

    The claim is the one Dagster's executor makes (same tables, same run id and step key), made
    before the run starts: the run's executor then finds its slot claimed and frees it when the
    step ends. Waiting here rather than inside the run means Ctrl-C while queued leaves no claim
    behind (a pending claim of a dead process would later be handed a slot and hold it for ever).
    A process killed outright while queued leaves its claim, which is handed a slot in turn; while
    waiting, slots held for `stale_after_seconds` by run ids that have no run are freed. `on_queued`
    is called once, when the first claim is refused. An instance without pool support (the ephemeral
    one, without DAGSTER_HOME) or a pool without a limit does not cap.
    """
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits or _pool_limit(instance) is None:
        yield
        return
    try:
        queued = False
        while not storage.claim_concurrency_slot(INGEST_POOL, run_id, INGEST_OP).is_claimed:
            if not queued:
                on_queued(ingest_pool_usage(instance))
                queued = True
            _free_stale_claims(instance, stale_after_seconds)
            time.sleep(poll_seconds)
        yield
    finally:
        # Idempotent: frees the slot or the pending claim only if the run's executor has not already.
        storage.free_concurrency_slot_for_step(run_id, INGEST_OP)


def _pool_limit(instance: dg.DagsterInstance) -> int | None:
    """The pool's limit, set to the instance default first when it has none yet (as the executor does)."""
    storage = instance.event_log_storage
    default = instance.global_op_concurrency_default_limit
    pool = next((p for p in storage.get_pool_limits() if p.name == INGEST_POOL), None)
    if (pool is None and default is not None) or (pool is not None and pool.from_default and pool.limit != default):
        storage.initialize_concurrency_limit_to_default(INGEST_POOL)
        pool = next((p for p in storage.get_pool_limits() if p.name == INGEST_POOL), None)
    return None if pool is None else pool.limit


def _free_stale_claims(instance: dg.DagsterInstance, stale_after_seconds: float) -> None:
    now = datetime.now(UTC)
    for step in instance.event_log_storage.get_concurrency_info(INGEST_POOL).pending_steps:
        assigned = step.assigned_timestamp
        if assigned is None or step.step_key != INGEST_OP:
            continue
        # SQLite stores the database's UTC clock without a zone.
        assigned = assigned if assigned.tzinfo else assigned.replace(tzinfo=UTC)
        if (now - assigned).total_seconds() >= stale_after_seconds and instance.get_run_by_id(step.run_id) is None:
            instance.event_log_storage.free_concurrency_slot_for_step(step.run_id, step.step_key)
