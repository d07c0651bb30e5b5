"""Search over a task's index: embed the query with each vector field's own model, run kNN.

query text (or image) → embedder of every vector field that can take it → one kNN clause per
field (scores add up; a chunked field's clause is nested kNN, scoring a document by its best chunk
and returning that chunk) [+ BM25 over the text fields with --hybrid] → hits
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from elasticsearch import Elasticsearch

from lake_sync.config import Task, TaskFile, Transform
from lake_sync.embed import Embedder, build_embedder
from lake_sync.errors import ConfigError, TargetError
from lake_sync.index.client import build_client, check_cluster
from lake_sync.index.mapping import CHUNK_VECTOR

# kNN looks at this many candidates per requested hit (at least 100), trading latency for recall.
CANDIDATES_PER_HIT = 10
MIN_CANDIDATES = 100
#: What a search shows of a matched chunk (its vector stays in the index).
CHUNK_PLACE = ("text", "position", "start", "end")


@dataclass(frozen=True)
class MatchedChunk:
    """The chunk of a chunked field that matched the query best: its text, place and score."""

    text: str
    position: int
    start: int
    end: int
    score: float


@dataclass(frozen=True)
class SearchHit:
    id: str
    score: float
    document: dict[str, Any]
    #: Per chunked field, the document's best-matching chunk.
    chunks: dict[str, MatchedChunk] = field(default_factory=dict)


def search(
    task_file: TaskFile,
    task_name: str,
    text: str | None = None,
    *,
    image: bytes | None = None,
    k: int = 10,
    hybrid: bool = False,
) -> list[SearchHit]:
    """The `k` best documents for a text query (every vector field whose model embeds text) or an
    image query (every field whose model embeds images); `hybrid` adds BM25 over the text fields."""
    task = task_file.task(task_name)
    if (text is None) == (image is None):
        raise ConfigError("search: give a query text or an image, not both")
    fields = _query_fields(task_file, task, image=image is not None)
    if not fields:
        wanted = "image" if image is not None else "text"
        raise ConfigError(f"task '{task.name}': transforms: no vector field's model embeds {wanted} queries")
    knn = []
    for transform, embedder in fields:
        vector = embedder.embed_images([image]) if image is not None else embedder.embed_queries([text or ""])
        candidates = max(MIN_CANDIDATES, k * CANDIDATES_PER_HIT)
        clause = {"field": transform.to, "query_vector": vector[0].tolist(), "k": k, "num_candidates": candidates}
        if transform.chunk is not None:
            clause |= _nested_clause(transform.to)
        knn.append(clause)
    connection = task_file.target_connection(task)
    client = build_client(connection)
    check_cluster(client, connection)
    body: dict[str, Any] = {"knn": knn}
    if hybrid and text is not None:
        body["query"] = {"multi_match": {"query": text, "fields": _text_fields(client, task.target.index)}}
    response = client.options(ignore_status=404).search(
        index=task.target.index, source_excludes=[t.to for t in task.transforms], size=k, **body
    )
    if response.meta.status == 404:
        raise TargetError(f"index '{task.target.index}' does not exist; run `lake-sync sync {task.name}` first")
    return [
        SearchHit(hit["_id"], float(hit["_score"]), hit.get("_source", {}), _matched_chunks(hit))
        for hit in response["hits"]["hits"]
    ]


def _query_fields(task_file: TaskFile, task: Task, *, image: bool) -> list[tuple[Transform, Embedder]]:
    embedders = [(t, build_embedder(t.model, task_file.model_connection(t.model))) for t in task.transforms]
    return [
        (transform, embedder)
        for transform, embedder in embedders
        if (embedder.embeds_images if image else embedder.embeds_texts)
    ]


def _nested_clause(field: str) -> dict[str, Any]:
    """kNN over the chunks of a nested field (Elasticsearch 8.11+): a document scores as its best chunk,
    and `inner_hits` returns that chunk without its vector."""
    return {
        "field": f"{field}.{CHUNK_VECTOR}",
        "inner_hits": {"size": 1, "_source": False, "fields": [f"{field}.{name}" for name in CHUNK_PLACE]},
    }


def _matched_chunks(hit: dict[str, Any]) -> dict[str, MatchedChunk]:
    """The best chunk per chunked field from a hit's `inner_hits` (`fields` of a nested hit are lists)."""
    matched = {}
    for chunked_field, inner in hit.get("inner_hits", {}).items():
        best = inner["hits"]["hits"][:1]
        if not best:
            continue
        values = best[0].get("fields", {}).get(chunked_field, [{}])[0]
        place = {name: values.get(name, [None])[0] for name in CHUNK_PLACE}
        matched[chunked_field] = MatchedChunk(
            place["text"] or "",
            int(place["position"] or 0),
            int(place["start"] or 0),
            int(place["end"] or 0),
            float(best[0]["_score"]),
        )
    return matched


def _text_fields(client: Elasticsearch, index: str) -> list[str]:
    mappings = client.indices.get_mapping(index=index)
    properties = next(iter(mappings.body.values()), {}).get("mappings", {}).get("properties", {})
    return [name for name, field in properties.items() if field.get("type") == "text"] or ["*"]
