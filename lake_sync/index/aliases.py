"""Zero-downtime resyncs: the task's index name is an alias over physical indexes `<name>-<n>`.

A full resync builds `<name>-<n+1>` while searches keep hitting `<name>-<n>` through the
alias, then moves the alias in one atomic `_aliases` call, so no query ever sees an empty
or half-built index.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from elasticsearch import Elasticsearch

from lake_sync.index.cursor import read_cursor


class TargetKind(StrEnum):
    MISSING = "missing"
    ALIAS = "alias"
    CONCRETE = "concrete"


@dataclass(frozen=True)
class TargetState:
    """What the task's index name currently is; `write_index` is the physical index to write to."""

    name: str
    kind: TargetKind
    write_index: str | None


def resolve_target(client: Elasticsearch, name: str) -> TargetState:
    """Is `name` an alias (and over which index), a concrete index, or nothing yet?"""
    aliases = client.options(ignore_status=404).indices.get_alias(name=name)
    if aliases.meta.status == 200 and aliases.body:
        return TargetState(name, TargetKind.ALIAS, sorted(aliases.body)[-1])
    if client.indices.exists(index=name):
        return TargetState(name, TargetKind.CONCRETE, name)
    return TargetState(name, TargetKind.MISSING, None)


def physical_indexes(client: Elasticsearch, name: str) -> list[str]:
    """Every `<name>-<n>` index, oldest first."""
    pattern = re.compile(rf"^{re.escape(name)}-(\d+)$")
    found = client.options(ignore_status=404).indices.get(index=f"{name}-*", expand_wildcards="open,closed")
    numbered = [
        (int(m.group(1)), index)
        for index in (found.body if found.meta.status == 200 else {})
        if (m := pattern.match(index))
    ]
    return [index for _, index in sorted(numbered)]


def next_physical_index(client: Elasticsearch, name: str) -> str:
    """`<name>-<n+1>`, where n is the highest number in use (1 for the first)."""
    existing = physical_indexes(client, name)
    return f"{name}-{int(existing[-1].rsplit('-', 1)[1]) + 1 if existing else 1}"


def swap_alias(client: Elasticsearch, name: str, new_index: str, old_index: str | None) -> None:
    """Point `name` at `new_index` (and away from `old_index`) in one atomic call."""
    actions: list[dict[str, dict[str, str]]] = [{"add": {"index": new_index, "alias": name}}]
    if old_index is not None:
        actions.insert(0, {"remove": {"index": old_index, "alias": name}})
    client.indices.update_aliases(actions=actions)


def delete_unfinished(client: Elasticsearch, name: str) -> list[str]:
    """Delete physical indexes of `name` that a resync left half-built (no cursor, no alias).

    Indexes with a cursor were completed: a previous alias target kept on request stays.
    """
    state = resolve_target(client, name)
    unfinished = [
        index
        for index in physical_indexes(client, name)
        if index != state.write_index and read_cursor(client, index) is None
    ]
    for index in unfinished:
        client.indices.delete(index=index)
    return unfinished
