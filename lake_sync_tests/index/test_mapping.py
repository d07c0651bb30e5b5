"""Index mappings from Arrow types, created on and checked against the real search server.

Arrow schema + vector dims → build_mappings → ensure_index (create, or check the existing mapping)
"""

from __future__ import annotations

import pyarrow as pa
import pytest
from elasticsearch import Elasticsearch

from lake_sync.errors import MappingConflictError
from lake_sync.index.mapping import build_mappings
from lake_sync.index.target import count_documents, ensure_index

COLUMNS = {
    "id": pa.string(),
    "title": pa.string(),
    "count32": pa.int32(),
    "count64": pa.int64(),
    "small": pa.int8(),
    "ratio": pa.float32(),
    "score": pa.float64(),
    "price": pa.decimal128(10, 2),
    "active": pa.bool_(),
    "updated_at": pa.timestamp("us"),
    "born_on": pa.date32(),
    "blob": pa.binary(),
    "tags": pa.list_(pa.string()),
    "ranks": pa.list_(pa.int64()),
    "address": pa.struct([("city", pa.string()), ("zip", pa.int32())]),
    "attributes": pa.map_(pa.string(), pa.string()),
}

EXPECTED_TYPES = {
    "id": "keyword",
    "title": "text",
    "count32": "integer",
    "count64": "long",
    "small": "byte",
    "ratio": "float",
    "score": "double",
    "price": "double",
    "active": "boolean",
    "updated_at": "date",
    "born_on": "date",
    "blob": "binary",
    "tags": "text",
    "ranks": "long",
    "attributes": "flattened",
}


def live_properties(es: Elasticsearch, index: str) -> dict:
    return es.indices.get_mapping(index=index)[index]["mappings"]["properties"]


def test_ensure_index_creates_an_index_whose_field_types_follow_the_arrow_types(es: Elasticsearch, index_name: str):
    existed = ensure_index(es, index_name, build_mappings(COLUMNS, {"vec": 8}, keyword_fields={"id"}))

    properties = live_properties(es, index_name)
    assert existed is False
    assert {name: properties[name]["type"] for name in EXPECTED_TYPES} == EXPECTED_TYPES
    assert properties["title"]["fields"]["keyword"]["type"] == "keyword"  # exact match and aggregations on text
    assert properties["address"]["properties"]["city"]["type"] == "text"
    assert properties["address"]["properties"]["zip"]["type"] == "integer"
    assert properties["vec"]["type"] == "dense_vector"
    assert properties["vec"]["dims"] == 8
    assert properties["vec"]["similarity"] == "cosine"


def test_ensure_index_accepts_an_existing_index_with_the_same_mapping(es: Elasticsearch, index_name: str):
    mappings = build_mappings(COLUMNS, {"vec": 8}, keyword_fields={"id"})
    ensure_index(es, index_name, mappings)

    assert ensure_index(es, index_name, mappings) is True


def test_ensure_index_accepts_an_existing_wider_numeric_or_text_keyword_field(es: Elasticsearch, index_name: str):
    es.indices.create(
        index=index_name,
        mappings={"properties": {"n": {"type": "long"}, "id": {"type": "text"}, "s": {"type": "keyword"}}},
    )

    wanted = build_mappings({"n": pa.int32(), "id": pa.string(), "s": pa.string()}, {}, keyword_fields={"id"})

    assert ensure_index(es, index_name, wanted) is True


def test_ensure_index_maps_the_vector_field_an_existing_index_lacks_before_any_document(
    es: Elasticsearch, index_name: str
):
    es.indices.create(index=index_name, mappings={"properties": {"id": {"type": "keyword"}}})

    existed = ensure_index(es, index_name, build_mappings({"id": pa.string()}, {"vec": 8}, keyword_fields={"id"}))

    properties = es.indices.get_mapping(index=index_name)[index_name]["mappings"]["properties"]
    assert existed is True
    assert properties["vec"]["type"] == "dense_vector" and properties["vec"]["dims"] == 8


@pytest.mark.parametrize(
    ("existing", "columns", "vectors", "message"),
    [
        (
            {"vec": {"type": "dense_vector", "dims": 3, "index": True, "similarity": "cosine"}},
            {},
            {"vec": 384},
            "vector field 'vec' has dims 3, the model gives 384",
        ),
        (
            {"price": {"type": "keyword"}},
            {"price": pa.int64()},
            {},
            "field 'price' is mapped as keyword, the task needs long",
        ),
        ({"n": {"type": "integer"}}, {"n": pa.int64()}, {}, "field 'n' is mapped as integer, the task needs long"),
        (
            {"address": {"properties": {"zip": {"type": "keyword"}}}},
            {"address": pa.struct([("zip", pa.int32())])},
            {},
            "field 'address.zip' is mapped as keyword, the task needs integer",
        ),
    ],
    ids=["vector-dims", "keyword-vs-long", "narrower-integer", "nested-struct-field"],
)
def test_ensure_index_raises_mapping_conflict_naming_the_field_and_both_types_without_writing(
    es: Elasticsearch,
    index_name: str,
    existing: dict,
    columns: dict[str, pa.DataType],
    vectors: dict[str, int],
    message: str,
):
    es.indices.create(index=index_name, mappings={"properties": existing})
    before = live_properties(es, index_name)

    with pytest.raises(MappingConflictError) as raised:
        ensure_index(es, index_name, build_mappings(columns, vectors, keyword_fields=set()))

    assert message in str(raised.value)
    assert index_name in str(raised.value)
    assert "Nothing was written" in str(raised.value)
    assert live_properties(es, index_name) == before
    assert count_documents(es, index_name) == 0


def test_mapping_conflict_lists_every_conflicting_field_at_once(es: Elasticsearch, index_name: str):
    es.indices.create(
        index=index_name,
        mappings={
            "properties": {
                "price": {"type": "keyword"},
                "vec": {"type": "dense_vector", "dims": 3, "index": True, "similarity": "cosine"},
            }
        },
    )

    with pytest.raises(MappingConflictError) as raised:
        ensure_index(es, index_name, build_mappings({"price": pa.float64()}, {"vec": 4}, keyword_fields=set()))

    assert "field 'price'" in str(raised.value)
    assert "vector field 'vec'" in str(raised.value)


def test_a_chunked_field_is_created_as_nested_chunks_each_with_text_place_and_a_dense_vector(
    es: Elasticsearch, index_name: str
):
    ensure_index(es, index_name, build_mappings({"id": pa.string()}, {}, keyword_fields={"id"}, chunked={"body": 8}))

    chunks = live_properties(es, index_name)["body"]
    assert chunks["type"] == "nested"
    assert {name: spec["type"] for name, spec in chunks["properties"].items()} == {
        "text": "text",
        "position": "integer",
        "start": "integer",
        "end": "integer",
        "vector": "dense_vector",
    }
    assert (chunks["properties"]["vector"]["dims"], chunks["properties"]["vector"]["similarity"]) == (8, "cosine")


def test_a_chunked_field_conflicts_with_an_existing_chunk_vector_of_other_dims(es: Elasticsearch, index_name: str):
    ensure_index(es, index_name, build_mappings({}, {}, keyword_fields=set(), chunked={"body": 8}))

    with pytest.raises(MappingConflictError, match=r"vector field 'body\.vector' has dims 8, the model gives 16"):
        ensure_index(es, index_name, build_mappings({}, {}, keyword_fields=set(), chunked={"body": 16}))
