"""Search over a task's index: embed the query with each vector field's own model, run kNN.

query text (or image) → embedder of every vector field that can take it → one kNN clause per
field (scores add up) [+ BM25 over the text fields with --hybrid] → hits
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from elasticsearch import Elasticsearch

from lake_sync.config import Task, TaskFile
from lake_sync.embed import Embedder, build_embedder
from lake_sync.errors import ConfigError, TargetError
from lake_sync.index.client import build_client, check_cluster

# kNN looks at this many candidates per requested hit (at least 100), trading latency for recall.
CANDIDATES_PER_HIT = 10
MIN_CANDIDATES = 100


@dataclass(frozen=True)
class SearchHit:
    id: str
    score: float
    document: dict[str, Any]


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
    for field, embedder in fields:
        vector = embedder.embed_images([image]) if image is not None else embedder.embed_queries([text or ""])
        candidates = max(MIN_CANDIDATES, k * CANDIDATES_PER_HIT)
        knn.append({"field": field, "query_vector": vector[0].tolist(), "k": k, "num_candidates": candidates})
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
    return [SearchHit(hit["_id"], float(hit["_score"]), hit.get("_source", {})) for hit in response["hits"]["hits"]]


def _query_fields(task_file: TaskFile, task: Task, *, image: bool) -> list[tuple[str, Embedder]]:
    embedders = [(t.to, build_embedder(t.model, task_file.model_connection(t.model))) for t in task.transforms]
    return [
        (field, embedder)
        for field, embedder in embedders
        if (embedder.embeds_images if image else embedder.embeds_texts)
    ]


def _text_fields(client: Elasticsearch, index: str) -> list[str]:
    mappings = client.indices.get_mapping(index=index)
    properties = next(iter(mappings.body.values()), {}).get("mappings", {}).get("properties", {})
    return [name for name, field in properties.items() if field.get("type") == "text"] or ["*"]
