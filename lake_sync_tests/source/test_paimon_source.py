"""The Paimon source against real tables in a temporary warehouse.

catalog options → open_table → latest_snapshot → read_snapshot (pinned, projected, batched)
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from lake_sync.errors import SourceError
from lake_sync.source.paimon import PaimonTable, open_table
from lake_sync_tests.conftest import commit_rows, write_paimon_table

PK_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("name", pa.string()),
        pa.field("score", pa.float64()),
        pa.field("_op", pa.string()),
    ]
)


def pk_rows(ids: range, *, op: str = "+I", name: str = "row") -> pa.Table:
    return pa.Table.from_pylist(
        [{"id": i, "name": f"{name} {i}", "score": i / 2, "_op": op} for i in ids], schema=PK_SCHEMA
    )


def read_all(table: PaimonTable, snapshot_id: int, columns: list[str], batch_rows: int = 1024) -> pa.Table:
    batches = list(table.read_snapshot(snapshot_id, columns=columns, batch_rows=batch_rows))
    return pa.Table.from_batches(batches) if batches else pa.table({})


# --- opening --------------------------------------------------------------------------------------


def test_open_table_raises_source_error_naming_a_missing_warehouse(tmp_path: Path):
    missing = tmp_path / "no-such-warehouse"

    with pytest.raises(SourceError, match="warehouse") as raised:
        open_table({"warehouse": str(missing)}, "db", "items")

    assert str(missing) in str(raised.value)
    assert not missing.exists()  # looking must not create it


def test_open_table_raises_source_error_naming_a_missing_database(warehouse: str):
    write_paimon_table(warehouse, "db.items", pk_rows(range(3)), primary_keys=["id"])

    with pytest.raises(SourceError, match="database 'nodb' does not exist"):
        open_table({"warehouse": warehouse}, "nodb", "items")


def test_open_table_raises_source_error_naming_a_missing_table(warehouse: str):
    write_paimon_table(warehouse, "db.items", pk_rows(range(3)), primary_keys=["id"])

    with pytest.raises(SourceError, match=r"table 'db\.nothing' does not exist"):
        open_table({"warehouse": warehouse}, "db", "nothing")


def test_open_table_reports_schema_primary_keys_and_row_kind_column(warehouse: str):
    write_paimon_table(warehouse, "db.items", pk_rows(range(3)), primary_keys=["id"], options={"rowkind.field": "_op"})

    table = open_table({"warehouse": warehouse}, "db", "items")

    assert table.identifier == "db.items"
    assert table.column_names == ["id", "name", "score", "_op"]
    assert table.schema.field("id").type == pa.int64()
    assert table.schema.field("name").type == pa.string()
    assert table.primary_keys == ["id"]
    assert table.row_kind_column == "_op"


def test_append_only_table_has_no_primary_keys_and_no_row_kind_column(warehouse: str):
    write_paimon_table(warehouse, "db.log", pa.table({"line": ["a", "b"]}))

    table = open_table({"warehouse": warehouse}, "db", "log")

    assert table.primary_keys == []
    assert table.row_kind_column is None


# --- snapshots ------------------------------------------------------------------------------------


def test_latest_snapshot_follows_commits(warehouse: str):
    paimon = write_paimon_table(warehouse, "db.items", pk_rows(range(5)), primary_keys=["id"])
    table = open_table({"warehouse": warehouse}, "db", "items")
    first = table.latest_snapshot()

    commit_rows(paimon, pk_rows(range(5, 8)))
    second = table.latest_snapshot()

    assert first is not None and second is not None
    assert (first.id, second.id) == (1, 2)
    assert first.commit_kind == "APPEND"
    assert first.total_record_count == 5
    assert second.total_record_count == 8


def test_latest_snapshot_is_none_for_a_table_nobody_has_written_to(warehouse: str):
    from pypaimon import CatalogFactory, Schema

    catalog = CatalogFactory.create({"warehouse": warehouse})
    catalog.create_database("db", True)
    catalog.create_table("db.empty", Schema.from_pyarrow_schema(PK_SCHEMA, primary_keys=["id"]), False)

    assert open_table({"warehouse": warehouse}, "db", "empty").latest_snapshot() is None


def test_read_snapshot_reads_the_pinned_snapshot_not_commits_made_after_pinning(warehouse: str):
    paimon = write_paimon_table(warehouse, "db.items", pk_rows(range(10)), primary_keys=["id"])
    table = open_table({"warehouse": warehouse}, "db", "items")
    pinned = table.latest_snapshot()
    assert pinned is not None

    commit_rows(paimon, pk_rows(range(10, 20)))  # new keys
    commit_rows(paimon, pk_rows(range(0, 5), name="changed"))  # updates of pinned keys

    rows = read_all(table, pinned.id, ["id", "name"]).to_pylist()
    assert sorted(row["id"] for row in rows) == list(range(10))
    assert {row["name"] for row in rows} == {f"row {i}" for i in range(10)}
    latest = read_all(table, table.latest_snapshot().id, ["id", "name"]).to_pylist()  # type: ignore[union-attr]
    assert len(latest) == 20
    assert {row["name"] for row in latest if row["id"] < 5} == {f"changed {i}" for i in range(5)}


# --- full reads -----------------------------------------------------------------------------------


def test_read_snapshot_reads_every_row_of_a_multi_bucket_primary_key_table_with_only_the_projected_columns(
    warehouse: str,
):
    paimon = write_paimon_table(warehouse, "db.items", pk_rows(range(500)), primary_keys=["id"], buckets=4)
    commit_rows(paimon, pk_rows(range(500, 700)))
    commit_rows(paimon, pk_rows(range(0, 100), name="updated"))
    table = open_table({"warehouse": warehouse}, "db", "items")

    result = read_all(table, table.latest_snapshot().id, ["name", "id"])  # type: ignore[union-attr]

    assert sorted(result.column_names) == ["id", "name"]
    ids = result.column("id").to_pylist()
    assert sorted(ids) == list(range(700))  # merged: each key once, across all buckets
    names = dict(zip(ids, result.column("name").to_pylist(), strict=True))
    assert names[42] == "updated 42"
    assert names[600] == "row 600"


def test_read_snapshot_reads_every_row_of_an_append_only_table_with_only_the_projected_columns(warehouse: str):
    data = pa.table(
        {"line": [f"line {n}" for n in range(300)], "n": pa.array(range(300), pa.int32()), "x": [1.0] * 300}
    )
    paimon = write_paimon_table(warehouse, "db.log", data)
    commit_rows(paimon, data)  # append-only: the same rows again are new rows
    table = open_table({"warehouse": warehouse}, "db", "log")

    result = read_all(table, table.latest_snapshot().id, ["n"])  # type: ignore[union-attr]

    assert result.column_names == ["n"]
    assert result.num_rows == 600
    assert sorted(result.column("n").to_pylist()) == sorted(list(range(300)) * 2)


@pytest.mark.parametrize("batch_rows", [1, 7, 64, 5000])
def test_read_snapshot_never_yields_a_batch_larger_than_batch_rows(warehouse: str, batch_rows: int):
    paimon = write_paimon_table(warehouse, "db.items", pk_rows(range(150)), primary_keys=["id"], buckets=3)
    commit_rows(paimon, pk_rows(range(150, 300)))
    table = open_table({"warehouse": warehouse}, "db", "items")

    batches = list(table.read_snapshot(table.latest_snapshot().id, columns=["id"], batch_rows=batch_rows))  # type: ignore[union-attr]

    assert all(0 < batch.num_rows <= batch_rows for batch in batches)
    assert sum(batch.num_rows for batch in batches) == 300
