"""Per-task jobs. Run tags carry the index name so `dagster.yaml` allows one sync per index at a time."""

from __future__ import annotations

import dagster as dg

from lake_sync.config import Task
from lake_sync.defs.assets import SyncConfig, TaskAssetKeys, sync_op_name

INDEX_TAG = "lake_sync/index"
TASK_TAG = "lake_sync/task"


def sync_job_name(task_name: str) -> str:
    return f"{task_name}_sync_job"


def full_sync_job_name(task_name: str) -> str:
    return f"{task_name}_full_sync_job"


def build_sync_jobs(task: Task) -> list[dg.UnresolvedAssetJobDefinition]:
    """The incremental job (what the sensor launches) and the full-resync job of one task."""
    keys = TaskAssetKeys.of(task)
    assets = dg.AssetSelection.assets(keys.embedded, keys.index)
    tags = {INDEX_TAG: task.target.index, TASK_TAG: task.name}
    incremental = dg.define_asset_job(
        sync_job_name(task.name),
        # The count check reads every key of the snapshot: worth it after a full resync, not per commit.
        selection=assets.without_checks(),
        description=f"Apply new snapshots of task '{task.name}' to index '{task.target.index}'.",
        tags=tags,
        executor_def=dg.in_process_executor,
    )
    full = dg.define_asset_job(
        full_sync_job_name(task.name),
        selection=assets,
        description=f"Rebuild index '{task.target.index}' of task '{task.name}' and swap it in without downtime.",
        config=dg.RunConfig(ops={sync_op_name(task.name): SyncConfig(mode="full")}),
        tags=tags,
        executor_def=dg.in_process_executor,
    )
    return [incremental, full]
