"""Long texts through the whole pipeline: truncation counted, chunks written as nested vectors, searched.

Paimon table of long texts → run_sync → noida-db (nested chunks with dense_vectors) → nested kNN search
Semantic tests use the real bundled all-MiniLM-L6-v2; the rest use the zero-cost `hash:` model.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa
import pytest
from elasticsearch import Elasticsearch

from lake_sync.errors import ConfigError
from lake_sync.search import search
from lake_sync.sync import SyncMode, run_sync
from lake_sync_tests.conftest import TaskFileFactory, commit_rows, write_paimon_table

MINILM = "local:all-MiniLM-L6-v2"
FILLER = (
    "The committee met on Tuesday to review the quarterly budget of the municipal library. "
    "Members discussed the cost of new shelving, the heating bill and the opening hours. "
)
# The only sentence about boots sits at the end of a text of about 700 tokens.
BOOTS_LATE = FILLER * 20 + "In the end they bought waterproof leather hiking boots for the mountain trail."


def chunked(model: str, *, max_tokens: int, overlap: int) -> list[dict[str, object]]:
    chunk = {"max_tokens": max_tokens, "overlap": overlap}
    return [{"field": "body", "embed": "text", "model": model, "to": "body_chunks", "chunk": chunk}]


def body_table(ids: list[str], bodies: list[str | None], *, op: str = "+I") -> pa.Table:
    """Rows of a primary-key table whose `_op` column holds the row kind (+I, -D)."""
    return pa.table(
        {"id": pa.array(ids), "body": pa.array(bodies, pa.string()), "_op": pa.array([op] * len(ids))},
        schema=pa.schema([pa.field("id", pa.string(), nullable=False), ("body", pa.string()), ("_op", pa.string())]),
    )


def body_paimon_table(warehouse: str, data: pa.Table) -> Any:
    return write_paimon_table(warehouse, "db.items", data, primary_keys=["id"], options={"rowkind.field": "_op"})


def test_full_sync_writes_nested_chunk_vectors_and_search_finds_a_document_by_its_late_chunk(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory
) -> None:
    bodies = [BOOTS_LATE, FILLER * 3 + "The kettle boils water for tea.", "A two person dome tent for camping."]
    body_paimon_table(warehouse, body_table(["boots", "kettle", "tent"], bodies))
    tasks = task_file(primary_key="id", transforms=chunked(MINILM, max_tokens=128, overlap=16))

    result = run_sync(tasks, "items", mode=SyncMode.FULL)

    mapping = es.indices.get_mapping(index=index_name).body
    chunks_field = next(iter(mapping.values()))["mappings"]["properties"]["body_chunks"]
    assert chunks_field["type"] == "nested"
    assert chunks_field["properties"]["vector"]["dims"] == 384
    stored = es.get(index=index_name, id="boots")["_source"]["body_chunks"]
    assert len(stored) >= 5 and [chunk["position"] for chunk in stored] == list(range(len(stored)))
    assert all(
        len(chunk["vector"]) == 384 and chunk["text"] == BOOTS_LATE[chunk["start"] : chunk["end"]] for chunk in stored
    )
    every_chunk = [
        chunk["text"]
        for i in ("boots", "kettle", "tent")
        for chunk in es.get(index=index_name, id=i)["_source"]["body_chunks"]
    ]
    # The filler repeats, so some chunks are equal: each distinct chunk text costs one model input.
    assert (result.inputs_embedded, result.model_inputs) == (len(every_chunk), len(set(every_chunk)))
    assert result.inputs_truncated == 0

    hits = search(tasks, "items", "waterproof hiking boots", k=3)

    assert hits[0].id == "boots"
    best = hits[0].chunks["body_chunks"]
    assert best.position == len(stored) - 1 and "hiking boots" in best.text
    assert "body_chunks" not in hits[0].document


def test_full_resync_of_an_unchanged_chunked_table_makes_no_model_call(
    warehouse: str, task_file: TaskFileFactory
) -> None:
    bodies = [" ".join(f"word{n}" for n in range(100)), "short text", " ".join(f"other{n}" for n in range(30))]
    body_paimon_table(warehouse, body_table(["a", "b", "c"], bodies))
    tasks = task_file(primary_key="id", transforms=chunked("hash:16", max_tokens=20, overlap=5))

    first = run_sync(tasks, "items", mode=SyncMode.FULL)
    again = run_sync(tasks, "items", mode=SyncMode.FULL)

    # 100 words in windows of 20 moving by 15: 7 chunks; then 1 and 2 chunks.
    assert (first.inputs_embedded, first.model_inputs) == (10, 10)
    assert (again.model_calls, again.model_inputs, again.cache_hits, again.inputs_embedded) == (0, 0, 10, 10)


def test_an_update_replaces_the_whole_chunk_list_a_delete_removes_it_and_empty_text_has_no_chunks(
    es: Elasticsearch, warehouse: str, index_name: str, task_file: TaskFileFactory
) -> None:
    long_text = " ".join(f"word{n}" for n in range(50))
    table = body_paimon_table(warehouse, body_table(["a", "b", "c"], [long_text, long_text, "x y"]))
    tasks = task_file(primary_key="id", transforms=chunked("hash:16", max_tokens=10, overlap=0))
    run_sync(tasks, "items", mode=SyncMode.FULL)
    assert len(es.get(index=index_name, id="a")["_source"]["body_chunks"]) == 5

    commit_rows(table, body_table(["a", "c", "d"], ["new short text", None, "   "]))
    commit_rows(table, body_table(["b"], [long_text], op="-D"))
    result = run_sync(tasks, "items")

    assert (result.mode, result.documents_indexed, result.documents_deleted) == (SyncMode.INCREMENTAL, 3, 1)
    assert not es.exists(index=index_name, id="b")
    assert [chunk["text"] for chunk in es.get(index=index_name, id="a")["_source"]["body_chunks"]] == ["new short text"]
    assert "body_chunks" not in es.get(index=index_name, id="c")["_source"]
    assert "body_chunks" not in es.get(index=index_name, id="d")["_source"]


def test_a_chunk_size_over_what_the_model_reads_fails_naming_the_field(
    warehouse: str, task_file: TaskFileFactory
) -> None:
    body_paimon_table(warehouse, body_table(["a"], ["text"]))
    tasks = task_file(primary_key="id", transforms=chunked(MINILM, max_tokens=300, overlap=20))

    with pytest.raises(
        ConfigError,
        match=r"task 'items': transforms\.0\.chunk\.max_tokens: 300 is more than model "
        r"local:all-MiniLM-L6-v2 reads \(254 tokens\); set max_tokens to at most 254 for field 'body_chunks'",
    ):
        run_sync(tasks, "items", mode=SyncMode.FULL)


def test_sync_counts_texts_over_the_models_limit_per_field_and_logs_them_also_when_cached(
    warehouse: str, task_file: TaskFileFactory, caplog: pytest.LogCaptureFixture
) -> None:
    body_paimon_table(warehouse, body_table(["long", "short"], [BOOTS_LATE, "a short text"]))
    transforms = [{"field": "body", "embed": "text", "model": MINILM, "to": "body_vec"}]
    tasks = task_file(primary_key="id", transforms=transforms)

    with caplog.at_level(logging.WARNING, logger="lake_sync.sync"):
        first = run_sync(tasks, "items", mode=SyncMode.FULL)
        again = run_sync(tasks, "items", mode=SyncMode.FULL)

    assert first.truncated == {"body_vec": 1} and first.model_inputs == 2
    # Counted per input of the run, cached or not: the same data reports the same number.
    assert again.truncated == {"body_vec": 1} and again.model_calls == 0
    warnings = [record.getMessage() for record in caplog.records if "truncated" in record.getMessage()]
    assert len(warnings) == 2
    assert warnings[0].startswith(
        "task 'items': 1 input(s) of column 'body' for field 'body_vec' were longer than the 254 tokens "
        "model local:all-MiniLM-L6-v2 reads"
    )
