"""Resync without downtime: a query loop on the alias during a full resync never sees an empty
or partial index.

A 20k-row table is synced, then fully resynced (a new physical index built behind the alias
and swapped in) while another thread counts documents through the alias as fast as it can.
Goal: zero queries (and so zero seconds) with a count other than the table's row count.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from _common import TASK, build_task_file, delete_index, fresh_index, search_server, write_table
from elasticsearch import Elasticsearch

from lake_sync.sync import SyncMode, run_sync


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()
    with search_server() as es_url, tempfile.TemporaryDirectory(prefix="bench-resync-") as directory:
        workdir = Path(directory)
        write_table(workdir / "warehouse", args.rows)
        index = fresh_index("resync")
        task_file = build_task_file(workdir / "warehouse", es_url, index, workdir / "state", model="hash:64")
        client = Elasticsearch(es_url, request_timeout=60)
        try:
            first = run_sync(task_file, TASK, mode=SyncMode.FULL)
            counts: list[tuple[float, int]] = []
            done = threading.Event()

            def query_loop() -> None:
                while not done.is_set():
                    counts.append((time.perf_counter(), int(client.count(index=index)["count"])))

            poller = threading.Thread(target=query_loop)
            poller.start()
            started = time.perf_counter()
            second = run_sync(task_file, TASK, mode=SyncMode.FULL)
            seconds = time.perf_counter() - started
            time.sleep(0.5)
            done.set()
            poller.join()
        finally:
            delete_index(es_url, index)
    wrong = [(at, count) for at, count in counts if count != args.rows]
    gap = (wrong[-1][0] - wrong[0][0]) if wrong else 0.0
    print(f"resync {first.physical_index} -> {second.physical_index} took {seconds:.1f} s")
    print(f"{len(counts)} counts through the alias during the resync; {len(wrong)} differed from {args.rows:,}")
    print(f"seconds with an empty or partial index: {gap:.3f} (goal 0) -> {'OK' if not wrong else 'MISSED'}")


if __name__ == "__main__":
    main()
