"""Cost follows the change, not the table: one commit of 100 changed rows, synced incrementally,
on a 1M-row table against a 10k-row table, in the same run.

Each table is fully synced first, then for each round 100 existing products are rewritten in
one commit and `run_sync` (incremental) applies it. No vectors by default: the local search
server keeps every vector in memory (~40 KB each), so a 1M-vector index would not fit;
`--model hash:384` adds them.

Two ratios are printed. End to end includes the search server's answers, and noida-db's
per-request cost grows with the index (it persists and refreshes the whole index: a raw
100-document bulk takes ~0.3-1.9 s at 1M documents against milliseconds at 10k), which a real
cluster does not. lake-sync's own time is end to end minus the time the run was blocked on
the server (`SyncResult.index_wait_seconds`): Paimon planning and reading, documents, `_id`s,
serialisation, cursor. Goal: lake-sync's own median on 1M rows ≤ 1.5 × that on 10k rows.
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


def measure(es_url: str, workdir: Path, table_rows: int, rounds: int, model: str | None) -> tuple[float, float]:
    """Median seconds of the incremental runs: end to end, and without waiting on the server."""
    warehouse = workdir / f"warehouse-{table_rows}"
    write_table(warehouse, table_rows)
    index = fresh_index("incr")
    task_file = build_task_file(warehouse, es_url, index, workdir / "state", model=model)
    started = time.perf_counter()
    run_sync(task_file, TASK, mode=SyncMode.FULL)
    print(f"initial full sync of {table_rows:,} rows: {time.perf_counter() - started:.1f} s")
    total, own = [], []
    try:
        for round_number in range(rounds):
            commit_updates(warehouse, table_rows, seed=round_number)
            started = time.perf_counter()
            result = run_sync(task_file, TASK)
            total.append(time.perf_counter() - started)
            own.append(total[-1] - result.index_wait_seconds)
            assert result.mode is SyncMode.INCREMENTAL and result.documents_indexed == CHANGED_ROWS, result
    finally:
        delete_index(es_url, index)
    print(f"{table_rows:>9,} rows, {CHANGED_ROWS} changes: end to end (s) {', '.join(f'{s:.3f}' for s in total)}")
    print(f"{table_rows:>9,} rows, {CHANGED_ROWS} changes: lake-sync own (s) {', '.join(f'{s:.3f}' for s in own)}")
    return statistics.median(total), statistics.median(own)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default=None, help="embed descriptions with this model, e.g. hash:384")
    args = parser.parse_args()
    with search_server() as es_url, tempfile.TemporaryDirectory(prefix="bench-incr-") as workdir:
        small_total, small_own = measure(es_url, Path(workdir), args.small, args.rounds, args.model)
        large_total, large_own = measure(es_url, Path(workdir), args.large, args.rounds, args.model)
    print(f"end to end medians: {small_total:.3f} s vs {large_total:.3f} s, ratio {large_total / small_total:.2f}")
    ratio = large_own / small_own
    print(f"lake-sync own medians: {small_own:.3f} s vs {large_own:.3f} s")
    print(f"ratio large/small (lake-sync own) = {ratio:.2f} (goal <= {GOAL}) -> {'OK' if ratio <= GOAL else 'MISSED'}")


if __name__ == "__main__":
    main()
