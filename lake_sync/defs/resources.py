"""Dagster resources: where the task file is, and who hears about progress."""

from __future__ import annotations

import dagster as dg

from lake_sync.config import TaskFile, load_task_file
from lake_sync.sync import ProgressCallback


class TaskFileResource(dg.ConfigurableResource):
    """The task file naming connections and tasks; secrets inside it come from the environment."""

    path: str

    def load(self) -> TaskFile:
        return load_task_file(self.path)


def progress_resource(callback: ProgressCallback | None) -> dg.ResourceDefinition:
    """A resource holding the CLI's progress callback (none under the UI or the daemon)."""
    return dg.ResourceDefinition.hardcoded_resource(callback, description="Progress callback of an in-process run")
