"""Where a batch-ingestion request goes, and running it there.

request body + task file → `resolve_ingest` → ResolvedIngest (credentials, elasticsearch connection,
dead-letter file) → `execute_ingest` → check the cluster → `run_ingest` → IngestResult

The CLI resolves a request before it starts a run, so a bad body or target fails at once; the
Dagster op resolves the same body from its run config with the same function.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lake_sync.batch.ingest import IngestProgress, IngestResult, run_ingest
from lake_sync.batch.request import IngestRequest, parse_request
from lake_sync.config import ElasticsearchConnection, TaskFile
from lake_sync.errors import ConfigError
from lake_sync.index.client import build_client, check_cluster
from lake_sync.index.dead_letters import DeadLetterFile

DEAD_LETTER_DIR = "dead_letters"


@dataclass(frozen=True)
class ResolvedIngest:
    """A validated request with its `connection` replaced by credentials, and where its documents go."""

    request: IngestRequest
    #: The task file's elasticsearch connection the documents are written to, and its name.
    connection_name: str
    connection: ElasticsearchConnection
    dead_letter_path: Path


def resolve_ingest(
    body: Any, task_file: TaskFile, *, target: str | None = None, source: str = "ingest request"
) -> ResolvedIngest:
    """Validate a request body and resolve its target; a ConfigError names the field and the fix.

    A named `connection` (our stand-in for ML Commons' `connector_id`) becomes that connection's
    credentials and endpoint. `target` names the task file's elasticsearch connection, and may be
    left out when there is only one.
    """
    request = parse_request(body, source=source).with_connection(task_file)
    targets = {name: c for name, c in task_file.connections.items() if isinstance(c, ElasticsearchConnection)}
    if not targets:
        raise ConfigError(f"{source}: the task file has no elasticsearch connection to write to; add one")
    if target is None and len(targets) > 1:
        raise ConfigError(
            f"{source}: the task file has elasticsearch connections {sorted(targets)}; pick one with --target "
            "(in the Dagster job: config field `target`)"
        )
    name = target or next(iter(targets))
    if name not in targets:
        raise ConfigError(f"{source}: target '{name}' is no elasticsearch connection; those are {sorted(targets)}")
    path = Path(task_file.state_dir) / DEAD_LETTER_DIR / f"ingest-{request.index_name}.jsonl"
    return ResolvedIngest(request=request, connection_name=name, connection=targets[name], dead_letter_path=path)


def execute_ingest(
    resolved: ResolvedIngest,
    *,
    progress: Callable[[IngestProgress], None] | None = None,
    cancel: threading.Event | None = None,
) -> IngestResult:
    """Check the cluster (a TargetError without secrets if it is unusable), then run the request into it."""
    with build_client(resolved.connection) as client:
        check_cluster(client, resolved.connection)
        with DeadLetterFile(resolved.dead_letter_path) as dead_letters:
            return run_ingest(
                resolved.request, client=client, dead_letters=dead_letters, progress=progress, cancel=cancel
            )
