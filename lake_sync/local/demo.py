"""`make demo` and `make ui`: the main job on embedded defaults, end to end.

local search server (noida-db, data in .demo/search) + local model server + sample Paimon table
(.demo/warehouse) → `lake-sync sync products --full` (the Dagster job, in-process) → a semantic
query → a commit → `lake-sync sync products` (incremental) → `lake-sync predict products_offline`
(batch predict → batch ingest) → online and offline results side by side.
With ES_URL / MODEL_SERVER_URL set, those servers are used and no local one is started.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console

from lake_sync import cli
from lake_sync.local.catalogue import commit_changes, write_catalogue
from lake_sync.local.dagster_dev import start_dagster_dev
from lake_sync.local.model_server import running_model_server
from lake_sync.local.search_server import start_search_server

DEMO_DIR = Path(".demo")
DEMO_ROWS = 3000
DEMO_PORT = 9200
DEMO_QUERY = "waterproof hiking boots"
UI_ADDRESS = ("127.0.0.1", 3000)
MODEL_SERVER_PORT = 8000
DEMO_MODELS = {"all-MiniLM-L6-v2": "local:all-MiniLM-L6-v2"}
DEMO_UPDATE = {1: "Now with a waterproof Gore-Tex membrane and a lighter, recycled sole."}
DEMO_DELETE = 2
DEMO_ADDED = [
    ("Nordkap Glacier crampons", "steel crampons that strap onto hiking boots for walking on ice and hard snow"),
    ("Alpenlicht Bivy bag", "a waterproof breathable emergency shelter for one person that weighs 300 grams"),
]
DEMO_NEW_QUERY = "traction for boots on ice"

console = Console()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ui", action="store_true", help="start the Dagster UI on the demo instead of running it")
    args = parser.parse_args()
    with ExitStack() as stack:
        if not args.ui:
            # The demo starts from nothing each time: a fresh table, a fresh local index.
            shutil.rmtree(DEMO_DIR, ignore_errors=True)
        if not os.environ.get("ES_URL"):
            port = DEMO_PORT if _port_is_free(DEMO_PORT) else 0
            server = stack.enter_context(start_search_server(DEMO_DIR / "search", port=port))
            os.environ["ES_URL"] = server.url
            console.print(f"local search server (noida-db) at {server.url}, data in {DEMO_DIR / 'search'}")
        if not os.environ.get("MODEL_SERVER_URL"):
            port = MODEL_SERVER_PORT if _port_is_free(MODEL_SERVER_PORT) else 0
            models = stack.enter_context(
                running_model_server(port=port, models=DEMO_MODELS, storage_dir=DEMO_DIR / "model-server")
            )
            os.environ["MODEL_SERVER_URL"] = models.base_url
            console.print(f"local OpenAI-compatible model server at {models.base_url}")
        return _ui() if args.ui else _demo()


def _demo() -> int:
    warehouse = DEMO_DIR / "warehouse"
    os.environ.setdefault("LAKE_WAREHOUSE", str(warehouse))
    console.rule("1. a Paimon table")
    snapshot = write_catalogue(str(warehouse), rows=DEMO_ROWS)
    console.print(f"wrote {DEMO_ROWS:,} products to shop.products in {warehouse} (snapshot {snapshot})")
    console.rule("2. full sync: Paimon → all-MiniLM-L6-v2 → Elasticsearch (Dagster job, in-process)")
    if cli.main(["sync", "products", "--full"]) != 0:
        return 1
    console.rule(f"3. semantic search: {DEMO_QUERY!r}")
    if cli.main(["search", "products", DEMO_QUERY, "-k", "5"]) != 0:
        return 1
    console.rule("4. a new commit: one update, one delete, two new products")
    snapshot = commit_changes(str(warehouse), updated=DEMO_UPDATE, deleted=[DEMO_DELETE], added=DEMO_ADDED)
    console.print(f"committed snapshot {snapshot}: updated {list(DEMO_UPDATE)}, deleted [{DEMO_DELETE}], added 2")
    if cli.main(["status", "products"]) != 0:
        return 1
    console.rule("5. incremental sync: only the changed rows are read and embedded")
    if cli.main(["sync", "products"]) != 0:
        return 1
    _show_changes()
    if cli.main(["search", "products", DEMO_NEW_QUERY, "-k", "3"]) != 0:
        return 1
    console.rule("6. offline path: batch predict → batch ingest, through the local OpenAI-compatible server")
    if cli.main(["predict", "products_offline"]) != 0:
        return 1
    _compare_online_and_offline()
    console.rule("next")
    console.print("Open the Dagster UI on this demo with [bold]make ui[/bold] (http://127.0.0.1:3000).")
    return 0


def _show_changes() -> None:
    from lake_sync.config import load_task_file
    from lake_sync.index.client import build_client

    task_file = load_task_file()
    client = build_client(task_file.target_connection(task_file.task("products")))
    for key in [*DEMO_UPDATE, DEMO_DELETE]:
        found = client.options(ignore_status=404).get(
            index="products", id=str(key), source_excludes=["description_vec"]
        )
        shown = found["_source"]["description"] if found.meta.status == 200 else "[red]gone (deleted)[/red]"
        console.print(f"document {key}: {shown}")


def _compare_online_and_offline() -> None:
    from rich.table import Table

    from lake_sync.config import load_task_file
    from lake_sync.search import search

    task_file = load_task_file()
    online, offline = (search(task_file, name, DEMO_QUERY, k=5) for name in ("products", "products_offline"))
    table = Table(title=f"{DEMO_QUERY!r}: online sync next to batch inference (same model)")
    table.add_column("#", justify="right")
    table.add_column("online (products)")
    table.add_column("offline (products_offline)")
    for rank, (left, right) in enumerate(zip(online, offline, strict=False), 1):
        table.add_row(str(rank), _hit(left), _hit(right))
    console.print(table)


def _hit(hit: Any) -> str:
    return f"{hit.id} {hit.document.get('title', '')} ({hit.score:.3f})"


def _ui() -> int:
    host, port = UI_ADDRESS
    console.print(f"Dagster UI at http://{host}:{port} (Ctrl-C stops it and the search server)")
    with start_dagster_dev(Path("workspace.yaml").resolve(), host=host, port=port) as dev:
        try:
            return dev.process.wait()
        except KeyboardInterrupt:
            return 0


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


if __name__ == "__main__":
    sys.exit(main())
