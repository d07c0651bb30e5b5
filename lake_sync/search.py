"""Semantic search over a task's index: embed the query with the task's model, run a kNN query.

query text → embedder (same model as the vector field) → kNN on the vector field → hits
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lake_sync.config import TaskFile
from lake_sync.embed import build_embedder
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


def semantic_search(task_file: TaskFile, task_name: str, text: str, *, k: int = 10) -> list[SearchHit]:
    """The `k` documents nearest to `text` in the task's first text vector field."""
    task = task_file.task(task_name)
    if not task.transforms:
        raise ConfigError(f"task '{task.name}': transforms: the task has no vector field to search; add a transform")
    transform = task.transforms[0]
    query_vector = build_embedder(transform.model, task_file.model_connection(transform.model)).embed_texts([text])[0]
    connection = task_file.target_connection(task)
    client = build_client(connection)
    check_cluster(client, connection)
    response = client.options(ignore_status=404).search(
        index=task.target.index,
        knn={
            "field": transform.to,
            "query_vector": query_vector.tolist(),
            "k": k,
            "num_candidates": max(MIN_CANDIDATES, k * CANDIDATES_PER_HIT),
        },
        source_excludes=[t.to for t in task.transforms],
        size=k,
    )
    if response.meta.status == 404:
        raise TargetError(f"index '{task.target.index}' does not exist; run `lake-sync sync {task.name} --full` first")
    return [SearchHit(hit["_id"], float(hit["_score"]), hit.get("_source", {})) for hit in response["hits"]["hits"]]
