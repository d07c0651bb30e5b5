"""Per-task assets: the Paimon table (observed), its embedded batches and the search index.

source_table (observable, data version = snapshot id) → embedded_batches → search_index
The two materialised assets come from one op, so rows stream from Paimon through the
model into the index without being staged in between.
"""

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dagster as dg

from lake_sync.config import Task
from lake_sync.defs.resources import TaskFileResource
from lake_sync.errors import ConfigError, MappingConflictError, SourceError
from lake_sync.sync import SyncResult, count_target_documents, latest_source_snapshot, run_full_sync

DOCUMENT_COUNT_CHECK = "document_count_matches_snapshot"
PROGRESS_LOG_STEP = 0.1


@dataclass(frozen=True)
class TaskAssetKeys:
    source: dg.AssetKey
    embedded: dg.AssetKey
    index: dg.AssetKey

    @classmethod
    def of(cls, task: Task) -> "TaskAssetKeys":
        return cls(*(dg.AssetKey([task.name, name]) for name in ("source_table", "embedded_batches", "search_index")))


def build_task_assets(task: Task) -> list[dg.AssetsDefinition | dg.SourceAsset]:
    """The source, embedded-batches and index assets of one task, grouped under its name."""
    keys = TaskAssetKeys.of(task)

    def observe_source_table(lake_sync: TaskFileResource) -> dg.ObserveResult:
        snapshot = latest_source_snapshot(lake_sync.load(), task.name)
        if snapshot is None:
            return dg.ObserveResult(metadata={"snapshot_id": dg.MetadataValue.text("none (empty table)")})
        return dg.ObserveResult(
            data_version=dg.DataVersion(str(snapshot.id)),
            metadata={"snapshot_id": snapshot.id, "commit_kind": snapshot.commit_kind},
        )

    # The only observable external asset API is still beta; its warning would print at every load.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        source_table = dg.observable_source_asset(
            key=keys.source,
            group_name=task.name,
            description=f"Paimon table {task.source.database}.{task.source.table}; data version = snapshot id.",
            tags={"dagster/kind/paimon": ""},
        )(observe_source_table)

    @dg.multi_asset(
        name=f"{task.name}_full_sync",
        specs=[
            dg.AssetSpec(
                keys.embedded,
                deps=[keys.source],
                group_name=task.name,
                description="Vectors of the task's text columns, one per row and transform.",
                kinds={"python"},
            ),
            dg.AssetSpec(
                keys.index,
                deps=[keys.embedded],
                group_name=task.name,
                description=f"Elasticsearch index '{task.target.index}', equal to the synced snapshot.",
                kinds={"elasticsearch"},
            ),
        ],
        check_specs=[
            dg.AssetCheckSpec(
                DOCUMENT_COUNT_CHECK,
                asset=keys.index,
                blocking=True,
                description="The index holds one document per snapshot row with a usable primary key.",
            )
        ],
        retry_policy=dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL),
        pool="elasticsearch",
    )
    def full_sync(
        context: dg.AssetExecutionContext, lake_sync: TaskFileResource, progress: dg.ResourceParam[Any]
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        """Full sync: make the index equal to the table's latest snapshot, embedding the text columns."""
        with _no_retry_on_bad_input():
            task_file = lake_sync.load()
            result = run_full_sync(task_file, task.name, progress=_progress(context, progress))
            documents = count_target_documents(task_file, task.name)
        yield dg.MaterializeResult(asset_key=keys.embedded, metadata=_embedded_metadata(result))
        yield dg.MaterializeResult(
            asset_key=keys.index,
            metadata=_index_metadata(result, documents),
            data_version=dg.DataVersion(str(result.snapshot_id)),
        )
        yield _document_count_check(keys.index, result, documents)

    return [source_table, full_sync]


def _progress(context: dg.AssetExecutionContext, callback: Any) -> Any:
    """Log every 10% of the snapshot read, and pass rows on to the CLI's progress bar if any."""
    logged = [0.0]

    def report(rows: int, total: int | None) -> None:
        if callback is not None:
            callback(rows, total)
        if total and rows / total >= logged[0] + PROGRESS_LOG_STEP:
            logged[0] = rows / total
            context.log.info(f"read {rows:,} of ~{total:,} rows")

    return report


@contextmanager
def _no_retry_on_bad_input() -> Iterator[None]:
    """Bad configuration, a missing table or a mapping conflict will not fix itself: fail without retries."""
    try:
        yield
    except (ConfigError, SourceError, MappingConflictError) as error:
        raise dg.Failure(description=str(error), allow_retries=False) from error


def _embedded_metadata(result: SyncResult) -> dict[str, Any]:
    return {
        "snapshot_id": result.snapshot_id,
        "rows_read": result.rows_read,
        "texts_embedded": result.texts_embedded,
        "model_calls": result.model_calls,
    }


def _index_metadata(result: SyncResult, documents: int) -> dict[str, Any]:
    return {
        "dagster/row_count": documents,
        "index": result.index,
        "snapshot_id": result.snapshot_id,
        "mode": result.mode.value,
        "status": result.status.value,
        "rows_read": result.rows_read,
        "documents_indexed": result.documents_indexed,
        "documents_deleted": result.documents_deleted,
        "dead_lettered": result.dead_lettered,
        "dead_letter_file": dg.MetadataValue.path(result.dead_letter_path),
        "bulk_requests": result.bulk_requests,
        "duration_s": dg.MetadataValue.float(round(result.seconds, 3)),
        "preview": dg.MetadataValue.md(_markdown_table(result.preview)),
    }


def _document_count_check(key: dg.AssetKey, result: SyncResult, documents: int) -> dg.AssetCheckResult:
    expected = result.rows_read - result.rejected_keys
    index_failures = result.dead_lettered - result.rejected_keys
    # Documents the index rejected are dead letters already: a warning, not a broken index.
    explained = documents == expected - index_failures and index_failures > 0
    return dg.AssetCheckResult(
        check_name=DOCUMENT_COUNT_CHECK,
        asset_key=key,
        passed=documents == expected,
        severity=dg.AssetCheckSeverity.WARN if explained else dg.AssetCheckSeverity.ERROR,
        metadata={
            "documents_in_index": documents,
            "rows_with_valid_key": expected,
            "rows_read": result.rows_read,
            "rejected_keys": result.rejected_keys,
            "dead_lettered": result.dead_lettered,
        },
    )


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_no documents_"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [str(row.get(column, "")).replace("|", "\\|").replace("\n", " ")[:80] for column in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
