"""Batch ingest: bounded memory on files larger than memory, and throughput close to raw bulk posting.

(a) memory: a ≥1 GB JSONL file of 384-d vectors in OpenAI Batch output shape is streamed into a local
    S3 server (moto's ThreadedMotoServer, 127.0.0.1, port 0) and ingested from there in a child
    process (`python bench/batch_ingest.py --child ...`) whose peak RSS (VmHWM) is reported;
    then a two-source join of the same output file plus its batch input file. noida-db keeps every
    vector in memory and slows down past ~20k vectors, so these runs write to a trivial local sink
    server instead: it answers `_bulk` with `{"errors": false, "items": [...]}` (and HEAD, _mapping,
    _refresh as an existing index would), which leaves the ingest's own memory as the only variable.
    Goals: single source ≤ 300 MiB, join ≤ 400 MiB.
(b) throughput: 20k documents (384-d) ingested from a local JSONL file into noida-db, against posting
    the same documents, pre-serialised into the same bulk bodies (500 per request, 2 in flight), to
    the same server; after one warm-up pair, alternating, 7 runs each, fresh index per run.
    Goal: ingest ≥ 0.9x raw posting. Measured twice: with client and server sharing both CPUs (on 2
    cores the ingest's parsing takes CPU from the server, which raw posting of ready bodies barely
    does), and with the server pinned to CPU 1 and the client to CPU 0 — the shape of a deployment,
    where the cluster runs on machines of its own.

Run: .venv/bin/python bench/batch_ingest.py [--memory-only | --throughput-only] [--gb 1.0] [--docs 20000]
     [--cpus shared|separate|both]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
from _common import fresh_index, median_rate, pin_process, search_server
from elasticsearch import Elasticsearch

from lake_sync.batch.ingest import IngestState, run_ingest
from lake_sync.batch.request import parse_request
from lake_sync.config import DEFAULT_BULK_DOCUMENTS, DEFAULT_BULK_IN_FLIGHT
from lake_sync.index.dead_letters import DeadLetterFile
from lake_sync.index.mapping import vector_mapping

DIMS = 384
RUNS = 7
SINGLE_GOAL_MIB = 300
JOIN_GOAL_MIB = 400
THROUGHPUT_GOAL = 0.9
BUCKET = "bench"
OUTPUT_KEY, INPUT_KEY = "batch/output.jsonl", "batch/input.jsonl"
S3_CREDENTIAL = {"region": "us-east-1", "access_key": "bench", "secret_key": "bench"}
# Distinct vectors to cycle through: generating 1 GB of fresh random floats would dominate the run.
VECTOR_POOL = 512
SINK_INDEX = "bench-sink"
FILTER = "errors,items.*.status,items.*.error"


# --- input files ----------------------------------------------------------------------------------


def _vector_pool() -> list[bytes]:
    generator = random.Random(7)
    return [orjson.dumps([round(generator.gauss(0, 0.05), 9) for _ in range(DIMS)]) for _ in range(VECTOR_POOL)]


def output_lines(count: int | None = None, *, target_bytes: int | None = None) -> Iterator[bytes]:
    """OpenAI Batch output lines (`/v1/embeddings`, one 384-d embedding each), up to `count` or `target_bytes`."""
    pool = _vector_pool()
    written = number = 0
    while (count is None or number < count) and (target_bytes is None or written < target_bytes):
        line = (
            b'{"id":"batch_req_%d","custom_id":"request-%d","response":{"status_code":200,"request_id":"req_%d",'
            b'"body":{"object":"list","data":[{"object":"embedding","index":0,"embedding":%s}],'
            b'"model":"text-embedding-3-small","usage":{"prompt_tokens":9,"total_tokens":9}}},"error":null}\n'
            % (number, number, number, pool[number % VECTOR_POOL])
        )
        written += len(line)
        number += 1
        yield line


def input_lines(count: int) -> Iterator[bytes]:
    """The matching OpenAI Batch input lines."""
    for number in range(count):
        yield (
            orjson.dumps(
                {
                    "custom_id": f"request-{number}",
                    "method": "POST",
                    "url": "/v1/embeddings",
                    "body": {"model": "text-embedding-3-small", "input": [f"passage {number} about lakes and search"]},
                }
            )
            + b"\n"
        )


class _LineStream(io.RawIOBase):
    """A read-only stream over generated lines, so a gigabyte is uploaded without being held anywhere."""

    def __init__(self, lines: Iterator[bytes]) -> None:
        self._lines = lines
        self._pending = memoryview(b"")
        self.lines = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._pending:
            batch = []
            for line in self._lines:
                batch.append(line)
                self.lines += 1
                if len(batch) == 1024:
                    break
            self._pending = memoryview(b"".join(batch))
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def _s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )


def upload_inputs(endpoint: str, gigabytes: float) -> int:
    """Stream the output file (≥ `gigabytes`) and its input file into the S3 server; returns the line count."""
    from boto3.s3.transfer import TransferConfig

    client = _s3_client(endpoint)
    client.create_bucket(Bucket=BUCKET)
    config = TransferConfig(multipart_chunksize=64 * 1024 * 1024, max_concurrency=2)
    started = time.perf_counter()
    stream = _LineStream(output_lines(target_bytes=int(gigabytes * 1024**3)))
    client.upload_fileobj(io.BufferedReader(stream, 8 * 1024 * 1024), BUCKET, OUTPUT_KEY, Config=config)
    lines = stream.lines
    client.upload_fileobj(io.BufferedReader(_LineStream(input_lines(lines))), BUCKET, INPUT_KEY, Config=config)
    size = client.head_object(Bucket=BUCKET, Key=OUTPUT_KEY)["ContentLength"]
    took = time.perf_counter() - started
    print(f"uploaded s3://{BUCKET}/{OUTPUT_KEY}: {size / 1024**3:.2f} GiB, {lines:,} lines, in {took:.0f} s")
    return lines


# --- the sink: a bulk endpoint that only acknowledges -----------------------------------------------


class _SinkHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, body: Any, status: int = 200) -> None:
        data = orjson.dumps(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Elastic-Product", "Elasticsearch")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_HEAD(self) -> None:
        self._answer({})

    def do_GET(self) -> None:
        if "/_mapping" in self.path:
            mapping = {"properties": {"embedding": vector_mapping(DIMS)}}
            self._answer({SINK_INDEX: {"mappings": mapping}})
        else:
            self._answer({"version": {"number": "8.15.0"}, "tagline": "You Know, for Search"})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if "/_bulk" in self.path:
            # Index operations always carry a source line: two lines per document.
            items = [{"index": {"status": 201}}] * (body.count(b"\n") // 2)
            self._answer({"errors": False, "items": items})
        else:
            self._answer({"_shards": {"total": 1, "successful": 1, "failed": 0}})

    do_PUT = do_POST


@contextmanager
def sink_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SinkHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="bench-sink", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def s3_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per S3 request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


# --- (a) memory -------------------------------------------------------------------------------------


def memory_request(s3_endpoint: str, *, join: bool) -> dict[str, Any]:
    field_map: dict[str, Any] = {"embedding": "$.response.body.data[0].embedding", "_id": "$.custom_id"}
    sources = [f"s3://{BUCKET}/{OUTPUT_KEY}"]
    if join:
        field_map = {
            "embedding": "source[0].$.response.body.data[0].embedding",
            "text": "source[1].$.body.input[0]",
            "_id": ["source[0].$.custom_id", "source[1].$.custom_id"],
        }
        sources.append(f"s3://{BUCKET}/{INPUT_KEY}")
    return {
        "index_name": SINK_INDEX,
        "field_map": field_map,
        "credential": S3_CREDENTIAL,
        "data_source": {"type": "s3", "source": sources, "endpoint_url": s3_endpoint},
    }


def child(request_path: Path, es_url: str, state_dir: Path) -> None:
    """Run one ingest and print its result and peak RSS (MiB) as JSON on the last line."""
    request = parse_request(json.loads(request_path.read_text()))
    with Elasticsearch(es_url, request_timeout=300) as client, DeadLetterFile(state_dir / "dead.jsonl") as letters:
        result = run_ingest(request, client=client, dead_letters=letters, spill_dir=state_dir)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forking parent, which here
    # holds the S3 server's gigabyte; VmHWM belongs to this process's own address space.
    status = Path("/proc/self/status").read_text()
    peak_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
    print(
        json.dumps(
            {
                "state": result.state.value,
                "error": result.error,
                "lines": result.lines_read,
                "written": result.documents_written,
                "failed": result.failed,
                "seconds": result.duration_s,
                "spill_partitions": result.spill_partitions,
                "peak_rss_mib": peak_kib / 1024,
            }
        )
    )


def measure_memory(label: str, body: dict[str, Any], sink_url: str, expected: int, tmp: Path) -> float:
    request_path = tmp / f"{label}.json"
    request_path.write_text(json.dumps(body))
    state_dir = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=tmp))
    command = [sys.executable, __file__, "--child", str(request_path), sink_url, str(state_dir)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"the {label} ingest crashed:\n{completed.stderr[-3000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    if result["state"] != IngestState.COMPLETED.value or result["written"] != expected:
        raise RuntimeError(f"the {label} ingest did not write {expected:,} documents: {result}")
    rate = result["written"] / result["seconds"]
    print(
        f"{label:<14} peak RSS {result['peak_rss_mib']:6.0f} MiB   {result['written']:,} documents "
        f"in {result['seconds']:.0f} s ({rate:,.0f}/s), spill partitions {result['spill_partitions']}"
    )
    return float(result["peak_rss_mib"])


def bench_memory(gigabytes: float) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-batch-ingest-") as tmp, s3_server() as s3, sink_server() as sink:
        lines = upload_inputs(s3, gigabytes)
        single = measure_memory("single source", memory_request(s3, join=False), sink, lines, Path(tmp))
        join = measure_memory("two-source join", memory_request(s3, join=True), sink, lines, Path(tmp))
    print(f"peak RSS single source: {single:.0f} MiB (goal <= {SINGLE_GOAL_MIB} MiB)")
    print(f"peak RSS two-source join: {join:.0f} MiB (goal <= {JOIN_GOAL_MIB} MiB)")


# --- (b) throughput ---------------------------------------------------------------------------------


def _bulk_bodies(path: Path) -> list[bytes]:
    """The bulk bodies the ingest sends for `path`, serialised up front: the raw-posting baseline."""
    bodies, chunk = [], []
    for line in path.read_bytes().splitlines():
        parsed = orjson.loads(line)
        document = {"embedding": parsed["response"]["body"]["data"][0]["embedding"]}
        chunk.append(orjson.dumps({"index": {"_id": parsed["custom_id"]}}) + b"\n" + orjson.dumps(document) + b"\n")
        if len(chunk) == DEFAULT_BULK_DOCUMENTS:
            bodies.append(b"".join(chunk))
            chunk = []
    if chunk:
        bodies.append(b"".join(chunk))
    return bodies


def _fresh_vector_index(client: Elasticsearch) -> str:
    index = fresh_index("bench-ingest")
    client.indices.create(index=index, mappings={"properties": {"embedding": vector_mapping(DIMS)}})
    return index


def post_raw(client: Elasticsearch, bodies: list[bytes], documents: int) -> tuple[float, float]:
    """(seconds, this process's CPU seconds) to post the bodies and refresh."""
    index = _fresh_vector_index(client)
    try:
        started, cpu = time.perf_counter(), time.process_time()
        with ThreadPoolExecutor(DEFAULT_BULK_IN_FLIGHT) as pool:
            # The writer's filter_path too: the requests differ from the ingest's in nothing but who built them.
            responses = list(
                pool.map(lambda body: client.bulk(index=index, operations=body, filter_path=FILTER), bodies)
            )
        client.indices.refresh(index=index)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        assert not any(response["errors"] for response in responses)
        assert client.count(index=index)["count"] == documents
        return seconds, cpu
    finally:
        client.indices.delete(index=index)


def ingest_file(client: Elasticsearch, path: Path, documents: int, tmp: Path) -> tuple[float, float]:
    """(seconds, this process's CPU seconds) of `run_ingest` on the file, refresh included."""
    index = _fresh_vector_index(client)
    body = {
        "index_name": index,
        "field_map": {"embedding": "$.response.body.data[0].embedding", "_id": "$.custom_id"},
        "data_source": {"type": "file", "source": [str(path)]},
    }
    try:
        with DeadLetterFile(tmp / "dead.jsonl") as letters:
            started, cpu = time.perf_counter(), time.process_time()
            result = run_ingest(parse_request(body), client=client, dead_letters=letters)
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        assert result.state is IngestState.COMPLETED and result.documents_written == documents, result
        assert client.count(index=index)["count"] == documents
        return seconds, cpu
    finally:
        client.indices.delete(index=index)


def bench_throughput(documents: int, *, separate_cpus: bool) -> None:
    all_cpus = os.sched_getaffinity(0)
    if separate_cpus:
        # Before any client thread starts, so every one of them inherits CPU 0.
        pin_process(os.getpid(), {0})
    print(f"--- throughput, {'client on CPU 0, server on CPU 1' if separate_cpus else 'CPUs shared'} ---")
    try:
        _bench_throughput(documents, server_cpus={1} if separate_cpus else None)
    finally:
        pin_process(os.getpid(), all_cpus)


def _bench_throughput(documents: int, *, server_cpus: set[int] | None) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-batch-ingest-") as tmp, search_server(cpus=server_cpus) as es_url:
        path = Path(tmp) / "output.jsonl"
        with path.open("wb") as file:
            file.writelines(output_lines(documents))
        bodies = _bulk_bodies(path)
        raw: list[tuple[float, float]] = []
        ingested: list[tuple[float, float]] = []
        load = os.getloadavg()[0]
        with Elasticsearch(es_url, request_timeout=300) as client:
            # One unmeasured pair first: the server's first indexes are slower than later ones.
            post_raw(client, bodies, documents)
            ingest_file(client, path, documents, Path(tmp))
            for run in range(RUNS):
                # Alternate which goes first, so a server warming up or slowing down favours neither.
                order = ("raw", "ingest") if run % 2 == 0 else ("ingest", "raw")
                for kind in order:
                    if kind == "raw":
                        raw.append(post_raw(client, bodies, documents))
                    else:
                        ingested.append(ingest_file(client, path, documents, Path(tmp)))
        raw_rate = median_rate("raw bulk posting (pre-serialised)", documents, [s for s, _ in raw])
        ingest_rate = median_rate("batch ingest (file → noida-db)", documents, [s for s, _ in ingested])
        # noida-db pauses to save its data every few seconds, so single runs vary by ±30 %: compare
        # medians, and also the median of the ratios of runs made back to back.
        pairs = sorted(r / i for (r, _), (i, _) in zip(raw, ingested, strict=True))
        print(f"per-pair ratios: {', '.join(f'{ratio:.2f}' for ratio in pairs)}")
        print(
            f"ingest / raw posting: medians {ingest_rate / raw_rate:.2f}x, median per-pair ratio "
            f"{statistics.median(pairs):.2f}x  (goal >= {THROUGHPUT_GOAL}x)"
        )
        # On a small machine the client's CPU is taken from the server: show both, and the load it ran under.
        raw_cpu, ingest_cpu = (statistics.median(c for _, c in runs) / documents * 1e6 for runs in (raw, ingested))
        print(f"client CPU per document: raw posting {raw_cpu:.0f} µs, ingest {ingest_cpu:.0f} µs")
        print(
            f"{path.stat().st_size / 1024**2:.0f} MiB file, {documents:,} documents of {DIMS} dims; "
            f"{os.cpu_count()} CPUs, load average {load:.1f} at the start"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=3, metavar=("REQUEST", "ES_URL", "STATE_DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--gb", type=float, default=1.0, help="size of the output file for (a), GiB (default 1)")
    parser.add_argument("--docs", type=int, default=20_000, help="documents for (b) (default 20000)")
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument("--throughput-only", action="store_true")
    parser.add_argument(
        "--cpus", choices=("shared", "separate", "both"), default="both", help="CPU layout(s) for (b) (default both)"
    )
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), args.child[1], Path(args.child[2]))
        return
    if not args.memory_only:
        for layout in ("shared", "separate"):
            if args.cpus in (layout, "both"):
                bench_throughput(args.docs, separate_cpus=layout == "separate")
    if not args.throughput_only:
        bench_memory(args.gb)


if __name__ == "__main__":
    main()
