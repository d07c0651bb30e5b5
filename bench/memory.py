"""Memory: a full sync streams, so its peak RSS must not grow with the table.

Measured: the peak RSS (`ru_maxrss`) of a process that runs one full sync with no transforms
(no embedding), for a 200k-row table and a 20k-row table. Each sync runs in a fresh child
process (`python bench/memory.py --child ...`), alternating sizes, 3 runs each; the tables are
written once before any run. Goal: median peak RSS at 200k rows <= 1.5x that at 20k rows.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import build_task_file, delete_index, fresh_index, full_sync, search_server, write_table

SIZES = (20_000, 200_000)
RUNS = 3
GOAL = 1.5


def child(rows: int, warehouse: Path, es_url: str, index: str, state_dir: Path) -> None:
    """Run one full sync and print its peak RSS (MiB) as JSON on the last line."""
    result = full_sync(build_task_file(warehouse, es_url, index, state_dir, model=None))
    assert result.documents_indexed == rows, result
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"rows": rows, "peak_rss_mib": peak_kib / 1024, "seconds": result.seconds}))


def measure(rows: int, warehouse: Path, es_url: str, state_dir: Path) -> dict[str, float]:
    index = fresh_index("bench-memory")
    command = [sys.executable, __file__, "--child", str(rows), str(warehouse), es_url, index, str(state_dir)]
    try:
        completed = subprocess.run(command, capture_output=True, text=True)
    finally:
        delete_index(es_url, index)
    if completed.returncode != 0:
        raise RuntimeError(f"the {rows:,}-row sync failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp, search_server() as es_url:
        warehouses = {rows: Path(tmp) / f"warehouse-{rows}" for rows in SIZES}
        for rows, warehouse in warehouses.items():
            write_table(warehouse, rows)
        peaks: dict[int, list[float]] = {rows: [] for rows in SIZES}
        for run in range(RUNS):
            for rows in SIZES if run % 2 == 0 else reversed(SIZES):
                result = measure(rows, warehouses[rows], es_url, Path(tmp) / f"state-{run}-{rows}")
                peaks[rows].append(peak := result["peak_rss_mib"])
                print(f"run {run + 1}: {rows:>7,} rows  peak RSS {peak:6.0f} MiB  sync {result['seconds']:.1f} s")
        small, large = (statistics.median(peaks[rows]) for rows in SIZES)
        print(f"median peak RSS: {SIZES[0]:,} rows {small:.0f} MiB, {SIZES[1]:,} rows {large:.0f} MiB")
        print(f"{SIZES[1]:,} / {SIZES[0]:,} rows: {large / small:.2f}x  (goal <= {GOAL}x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=5, metavar=("ROWS", "WAREHOUSE", "ES_URL", "INDEX", "STATE_DIR"))
    arguments = parser.parse_args()
    if arguments.child:
        rows, warehouse, es_url, index, state_dir = arguments.child
        child(int(rows), Path(warehouse), es_url, index, Path(state_dir))
    else:
        main()
