"""Index mappings derived from Arrow types, and the check of an existing index against them.

Arrow/Paimon type → Elasticsearch field type; vector fields → `dense_vector` (cosine); chunked
vector fields → `nested` chunks, each with its text, place and `dense_vector`.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from lake_sync.errors import MappingConflictError

#: The vector of each chunk in a chunked field: the kNN field is `<field>.vector`.
CHUNK_VECTOR = "vector"

_INTEGERS = {
    pa.int8(): "byte",
    pa.int16(): "short",
    pa.int32(): "integer",
    pa.int64(): "long",
    pa.uint8(): "short",
    pa.uint16(): "integer",
    pa.uint32(): "long",
    pa.uint64(): "unsigned_long",
}


def field_mapping(data_type: pa.DataType, *, keyword: bool = False) -> dict[str, Any]:
    """The Elasticsearch mapping of one column; strings are `text` with a `.keyword` sub-field."""
    if pa.types.is_string(data_type) or pa.types.is_large_string(data_type):
        if keyword:
            return {"type": "keyword"}
        return {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}}
    if data_type in _INTEGERS:
        return {"type": _INTEGERS[data_type]}
    if pa.types.is_float16(data_type) or pa.types.is_float32(data_type):
        return {"type": "float"}
    if pa.types.is_float64(data_type) or pa.types.is_decimal(data_type) or pa.types.is_duration(data_type):
        return {"type": "double"}
    if pa.types.is_boolean(data_type):
        return {"type": "boolean"}
    if pa.types.is_timestamp(data_type) or pa.types.is_date(data_type):
        return {"type": "date"}
    if pa.types.is_time(data_type):
        return {"type": "keyword"}
    if pa.types.is_binary(data_type) or pa.types.is_large_binary(data_type) or pa.types.is_fixed_size_binary(data_type):
        return {"type": "binary"}
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type) or pa.types.is_fixed_size_list(data_type):
        # Elasticsearch has no array type: a field holds one value or many of the same type.
        return field_mapping(data_type.value_type, keyword=keyword)
    if pa.types.is_struct(data_type):
        return {"type": "object", "properties": {f.name: field_mapping(f.type) for f in data_type}}
    if pa.types.is_map(data_type):
        # Map keys are data, not schema: `flattened` keeps them from exploding the mapping.
        return {"type": "flattened"}
    return {"type": "keyword"}


def vector_mapping(dims: int) -> dict[str, Any]:
    return {"type": "dense_vector", "dims": dims, "index": True, "similarity": "cosine"}


def chunks_mapping(dims: int) -> dict[str, Any]:
    """A `nested` list of chunks: each its text, its place (`position`, character offsets `start`/`end`
    in the source text) and its vector. Nested, so a kNN query scores each chunk on its own and can
    return the best one (`inner_hits`)."""
    return {
        "type": "nested",
        "properties": {
            "text": {"type": "text"},
            "position": {"type": "integer"},
            "start": {"type": "integer"},
            "end": {"type": "integer"},
            CHUNK_VECTOR: vector_mapping(dims),
        },
    }


def build_mappings(
    columns: dict[str, pa.DataType],
    vectors: dict[str, int],
    *,
    keyword_fields: set[str],
    chunked: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Mappings for document fields (name → Arrow type), vector fields and chunked vector fields (name → dims)."""
    properties = {name: field_mapping(data_type, keyword=name in keyword_fields) for name, data_type in columns.items()}
    properties.update({name: vector_mapping(dims) for name, dims in vectors.items()})
    properties.update({name: chunks_mapping(dims) for name, dims in (chunked or {}).items()})
    return {"dynamic": True, "properties": properties}


def mapping_conflicts(existing: dict[str, Any], wanted: dict[str, Any], *, path: str = "") -> list[str]:
    """Human-readable differences that would make writes fail or searches wrong."""
    problems = []
    existing_properties = existing.get("properties", {})
    for name, want in wanted.get("properties", {}).items():
        have = existing_properties.get(name)
        field = f"{path}{name}"
        if have is None:
            continue
        have_type, want_type = have.get("type", "object"), want.get("type", "object")
        if have_type != want_type and not _compatible(have_type, want_type):
            problems.append(f"field '{field}' is mapped as {have_type}, the task needs {want_type}")
        elif want_type == "dense_vector":
            for key in ("dims", "similarity"):
                if key in have and have[key] != want[key]:
                    problems.append(f"vector field '{field}' has {key} {have[key]}, the model gives {want[key]}")
        elif want_type in ("object", "nested"):
            problems.extend(mapping_conflicts(have, want, path=f"{field}."))
    return problems


def check_mapping(index: str, existing: dict[str, Any], wanted: dict[str, Any]) -> None:
    """Raise MappingConflictError listing every conflict between an index and the task."""
    problems = mapping_conflicts(existing, wanted)
    if problems:
        raise MappingConflictError(
            f"index '{index}' exists with a mapping that conflicts with the task: "
            + "; ".join(problems)
            + ". Nothing was written; sync into a new index name or delete the index."
        )


# Wider numeric and text types hold what narrower ones would: not a conflict.
_WIDER = {
    "long": {"byte", "short", "integer"},
    "integer": {"byte", "short"},
    "short": {"byte"},
    "double": {"float", "byte", "short", "integer", "long"},
    "float": {"byte", "short", "integer"},
    "keyword": {"text"},
    "text": {"keyword"},
}


def _compatible(have: str, want: str) -> bool:
    return want in _WIDER.get(have, set())
