"""Offline inference jobs: the OpenAI Batch API instead of online embedding calls, then a batch ingest.

batch_predict (pool openai: stage → upload → batches → poll → download) → manifest → batch_ingest (lake_sync_ingest)

One graph serves every task; each task whose transforms all run on `openai` connections gets its
own job, and the ops read the task from the run's `lake_sync/task` tag. Both ops are idempotent:
a retried predict resumes the job from its manifest, a re-run ingest rewrites the same documents.
"""

# No `from __future__ import annotations`: Dagster reads the ops' config and resource types at definition time.
from pathlib import Path
from typing import Any

import dagster as dg

from lake_sync.batch.predict import (
    DEFAULT_MAX_POLL_SECONDS,
    PollPolicy,
    ingest_predictions,
    run_predict,
    supports_offline_inference,
)
from lake_sync.config import Task, TaskFile
from lake_sync.defs.failures import no_retry_on_bad_input
from lake_sync.defs.jobs import INDEX_TAG, TASK_TAG
from lake_sync.defs.resources import TaskFileResource

#: Marks the runs that ingest (this job and `batch_ingest_job`), for finding them in the run history.
INGEST_TAG = "lake_sync/ingest"
INGEST_TAG_VALUE = "offline"
#: The pool capping concurrent ingests: `batch_ingest` here and the op of `batch_ingest_job` (see defs/ingest.py).
INGEST_POOL = "lake_sync_ingest"


def offline_job_name(task_name: str) -> str:
    return f"{task_name}_offline_inference_job"


class PredictConfig(dg.Config):
    """Where the job's files are staged (default `<state_dir>/batch/<task>`) and the longest wait between polls."""

    staging: str | None = None
    poll_seconds: float = DEFAULT_MAX_POLL_SECONDS


@dg.op(
    retry_policy=dg.RetryPolicy(max_retries=3, delay=10, backoff=dg.Backoff.EXPONENTIAL),
    pool="openai",
    tags={"dagster/kind/openai": ""},
    out=dg.Out(str, description="Path of the job's manifest.json."),
)
def batch_predict(
    context: dg.OpExecutionContext, config: PredictConfig, lake_sync: TaskFileResource, progress: dg.ResourceParam[Any]
) -> dg.Output[str]:
    """Embed the latest snapshot's texts with the OpenAI Batch API; a retry resumes the submitted batches."""
    with no_retry_on_bad_input():
        manifest = run_predict(
            lake_sync.load(),
            context.run.tags[TASK_TAG],
            staging=None if config.staging is None else Path(config.staging),
            poll=PollPolicy(first_seconds=min(1.0, config.poll_seconds), max_seconds=config.poll_seconds),
            progress=progress,
            log=context.log.info,
        )
    return dg.Output(
        str(manifest.path),
        metadata={
            "snapshot_id": manifest.snapshot_id,
            "documents": dg.MetadataValue.int(manifest.document_count),
            "requests": dg.MetadataValue.int(manifest.requests),
            "files": dg.MetadataValue.int(len(manifest.files)),
            "batches": dg.MetadataValue.int(manifest.batches_created),
            "failed_requests": dg.MetadataValue.int(manifest.failed_requests),
            "success_rate": dg.MetadataValue.float(round(manifest.success_rate, 2)),
            "rejected_keys": dg.MetadataValue.int(manifest.rejected_keys),
            "manifest": dg.MetadataValue.path(str(manifest.path)),
        },
    )


@dg.op(
    retry_policy=dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL),
    pool=INGEST_POOL,
    tags={"dagster/kind/elasticsearch": ""},
    out=dg.Out(int, description="Documents written."),
)
def batch_ingest(
    context: dg.OpExecutionContext, lake_sync: TaskFileResource, progress: dg.ResourceParam[Any], manifest: str
) -> dg.Output[int]:
    """Join the batches' outputs, inputs and documents on custom_id and write them into the task's index."""
    with no_retry_on_bad_input():
        summary = ingest_predictions(lake_sync.load(), manifest, progress=progress, log=context.log.info)
    return dg.Output(
        summary.documents_written,
        metadata={
            "index": summary.index,
            "snapshot_id": summary.snapshot_id,
            "documents_written": dg.MetadataValue.int(summary.documents_written),
            "dead_lettered": dg.MetadataValue.int(summary.dead_lettered),
            "partial_documents": dg.MetadataValue.int(summary.partial_documents),
            "documents_deleted": dg.MetadataValue.int(summary.documents_deleted),
            "cursor_written": dg.MetadataValue.bool(summary.cursor_written),
            "success_rate": dg.MetadataValue.float(round(summary.success_rate, 2)),
            "dead_letter_file": dg.MetadataValue.path(summary.dead_letter_path),
            "duration_s": dg.MetadataValue.float(round(summary.seconds, 3)),
        },
    )


@dg.graph
def offline_inference() -> None:
    batch_ingest(batch_predict())


def build_offline_jobs(task: Task, task_file: TaskFile) -> list[dg.JobDefinition]:
    """The task's offline inference job, if every transform of the task can run through the Batch API."""
    if not supports_offline_inference(task, task_file):
        return []
    return [
        offline_inference.to_job(
            name=offline_job_name(task.name),
            description=(
                f"Embed task '{task.name}' with the OpenAI Batch API (half the price, up to 24 h) and ingest the "
                f"answers into index '{task.target.index}'. batch_ingest waits for a slot in pool '{INGEST_POOL}' "
                "(the cap on concurrent ingests); while a sync holds the index, a launch waits in the queue."
            ),
            tags={INDEX_TAG: task.target.index, TASK_TAG: task.name, INGEST_TAG: INGEST_TAG_VALUE},
            executor_def=dg.in_process_executor,
        )
    ]
