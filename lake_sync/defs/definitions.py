"""The Dagster entry point: one group of assets and jobs per task of the task file.

`workspace.yaml` loads `defs` from here; tests and the CLI call `build_defs` directly.
"""

from __future__ import annotations

import os

import dagster as dg

from lake_sync.config import load_task_file, resolve_task_file_path
from lake_sync.defs.assets import build_task_assets
from lake_sync.defs.jobs import build_full_sync_job
from lake_sync.defs.resources import TaskFileResource, progress_resource
from lake_sync.sync import ProgressCallback


def build_defs(
    task_file_path: str | os.PathLike[str] | None = None, *, progress: ProgressCallback | None = None
) -> dg.Definitions:
    """Definitions for every task in the task file (validated now, so a bad file fails at load)."""
    path = resolve_task_file_path(task_file_path).resolve()
    task_file = load_task_file(path)
    assets = [asset for task in task_file.tasks for asset in build_task_assets(task)]
    return dg.Definitions(
        assets=assets,
        jobs=[build_full_sync_job(task) for task in task_file.tasks],
        resources={"lake_sync": TaskFileResource(path=str(path)), "progress": progress_resource(progress)},
    )


@dg.definitions
def defs() -> dg.Definitions:
    """Loaded lazily by `dagster dev` / the daemon, from $LAKE_SYNC_TASKS or ./lake_sync.yaml."""
    return build_defs()
