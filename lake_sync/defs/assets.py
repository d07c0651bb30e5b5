"""Per-task assets: the Paimon table (observed), its embedded batches and the search index.

source_table (observable, data version = snapshot id) → embedded_batches → search_index
The two materialised assets come from one op, so rows stream from Paimon through the
model into the index without being staged in between.
"""

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import dagster as dg

from lake_sync.config import Task
from lake_sync.defs.failures import no_retry_on_bad_input
from lake_sync.defs.resources import TaskFileResource
from lake_sync.sync import (
    SyncMode,
    SyncResult,
    count_target_documents,
    latest_source_snapshot,
    run_sync,
    verify_sync,
)

DOCUMENT_COUNT_CHECK = "document_count_matches_snapshot"
PROGRESS_LOG_STEP = 0.1


class SyncConfig(dg.Config):
    """Run config of a sync: `incremental` applies new snapshots, `full` rebuilds the index."""

    mode: Literal["incremental", "full"] = "incremental"
    keep_old_index: bool = False


def sync_op_name(task_name: str) -> str:
    return f"{task_name}_sync"


@dataclass(frozen=True)
class TaskAssetKeys:
    source: dg.AssetKey
    embedded: dg.AssetKey
    index: dg.AssetKey

    @classmethod
    def of(cls, task: Task) -> "TaskAssetKeys":
        return cls(*(dg.AssetKey([task.name, name]) for name in ("source_table", "embedded_batches", "search_index")))


def build_task_assets(task: Task) -> tuple[dg.SourceAsset, dg.AssetsDefinition, dg.AssetChecksDefinition]:
    """The source, embedded-batches and index assets of one task, grouped under its name, and the index's check."""
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
        name=sync_op_name(task.name),
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
        retry_policy=dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL),
        pool="elasticsearch",
    )
    def sync(
        context: dg.AssetExecutionContext,
        config: SyncConfig,
        lake_sync: TaskFileResource,
        progress: dg.ResourceParam[Any],
    ) -> Iterator[dg.MaterializeResult]:
        """Bring the index up to the table's latest snapshot: incremental by default, or a full resync."""
        with no_retry_on_bad_input():
            task_file = lake_sync.load()
            result = run_sync(
                task_file,
                task.name,
                mode=SyncMode(config.mode),
                keep_old_index=config.keep_old_index,
                progress=_progress(context, progress),
            )
            documents = count_target_documents(task_file, task.name)
        yield dg.MaterializeResult(asset_key=keys.embedded, metadata=_embedded_metadata(result))
        yield dg.MaterializeResult(
            asset_key=keys.index,
            metadata=_index_metadata(result, documents),
            data_version=dg.DataVersion(str(result.snapshot_id)),
        )

    @dg.asset_check(
        asset=keys.index,
        name=DOCUMENT_COUNT_CHECK,
        blocking=True,
        description="The index holds one document per row (with a usable primary key) of its cursor snapshot.",
    )
    def document_count_matches_snapshot(lake_sync: TaskFileResource) -> dg.AssetCheckResult:
        verification = verify_sync(lake_sync.load(), task.name)
        return dg.AssetCheckResult(
            passed=verification.matches,
            metadata={
                "snapshot_id": verification.snapshot_id,
                "rows_with_valid_key": verification.rows_with_valid_key,
                "documents_in_index": verification.documents,
            },
        )

    return source_table, sync, document_count_matches_snapshot


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


def _embedded_metadata(result: SyncResult) -> dict[str, Any]:
    return {
        "snapshot_id": result.snapshot_id,
        "rows_read": result.rows_read,
        "inputs_embedded": result.inputs_embedded,
        "cache_hits": result.cache_hits,
        "model_calls": result.model_calls,
        "model_inputs": result.model_inputs,
        "model_tokens": result.model_tokens,
        # Inputs of this run (cached ones included) longer than their model reads: their vectors cover the beginning.
        "inputs_truncated": result.inputs_truncated,
        "truncated_by_field": dg.MetadataValue.json(result.truncated),
        # The shared embedding cache (`embedding_cache` in the task file): vectors in from other machines, out to them.
        "cache_imported": result.cache_imported,
        "cache_exported": result.cache_exported,
        "cache_problems": dg.MetadataValue.md("\n".join(f"- {problem}" for problem in result.cache_problems) or "none"),
    }


def _index_metadata(result: SyncResult, documents: int) -> dict[str, Any]:
    return {
        "dagster/row_count": documents,
        "index": result.index,
        "physical_index": result.physical_index,
        "from_snapshot": result.from_snapshot,
        "snapshot_id": result.snapshot_id,
        "mode": result.mode.value,
        "reason": result.reason or "incremental",
        "status": result.status.value,
        "rows_read": result.rows_read,
        "documents_indexed": result.documents_indexed,
        "documents_deleted": result.documents_deleted,
        "dead_lettered": result.dead_lettered,
        "dead_letter_file": dg.MetadataValue.path(result.dead_letter_path),
        "bulk_requests": result.bulk_requests,
        "duration_s": dg.MetadataValue.float(round(result.seconds, 3)),
        "index_wait_s": dg.MetadataValue.float(round(result.index_wait_seconds, 3)),
        "preview": dg.MetadataValue.md(_markdown_table(result.preview)),
    }


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_no documents_"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [str(row.get(column, "")).replace("|", "\\|").replace("\n", " ")[:80] for column in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
