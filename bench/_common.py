"""Shared benchmark helpers: a search server, a sample Paimon table, task files, timing and medians.

Each benchmark starts its own noida-db on a free port (or uses the cluster at ES_URL),
writes the sample catalogue with `write_catalogue`, and stops the server when done.
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from elasticsearch import Elasticsearch

# The benchmarks run as `python bench/NAME.py`, also from a checkout without `pip install -e .`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lake_sync.config import TaskFile, parse_task_file
from lake_sync.local.catalogue import write_catalogue
from lake_sync.local.search_server import start_search_server

TASK = "products"
DATABASE, TABLE = "shop", "products"


@contextmanager
def search_server(*, cpus: set[int] | None = None) -> Iterator[str]:
    """The URL of ES_URL's cluster, or of a fresh noida-db that is stopped (and its data removed) on exit;
    with `cpus`, the noida-db process runs on those CPUs only."""
    if os.environ.get("ES_URL"):
        yield os.environ["ES_URL"]
        return
    # noida-db rewrites its whole data file every few seconds; in RAM that costs less and varies less.
    parent = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="bench-noida-", dir=parent) as data_dir:
        server = start_search_server(Path(data_dir))
        try:
            if cpus is not None:
                pin_process(server.process.pid, cpus)
            yield server.url
        finally:
            server.stop()


def pin_process(pid: int, cpus: set[int]) -> None:
    """Run every thread of process `pid` on `cpus` only (Linux); threads it starts later inherit that."""
    for thread in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(thread.name), cpus)


def write_table(warehouse: Path, rows: int) -> None:
    """Write the sample catalogue (`shop.products`, primary key `id`) with `rows` rows."""
    started = time.perf_counter()
    write_catalogue(str(warehouse), rows=rows, database=DATABASE, table=TABLE)
    print(f"wrote {rows:,} rows to Paimon in {time.perf_counter() - started:.1f} s")


def build_task_file(warehouse: Path, es_url: str, index: str, state_dir: Path, *, model: str | None) -> TaskFile:
    """One task `products` from the sample table to `index`, embedding `description` with `model` if given."""
    transforms = [{"field": "description", "embed": "text", "model": model, "to": "description_vec"}] if model else []
    return parse_task_file(
        {
            "connections": {
                "lake": {"type": "paimon", "warehouse": str(warehouse)},
                "es": {"type": "elasticsearch", "hosts": [es_url], "request_timeout": 300},
            },
            "tasks": [
                {
                    "name": TASK,
                    "source": {"connection": "lake", "database": DATABASE, "table": TABLE},
                    "target": {"connection": "es", "index": index},
                    "transforms": transforms,
                }
            ],
            "state_dir": str(state_dir),
        }
    )


def fresh_index(prefix: str = "bench") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def delete_index(es_url: str, name: str) -> None:
    """Delete `name` and the physical indexes (`name-<n>`) a full sync put behind the alias `name`."""
    with Elasticsearch(es_url, request_timeout=300) as client:
        found = client.options(ignore_status=404).indices.get(index=f"{name}*", expand_wildcards="all")
        for index in found.body if found.meta.status == 200 else ():
            if index == name or re.fullmatch(rf"{re.escape(name)}-\d+", index):
                client.indices.delete(index=index)


def full_sync(task_file: TaskFile) -> Any:
    """A full sync of the task; `run_sync(mode=FULL)` where it exists, else the older `run_full_sync`."""
    from lake_sync import sync

    if hasattr(sync, "run_sync"):
        return sync.run_sync(task_file, TASK, mode=sync.SyncMode.FULL)
    return sync.run_full_sync(task_file, TASK)  # type: ignore[attr-defined]


def timed(run: Callable[[], Any]) -> float:
    """Seconds taken by `run()`."""
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def median_rate(label: str, items: int, seconds: list[float]) -> float:
    """Print and return the median items/s over the runs."""
    rates = [items / s for s in seconds]
    rate = statistics.median(rates)
    print(f"{label:<34} median {rate:>9,.0f}/s   runs: {', '.join(f'{r:,.0f}' for r in rates)}")
    return rate
