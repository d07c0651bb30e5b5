"""The embedding cache: a full resync of an unchanged 10k-row table makes no model call and is
at least 5× faster than the first sync, which embedded every description with the local model.

Both runs are full syncs of the same table into the same local search server, in the same
process; the cache starts empty. Goal: 0 model calls on the resync, and time ratio ≥ 5.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import TASK, build_task_file, delete_index, fresh_index, search_server, write_table

from lake_sync.embed import build_embedder
from lake_sync.sync import SyncMode, run_sync

GOAL = 5.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--model", default="local:all-MiniLM-L6-v2")
    args = parser.parse_args()
    build_embedder(args.model).embed_texts(["warm up"])  # load the model outside the timings
    with search_server() as es_url, tempfile.TemporaryDirectory(prefix="bench-cache-") as directory:
        workdir = Path(directory)
        write_table(workdir / "warehouse", args.rows)
        index = fresh_index("cache")
        task_file = build_task_file(workdir / "warehouse", es_url, index, workdir / "state", model=args.model)
        try:
            started = time.perf_counter()
            first = run_sync(task_file, TASK, mode=SyncMode.FULL)
            first_seconds = time.perf_counter() - started
            started = time.perf_counter()
            again = run_sync(task_file, TASK, mode=SyncMode.FULL)
            again_seconds = time.perf_counter() - started
        finally:
            delete_index(es_url, index)
    print(f"first sync : {first_seconds:6.1f} s, model calls {first.model_calls}, inputs {first.model_inputs}")
    print(f"resync     : {again_seconds:6.1f} s, model calls {again.model_calls}, cache hits {again.cache_hits}")
    ratio = first_seconds / again_seconds
    ok = again.model_calls == 0 and ratio >= GOAL
    print(f"speed-up {ratio:.1f}x (goal >= {GOAL:.0f}x, 0 calls) -> {'OK' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
