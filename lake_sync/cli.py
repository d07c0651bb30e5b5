"""The `lake-sync` command line.

`sync`, `predict` and `ingest` are runs: they execute a Dagster job in-process, so they land in the
same run history as UI launches (with DAGSTER_HOME set). `search` is not a run: it calls the core.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lake_sync.errors import ConfigError, LakeSyncError

console = Console()
errors = Console(stderr=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lake-sync` console script; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except ConfigError as error:
        errors.print(f"[red]configuration error:[/red] {error}", markup=True, highlight=False)
        return 2
    except LakeSyncError as error:
        errors.print(f"[red]error:[/red] {error}", markup=True, highlight=False)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lake-sync", description="Keep Elasticsearch indexes in step with Paimon tables."
    )
    parser.add_argument("--tasks", help="task file (default: $LAKE_SYNC_TASKS, else ./lake_sync.yaml)")
    commands = parser.add_subparsers(dest="command", required=True)

    sync = commands.add_parser("sync", help="sync a task's table into its index (runs the task's Dagster job)")
    sync.add_argument("task")
    sync.add_argument("--full", action="store_true", help="rebuild the index from the latest snapshot, swap it in")
    sync.add_argument("--keep-old-index", action="store_true", help="with --full: keep the replaced index")
    sync.set_defaults(run=_sync)

    predict = commands.add_parser(
        "predict",
        help="embed a task's latest snapshot with the OpenAI Batch API, then ingest it (runs the offline job)",
    )
    predict.add_argument("task")
    predict.add_argument("--staging", type=Path, help="where the job's files go (default <state_dir>/batch/<task>)")
    predict.add_argument(
        "--poll-seconds", type=float, default=None, help="longest wait between two batch status checks (default 60)"
    )
    predict.set_defaults(run=_predict)

    status = commands.add_parser("status", help="cursor, latest snapshot, lag and document count of a task")
    status.add_argument("task")
    status.set_defaults(run=_status)

    search = commands.add_parser("search", help="semantic search in a task's index")
    search.add_argument("task")
    search.add_argument("text", nargs="?", help="query text, embedded for every text-queryable vector field")
    search.add_argument("--image", type=Path, help="query image: searches the image vector fields")
    search.add_argument("--hybrid", action="store_true", help="add BM25 over the text fields to the kNN scores")
    search.add_argument("-k", type=int, default=10, help="number of hits (default 10)")
    search.set_defaults(run=_search)

    ingest = commands.add_parser(
        "ingest", help="ingest batch-prediction output files into an index (an ML Commons _batch_ingestion body)"
    )
    ingest.add_argument("request", type=Path, help="request JSON: index_name, field_map, ingest_fields, data_source")
    ingest.add_argument("--target", help="elasticsearch connection of the task file (default: its only one)")
    # SUPPRESS: without the flag here, the top-level `--tasks` (before the command) stays in effect.
    ingest.add_argument("--tasks", default=argparse.SUPPRESS, help="task file (as the top-level --tasks)")
    ingest.set_defaults(run=_ingest)

    serve = commands.add_parser(
        "serve-models", help="serve embedding models over the OpenAI API (embeddings, files, batches), offline"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on, 0 for any free one (default 8000)")
    serve.add_argument(
        "--model",
        action="append",
        metavar="NAME=SPEC",
        help="served model name and lake-sync model spec, repeatable (default all-MiniLM-L6-v2=local:all-MiniLM-L6-v2)",
    )
    serve.add_argument(
        "--storage", type=Path, help="where files and batches are kept (default .lake_sync/model_server)"
    )
    serve.add_argument("--latency-ms", type=float, default=0.0, help="added to every request, to mimic a remote model")
    serve.add_argument(
        "--latency-only-dims",
        type=int,
        help="answer with canned vectors of this many dims and run no model (benchmarks)",
    )
    serve.add_argument(
        "--api-key", help="require this bearer key (default: $LAKE_SYNC_MODEL_SERVER_API_KEY, else no key)"
    )
    serve.set_defaults(run=_serve_models)
    return parser


def _sync(args: argparse.Namespace) -> int:

    from lake_sync.defs.assets import SyncConfig, sync_op_name
    from lake_sync.defs.definitions import build_defs
    from lake_sync.defs.jobs import sync_job_name

    mode = "full" if args.full else "incremental"
    with _progress_bar(f"[bold]{args.task}[/bold] {mode} sync") as bar:
        rows = bar.add_task("rows", total=None)
        defs = build_defs(args.tasks, progress=lambda done, total: bar.update(rows, completed=done, total=total))
        if not any(job.name == sync_job_name(args.task) for job in defs.jobs or []):
            raise ConfigError(f"no task named '{args.task}' in the task file")
        ops = {sync_op_name(args.task): SyncConfig(mode=mode, keep_old_index=args.keep_old_index)}
        result = _execute(defs, sync_job_name(args.task), ops)
    if not result.success:
        errors.print(f"[red]sync failed:[/red] {_failure_message(result)}", markup=True, highlight=False)
        return 1
    metadata = {
        key: value.value
        for event in result.get_asset_materialization_events()
        if event.asset_key and event.asset_key.path[-1] in ("embedded_batches", "search_index")
        for key, value in event.materialization.metadata.items()
    }
    _print_summary(args.task, result.run_id, metadata)
    return 0


def _predict(args: argparse.Namespace) -> int:

    from lake_sync.batch.predict import offline_transforms
    from lake_sync.config import load_task_file
    from lake_sync.defs.definitions import build_defs
    from lake_sync.defs.offline import PredictConfig, offline_job_name

    task_file = load_task_file(args.tasks)
    offline_transforms(task_file.task(args.task), task_file)
    if args.poll_seconds is not None and args.poll_seconds <= 0:
        raise ConfigError(f"--poll-seconds must be positive, got {args.poll_seconds:g}")
    settings = {"staging": str(args.staging) if args.staging else None}
    if args.poll_seconds is not None:
        settings["poll_seconds"] = args.poll_seconds
    with _progress_bar(f"[bold]{args.task}[/bold] {{task.description}}") as bar:
        phases = [bar.add_task("requests answered", total=None)]

        def report(done: int, total: int | None) -> None:
            # Predict reports answered requests until all are answered; every later call is the ingest's.
            bar.update(phases[-1], completed=done, total=total)
            if len(phases) == 1 and total is not None and done >= total:
                phases.append(bar.add_task("documents written", total=None))

        defs = build_defs(args.tasks, progress=report)
        result = _execute(defs, offline_job_name(args.task), {"batch_predict": PredictConfig(**settings)})
    if not result.success:
        errors.print(f"[red]predict failed:[/red] {_failure_message(result)}", markup=True, highlight=False)
        return 1
    _print_metadata(f"{args.task}: batch predict (run {result.run_id[:8]})", _output_metadata(result, "batch_predict"))
    _print_metadata(f"{args.task}: batch ingest", _output_metadata(result, "batch_ingest"))
    return 0


def _progress_bar(title: str) -> Progress:
    return Progress(
        TextColumn(title), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True
    )


def _instance() -> Any:
    """The DAGSTER_HOME instance when there is one (so runs show in the UI), else an ephemeral one."""
    import dagster as dg

    return dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()


def _execute(
    defs: Any,
    job_name: str,
    ops: dict[str, Any],
    *,
    instance: Any = None,
    run_id: str | None = None,
    log_level: str = "WARNING",
) -> Any:
    """Run a job in-process, in `instance` (default: `_instance()`)."""
    import dagster as dg

    # The progress bar and the summary replace Dagster's event log on the terminal.
    run_config = dg.RunConfig(ops=ops, loggers={"console": {"config": {"log_level": log_level}}})
    return defs.resolve_job_def(job_name).execute_in_process(
        run_config=run_config, instance=instance or _instance(), run_id=run_id, raise_on_error=False
    )


def _output_metadata(result: Any, node: str) -> dict[str, Any]:
    return {
        key: value.value
        for event in result.events_for_node(node)
        if event.is_successful_output
        for key, value in event.step_output_data.metadata.items()
    }


def _print_metadata(title: str, metadata: dict[str, Any]) -> None:
    table = Table(title=title, show_header=False)
    table.add_column()
    table.add_column(overflow="fold")
    for key, value in metadata.items():
        table.add_row(key, f"{value:g}" if isinstance(value, float) else str(value))
    console.print(table)


def _search(args: argparse.Namespace) -> int:
    from lake_sync.config import load_task_file
    from lake_sync.search import search

    if args.image is not None and not args.image.is_file():
        raise ConfigError(f"search --image: {args.image} is not a file")
    image = args.image.read_bytes() if args.image is not None else None
    hits = search(load_task_file(args.tasks), args.task, args.text, image=image, k=args.k, hybrid=args.hybrid)
    table = Table(title=f"{args.task}: {args.text or args.image}", show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("_id")
    table.add_column("document")
    chunked = any(hit.chunks for hit in hits)
    if chunked:
        table.add_column("best chunk")
    for rank, hit in enumerate(hits, 1):
        # Short fields first, so names and prices stay visible beside long descriptions.
        fields = sorted(hit.document.items(), key=lambda item: len(str(item[1])))
        shown = ", ".join(f"{key}={value}" for key, value in fields)
        best = "\n".join(f"{name} #{c.position} ({c.score:.3f}): {c.text}" for name, c in hit.chunks.items())
        table.add_row(str(rank), f"{hit.score:.3f}", hit.id, shown[:160], *([best[:400]] if chunked else []))
    console.print(table)
    return 0


def _status(args: argparse.Namespace) -> int:
    from lake_sync.config import load_task_file
    from lake_sync.sync import count_target_documents, sync_lag

    task_file = load_task_file(args.tasks)
    lag = sync_lag(task_file, args.task)
    table = Table(title=f"{args.task}: status", show_header=False)
    table.add_row("cursor snapshot", str(lag.cursor.snapshot_id) if lag.cursor else "none (never synced)")
    table.add_row("synced at", lag.cursor.synced_at if lag.cursor else "-")
    table.add_row("latest snapshot", str(lag.latest_snapshot.id) if lag.latest_snapshot else "none (empty table)")
    table.add_row("lag (snapshots)", _or_unknown(lag.snapshots_behind))
    table.add_row("lag (seconds)", _or_unknown(lag.seconds_behind))
    table.add_row("documents", str(count_target_documents(task_file, args.task)) if lag.cursor else "-")
    console.print(table)
    return 0


def _ingest(args: argparse.Namespace) -> int:
    import signal
    import threading
    import uuid

    import orjson
    from rich.progress import DownloadColumn

    from lake_sync.batch.ingest import IngestProgress
    from lake_sync.batch.target import resolve_ingest
    from lake_sync.config import load_task_file
    from lake_sync.defs.definitions import build_defs
    from lake_sync.defs.ingest import INGEST_JOB, INGEST_OP, IngestControl, IngestRequestConfig, ingest_slot

    try:
        body = orjson.loads(args.request.read_bytes())
    except OSError as error:
        raise ConfigError(f"ingest: cannot read {args.request}: {error.strerror}") from None
    except orjson.JSONDecodeError as error:
        raise ConfigError(f"ingest: {args.request} is not valid JSON: {error}") from None
    # The run resolves the body again; resolving here first fails a bad body or target before any run.
    resolved = resolve_ingest(body, load_task_file(args.tasks), target=args.target, source=str(args.request))
    index_name = resolved.request.index_name
    cancel = threading.Event()
    # SIGTERM (timeout, CI, systemd) as Ctrl-C: leave the queue, or cancel the run, cleanly.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with Progress(
        TextColumn(f"[bold]{index_name}[/bold] ingest"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        shown = bar.add_task("bytes", total=None, counts="", start=False)

        def show(progress: IngestProgress) -> None:
            counts = (
                f"{progress.lines_read:,} lines, {progress.documents_written:,} written, {progress.failed:,} failed"
            )
            bar.start_task(shown)
            bar.update(shown, completed=progress.bytes_read, total=progress.bytes_total, counts=counts)

        # The credential stays in memory: the run config is stored with the run and shown in the UI.
        control = IngestControl(progress=show, cancel=cancel, credential=body.get("credential"))
        config = IngestRequestConfig(
            request={key: value for key, value in body.items() if key != "credential"}, target=args.target
        )
        defs = build_defs(args.tasks, ingest_control=control)
        # Known before the run exists: the slot is claimed under it while queued.
        instance, run_id = _instance(), str(uuid.uuid4())

        def stop() -> None:
            cancel.set()
            run = instance.get_run_by_id(run_id)
            if run is not None and not run.is_finished:
                # The op then ends CANCELLED and fails, and a run marked canceling ends CANCELED.
                instance.report_run_canceling(run, message="Ctrl-C at the terminal")

        try:
            with ingest_slot(instance, run_id, on_queued=_show_queued):
                # The summary (and the run history) report failures: no Dagster error log on the terminal.
                result = _interruptible(
                    lambda: _execute(
                        defs, INGEST_JOB, {INGEST_OP: config}, instance=instance, run_id=run_id, log_level="CRITICAL"
                    ),
                    stop,
                )
        except KeyboardInterrupt:
            errors.print("cancelled while queued: nothing was ingested", highlight=False)
            return 130
    return _ingest_summary(index_name, result)


def _interruptible(run: Callable[[], Any], on_interrupt: Callable[[], None]) -> Any:
    """`run()` beside the main thread, so Ctrl-C calls `on_interrupt` (a clean cancel) instead of killing it."""
    import threading

    outcome: list[Any] = []
    done = threading.Event()

    def work() -> None:
        try:
            outcome.append(run())
        except BaseException as error:  # noqa: BLE001 - re-raised on the main thread below
            outcome.append(error)
        finally:
            done.set()

    worker = threading.Thread(target=work, name="lake-sync-run")
    worker.start()
    # Wait on an Event, not Thread.join: a join interrupted by Ctrl-C can report a live thread as ended.
    while not done.is_set():
        try:
            done.wait(0.2)
        except KeyboardInterrupt:
            on_interrupt()
    worker.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _show_queued(usage: Any) -> None:
    running = f"{len(usage.holders)} ingest{'' if len(usage.holders) == 1 else 's'} running"
    if usage.holders:
        running += f" (run {', '.join(run_id[:8] for run_id in usage.holders)})"
    console.print(f"queued: {running}, waiting for a slot in pool {usage.pool} (limit {usage.limit})", highlight=False)


def _ingest_summary(index_name: str, result: Any) -> int:
    """Print the ingest's accounting from the run's metadata; exit 1 if it failed, 130 if cancelled."""
    from lake_sync.defs.ingest import INGEST_OP

    metadata = _output_metadata(result, INGEST_OP)
    for event in result.events_for_node(INGEST_OP):
        if event.is_step_failure and event.step_failure_data.user_failure_data is not None:
            metadata = {key: value.value for key, value in event.step_failure_data.user_failure_data.metadata.items()}
    if "state" not in metadata:
        errors.print(f"[red]ingest failed:[/red] {_failure_message(result)}", markup=True, highlight=False)
        return 1
    table = Table(title=f"{index_name}: ingest (run {result.run_id[:8]})", show_header=False)
    table.add_row("state", metadata["state"])
    table.add_row("lines read", f"{metadata['lines_read']:,}")
    table.add_row("documents written", f"{metadata['documents_written']:,}")
    table.add_row("failed", f"{metadata['dead_lettered']:,}")
    table.add_row("success rate", f"{metadata['success_rate']:.2f} %")
    table.add_row("orphan ids", _id_report(metadata["orphan_ids"], metadata["orphan_samples"]))
    table.add_row("duplicate ids", _id_report(metadata["duplicate_ids"], metadata["duplicate_samples"]))
    table.add_row("index created", "yes" if metadata["index_created"] else "no")
    table.add_row("duration", f"{metadata['duration_s']:.1f} s")
    table.add_row("dead-letter file", str(metadata.get("dead_letter_file", "-")))
    if "error" in metadata:
        table.add_row("error", metadata["error"])
    console.print(table)
    return {"FAILED": 1, "CANCELLED": 130}.get(metadata["state"], 0)


def _id_report(count: int, samples: list[str]) -> str:
    return f"{count:,}" + (f" (e.g. {'; '.join(samples[:3])})" if samples else "")


def _serve_models(args: argparse.Namespace) -> int:
    import uvicorn

    from lake_sync.local.model_server import API_KEY_ENV, DEFAULT_MODELS, DEFAULT_STORAGE_DIR, create_app

    models = dict(DEFAULT_MODELS)
    if args.model:
        models = {}
        for item in args.model:
            name, _, spec = item.partition("=")
            if not name or not spec:
                raise ConfigError(
                    f"--model takes NAME=SPEC, e.g. all-MiniLM-L6-v2=local:all-MiniLM-L6-v2; got '{item}'"
                )
            models[name] = spec
    app = create_app(
        models=models,
        storage_dir=args.storage or DEFAULT_STORAGE_DIR,
        latency_seconds=args.latency_ms / 1000,
        latency_only_dims=args.latency_only_dims,
        api_key=args.api_key or os.environ.get(API_KEY_ENV),
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def _or_unknown(value: float | None) -> str:
    return "unknown" if value is None else f"{value:g}"


def _failure_message(result: Any) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data:
            error = event.step_failure_data.user_failure_data
            if error is not None and error.description:
                return error.description
            info = event.step_failure_data.error
            while info is not None and info.cause is not None:
                info = info.cause
            return info.message.strip() if info else "unknown error"
    return "the run did not succeed"


def _print_summary(task: str, run_id: str, metadata: dict[str, Any]) -> None:
    table = Table(title=f"{task}: sync (run {run_id[:8]})", show_header=False)
    for key in (
        "index",
        "physical_index",
        "mode",
        "reason",
        "from_snapshot",
        "snapshot_id",
        "status",
        "rows_read",
        "documents_indexed",
        "documents_deleted",
        "dead_lettered",
        "inputs_embedded",
        "cache_hits",
        "model_calls",
        "model_tokens",
        "inputs_truncated",
        "cache_imported",
        "cache_exported",
        "dagster/row_count",
        "duration_s",
        "dead_letter_file",
    ):
        if key in metadata:
            table.add_row(key.replace("dagster/row_count", "documents_in_index"), str(metadata[key]))
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
