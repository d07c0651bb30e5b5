"""Search over a synced index: every text-queryable vector field, image queries, hybrid BM25 + kNN."""

from __future__ import annotations

import pyarrow as pa
import pytest

from lake_sync.errors import ConfigError, TargetError
from lake_sync.search import search
from lake_sync.sync import SyncMode, run_sync
from lake_sync_tests.conftest import TaskFileFactory, write_paimon_table

TWO_VECTORS = [
    {"field": "name", "embed": "text", "model": "hash:8", "to": "name_vec"},
    {"field": "description", "embed": "text", "model": "hash:16", "to": "description_vec"},
]


@pytest.fixture
def synced(warehouse: str, task_file: TaskFileFactory) -> TaskFileFactory:
    rows = pa.table(
        {
            "sku": ["b1", "t1", "k1"],
            "name": ["Trail boots", "Dome tent", "Tea kettle"],
            "description": ["waterproof leather boots", "two person tent", "stainless kettle for tea"],
        }
    )
    write_paimon_table(warehouse, "db.items", rows)
    run_sync(task_file(primary_key="sku", transforms=TWO_VECTORS), "items", mode=SyncMode.FULL)
    return task_file


def test_search_queries_every_text_vector_field_and_returns_documents_without_vectors(
    synced: TaskFileFactory,
) -> None:
    # The hashing embedder maps equal texts to equal vectors: the exact description wins.
    hits = search(synced(primary_key="sku", transforms=TWO_VECTORS), "items", "two person tent", k=3)

    assert hits[0].id == "t1"
    assert hits[0].document == {"sku": "t1", "name": "Dome tent", "description": "two person tent"}


def test_hybrid_search_adds_bm25_so_a_keyword_match_ranks_first(synced: TaskFileFactory) -> None:
    hits = search(synced(primary_key="sku", transforms=TWO_VECTORS), "items", "kettle", k=3, hybrid=True)

    assert hits[0].id == "k1"


def test_image_search_without_an_image_model_names_the_task_and_the_setting(synced: TaskFileFactory) -> None:
    with pytest.raises(ConfigError, match="task 'items': transforms: no vector field's model embeds image queries"):
        search(synced(primary_key="sku", transforms=TWO_VECTORS), "items", image=b"\x89PNG")


def test_search_before_the_first_sync_says_to_sync_first(task_file: TaskFileFactory) -> None:
    with pytest.raises(TargetError, match=r"does not exist; run `lake-sync sync items` first"):
        search(task_file(primary_key="sku", transforms=TWO_VECTORS), "items", "boots")
