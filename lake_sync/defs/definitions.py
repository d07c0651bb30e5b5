"""The Dagster entry point: one group of assets, a check, jobs and a sensor per task, and the batch-ingest job.

`workspace.yaml` loads `defs` from here; tests and the CLI call `build_defs` directly.
"""

from __future__ import annotations

import os

import dagster as dg

from lake_sync.config import Task, TaskFile, load_task_file, resolve_task_file_path
from lake_sync.defs.assets import build_task_assets
from lake_sync.defs.ingest import IngestControl, batch_ingest_job, ingest_control_resource
from lake_sync.defs.jobs import build_sync_jobs
from lake_sync.defs.offline import build_offline_jobs
from lake_sync.defs.resources import TaskFileResource, progress_resource
from lake_sync.defs.sensors import build_snapshot_sensor
from lake_sync.sync import ProgressCallback


def build_task_definitions(task: Task, task_file: TaskFile) -> dg.Definitions:
    """Everything Dagster knows about one task, without resources."""
    source, sync, check = build_task_assets(task)
    jobs = build_sync_jobs(task)
    return dg.Definitions(
        assets=[source, sync],
        asset_checks=[check],
        jobs=[*jobs, *build_offline_jobs(task, task_file)],
        sensors=[build_snapshot_sensor(task, jobs[0])] if task.schedule.enabled else [],
    )


def build_defs(
    task_file_path: str | os.PathLike[str] | None = None,
    *,
    progress: ProgressCallback | None = None,
    ingest_control: IngestControl | None = None,
) -> dg.Definitions:
    """Definitions for every task in the task file (validated now, so a bad file fails at load), and batch ingest."""
    path = resolve_task_file_path(task_file_path).resolve()
    task_file = load_task_file(path)
    resources = {
        "lake_sync": TaskFileResource(path=str(path)),
        "progress": progress_resource(progress),
        "ingest_control": ingest_control_resource(ingest_control),
    }
    return dg.Definitions.merge(
        *(build_task_definitions(task, task_file) for task in task_file.tasks),
        dg.Definitions(jobs=[batch_ingest_job], resources=resources),
    )


@dg.definitions
def defs() -> dg.Definitions:
    """Loaded lazily by `dagster dev` / the daemon, from $LAKE_SYNC_TASKS or ./lake_sync.yaml."""
    return build_defs()
