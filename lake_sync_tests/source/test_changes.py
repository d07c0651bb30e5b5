"""Changes between snapshots: the plan (what to read or why to resync), the last event per key, and the
row-kind read of a real Paimon table.

plan_changes(table, cursor) → ChangePlan → read_changes → RecordBatches with _row_kind → collapse_changes
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from lake_sync.source.changes import ChangePlan, ChangeRange, collapse_changes, plan_changes, read_changes
from lake_sync.source.paimon import Snapshot, open_table
from lake_sync_tests.conftest import commit_rows
from lake_sync_tests.test_sync import items, pk_table

T0 = 1_790_000_000_000  # a commit time in milliseconds


def snapshot(snapshot_id: int, kind: str = "APPEND", *, millis: int | None = None, schema_id: int = 0) -> Snapshot:
    return Snapshot(snapshot_id, kind, T0 + 10 * snapshot_id if millis is None else millis, schema_id, None)


class SnapshotsOnly:
    """A stand-in for PaimonTable that only answers snapshot metadata, which is all plan_changes reads.

    It lets the planning decisions be tested without staging expiry, compaction (pypaimon never compacts)
    or schema evolution in a real warehouse; read_changes below runs against a real table.
    """

    def __init__(self, *snapshots: Snapshot) -> None:
        self._snapshots = {s.id: s for s in snapshots}

    def latest_snapshot(self) -> Snapshot | None:
        return self._snapshots[max(self._snapshots)] if self._snapshots else None

    def snapshot(self, snapshot_id: int) -> Snapshot | None:
        return self._snapshots.get(snapshot_id)


def plan(*snapshots: Snapshot, cursor: int) -> ChangePlan:
    return plan_changes(SnapshotsOnly(*snapshots), cursor)  # type: ignore[arg-type]


def changes(*rows: tuple[str, int, str | None], chunk: int = 2) -> list[pa.RecordBatch]:
    """(row kind, id, name) rows, in commit order, as record batches of `chunk` rows like a real read."""
    table = pa.table(
        {
            "_row_kind": [kind for kind, _, _ in rows],
            "id": pa.array([key for _, key, _ in rows], pa.int64()),
            "name": [name for _, _, name in rows],
        }
    )
    return table.to_batches(max_chunksize=chunk)


# --- collapse_changes: the last event of each key wins --------------------------------------------


def test_collapse_changes_upserts_a_key_inserted_deleted_and_inserted_again_with_its_last_values():
    collapsed = collapse_changes(iter(changes(("+I", 1, "first"), ("-D", 1, None), ("+I", 1, "again"))), ["id"])

    assert collapsed.upserts.to_pylist() == [{"id": 1, "name": "again"}]
    assert collapsed.deletes == []
    assert collapsed.events == 3


def test_collapse_changes_deletes_a_key_updated_then_deleted():
    collapsed = collapse_changes(iter(changes(("+U", 2, "updated"), ("-D", 2, None))), ["id"])

    assert collapsed.upserts.num_rows == 0
    assert collapsed.deletes == [[2]]


def test_collapse_changes_treats_a_lone_update_before_as_a_delete():
    collapsed = collapse_changes(iter(changes(("+I", 4, "kept"), ("-U", 3, "before"))), ["id"])

    assert collapsed.upserts.to_pylist() == [{"id": 4, "name": "kept"}]
    assert collapsed.deletes == [[3]]


def test_collapse_changes_keeps_the_last_of_several_updates_across_batches_and_drops_the_row_kind_column():
    rows = [("+I", 1, "v1"), ("+I", 2, "other"), ("+U", 1, "v2"), ("-U", 1, "v2"), ("+U", 1, "v3"), ("-D", 2, None)]

    collapsed = collapse_changes(iter(changes(*rows, chunk=1)), ["id"])

    assert collapsed.upserts.column_names == ["id", "name"]
    assert collapsed.upserts.to_pylist() == [{"id": 1, "name": "v3"}]
    assert collapsed.deletes == [[2]]
    assert collapsed.events == 6


def test_collapse_changes_keys_on_every_primary_key_column():
    batch = pa.record_batch(
        {"_row_kind": ["+I", "+I", "-D"], "shop": ["a", "b", "a"], "sku": ["x", "x", "x"], "qty": [1, 2, None]}
    )

    collapsed = collapse_changes(iter([batch]), ["shop", "sku"])

    assert collapsed.upserts.to_pylist() == [{"shop": "b", "sku": "x", "qty": 2}]
    assert collapsed.deletes == [["a", "x"]]


def test_collapse_changes_of_no_batches_is_empty():
    collapsed = collapse_changes(iter([]), ["id"])

    assert (collapsed.upserts.num_rows, collapsed.deletes, collapsed.events) == (0, [], 0)


# --- plan_changes: what to read, or why to resync (stand-in table, snapshot metadata only) ----------


def test_plan_changes_is_up_to_date_when_the_cursor_is_the_latest_snapshot():
    planned = plan(snapshot(1), snapshot(2), cursor=2)

    assert planned.kind is ChangeRange.UP_TO_DATE
    assert (planned.start, planned.end.id if planned.end else None) == (2, 2)


def test_plan_changes_reads_the_range_from_the_cursor_commit_time_to_the_latest():
    planned = plan(snapshot(1), snapshot(2), snapshot(3), cursor=1)

    assert planned.kind is ChangeRange.INCREMENTAL
    assert planned.end == snapshot(3)
    assert planned.window_start_millis == snapshot(1).time_millis


def test_plan_changes_is_compaction_only_when_every_commit_in_the_range_is_a_compaction():
    planned = plan(snapshot(1), snapshot(2, "COMPACT"), snapshot(3, "COMPACT"), cursor=1)

    assert planned.kind is ChangeRange.COMPACTION_ONLY
    assert planned.end == snapshot(3, "COMPACT")


def test_plan_changes_reads_a_range_mixing_compactions_and_appends():
    planned = plan(snapshot(1), snapshot(2, "COMPACT"), snapshot(3), cursor=1)

    assert planned.kind is ChangeRange.INCREMENTAL


def test_plan_changes_needs_a_full_resync_when_a_commit_in_the_range_overwrote_the_table():
    planned = plan(snapshot(1), snapshot(2), snapshot(3, "OVERWRITE"), snapshot(4), cursor=1)

    assert planned.kind is ChangeRange.FULL_RESYNC
    assert planned.reason == "snapshot(s) [3] overwrote the table"


def test_plan_changes_needs_a_full_resync_when_the_schema_id_changes_in_the_range():
    planned = plan(snapshot(1), snapshot(2), snapshot(3, schema_id=1), cursor=1)

    assert planned.kind is ChangeRange.FULL_RESYNC
    assert "schema changed (schema ids [0, 1])" in planned.reason


def test_plan_changes_needs_a_full_resync_when_the_cursor_snapshot_has_expired():
    planned = plan(snapshot(3), snapshot(4), cursor=1)

    assert planned.kind is ChangeRange.FULL_RESYNC
    assert planned.reason == "cursor snapshot 1 has expired from the table"


def test_plan_changes_needs_a_full_resync_when_a_snapshot_inside_the_range_has_expired():
    planned = plan(snapshot(1), snapshot(3), cursor=1)

    assert planned.kind is ChangeRange.FULL_RESYNC
    assert "snapshots [2]" in planned.reason and "expired" in planned.reason


def test_plan_changes_needs_a_full_resync_when_the_table_is_behind_the_cursor():
    planned = plan(snapshot(1), snapshot(2), cursor=5)

    assert planned.kind is ChangeRange.FULL_RESYNC
    assert "older than the cursor 5" in planned.reason


def test_plan_changes_opens_the_window_one_millisecond_early_when_a_commit_shares_the_start_commit_time():
    same_millisecond = snapshot(1).time_millis

    planned = plan(snapshot(1), snapshot(2, millis=same_millisecond), snapshot(3), cursor=1)

    assert planned.kind is ChangeRange.INCREMENTAL
    assert planned.window_start_millis == same_millisecond - 1


# --- read_changes: a real table ---------------------------------------------------------------------


def test_read_changes_returns_the_row_kinds_of_a_real_table_in_commit_order(tmp_path: Path):
    warehouse = str(tmp_path / "warehouse")
    table = pk_table(warehouse, items(range(3)), buckets=1)
    commit_rows(table, items([1], op="+U", name="updated"))
    commit_rows(table, items([1], op="-D"))
    commit_rows(table, items([1, 2], name="again"))
    commit_rows(table, items([0], op="-U"))
    source = open_table({"warehouse": warehouse}, "db", "items")

    planned = plan_changes(source, 1)
    batches = list(read_changes(planned, source, columns=["id", "name"], batch_rows=2))

    assert planned.kind is ChangeRange.INCREMENTAL and planned.end is not None and planned.end.id == 5
    assert all(batch.num_rows <= 2 for batch in batches)
    rows = pa.Table.from_batches(batches).to_pylist()
    assert [(row["_row_kind"], row["id"], row["name"]) for row in rows] == [
        ("+U", 1, "updated 1"),
        ("-D", 1, "item 1"),
        ("+I", 1, "again 1"),
        ("+I", 2, "again 2"),
        ("-U", 0, "item 0"),
    ]


@pytest.mark.parametrize("cursor", [1, 3])
def test_read_changes_then_collapse_gives_the_state_of_the_latest_snapshot(tmp_path: Path, cursor: int):
    warehouse = str(tmp_path / "warehouse")
    table = pk_table(warehouse, items(range(4)))
    commit_rows(table, items([1], name="v2"))
    commit_rows(table, items([1, 3], op="-D"))
    commit_rows(table, items([1], name="v3"))
    source = open_table({"warehouse": warehouse}, "db", "items")

    collapsed = collapse_changes(
        read_changes(plan_changes(source, cursor), source, columns=["id", "name"], batch_rows=10), ["id"]
    )

    assert collapsed.upserts.to_pylist() == [{"id": 1, "name": "v3 1"}]
    assert collapsed.deletes == ([[3]] if cursor == 1 else [])


def test_read_changes_gives_a_keys_events_in_commit_order_when_an_earlier_commit_spans_a_wider_key_range(
    tmp_path: Path,
):
    # pypaimon lists a bucket's files by key range: the commit of keys 1-9 used to be read after the
    # later commit of key 5 alone, so the older value of key 5 won.
    warehouse = str(tmp_path / "warehouse")
    table = pk_table(warehouse, items(range(10)), buckets=1)
    commit_rows(table, items(range(1, 10), name="v2"))
    commit_rows(table, items([5], name="v3"))
    source = open_table({"warehouse": warehouse}, "db", "items")

    batches = read_changes(plan_changes(source, 1), source, columns=["id", "name"], batch_rows=100)
    rows = pa.Table.from_batches(list(batches)).to_pylist()

    assert [row["name"] for row in rows if row["id"] == 5] == ["v2 5", "v3 5"]
    collapsed = collapse_changes(iter(pa.Table.from_pylist(rows).to_batches()), ["id"])
    assert {row["id"]: row["name"] for row in collapsed.upserts.to_pylist()}[5] == "v3 5"


def test_read_changes_includes_the_latest_commit_when_it_shares_its_millisecond_with_the_one_before(
    tmp_path: Path,
):
    """Two commits in one millisecond, simulated by copying snapshot 2's commit time into snapshot 3's
    metadata: pypaimon may resolve the window end to snapshot 2, which used to cut snapshot 3 off."""
    warehouse = str(tmp_path / "warehouse")
    table = pk_table(warehouse, items(range(3)), buckets=1)
    commit_rows(table, items([1], name="v2"))
    commit_rows(table, items([2], name="v2"))
    snapshot_dir = Path(warehouse) / "db.db" / "items" / "snapshot"
    second = json.loads((snapshot_dir / "snapshot-2").read_text())
    third = json.loads((snapshot_dir / "snapshot-3").read_text())
    (snapshot_dir / "snapshot-3").write_text(json.dumps({**third, "timeMillis": second["timeMillis"]}))
    source = open_table({"warehouse": warehouse}, "db", "items")

    planned = plan_changes(source, 1)
    rows = pa.Table.from_batches(list(read_changes(planned, source, columns=["id", "name"], batch_rows=10)))

    assert planned.end is not None and planned.end.id == 3
    assert sorted((row["id"], row["name"]) for row in rows.to_pylist()) == [(1, "v2 1"), (2, "v2 2")]
