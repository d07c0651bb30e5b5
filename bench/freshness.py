"""Freshness: commit → searchable, under `dagster dev` with the snapshot sensor polling every 5 s.

A real dagster dev (webserver + daemon, queued run coordinator from the project's
dagster.yaml) watches a sample table; each of 10 commits adds one product, and we time
until a search (not a realtime GET) finds it. Goal: median ≤ 20 s.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import time
from pathlib import Path

import yaml
from _common import DATABASE, TABLE, TASK, search_server, write_table
from elasticsearch import Elasticsearch

from lake_sync.local.catalogue import catalogue_rows
from lake_sync.local.dagster_dev import isolated_dagster_env, start_dagster_dev

PROJECT = Path(__file__).resolve().parents[1]
GOAL_SECONDS = 20.0
TIMEOUT_SECONDS = 120.0


def searchable(client: Elasticsearch, index: str, document_id: str) -> bool:
    response = client.options(ignore_status=404).count(index=index, query={"ids": {"values": [document_id]}})
    return response.meta.status == 200 and response["count"] == 1


def wait_until(condition: object, timeout: float = TIMEOUT_SECONDS) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if condition():  # type: ignore[operator]
            return time.perf_counter() - started
        time.sleep(0.1)
    raise TimeoutError(f"not searchable within {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commits", type=int, default=10)
    parser.add_argument("--poll-seconds", type=int, default=5)
    parser.add_argument("--model", default="hash:384")
    args = parser.parse_args()
    from pypaimon import CatalogFactory

    with search_server() as es_url, tempfile.TemporaryDirectory(prefix="bench-fresh-") as directory:
        workdir = Path(directory)
        warehouse = workdir / "warehouse"
        write_table(warehouse, 1000)
        task_file = workdir / "lake_sync.yaml"
        task = {
            "name": TASK,
            "source": {"connection": "lake", "database": DATABASE, "table": TABLE},
            "target": {"connection": "es", "index": "fresh"},
            "fields": ["id", "name", "description", "price"],
            "transforms": [{"field": "description", "embed": "text", "model": args.model, "to": "description_vec"}],
            "schedule": {"poll_seconds": args.poll_seconds},
        }
        connections = {
            "lake": {"type": "paimon", "warehouse": str(warehouse)},
            "es": {"type": "elasticsearch", "hosts": [es_url]},
        }
        task_file.write_text(yaml.safe_dump({"connections": connections, "tasks": [task]}))
        workspace, env = isolated_dagster_env(workdir, task_file=task_file, instance_yaml=PROJECT / "dagster.yaml")
        client = Elasticsearch(es_url, request_timeout=60)
        table = CatalogFactory.create({"warehouse": str(warehouse)}).get_table(f"{DATABASE}.{TABLE}")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with start_dagster_dev(workspace, port=port, env=env, log=workdir / "dagster.log") as dev:
            dev.wait_until_ready()
            print(f"initial sync through the sensor: {wait_until(lambda: searchable(client, 'fresh', '1000')):.1f} s")
            seconds = []
            for commit_number in range(args.commits):
                product_id = 2_000_000 + commit_number
                builder = table.new_batch_write_builder()
                writer, commit = builder.new_write(), builder.new_commit()
                writer.write_arrow(catalogue_rows(1, start_id=product_id, seed=commit_number))
                commit.commit(writer.prepare_commit())
                writer.close()
                commit.close()
                seconds.append(wait_until(lambda: searchable(client, "fresh", str(product_id))))  # noqa: B023
                print(f"commit {commit_number + 1}: searchable after {seconds[-1]:.1f} s")
        median = statistics.median(seconds)
        print(f"freshness median {median:.1f} s over {len(seconds)} commits (sensor every {args.poll_seconds} s)")
        print(f"goal <= {GOAL_SECONDS:.0f} s -> {'OK' if median <= GOAL_SECONDS else 'MISSED'}")


if __name__ == "__main__":
    main()
