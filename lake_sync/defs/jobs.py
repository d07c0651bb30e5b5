"""Per-task jobs. Run tags carry the index name so `dagster.yaml` allows one sync per index at a time."""

from __future__ import annotations

import dagster as dg

from lake_sync.config import Task
from lake_sync.defs.assets import TaskAssetKeys

INDEX_TAG = "lake_sync/index"


def full_sync_job_name(task_name: str) -> str:
    return f"{task_name}_full_sync_job"


def build_full_sync_job(task: Task) -> dg.UnresolvedAssetJobDefinition:
    """Full sync of one task: embedded batches and the index, from the latest snapshot."""
    keys = TaskAssetKeys.of(task)
    return dg.define_asset_job(
        full_sync_job_name(task.name),
        selection=dg.AssetSelection.assets(keys.embedded, keys.index),
        description=f"Full sync of task '{task.name}' into index '{task.target.index}'.",
        tags={INDEX_TAG: task.target.index, "lake_sync/task": task.name},
        executor_def=dg.in_process_executor,
    )
