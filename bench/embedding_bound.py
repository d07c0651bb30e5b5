"""Embedding bound: with a real model, a full sync should run nearly as fast as the model alone.

Measured, in rows/s over 5k rows of the sample catalogue, `description` embedded with the local
all-MiniLM-L6-v2 (loaded once and warmed up on real texts before timing):
  model, all rows        `embedder.embed_texts` on the 5k description texts, nothing else.
  model, distinct texts  the same on the distinct texts only: the model's share of a sync, whose
                         embedding cache embeds a repeated text once (~4k of the 5k are distinct).
  lake-sync              a full sync end to end (Paimon read, documents, embedding cache and model,
                         bulk, refresh, cursor), with an empty cache (a fresh state dir) each run.
3 rounds, the order rotating from round to round; each sync writes a fresh index.
Goal: lake-sync >= 0.85x the model alone (medians); the distinct-texts ratio is the strict one.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import (
    DATABASE,
    TABLE,
    build_task_file,
    delete_index,
    fresh_index,
    full_sync,
    median_rate,
    search_server,
    timed,
    write_table,
)

from lake_sync.embed import build_embedder
from lake_sync.source.paimon import open_table

ROWS = 5_000
RUNS = 3
MODEL = "local:all-MiniLM-L6-v2"
GOAL = 0.85


def description_texts(warehouse: Path) -> list[str]:
    """The description column of the table's latest snapshot, as the sync reads it."""
    table = open_table({"warehouse": str(warehouse)}, DATABASE, TABLE)
    snapshot = table.latest_snapshot()
    assert snapshot is not None
    batches = table.read_snapshot(snapshot.id, columns=["description"], batch_rows=ROWS)
    return [text for batch in batches for text in batch.column("description").to_pylist()]


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-embedding-") as tmp, search_server() as es_url:
        warehouse = Path(tmp) / "warehouse"
        write_table(warehouse, ROWS)
        texts = description_texts(warehouse)
        assert len(texts) == ROWS
        started = time.perf_counter()
        embedder = build_embedder(MODEL)  # cached: the sync gets this same loaded model
        embedder.embed_texts(texts[:512])  # warm-up on real texts, so torch has seen their shapes
        print(f"loaded and warmed up {MODEL} in {time.perf_counter() - started:.1f} s")

        # The sync's embedding cache embeds a repeated text once; this is what its model sees.
        distinct = list(dict.fromkeys(texts))
        print(f"{len(distinct):,} distinct texts among {ROWS:,} rows")

        def sync() -> None:
            index = fresh_index()
            try:
                # A state dir of its own: every run starts with an empty embedding cache.
                result = full_sync(build_task_file(warehouse, es_url, index, Path(tmp) / f"state-{index}", model=MODEL))
                assert result.documents_indexed == ROWS
            finally:
                delete_index(es_url, index)

        runs: dict[str, Callable[[], Any]] = {
            "model, all rows": lambda: embedder.embed_texts(texts),
            "model, distinct texts": lambda: embedder.embed_texts(distinct),
            "lake-sync": sync,
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        for run in range(RUNS):
            names = list(runs)[run % len(runs) :] + list(runs)[: run % len(runs)]  # rotate the order
            for name in names:
                times[name].append(timed(runs[name]))
            print(f"round {run + 1}: " + ", ".join(f"{n} {ROWS / t[-1]:,.0f} rows/s" for n, t in times.items()))

        rates = {name: median_rate(name, ROWS, seconds) for name, seconds in times.items()}
        for baseline in ("model, all rows", "model, distinct texts"):
            print(f"lake-sync / {baseline}: {rates['lake-sync'] / rates[baseline]:.2f}x  (goal >= {GOAL}x)")


if __name__ == "__main__":
    main()
