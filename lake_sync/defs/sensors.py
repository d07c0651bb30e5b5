"""Snapshot sensors: one per task, launching an incremental run when the table has moved on.

Ranges start at the cursor committed with the index (written by a run only when it
succeeds), not at the sensor's own cursor, which Dagster advances when a run is *requested*:
so a failed range is simply requested again on the next tick, under a new run key.
"""

from __future__ import annotations

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from lake_sync.config import Task
from lake_sync.defs.assets import TaskAssetKeys
from lake_sync.defs.jobs import TASK_TAG
from lake_sync.defs.resources import TaskFileResource
from lake_sync.sync import committed_cursor, latest_source_snapshot

RANGE_TAG = "lake_sync/range"
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def snapshot_sensor_name(task_name: str) -> str:
    return f"{task_name}_snapshot_sensor"


def build_snapshot_sensor(task: Task, job: dg.UnresolvedAssetJobDefinition) -> dg.SensorDefinition:
    """Poll the task's table every `schedule.poll_seconds` and launch `job` for each new range."""
    source_key = TaskAssetKeys.of(task).source

    @dg.sensor(
        name=snapshot_sensor_name(task.name),
        job=job,
        minimum_interval_seconds=task.schedule.poll_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Launches {job.name} when {task.source.database}.{task.source.table} has a new snapshot.",
    )
    def snapshot_sensor(context: dg.SensorEvaluationContext, lake_sync: TaskFileResource) -> dg.SensorResult:
        in_flight = context.instance.get_run_ids(dg.RunsFilter(tags={TASK_TAG: task.name}, statuses=IN_FLIGHT), limit=1)
        if in_flight:
            return dg.SensorResult(skip_reason=f"a sync of task '{task.name}' is in flight (run {in_flight[0]})")
        task_file = lake_sync.load()
        latest = latest_source_snapshot(task_file, task.name)
        if latest is None:
            return dg.SensorResult(skip_reason=f"table {task.source.database}.{task.source.table} has no snapshot yet")
        # Report each new snapshot once, so the UI shows source_table's data version move.
        observed = (
            []
            if context.cursor == str(latest.id)
            else [dg.AssetObservation(source_key, tags={DATA_VERSION_TAG: str(latest.id)})]
        )
        cursor = committed_cursor(task_file, task.name)
        synced = cursor.snapshot_id if cursor else None
        if synced is not None and synced >= latest.id:
            return dg.SensorResult(
                skip_reason=f"up to date: index at snapshot {synced}, table at snapshot {latest.id}",
                cursor=str(latest.id),
                asset_events=observed,
            )
        snapshot_range = f"{synced if synced is not None else 'none'}-{latest.id}"
        attempts = len(
            context.instance.get_run_ids(dg.RunsFilter(tags={TASK_TAG: task.name, RANGE_TAG: snapshot_range}))
        )
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=f"{task.name}:{snapshot_range}#{attempts}",
                    tags={RANGE_TAG: snapshot_range},
                )
            ],
            cursor=str(latest.id),
            asset_events=observed,
        )

    return snapshot_sensor
