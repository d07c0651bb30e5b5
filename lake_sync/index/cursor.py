"""The sync cursor: the last Paimon snapshot fully applied to an index, kept in the index's `_meta`.

Keeping it with the target means the index and its cursor cannot drift apart, whichever
process (CLI, Dagster run, another machine) wrote last.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass

from elasticsearch import Elasticsearch

META_KEY = "lake_sync"


@dataclass(frozen=True)
class SyncCursor:
    task: str
    table: str
    snapshot_id: int
    synced_at: str


def read_cursor(client: Elasticsearch, index: str) -> SyncCursor | None:
    """The cursor stored with `index`, or None if the index or the cursor does not exist."""
    response = client.options(ignore_status=404).indices.get_mapping(index=index)
    for mapping in response.body.values() if response.meta.status == 200 else ():
        meta = mapping.get("mappings", {}).get("_meta", {}).get(META_KEY)
        if meta:
            return SyncCursor(**{key: meta[key] for key in SyncCursor.__dataclass_fields__})
    return None


def write_cursor(client: Elasticsearch, index: str, *, task: str, table: str, snapshot_id: int) -> SyncCursor:
    """Record `snapshot_id` as applied; call only after every document was acknowledged."""
    cursor = SyncCursor(task, table, snapshot_id, dt.datetime.now(dt.UTC).isoformat())
    client.indices.put_mapping(index=index, meta={META_KEY: asdict(cursor)})
    return cursor
