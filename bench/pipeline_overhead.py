"""Pipeline overhead: lake-sync's full sync against plain bulk loading, with a zero-cost embedder.

Measured, in docs/s over 50k rows of the sample catalogue, `description` embedded with `hash:384`:
  lake-sync  a full sync end to end: Paimon read, conversion, `_id`, vectors (through its embedding
             cache, empty at the start of each run), bulk, refresh, cursor, alias swap.
  helpers    (a) `elasticsearch.helpers.bulk` (default client serializer, chunks of 500) over the same
             documents, precomputed in memory with vectors as Python lists.
  raw        (b) the server's limit: the same NDJSON bodies, serialised before timing, 500 docs per
             request, posted sequentially and with 2 in flight; the faster of the two counts.
Baselines write to an index created beforehand with lake-sync's mapping, and end with a refresh.
Goal: lake-sync >= 1.5x helpers and >= 0.8x raw (medians of the runs, in one process).
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import urllib3
from _common import (
    TASK,
    build_task_file,
    delete_index,
    fresh_index,
    full_sync,
    median_rate,
    search_server,
    timed,
    write_table,
)
from elasticsearch import Elasticsearch, helpers

from lake_sync.config import TaskFile
from lake_sync.documents import batch_documents
from lake_sync.source.paimon import open_table
from lake_sync.sync import plan_sync

ROWS = 50_000
RUNS = 7
CHUNK = 500
MODEL = "hash:384"

Document = tuple[str, dict[str, Any]]


def precompute(task_file: TaskFile) -> tuple[dict[str, Any], list[Document]]:
    """The index mapping and every (id, body) lake-sync would send, vectors as numpy arrays."""
    task = task_file.task(TASK)
    table = open_table(task_file.source_connection(task).catalog_options(), task.source.database, task.source.table)
    plan = plan_sync(task, table, task_file)
    (vector,) = plan.vectors
    snapshot = table.latest_snapshot()
    assert snapshot is not None
    documents: list[Document] = []
    for batch in table.read_snapshot(snapshot.id, columns=plan.columns, batch_rows=task.read_batch_rows):
        vectors = vector.embedder.embed_texts(batch.column(vector.column).to_pylist())
        for document, values in zip(batch_documents(batch, plan.documents), vectors, strict=True):
            assert document.id is not None
            documents.append((document.id, {**document.body, vector.field: values}))
    return plan.mappings, documents


def ndjson_chunks(documents: list[Document]) -> list[bytes]:
    """Bulk bodies of CHUNK documents each, serialised as lake-sync does (orjson, float32 vectors)."""
    lines = [
        orjson.dumps({"index": {"_id": i}}) + b"\n" + orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
        for i, body in documents
    ]
    return [b"".join(lines[start : start + CHUNK]) for start in range(0, len(lines), CHUNK)]


def run_helpers(es_url: str, index: str, documents: list[dict[str, Any]]) -> None:
    with Elasticsearch(es_url, request_timeout=300) as client:
        success, errors = helpers.bulk(client, documents, chunk_size=CHUNK, index=index)
        assert success == len(documents) and not errors
        client.indices.refresh(index=index)


def run_raw(es_url: str, index: str, bodies: list[bytes], in_flight: int) -> None:
    http = urllib3.PoolManager(maxsize=in_flight)
    url = f"{es_url}/{index}/_bulk?filter_path=errors"

    def post(body: bytes) -> None:
        response = http.request("POST", url, body=body, headers={"Content-Type": "application/x-ndjson"})
        assert response.status == 200 and not orjson.loads(response.data)["errors"], response.data[:300]

    if in_flight == 1:
        for body in bodies:
            post(body)
    else:
        with ThreadPoolExecutor(in_flight) as pool:
            list(pool.map(post, bodies))
    http.request("POST", f"{es_url}/{index}/_refresh")
    http.clear()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp, search_server() as es_url:
        warehouse = Path(tmp) / "warehouse"
        write_table(warehouse, ROWS)
        mappings, documents = precompute(build_task_file(warehouse, es_url, "unused", Path(tmp), model=MODEL))
        as_lists = [
            {"_id": i, "_source": {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in body.items()}}
            for i, body in documents
        ]
        bodies = ndjson_chunks(documents)
        size = sum(map(len, bodies)) / 2**20
        print(f"{len(documents):,} documents, {size:.0f} MiB of NDJSON in {len(bodies)} bodies")

        def measure(name: str, index: str) -> float:
            """Seconds one run of `name` takes to load every document into the fresh `index`."""
            if name == "lake-sync":
                # A state dir of its own: every run starts with an empty embedding cache.
                task_file = build_task_file(warehouse, es_url, index, Path(tmp) / f"state-{index}", model=MODEL)
                started = time.perf_counter()
                result = full_sync(task_file)
                seconds = time.perf_counter() - started
                assert result.documents_indexed == ROWS and not result.dead_lettered
                return seconds
            with Elasticsearch(es_url) as client:
                client.indices.create(index=index, mappings=mappings)
            if name == "helpers (a)":
                return timed(lambda: run_helpers(es_url, index, as_lists))
            return timed(lambda: run_raw(es_url, index, bodies, in_flight=1 if name.endswith("sequential") else 2))

        names = ["lake-sync", "helpers (a)", "raw (b), sequential", "raw (b), 2 in flight"]
        times: dict[str, list[float]] = {name: [] for name in names}
        for run in range(RUNS):
            for name in names[run % len(names) :] + names[: run % len(names)]:  # rotate the order
                index = fresh_index()
                try:
                    times[name].append(measure(name, index))
                finally:
                    delete_index(es_url, index)
            print(f"run {run + 1}/{RUNS}: " + ", ".join(f"{n} {ROWS / t[-1]:,.0f}/s" for n, t in times.items()))

        rates = {name: median_rate(name, ROWS, seconds) for name, seconds in times.items()}
        raw_name = max(("raw (b), sequential", "raw (b), 2 in flight"), key=rates.__getitem__)
        print(f"raw baseline used: {raw_name} (lake-sync sends 2 in flight, its default)")
        print(f"lake-sync / helpers (a): {rates['lake-sync'] / rates['helpers (a)']:.2f}x  (goal >= 1.5x)")
        print(f"lake-sync / raw (b):     {rates['lake-sync'] / rates[raw_name]:.2f}x  (goal >= 0.8x)")
        for name in ("raw (b), sequential", "raw (b), 2 in flight"):
            print(f"  lake-sync / {name}: {rates['lake-sync'] / rates[name]:.2f}x")


if __name__ == "__main__":
    main()
