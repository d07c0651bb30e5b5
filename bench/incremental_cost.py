"""Cost follows the change, not the table: one commit of 100 changed rows, synced incrementally,
on a 1M-row table against a 10k-row table, in the same run.

Each table is fully synced first, then for each round 100 existing products are rewritten in
one commit and `run_sync` (incremental) applies it. No vectors by default: the local search
server keeps every vector in memory (~40 KB each) and slows down with their count, so a
1M-vector index would measure the emulator, not lake-sync; `--model hash:384` adds them. Goal: median time on 1M rows
≤ 1.5 × median time on 10k rows.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from _common import DATABASE, TABLE, TASK, build_task_file, delete_index, fresh_index, search_server, write_table

from lake_sync.local.catalogue import catalogue_rows
from lake_sync.sync import SyncMode, run_sync

CHANGED_ROWS = 100
GOAL = 1.5


def commit_updates(warehouse: Path, table_rows: int, seed: int) -> None:
    """Rewrite CHANGED_ROWS random existing products in one commit."""
    from pypaimon import CatalogFactory

    table = CatalogFactory.create({"warehouse": str(warehouse)}).get_table(f"{DATABASE}.{TABLE}")
    start = random.Random(seed).randint(1, table_rows - CHANGED_ROWS)
    builder = table.new_batch_write_builder()
    writer, commit = builder.new_write(), builder.new_commit()
    writer.write_arrow(catalogue_rows(CHANGED_ROWS, start_id=start, seed=seed + 1000))
    commit.commit(writer.prepare_commit())
    writer.close()
    commit.close()


def measure(es_url: str, workdir: Path, table_rows: int, rounds: int, model: str | None) -> list[float]:
    warehouse = workdir / f"warehouse-{table_rows}"
    write_table(warehouse, table_rows)
    index = fresh_index("incr")
    task_file = build_task_file(warehouse, es_url, index, workdir / "state", model=model)
    started = time.perf_counter()
    run_sync(task_file, TASK, mode=SyncMode.FULL)
    print(f"initial full sync of {table_rows:,} rows: {time.perf_counter() - started:.1f} s")
    seconds = []
    try:
        for round_number in range(rounds):
            commit_updates(warehouse, table_rows, seed=round_number)
            started = time.perf_counter()
            result = run_sync(task_file, TASK)
            seconds.append(time.perf_counter() - started)
            assert result.mode is SyncMode.INCREMENTAL and result.documents_indexed == CHANGED_ROWS, result
    finally:
        delete_index(es_url, index)
    print(
        f"{table_rows:>9,} rows: incremental sync of {CHANGED_ROWS} changes, runs (s): "
        + ", ".join(f"{s:.3f}" for s in seconds)
    )
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default=None, help="embed descriptions with this model, e.g. hash:384")
    args = parser.parse_args()
    with search_server() as es_url, tempfile.TemporaryDirectory(prefix="bench-incr-") as workdir:
        small = statistics.median(measure(es_url, Path(workdir), args.small, args.rounds, args.model))
        large = statistics.median(measure(es_url, Path(workdir), args.large, args.rounds, args.model))
    ratio = large / small
    print(f"median: {args.small:,} rows {small:.3f} s, {args.large:,} rows {large:.3f} s")
    print(f"ratio large/small = {ratio:.2f} (goal <= {GOAL}) -> {'OK' if ratio <= GOAL else 'MISSED'}")


if __name__ == "__main__":
    main()
