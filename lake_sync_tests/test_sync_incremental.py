"""Incremental runs of the pipeline after a first sync: the committed cursor → changed rows → the index.

pk_table → run_sync (first: full) → commits → run_sync (incremental, or a full resync and why)
→ the WHOLE index compared with a full pypaimon read of the table's latest snapshot
"""

from __future__ import annotations

import datetime as dt
import random
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from elasticsearch import Elasticsearch, helpers

from lake_sync.embed import build_embedder
from lake_sync.index.aliases import resolve_target
from lake_sync.index.cursor import read_cursor
from lake_sync.sync import SyncMode, SyncStatus, run_sync
from lake_sync_tests.conftest import TaskFileFactory, commit_rows, write_paimon_table
from lake_sync_tests.test_sync import VECTOR, items, pk_table

VECTOR_FIELDS = {"description": "description_vec"}


# --- the source of truth: a full read of the table -------------------------------------------------


def source_documents(
    warehouse: str,
    *,
    table: str = "db.items",
    key: str = "id",
    vectors: dict[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """The table's latest snapshot, read in full with pypaimon, as the documents the index must hold by `_id`.

    Every column but the row-kind column becomes a field; zoneless timestamps are UTC; each text in
    `vectors` ({column: vector field}) gets its hash:8 vector unless it is empty.
    """
    from pypaimon import CatalogFactory

    paimon = CatalogFactory.create({"warehouse": warehouse}).get_table(table)
    builder = paimon.new_read_builder()
    rows = builder.new_read().to_arrow(builder.new_scan().plan().splits()).to_pylist()
    row_kind = paimon.table_schema.options.get("rowkind.field")
    documents = {str(row[key]): {n: _json_value(v) for n, v in row.items() if n != row_kind} for row in rows}
    for column, vector_field in (vectors or {}).items():
        embedded = [row for row in rows if row[column]]
        embeddings = build_embedder("hash:8").embed_texts([row[column] for row in embedded])
        for row, vector in zip(embedded, embeddings, strict=True):
            documents[str(row[key])][vector_field] = pytest.approx(vector.tolist(), abs=1e-6)
    return documents


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.UTC).isoformat()
    return value


def index_documents(es: Elasticsearch, index: str) -> dict[str, dict[str, Any]]:
    """Every document in `index` by `_id` (scrolled, so any size), after a refresh."""
    es.indices.refresh(index=index)
    return {hit["_id"]: hit["_source"] for hit in helpers.scan(es, index=index, query={"query": {"match_all": {}}})}


def assert_index_matches_source(es: Elasticsearch, index: str, warehouse: str, **source: Any) -> None:
    """Every document and every field of the index equals the table's latest full read; nothing more."""
    expected = source_documents(warehouse, **source)
    actual = index_documents(es, index)
    assert sorted(actual) == sorted(expected), "the index holds other ids than the table"
    for document_id, body in expected.items():
        assert actual[document_id] == body, f"document {document_id} differs from its row"


def with_prices(data: pa.Table, price: int) -> pa.Table:
    return data.set_column(data.schema.get_field_index("price"), "price", pa.array([price] * data.num_rows, pa.int64()))


@pytest.fixture
def synced(warehouse: str, task_file: TaskFileFactory) -> Any:
    """A 20-row primary-key table with `_op` row kinds, fully synced once with a hash:8 vector of description."""
    table = pk_table(warehouse, items(range(20)))
    first = run_sync(task_file(transforms=[VECTOR]), "items")
    assert (first.mode, first.snapshot_id) == (SyncMode.FULL, 1)
    return table


# --- changes land: every scenario ends with the whole index equal to the table ----------------------


def test_incremental_sync_indexes_rows_inserted_since_the_cursor(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory, synced: Any
):
    commit_rows(synced, items(range(20, 25)))

    result = run_sync(task_file(transforms=[VECTOR]), "items")

    assert (result.mode, result.status, result.reason) == (SyncMode.INCREMENTAL, SyncStatus.COMPLETED, "")
    assert (result.from_snapshot, result.snapshot_id) == (1, 2)
    assert (result.rows_read, result.documents_indexed, result.documents_deleted) == (5, 5, 0)
    assert result.inputs_embedded == 5
    assert result.physical_index == f"{index_name}-1"  # applied in place, no rebuild
    assert read_cursor(es, index_name).snapshot_id == 2  # type: ignore[union-attr]
    assert_index_matches_source(es, index_name, warehouse, vectors=VECTOR_FIELDS)


def test_incremental_sync_rewrites_documents_of_updated_rows(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory, synced: Any
):
    commit_rows(synced, items([3, 4], name="updated"))

    result = run_sync(task_file(transforms=[VECTOR]), "items")

    assert (result.rows_read, result.documents_indexed) == (2, 2)
    assert index_documents(es, index_name)["3"]["name"] == "updated 3"
    assert_index_matches_source(es, index_name, warehouse, vectors=VECTOR_FIELDS)


def test_incremental_sync_deletes_documents_of_deleted_rows(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory, synced: Any
):
    commit_rows(synced, items([2, 5], op="-D"))

    result = run_sync(task_file(transforms=[VECTOR]), "items")

    assert (result.documents_indexed, result.documents_deleted) == (0, 2)
    assert result.model_calls == 0
    assert len(index_documents(es, index_name)) == 18
    assert_index_matches_source(es, index_name, warehouse, vectors=VECTOR_FIELDS)


def test_incremental_sync_keeps_a_key_deleted_then_inserted_again_in_one_range_and_drops_one_inserted_then_deleted(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory, synced: Any
):
    commit_rows(synced, items([7], op="-D"))
    commit_rows(synced, items([7, 99], name="back"))
    commit_rows(synced, items([99], op="-D"))

    result = run_sync(task_file(transforms=[VECTOR]), "items")

    documents = index_documents(es, index_name)
    assert documents["7"]["name"] == "back 7"
    assert "99" not in documents
    assert (result.from_snapshot, result.snapshot_id, result.dead_lettered) == (1, 4, 0)
    assert_index_matches_source(es, index_name, warehouse, vectors=VECTOR_FIELDS)


def test_incremental_sync_keeps_the_last_of_several_updates_of_one_key_across_commits(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory, synced: Any
):
    for version in ("v2", "v3", "v4"):
        commit_rows(synced, items([1], name=version))
    # A wide commit followed by a narrow one: pypaimon lists a bucket's files by key range, not commit order.
    commit_rows(synced, items(range(20), name="v5"))
    commit_rows(synced, items([5], name="v6"))

    result = run_sync(task_file(transforms=[VECTOR]), "items")

    documents = index_documents(es, index_name)
    assert (documents["1"]["name"], documents["5"]["name"]) == ("v5 1", "v6 5")
    assert result.rows_read == 3 + 20 + 1
    assert_index_matches_source(es, index_name, warehouse, vectors=VECTOR_FIELDS)


def test_incremental_sync_applies_a_range_of_many_mixed_commits_in_one_run(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory, synced: Any
):
    shuffle = random.Random(7)
    for commit in range(30):
        keys = shuffle.sample(range(40), 6)
        commit_rows(synced, items(sorted(keys[:4]), name=f"c{commit}"))
        commit_rows(synced, items(sorted(keys[4:]), op="-D"))

    result = run_sync(task_file(transforms=[VECTOR]), "items")

    assert (result.from_snapshot, result.snapshot_id) == (1, 61)
    assert read_cursor(es, index_name).snapshot_id == 61  # type: ignore[union-attr]
    assert_index_matches_source(es, index_name, warehouse, vectors=VECTOR_FIELDS)
    assert run_sync(task_file(transforms=[VECTOR]), "items").status == SyncStatus.UP_TO_DATE


# --- what each run costs ----------------------------------------------------------------------------


def test_incremental_sync_of_a_column_no_transform_reads_takes_the_vector_from_the_cache_without_a_model_call(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory, synced: Any
):
    commit_rows(synced, with_prices(items([3, 4]), 12345))

    result = run_sync(task_file(transforms=[VECTOR]), "items")

    assert result.model_calls == 0
    assert (result.inputs_embedded, result.cache_hits) == (2, 2)
    assert index_documents(es, index_name)["3"]["price"] == 12345
    assert_index_matches_source(es, index_name, warehouse, vectors=VECTOR_FIELDS)


def test_incremental_sync_of_a_changed_embedded_text_calls_the_model_for_it(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory, synced: Any
):
    commit_rows(synced, items([3], name="renamed"))  # description becomes "description of renamed 3"

    result = run_sync(task_file(transforms=[VECTOR]), "items")

    assert result.model_calls == 1
    assert (result.inputs_embedded, result.cache_hits, result.model_inputs) == (1, 0, 1)
    assert_index_matches_source(es, index_name, warehouse, vectors=VECTOR_FIELDS)


def test_incremental_sync_of_an_append_only_table_reads_only_the_new_rows(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory
):
    table = write_paimon_table(
        warehouse, "db.items", pa.table({"sku": ["A-1", "B-2", "C-3"], "title": ["a", "b", "c"]})
    )
    run_sync(task_file(primary_key="sku"), "items")
    commit_rows(table, pa.table({"sku": ["D-4", "E-5"], "title": ["d", "e"]}))

    result = run_sync(task_file(primary_key="sku"), "items")

    assert (result.mode, result.rows_read, result.documents_indexed) == (SyncMode.INCREMENTAL, 2, 2)
    assert_index_matches_source(es, index_name, warehouse, key="sku")


# --- when there is nothing to do, or a delta cannot be trusted ---------------------------------------


def test_first_incremental_sync_without_a_cursor_falls_back_to_a_full_sync(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory
):
    table = pk_table(warehouse, items(range(8)))
    commit_rows(table, items([1], op="-D"))

    result = run_sync(task_file(), "items")

    assert result.mode == SyncMode.FULL
    assert "first sync" in result.reason
    assert (result.from_snapshot, result.snapshot_id, result.documents_indexed) == (None, 2, 7)
    assert_index_matches_source(es, index_name, warehouse)


def test_incremental_sync_at_the_latest_snapshot_reads_and_writes_nothing(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory, synced: Any
):
    result = run_sync(task_file(transforms=[VECTOR]), "items")

    assert result.status == SyncStatus.UP_TO_DATE
    assert (result.from_snapshot, result.snapshot_id) == (1, 1)
    assert (result.rows_read, result.documents_indexed, result.bulk_requests, result.model_calls) == (0, 0, 0, 0)
    assert_index_matches_source(es, index_name, warehouse, vectors=VECTOR_FIELDS)


def test_incremental_sync_after_an_overwrite_commit_resyncs_in_full_behind_the_alias(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory, synced: Any
):
    commit_rows(synced, items([1], name="before the overwrite"))
    builder = synced.new_batch_write_builder().overwrite()
    writer, commit = builder.new_write(), builder.new_commit()
    writer.write_arrow(items(range(100, 105), name="overwritten"))
    commit.commit(writer.prepare_commit())
    writer.close()
    commit.close()

    result = run_sync(task_file(transforms=[VECTOR]), "items")

    assert result.mode == SyncMode.FULL
    assert "snapshot(s) [3] overwrote the table" in result.reason
    assert (result.snapshot_id, result.physical_index) == (3, f"{index_name}-2")
    assert sorted(index_documents(es, index_name), key=int) == [str(i) for i in range(100, 105)]
    assert_index_matches_source(es, index_name, warehouse, vectors=VECTOR_FIELDS)


def test_incremental_sync_with_an_expired_cursor_snapshot_resyncs_in_full(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory, synced: Any
):
    commit_rows(synced, items([2], op="-D"))
    commit_rows(synced, items([3], name="updated"))
    # Expire snapshot 1 as a Java writer would: its file goes, the EARLIEST hint (if kept) moves on.
    snapshot_dir = Path(warehouse) / "db.db" / "items" / "snapshot"
    (snapshot_dir / "snapshot-1").unlink()
    if (snapshot_dir / "EARLIEST").exists():
        (snapshot_dir / "EARLIEST").write_text("2")

    result = run_sync(task_file(transforms=[VECTOR]), "items")

    assert result.mode == SyncMode.FULL
    assert "cursor snapshot 1 has expired" in result.reason
    assert (result.from_snapshot, result.snapshot_id) == (1, 3)
    assert_index_matches_source(es, index_name, warehouse, vectors=VECTOR_FIELDS)


# --- full resyncs behind the alias ------------------------------------------------------------------


def test_full_resync_with_keep_old_index_keeps_the_previous_physical_index_out_of_the_alias(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory, synced: Any
):
    commit_rows(synced, items([0], op="-D"))

    result = run_sync(task_file(transforms=[VECTOR]), "items", mode=SyncMode.FULL, keep_old_index=True)

    old = f"{index_name}-1"
    assert result.physical_index == f"{index_name}-2"
    assert resolve_target(es, index_name).write_index == f"{index_name}-2"
    assert es.indices.exists(index=old)
    assert set(es.indices.get_alias(name=index_name).body) == {f"{index_name}-2"}
    assert len(index_documents(es, old)) == 20  # untouched: still the snapshot-1 state
    assert read_cursor(es, old).snapshot_id == 1  # type: ignore[union-attr]
    assert_index_matches_source(es, index_name, warehouse, vectors=VECTOR_FIELDS)

    # A later resync cleans up half-built indexes only: the index kept on request stays.
    run_sync(task_file(transforms=[VECTOR]), "items", mode=SyncMode.FULL)
    assert es.indices.exists(index=old)


def test_queries_through_the_alias_never_see_an_empty_or_partial_index_during_a_full_resync(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory
):
    rows = 300
    table = pk_table(warehouse, items(range(rows)))
    task = task_file(read_batch_rows=20, bulk={"max_documents": 20})
    run_sync(task, "items")
    commit_rows(table, items(range(0, rows, 3), name="updated"))  # same keys: the count must stay `rows`
    counts_during_build: list[int] = []
    new_index_counts: list[int | None] = []
    polled: list[int] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            polled.append(es.count(index=index_name)["count"])

    def count_while_building(read: int, total: int | None) -> None:
        counts_during_build.append(es.count(index=index_name)["count"])
        # The index being built, made searchable on purpose: it really is partial while the alias is queried.
        es.options(ignore_status=404).indices.refresh(index=f"{index_name}-2")
        building = es.options(ignore_status=404).count(index=f"{index_name}-2")
        new_index_counts.append(building["count"] if building.meta.status == 200 else None)

    poller = threading.Thread(target=poll, name="alias-poller", daemon=True)
    poller.start()
    try:
        result = run_sync(task, "items", mode=SyncMode.FULL, progress=count_while_building)
        for _ in range(20):  # keep querying just after the swap and the old index's deletion
            polled.append(es.count(index=index_name)["count"])
    finally:
        stop.set()
        poller.join(timeout=10)

    assert result.physical_index == f"{index_name}-2"
    assert not es.indices.exists(index=f"{index_name}-1")
    assert len(counts_during_build) >= rows // 20
    assert any(count is not None and 0 < count < rows for count in new_index_counts)
    assert len(polled) > 20
    assert set(counts_during_build) == {rows}
    assert set(polled) == {rows}
    assert_index_matches_source(es, index_name, warehouse)


def test_first_sync_into_a_hand_made_concrete_index_resyncs_it_in_place_and_says_how_to_migrate(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory
):
    table = pk_table(warehouse, items(range(6)))
    es.indices.create(index=index_name)
    es.index(index=index_name, id="stale", document={"name": "not in the table"}, refresh=True)

    result = run_sync(task_file(transforms=[VECTOR]), "items")

    assert (result.mode, result.physical_index) == (SyncMode.FULL, index_name)
    assert "first sync" in result.reason
    assert f"'{index_name}' is a concrete index" in result.reason
    assert f"reindex it into '{index_name}-1', delete '{index_name}' and add the alias" in result.reason
    mapping = es.indices.get_mapping(index=index_name)[index_name]["mappings"]["properties"]
    assert mapping["description_vec"]["type"] == "dense_vector"  # mapped by the task, not guessed from floats
    assert_index_matches_source(es, index_name, warehouse, vectors=VECTOR_FIELDS)

    commit_rows(table, items([1], op="-D"))
    follow_up = run_sync(task_file(transforms=[VECTOR]), "items")

    assert (follow_up.mode, follow_up.documents_deleted, follow_up.physical_index) == (
        SyncMode.INCREMENTAL,
        1,
        index_name,
    )
    assert_index_matches_source(es, index_name, warehouse, vectors=VECTOR_FIELDS)
