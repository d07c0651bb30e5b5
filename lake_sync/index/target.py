"""The target index as a whole: create it or check it, list its ids, count and refresh it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from elasticsearch import ApiError, Elasticsearch, helpers

from lake_sync.errors import TargetError
from lake_sync.index.mapping import check_mapping


def ensure_index(client: Elasticsearch, index: str, mappings: dict[str, Any]) -> bool:
    """Create `index` with `mappings`, or check the existing one against them and map the fields it
    lacks; True if it existed.

    Lacking fields are mapped before any document arrives: dynamic mapping would guess (a vector
    becomes a float array that kNN queries reject).
    """
    existing = client.options(ignore_status=404).indices.get_mapping(index=index)
    if existing.meta.status == 200:
        mapped: set[str] = set()
        for mapping in existing.body.values():
            check_mapping(index, mapping.get("mappings", {}), mappings)
            mapped.update(mapping.get("mappings", {}).get("properties", {}))
        missing = {name: spec for name, spec in mappings["properties"].items() if name not in mapped}
        if missing:
            client.indices.put_mapping(index=index, properties=missing)
        return True
    try:
        client.indices.create(index=index, mappings=mappings)
    except ApiError as error:
        raise TargetError(f"cannot create index '{index}': {error.message}") from None
    return False


def document_ids(client: Elasticsearch, index: str) -> Iterator[str]:
    """Every document id in `index`, streamed with scroll (no sources fetched)."""
    for hit in helpers.scan(client, index=index, query={"query": {"match_all": {}}}, _source=False, size=5000):
        yield hit["_id"]


def count_documents(client: Elasticsearch, index: str) -> int:
    """Documents in `index` after a refresh, so the count includes the last writes."""
    client.indices.refresh(index=index)
    return int(client.count(index=index)["count"])
