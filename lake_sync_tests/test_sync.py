"""The full-sync pipeline end to end: real Paimon tables in tmp_path → documents → vectors → the real search server.

write_paimon_table → run_sync(task_file, "items", mode=SyncMode.FULL) → index documents, dead letters, cursor in `_meta`
"""

from __future__ import annotations

import datetime as dt
import traceback
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from elasticsearch import Elasticsearch

from lake_sync.embed import build_embedder
from lake_sync.errors import ConfigError, MappingConflictError, TargetError, TooManyErrorsError
from lake_sync.index.cursor import read_cursor
from lake_sync.index.dead_letters import read_dead_letters
from lake_sync.index.mapping import vector_mapping
from lake_sync.sync import SyncMode, SyncStatus, run_sync
from lake_sync_tests.conftest import TaskFileFactory, commit_rows, write_paimon_table
from lake_sync_tests.fault_proxy import FaultProxy

PK_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("name", pa.string()),
        pa.field("description", pa.string()),
        pa.field("price", pa.int64()),
        pa.field("updated_at", pa.timestamp("us")),
        pa.field("_op", pa.string()),
    ]
)
PK_OPTIONS = {"rowkind.field": "_op"}
VECTOR = {"field": "description", "embed": "text", "model": "hash:8", "to": "description_vec"}
SECRET = "pw-Hq7-never-shown"


# --- helpers --------------------------------------------------------------------------------------


def items(ids: range | list[int], *, op: str = "+I", name: str = "item") -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "id": i,
                "name": f"{name} {i}",
                "description": f"description of {name} {i}",
                "price": i * 100,
                "updated_at": dt.datetime(2026, 1, 1) + dt.timedelta(minutes=i),
                "_op": op,
            }
            for i in ids
        ],
        schema=PK_SCHEMA,
    )


def pk_table(warehouse: str, data: pa.Table, *, buckets: int = 2) -> Any:
    return write_paimon_table(warehouse, "db.items", data, primary_keys=["id"], buckets=buckets, options=PK_OPTIONS)


def indexed(es: Elasticsearch, index: str) -> dict[str, dict[str, Any]]:
    """Every document in `index` by id, after a refresh."""
    es.indices.refresh(index=index)
    hits = es.search(index=index, query={"match_all": {}}, size=1000)["hits"]["hits"]
    return {hit["_id"]: hit["_source"] for hit in hits}


def connections(warehouse: str, es_url: str, **es: Any) -> dict[str, Any]:
    return {
        "lake": {"type": "paimon", "warehouse": warehouse},
        "es": {"type": "elasticsearch", "hosts": [es_url], **es},
    }


def full_error_text(error: BaseException) -> str:
    """The message and the whole printed traceback, chained exceptions included."""
    return str(error) + "".join(traceback.format_exception(error))


# --- what lands in the index ----------------------------------------------------------------------


def test_full_sync_indexes_every_row_of_a_multi_bucket_primary_key_table_with_vectors(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory
):
    table = pk_table(warehouse, items(range(120)), buckets=4)
    commit_rows(table, items(range(100, 150)))
    commit_rows(table, items(range(0, 10), name="updated"))

    result = run_sync(task_file(transforms=[VECTOR]), "items", mode=SyncMode.FULL)

    documents = indexed(es, index_name)
    assert result.mode == SyncMode.FULL
    assert result.status == SyncStatus.COMPLETED
    assert result.snapshot_id == 3
    assert (result.rows_read, result.documents_indexed, result.dead_lettered) == (150, 150, 0)
    assert result.inputs_embedded == 150
    assert sorted(documents, key=int) == [str(i) for i in range(150)]
    assert documents["5"]["name"] == "updated 5"
    assert documents["120"]["updated_at"] == "2026-01-01T02:00:00+00:00"
    assert "_op" not in documents["5"]  # the row-kind column is bookkeeping, not data
    expected_vector = build_embedder("hash:8").embed_texts(["description of updated 5"])[0]
    assert documents["5"]["description_vec"] == pytest.approx(expected_vector.tolist(), abs=1e-6)


def test_full_sync_stores_the_synced_snapshot_id_as_the_cursor_in_the_index_meta(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory
):
    table = pk_table(warehouse, items(range(5)))
    commit_rows(table, items(range(5, 8)))

    result = run_sync(task_file(), "items", mode=SyncMode.FULL)

    cursor = read_cursor(es, index_name)
    assert cursor is not None
    assert cursor.snapshot_id == result.snapshot_id == 2
    assert (cursor.task, cursor.table) == ("items", "db.items")
    assert dt.datetime.fromisoformat(cursor.synced_at).tzinfo is not None


def test_full_sync_pins_a_snapshot_then_catches_up_with_commits_that_land_during_the_run(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory
):
    table = pk_table(warehouse, items(range(50)))
    committed_during_run = []

    def commit_while_reading(rows: int, total: int | None) -> None:
        if not committed_during_run:
            commit_rows(table, items(range(1000, 1010)))
            committed_during_run.append(rows)

    result = run_sync(task_file(read_batch_rows=10), "items", mode=SyncMode.FULL, progress=commit_while_reading)

    assert committed_during_run  # the commit really happened mid-run
    assert table.snapshot_manager().get_latest_snapshot().id == 2
    # The pinned snapshot 1 was read in full; the new rows came through the catch-up range.
    assert result.rows_read == 50 + 10
    assert result.snapshot_id == 2
    assert read_cursor(es, index_name).snapshot_id == 2  # type: ignore[union-attr]
    assert len(indexed(es, index_name)) == 60


def test_full_sync_of_a_table_without_snapshots_creates_the_index_and_records_no_cursor(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory
):
    from pypaimon import CatalogFactory, Schema

    catalog = CatalogFactory.create({"warehouse": warehouse})
    catalog.create_database("db", True)
    catalog.create_table(
        "db.items", Schema.from_pyarrow_schema(PK_SCHEMA, primary_keys=["id"], options=PK_OPTIONS), False
    )

    result = run_sync(task_file(), "items", mode=SyncMode.FULL)

    assert (result.snapshot_id, result.rows_read, result.documents_indexed) == (None, 0, 0)
    assert es.indices.exists(index=index_name)
    assert read_cursor(es, index_name) is None


def test_full_sync_of_an_append_only_table_uses_the_primary_key_from_the_task(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory
):
    data = pa.table({"sku": ["A-1", "B-2", "C-3"], "title": ["anvil", "bolt", "crate"]})
    table = write_paimon_table(warehouse, "db.items", data)
    commit_rows(table, pa.table({"sku": ["D-4"], "title": ["drill"]}))

    result = run_sync(task_file(primary_key="sku"), "items", mode=SyncMode.FULL)

    assert result.documents_indexed == 4
    mapping = es.indices.get_mapping(index=index_name)[result.physical_index]
    assert indexed(es, index_name) == {
        "A-1": {"sku": "A-1", "title": "anvil"},
        "B-2": {"sku": "B-2", "title": "bolt"},
        "C-3": {"sku": "C-3", "title": "crate"},
        "D-4": {"sku": "D-4", "title": "drill"},
    }
    assert mapping["mappings"]["properties"]["sku"]["type"] == "keyword"


def test_full_sync_of_an_append_only_table_without_a_primary_key_is_a_config_error_before_touching_the_index(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory
):
    write_paimon_table(warehouse, "db.items", pa.table({"sku": ["A-1"]}))

    with pytest.raises(ConfigError, match=r"task 'items': primary_key: table db\.items has no primary key"):
        run_sync(task_file(), "items", mode=SyncMode.FULL)

    assert not es.indices.exists(index=index_name)


def test_full_sync_gives_composite_keys_unambiguous_ids(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory
):
    schema = pa.schema(
        [
            pa.field("shop", pa.string(), nullable=False),
            pa.field("sku", pa.string(), nullable=False),
            ("qty", pa.int32()),
        ]
    )
    data = pa.Table.from_pylist(
        [
            {"shop": "a_b", "sku": "c", "qty": 1},
            {"shop": "a", "sku": "b_c", "qty": 2},
            {"shop": "a", "sku": "b", "qty": 3},
        ],
        schema=schema,
    )
    write_paimon_table(warehouse, "db.items", data, primary_keys=["shop", "sku"])

    result = run_sync(task_file(), "items", mode=SyncMode.FULL)

    documents = indexed(es, index_name)
    assert result.documents_indexed == 3
    assert documents['["a_b","c"]']["qty"] == 1
    assert documents['["a","b_c"]']["qty"] == 2
    assert documents['["a","b"]']["qty"] == 3


def test_full_sync_keeps_unicode_text_and_nulls_and_embeds_only_non_empty_texts(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory
):
    rows = [
        {"id": 1, "name": "Kōbō Ørsted Grüße", "description": "日本語の説明 🚀 עברית", "price": None},
        {"id": 2, "name": None, "description": None, "price": 5},
        {"id": 3, "name": "", "description": "", "price": 0},
    ]
    pk_table(
        warehouse, pa.Table.from_pylist([{**row, "updated_at": None, "_op": "+I"} for row in rows], schema=PK_SCHEMA)
    )

    result = run_sync(task_file(transforms=[VECTOR]), "items", mode=SyncMode.FULL)

    documents = indexed(es, index_name)
    assert result.inputs_embedded == 1
    assert documents["1"]["name"] == "Kōbō Ørsted Grüße"
    assert documents["1"]["description"] == "日本語の説明 🚀 עברית"
    assert len(documents["1"]["description_vec"]) == 8
    assert documents["2"] == {"id": 2, "name": None, "description": None, "price": 5, "updated_at": None}
    assert "description_vec" not in documents["3"]
    assert es.search(index=index_name, query={"match": {"name": "Grüße"}})["hits"]["hits"][0]["_id"] == "1"


def test_full_sync_renames_fields_from_the_mapping_including_the_key_column(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory
):
    pk_table(warehouse, items(range(3)))

    task = task_file(fields=["id", "name", "price"], mapping={"name": "title", "id": "product_id"})
    result = run_sync(task, "items", mode=SyncMode.FULL)

    documents = indexed(es, index_name)
    assert documents["1"] == {"product_id": 1, "title": "item 1", "price": 100}
    properties = es.indices.get_mapping(index=index_name)[result.physical_index]["mappings"]["properties"]
    assert properties["product_id"]["type"] == "long"  # a numeric key keeps its numeric type; string keys are keywords
    assert properties["title"]["type"] == "text"
    assert "name" not in properties and "description" not in properties


def test_full_sync_reports_progress_with_rows_read_and_the_snapshot_row_count(
    warehouse: str, task_file: TaskFileFactory
):
    pk_table(warehouse, items(range(25)), buckets=1)
    calls: list[tuple[int, int | None]] = []

    run_sync(
        task_file(read_batch_rows=10),
        "items",
        mode=SyncMode.FULL,
        progress=lambda rows, total: calls.append((rows, total)),
    )

    assert calls[-1] == (25, 25)
    assert [rows for rows, _ in calls] == sorted(rows for rows, _ in calls)


# --- dead letters and the error budget ------------------------------------------------------------


def test_full_sync_dead_letters_rows_with_null_or_empty_primary_key_and_syncs_the_rest(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory
):
    data = pa.table({"sku": ["A-1", None, "", "D-4"], "title": ["anvil", "no key", "empty key", "drill"]})
    write_paimon_table(warehouse, "db.items", data)

    result = run_sync(task_file(primary_key="sku"), "items", mode=SyncMode.FULL)

    assert result.status == SyncStatus.COMPLETED_WITH_DEAD_LETTERS
    assert (result.documents_indexed, result.rejected_keys, result.dead_lettered) == (2, 2, 2)
    assert sorted(indexed(es, index_name)) == ["A-1", "D-4"]
    letters = read_dead_letters(Path(result.dead_letter_path))
    assert [(letter["stage"], letter["id"], letter["reason"]) for letter in letters] == [
        ("key", None, "primary key column 'sku' is null"),
        ("key", None, "primary key column 'sku' is empty"),
    ]
    assert [letter["document"]["title"] for letter in letters] == ["no key", "empty key"]
    assert {letter["task"] for letter in letters} == {"items"}
    assert {letter["snapshot_id"] for letter in letters} == {result.snapshot_id}
    assert read_cursor(es, index_name).snapshot_id == result.snapshot_id  # type: ignore[union-attr]


def test_full_sync_dead_letters_documents_the_index_keeps_rejecting_and_counts_the_rest(
    es: Elasticsearch, es_url: str, warehouse: str, index_name: str, task_file: TaskFileFactory
):
    pk_table(warehouse, items(range(6)), buckets=1)
    with FaultProxy(es_url, reject_bulk_items=1, reject_item_status=400) as proxy:
        task = task_file(connections=connections(warehouse, proxy.url), transforms=[VECTOR])
        result = run_sync(task, "items", mode=SyncMode.FULL)

    letters = read_dead_letters(Path(result.dead_letter_path))
    assert (result.documents_indexed, result.dead_lettered) == (3, 3)
    assert sorted(letter["id"] for letter in letters) == sorted(proxy.log.rejected_ids)
    assert {(letter["stage"], letter["status"]) for letter in letters} == {("index", 400)}
    assert all("document_parsing_exception" in letter["reason"] for letter in letters)
    assert all("description_vec" not in letter["document"] for letter in letters)  # vectors are not kept
    assert all(letter["document"]["name"].startswith("item") for letter in letters)
    assert sorted(indexed(es, index_name)) == sorted({str(i) for i in range(6)} - set(proxy.log.rejected_ids))


def test_full_sync_fails_without_moving_the_cursor_when_dead_letters_exceed_the_error_budget(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory
):
    write_paimon_table(warehouse, "db.items", pa.table({"sku": ["A-1", None, "C-3"]}))

    with pytest.raises(TooManyErrorsError, match=r"1 documents failed, more than errors.max_errors=0; the cursor"):
        run_sync(task_file(primary_key="sku", errors={"max_errors": 0}), "items", mode=SyncMode.FULL)

    assert read_cursor(es, index_name) is None


def test_full_sync_leaves_the_previous_cursor_when_bulk_writes_keep_failing(
    es: Elasticsearch, es_url: str, warehouse: str, index_name: str, task_file: TaskFileFactory
):
    table = pk_table(warehouse, items(range(4)))
    run_sync(task_file(), "items", mode=SyncMode.FULL)
    commit_rows(table, items(range(4, 8)))

    with FaultProxy(es_url, reject_bulk_requests=1000, reject_status=503) as proxy:
        task = task_file(connections=connections(warehouse, proxy.url), bulk={"max_retries": 0})
        with pytest.raises(TargetError, match="503"):
            run_sync(task, "items", mode=SyncMode.FULL)

    assert read_cursor(es, index_name).snapshot_id == 1  # type: ignore[union-attr]
    assert len(indexed(es, index_name)) == 4


# --- deletions and idempotency --------------------------------------------------------------------


def test_full_resync_rebuilds_without_documents_whose_rows_were_deleted_and_drops_the_old_index(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory
):
    table = pk_table(warehouse, items(range(10)), buckets=3)
    first = run_sync(task_file(), "items", mode=SyncMode.FULL)
    commit_rows(table, items([2, 5, 7], op="-D"))

    result = run_sync(task_file(), "items", mode=SyncMode.FULL)

    assert (first.physical_index, result.physical_index) == (f"{index_name}-1", f"{index_name}-2")
    assert not es.indices.exists(index=first.physical_index)
    assert result.snapshot_id == 2
    assert sorted(indexed(es, index_name), key=int) == [str(i) for i in (0, 1, 3, 4, 6, 8, 9)]
    assert read_cursor(es, index_name).snapshot_id == 2  # type: ignore[union-attr]


def test_full_sync_run_twice_on_the_same_snapshot_leaves_the_index_unchanged(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory
):
    pk_table(warehouse, items(range(20)))
    first = run_sync(task_file(transforms=[VECTOR]), "items", mode=SyncMode.FULL)
    before = indexed(es, index_name)

    second = run_sync(task_file(transforms=[VECTOR]), "items", mode=SyncMode.FULL)

    assert second.documents_indexed == 20
    assert second.snapshot_id == first.snapshot_id
    assert indexed(es, index_name) == before


# --- configuration and target problems ------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ({"fields": ["id", "colour"]}, "task 'items': fields: column(s) ['colour'] are not in table db.items"),
        ({"primary_key": "sku"}, "task 'items': primary_key: column(s) ['sku'] are not in table db.items"),
        (
            {"transforms": [{**VECTOR, "field": "summary"}]},
            "task 'items': transforms.field: column(s) ['summary'] are not in table db.items",
        ),
        ({"mapping": {"title": "name2"}}, "task 'items': mapping: column(s) ['title'] are not in table db.items"),
        (
            {"fields": ["id", "name"], "mapping": {"price": "cost"}},
            "mapping renames ['price'], which are not in 'fields'",
        ),
        (
            {"transforms": [{**VECTOR, "field": "price"}]},
            "transforms.field 'price' is int64; text embedding needs a string column",
        ),
        ({"transforms": [{**VECTOR, "model": "bert:tiny"}]}, "model 'bert:tiny' is not understood"),
    ],
    ids=["field", "primary-key", "transform-field", "mapping", "mapping-not-in-fields", "non-text-embed", "model"],
)
def test_full_sync_rejects_task_settings_that_do_not_fit_the_table_naming_the_field(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory, task: dict, message: str
):
    pk_table(warehouse, items(range(2)))

    with pytest.raises(ConfigError) as raised:
        run_sync(task_file(**task), "items", mode=SyncMode.FULL)

    assert message in str(raised.value)
    assert not es.indices.exists(index=index_name)


def test_full_sync_raises_mapping_conflict_before_writing_any_document(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory
):
    pk_table(warehouse, items(range(5)))
    es.indices.create(index=index_name, mappings={"properties": {"price": {"type": "keyword"}}})

    with pytest.raises(MappingConflictError, match="field 'price' is mapped as keyword, the task needs long"):
        run_sync(task_file(), "items", mode=SyncMode.FULL)

    es.indices.refresh(index=index_name)
    assert es.count(index=index_name)["count"] == 0
    assert read_cursor(es, index_name) is None


def test_full_sync_into_an_existing_concrete_index_raises_mapping_conflict_when_the_vector_dims_differ(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory
):
    pk_table(warehouse, items(range(5)))
    es.indices.create(index=index_name, mappings={"properties": {"description_vec": vector_mapping(3)}})

    with pytest.raises(MappingConflictError, match="vector field 'description_vec' has dims 3, the model gives 8"):
        run_sync(task_file(transforms=[VECTOR]), "items", mode=SyncMode.FULL)

    assert es.count(index=index_name)["count"] == 0


def test_full_resync_behind_an_alias_takes_a_new_vector_dimension_by_rebuilding(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory
):
    pk_table(warehouse, items(range(5)))
    run_sync(task_file(transforms=[{**VECTOR, "model": "hash:3"}]), "items", mode=SyncMode.FULL)

    run_sync(task_file(transforms=[VECTOR]), "items", mode=SyncMode.FULL)

    assert len(indexed(es, index_name)["1"]["description_vec"]) == 8


def test_full_sync_raises_target_error_and_writes_no_cursor_when_the_cluster_is_unreachable(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory
):
    pk_table(warehouse, items(range(3)))
    unreachable = connections(warehouse, "http://127.0.0.1:1", username="elastic", password=SECRET)

    with pytest.raises(TargetError, match=r"cannot reach Elasticsearch at http://127\.0\.0\.1:1") as raised:
        run_sync(task_file(connections=unreachable), "items", mode=SyncMode.FULL)

    assert SECRET not in full_error_text(raised.value)
    assert not es.indices.exists(index=index_name)
    assert read_cursor(es, index_name) is None


def test_full_sync_raises_target_error_naming_the_user_not_the_password_when_credentials_are_refused(
    es: Elasticsearch, es_url: str, warehouse: str, index_name: str, task_file: TaskFileFactory
):
    pk_table(warehouse, items(range(3)))
    with FaultProxy(es_url, require_basic_auth=("elastic", "the-right-one")) as proxy:
        wrong = connections(warehouse, proxy.url, username="elastic", password=SECRET)
        with pytest.raises(TargetError, match=r"refused the credentials of user 'elastic' \(401\)") as raised:
            run_sync(task_file(connections=wrong), "items", mode=SyncMode.FULL)

    assert SECRET not in full_error_text(raised.value)
    assert proxy.log.paths == ["GET /"]  # nothing after the refused first call
    assert not es.indices.exists(index=index_name)


def test_full_sync_keeps_the_password_out_of_errors_and_dead_letters(
    es: Elasticsearch, es_url: str, warehouse: str, index_name: str, task_file: TaskFileFactory
):
    write_paimon_table(warehouse, "db.items", pa.table({"sku": ["A-1", None, "C-3"], "note": ["a", "b", "c"]}))
    with FaultProxy(
        es_url, require_basic_auth=("elastic", SECRET), reject_bulk_items=1, reject_item_status=400
    ) as proxy:
        authorised = connections(warehouse, proxy.url, username="elastic", password=SECRET)
        result = run_sync(
            task_file(connections=authorised, primary_key="sku", bulk={"max_retries": 0}), "items", mode=SyncMode.FULL
        )
        with pytest.raises(TooManyErrorsError) as raised:
            run_sync(
                task_file(connections=authorised, primary_key="sku", errors={"max_errors": 0}, fields=["sku"]),
                "items",
                mode=SyncMode.FULL,
            )

    assert result.dead_lettered == 2  # one rejected key, one document the index refused
    dead_letter_file = Path(result.dead_letter_path).read_text(encoding="utf-8")
    assert dead_letter_file.count("\n") >= 2
    assert SECRET not in dead_letter_file
    assert SECRET not in full_error_text(raised.value)
    assert SECRET not in repr(result)


# --- semantic search with the real local model ----------------------------------------------------


def test_full_sync_with_the_local_text_model_lets_a_knn_query_find_the_matching_product_first(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory
):
    products = {
        1: "Breathable rain jacket with taped seams and a packable hood",
        2: "Leather hiking boots with a waterproof membrane and ankle support for rocky trails",
        3: "Espresso machine with fifteen bar pressure and a milk steam wand",
        4: "Ergonomic office chair with lumbar support and a mesh back",
        5: "Merino wool blanket that keeps you warm on winter evenings",
        6: "Pre-seasoned cast iron skillet for searing steaks",
    }
    rows = [{"id": i, "name": text.split(" with")[0], "description": text} for i, text in products.items()]
    data = pa.Table.from_pylist(
        [{**row, "price": 1, "updated_at": None, "_op": "+I"} for row in rows], schema=PK_SCHEMA
    )
    pk_table(warehouse, data)
    model = "local:all-MiniLM-L6-v2"

    result = run_sync(task_file(transforms=[{**VECTOR, "model": model}]), "items", mode=SyncMode.FULL)

    query = build_embedder(model).embed_texts(["waterproof hiking boots"])[0]
    es.indices.refresh(index=index_name)
    hits = es.search(
        index=index_name,
        knn={"field": "description_vec", "query_vector": query.tolist(), "k": 3, "num_candidates": 10},
        source=False,
    )["hits"]["hits"]
    assert result.inputs_embedded == 6
    assert hits[0]["_id"] == "2"


def test_full_sync_raises_target_error_and_moves_no_cursor_when_the_cluster_goes_away_mid_run(
    es: Elasticsearch, es_url: str, warehouse: str, index_name: str, task_file: TaskFileFactory
):
    table = pk_table(warehouse, items(range(4)))
    run_sync(task_file(), "items", mode=SyncMode.FULL)
    commit_rows(table, items(range(4, 8)))

    with FaultProxy(es_url, go_dark_at_bulk=1) as proxy:
        task = task_file(
            connections=connections(warehouse, proxy.url, username="elastic", password=SECRET), bulk={"max_retries": 0}
        )
        with pytest.raises(TargetError) as raised:
            run_sync(task, "items", mode=SyncMode.FULL)

    assert f"Elasticsearch at {proxy.url}: bulk requests to '{index_name}-2' still failed" in str(raised.value)
    assert "connection error" in str(raised.value)
    assert "syncing task 'items'" in str(raised.value)
    assert "the cursor was not moved" in str(raised.value)
    assert SECRET not in full_error_text(raised.value)
    assert read_cursor(es, index_name).snapshot_id == 1  # type: ignore[union-attr]


# --- model calls --------------------------------------------------------------------------------


def test_full_resync_of_an_unchanged_table_makes_no_model_call(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory
):
    pk_table(warehouse, items(range(40)))
    first = run_sync(task_file(transforms=[VECTOR]), "items", mode=SyncMode.FULL)

    again = run_sync(task_file(transforms=[VECTOR]), "items", mode=SyncMode.FULL)

    assert (first.model_inputs, first.cache_hits) == (40, 0) and first.model_calls >= 1
    assert (again.model_calls, again.cache_hits, again.inputs_embedded) == (0, 40, 40)
    assert len(indexed(es, index_name)) == 40


def test_rerun_after_a_failed_index_write_makes_no_model_call(
    es: Elasticsearch, es_url: str, warehouse: str, index_name: str, task_file: TaskFileFactory
):
    pk_table(warehouse, items(range(10)))
    with FaultProxy(es_url, go_dark_at_bulk=1) as proxy:
        broken = task_file(connections=connections(warehouse, proxy.url), transforms=[VECTOR], bulk={"max_retries": 0})
        with pytest.raises(TargetError):
            run_sync(broken, "items", mode=SyncMode.FULL)

    result = run_sync(task_file(transforms=[VECTOR]), "items", mode=SyncMode.FULL)

    assert (result.model_calls, result.cache_hits, result.documents_indexed) == (0, 10, 10)
