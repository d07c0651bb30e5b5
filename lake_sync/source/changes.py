"""Changes between two Paimon snapshots: what to read, whether a full resync is needed, and
the last event per key.

cursor snapshot → plan (up to date | compaction only | full resync + reason | range)
→ changed rows with row kinds (+I/+U/-U/-D) → last event per key → upserts and deletes

pypaimon only honours the timestamp form of `incremental-between` (the snapshot-id form is
silently ignored), so a range (start, end] is read as (time(start), time(end) + 1]. pypaimon
resolves each bound to *a* snapshot committed at or before that time, not the last one of
its millisecond. When a commit of the range shares the start's commit time, the window
opens one millisecond earlier: the extra events are older than the ones that follow them,
so "last event per key wins" still gives the state at `end`. The window closes one
millisecond late, so a commit sharing `end`'s millisecond cannot be resolved as the end and
cut `end` off; commits after `end` that it lets in are simply applied again by the next run,
which is idempotent.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

import pyarrow as pa

from lake_sync.source.paimon import PaimonTable, Snapshot

ROW_KIND_COLUMN = "_row_kind"
UPSERT_KINDS = frozenset({"+I", "+U"})
# A lone -U (update-before) without its +U removes the row, as Paimon itself reads it.
DELETE_KINDS = frozenset({"-D", "-U"})


class ChangeRange(StrEnum):
    UP_TO_DATE = "up_to_date"
    COMPACTION_ONLY = "compaction_only"
    INCREMENTAL = "incremental"
    FULL_RESYNC = "full_resync"


@dataclass(frozen=True)
class ChangePlan:
    """How to bring an index at snapshot `start` up to `end`.

    `reason` says why when a full resync is needed; `window_start_millis` is where the
    incremental read opens (exclusive).
    """

    kind: ChangeRange
    start: int
    end: Snapshot | None
    reason: str = ""
    window_start_millis: int = 0


def plan_changes(table: PaimonTable, cursor_snapshot_id: int) -> ChangePlan:
    """Decide how to go from the cursor to the latest snapshot, with one pass over snapshot metadata."""
    latest = table.latest_snapshot()
    if latest is None or latest.id == cursor_snapshot_id:
        return ChangePlan(ChangeRange.UP_TO_DATE, cursor_snapshot_id, latest)
    if latest.id < cursor_snapshot_id:
        reason = f"the table's latest snapshot {latest.id} is older than the cursor {cursor_snapshot_id} (rolled back?)"
        return ChangePlan(ChangeRange.FULL_RESYNC, cursor_snapshot_id, latest, reason)
    start = table.snapshot(cursor_snapshot_id)
    if start is None:
        reason = f"cursor snapshot {cursor_snapshot_id} has expired from the table"
        return ChangePlan(ChangeRange.FULL_RESYNC, cursor_snapshot_id, latest, reason)
    between = [table.snapshot(i) for i in range(cursor_snapshot_id + 1, latest.id + 1)]
    missing = [cursor_snapshot_id + 1 + i for i, s in enumerate(between) if s is None]
    if missing:
        reason = f"snapshots {missing[:5]} between the cursor and the latest have expired"
        return ChangePlan(ChangeRange.FULL_RESYNC, cursor_snapshot_id, latest, reason)
    commits = [s for s in between if s is not None]
    overwrites = [s.id for s in commits if s.commit_kind == "OVERWRITE"]
    if overwrites:
        reason = f"snapshot(s) {overwrites} overwrote the table"
        return ChangePlan(ChangeRange.FULL_RESYNC, cursor_snapshot_id, latest, reason)
    schema_ids = {start.schema_id, *(s.schema_id for s in commits)}
    if len(schema_ids) > 1:
        reason = f"the table schema changed (schema ids {sorted(schema_ids)})"
        return ChangePlan(ChangeRange.FULL_RESYNC, cursor_snapshot_id, latest, reason)
    if all(s.commit_kind == "COMPACT" for s in commits):
        return ChangePlan(ChangeRange.COMPACTION_ONLY, cursor_snapshot_id, latest)
    window_start = start.time_millis
    if any(s.time_millis == window_start for s in commits):
        window_start -= 1
    return ChangePlan(ChangeRange.INCREMENTAL, cursor_snapshot_id, latest, window_start_millis=window_start)


def read_changes(
    plan: ChangePlan, table: PaimonTable, *, columns: list[str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """Rows changed in the plan's range (and possibly a few older or newer ones, see above), in
    commit order, with a `_row_kind` column."""
    assert plan.kind is ChangeRange.INCREMENTAL and plan.end is not None
    return table.read_range(plan.window_start_millis, plan.end.time_millis + 1, columns=columns, batch_rows=batch_rows)


@dataclass(frozen=True)
class CollapsedChanges:
    """The last event per key of a range: rows to upsert, key values to delete."""

    upserts: pa.Table
    deletes: list[list[object]]
    events: int


def collapse_changes(batches: Iterator[pa.RecordBatch], key_columns: list[str]) -> CollapsedChanges:
    """Keep only the last event of each key: an upsert for +I/+U, a delete for -D/-U.

    Holds the changed rows of one range in memory: that follows the change, not the table.
    """
    collected = list(batches)
    if not collected:
        return CollapsedChanges(pa.table({}), [], 0)
    changes = pa.Table.from_batches(collected)
    keys = list(zip(*(changes.column(name).to_pylist() for name in key_columns), strict=True))
    kinds = changes.column(ROW_KIND_COLUMN).to_pylist()
    last: dict[tuple[object, ...], int] = {}
    for row, key in enumerate(keys):
        last[key] = row
    upsert_rows = [row for row in last.values() if kinds[row] in UPSERT_KINDS]
    deletes = [list(keys[row]) for row in last.values() if kinds[row] in DELETE_KINDS]
    upserts = changes.take(pa.array(sorted(upsert_rows), pa.int64())).drop_columns([ROW_KIND_COLUMN])
    return CollapsedChanges(upserts, deletes, changes.num_rows)
