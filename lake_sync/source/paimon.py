"""Paimon tables: open through a catalog, pin a snapshot, stream it as Arrow record batches.

catalog options → pypaimon catalog → table → snapshot (pinned) → splits → RecordBatch stream
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from lake_sync.errors import SourceError


@dataclass(frozen=True)
class Snapshot:
    """One committed Paimon snapshot, as the sync needs to know it."""

    id: int
    commit_kind: str
    time_millis: int
    schema_id: int
    total_record_count: int | None


class PaimonTable:
    """A Paimon table opened for reading; knows its schema, keys and snapshots."""

    def __init__(self, table: Any, identifier: str) -> None:
        self._table = table
        self.identifier = identifier

    @property
    def schema(self) -> pa.Schema:
        from pypaimon.schema.data_types import PyarrowFieldParser

        return PyarrowFieldParser.from_paimon_schema(self._table.fields)

    @property
    def column_names(self) -> list[str]:
        return list(self._table.field_names)

    @property
    def primary_keys(self) -> list[str]:
        return list(self._table.primary_keys)

    @property
    def row_kind_column(self) -> str | None:
        """The column holding +I/-D row kinds (`rowkind.field`), which is bookkeeping, not data."""
        return self._table.table_schema.options.get("rowkind.field")

    def latest_snapshot(self) -> Snapshot | None:
        """The newest committed snapshot, or None for a table nobody has written to."""
        snapshot = self._table.snapshot_manager().get_latest_snapshot()
        return None if snapshot is None else _snapshot(snapshot)

    def snapshot(self, snapshot_id: int) -> Snapshot | None:
        """Snapshot `snapshot_id`, or None if it never existed or has expired."""
        snapshot = self._table.snapshot_manager().get_snapshot_by_id(snapshot_id)
        return None if snapshot is None else _snapshot(snapshot)

    def read_snapshot(self, snapshot_id: int, *, columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        """Stream exactly `snapshot_id`, projected to `columns`, in batches of at most `batch_rows`."""
        pinned = self._table.copy({"scan.snapshot-id": str(snapshot_id), "read.batch-size": str(batch_rows)})
        builder = pinned.new_read_builder().with_projection(columns)
        return _stream(builder.new_read(), builder.new_scan().plan().splits(), batch_rows)

    def read_range(
        self, after_millis: int, until_millis: int, *, columns: list[str], batch_rows: int
    ) -> Iterator[pa.RecordBatch]:
        """Rows written by commits in (after_millis, until_millis], with a leading `_row_kind` column.

        The events of one key come back in commit order. Row kinds are only exposed by the stream
        read builder; it reads the batch plan's splits.
        """
        window = {"incremental-between-timestamp": f"{after_millis},{until_millis}", "read.batch-size": str(batch_rows)}
        ranged = self._table.copy(window)
        splits = ranged.new_read_builder().with_projection(columns).new_scan().plan().splits()
        if self.primary_keys:
            splits = [_in_commit_order(split) for split in splits]
        read = ranged.new_stream_read_builder().with_projection(columns).with_include_row_kind(True).new_read()
        return _stream(read, splits, batch_rows)


def _in_commit_order(split: Any) -> Any:
    """The split with its files in sequence-number (commit) order.

    pypaimon lists a primary-key split's files by key range and a change read concatenates
    them as listed, so a commit updating keys 1-9 could be read after a later commit updating
    key 5 alone, and "last event per key wins" would keep the older value.
    """
    from pypaimon.read.split import DataSplit

    if not isinstance(split, DataSplit):
        return split
    order = sorted(
        range(len(split.files)),
        key=lambda i: (split.files[i].min_sequence_number, split.files[i].max_sequence_number),
    )
    deletion_files = split.data_deletion_files
    return DataSplit(
        files=[split.files[i] for i in order],
        partition=split.partition,
        bucket=split.bucket,
        raw_convertible=split.raw_convertible,
        data_deletion_files=None if deletion_files is None else [deletion_files[i] for i in order],
        snapshot_id=split.snapshot_id,
        is_streaming=split.is_streaming,
        bucket_path=split.bucket_path,
        total_buckets=split.total_buckets,
    )


def _stream(read: Any, splits: list[Any], batch_rows: int) -> Iterator[pa.RecordBatch]:
    reader = read.to_arrow_batch_reader(splits)
    try:
        for batch in reader:
            # A split may hand back more rows than asked for; slicing is zero-copy.
            for offset in range(0, batch.num_rows, batch_rows):
                yield batch.slice(offset, batch_rows)
    finally:
        close = getattr(reader, "close", None)
        if close is not None:
            close()


def open_table(catalog_options: dict[str, str], database: str, table: str) -> PaimonTable:
    """Open `database.table`; a SourceError says which of warehouse, database or table is missing."""
    from pypaimon import CatalogFactory
    from pypaimon.catalog.catalog_exception import DatabaseNotExistException, TableNotExistException

    warehouse = catalog_options.get("warehouse", "")
    is_filesystem = catalog_options.get("metastore", "filesystem") == "filesystem"
    try:
        catalog = CatalogFactory.create(dict(catalog_options))
        if is_filesystem and not catalog.file_io.exists(warehouse.rstrip("/")):
            raise SourceError(f"Paimon warehouse {warehouse} does not exist; check connections.<name>.warehouse")
        # The filesystem catalog reports a missing database as a missing table: ask for it first.
        catalog.get_database(database)
        return PaimonTable(catalog.get_table(f"{database}.{table}"), f"{database}.{table}")
    except DatabaseNotExistException:
        raise SourceError(f"Paimon database '{database}' does not exist in warehouse {warehouse}") from None
    except TableNotExistException:
        raise SourceError(f"Paimon table '{database}.{table}' does not exist in warehouse {warehouse}") from None


def _snapshot(snapshot: Any) -> Snapshot:
    return Snapshot(
        id=snapshot.id,
        commit_kind=str(snapshot.commit_kind),
        time_millis=snapshot.time_millis,
        schema_id=snapshot.schema_id,
        total_record_count=snapshot.total_record_count,
    )
