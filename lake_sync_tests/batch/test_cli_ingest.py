"""`lake-sync ingest REQUEST.json`, run as a real subprocess against real files and the local search server.

The CLI runs `batch_ingest_job` in-process. The queueing tests share a real DagsterInstance (a temporary
DAGSTER_HOME with the project's dagster.yaml) between two CLI processes; the first is held mid-ingest
by a proxy that keeps its `_bulk` request until the test releases it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
import pytest
import yaml
from elasticsearch import Elasticsearch

from lake_sync.defs.ingest import INGEST_JOB
from lake_sync.defs.offline import INGEST_POOL
from lake_sync_tests.batch.conftest import openai_input, openai_output, vector, write_jsonl
from lake_sync_tests.defs.test_ingest import dagster_home
from lake_sync_tests.fault_proxy import FaultProxy


def cli_env(home: Path | None) -> dict[str, str]:
    # Wide enough that rich does not wrap the messages the tests look for; no DAGSTER_HOME but the test's.
    env = {key: value for key, value in os.environ.items() if key != "DAGSTER_HOME"}
    return {**env, "COLUMNS": "200", **({"DAGSTER_HOME": str(home)} if home else {})}


def run_cli(*args: str, cwd: Path, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "lake_sync.cli", *args]
    return subprocess.run(command, cwd=cwd, env=cli_env(home), capture_output=True, text=True, timeout=120)


def start_cli(*args: str, cwd: Path, home: Path) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "lake_sync.cli", *args]
    return subprocess.Popen(
        command, cwd=cwd, env=cli_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


class HeldBulks(FaultProxy):
    """Forwards everything, but holds each `_bulk` request until `release` is set; `arrived` marks the first."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.arrived = threading.Event()
        self.release = threading.Event()

    def handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes] | None:
        if urlsplit(path).path.rstrip("/").endswith("/_bulk"):
            self.arrived.set()
            self.release.wait(timeout=120)
        return super().handle(method, path, headers, body)


@pytest.fixture
def workdir(tmp_path: Path, es_url: str, index_name: str) -> Path:
    write_jsonl(tmp_path / "output.jsonl", (openai_output(f"r{i}", [vector(8, i)]) for i in range(12)))
    write_jsonl(tmp_path / "input.jsonl", (openai_input(f"r{i}", [f"text {i}"]) for i in range(2, 12)))
    request: dict[str, Any] = {
        "index_name": index_name,
        "field_map": {
            "text": "source[1].$.body.input[0]",
            "embedding": "source[0].$.response.body.data[0].embedding",
            "_id": ["source[0].$.custom_id", "source[1].$.custom_id"],
        },
        "data_source": {"type": "file", "source": ["output.jsonl", "input.jsonl"]},
    }
    (tmp_path / "request.json").write_text(json.dumps(request))
    tasks = {"connections": {"es": {"type": "elasticsearch", "hosts": [es_url]}}, "state_dir": "state"}
    (tmp_path / "lake_sync.yaml").write_text(yaml.safe_dump(tasks))
    return tmp_path


def test_cli_ingest_writes_the_join_and_prints_a_summary(workdir: Path, es: Elasticsearch, index_name: str) -> None:
    result = run_cli("ingest", "request.json", "--tasks", "lake_sync.yaml", cwd=workdir)

    assert result.returncode == 0, result.stderr
    assert "COMPLETED_WITH_ERROR" in result.stdout
    assert "documents written │ 10" in result.stdout and "success rate      │ 83.33 %" in result.stdout
    assert "orphan ids        │ 2 (e.g. r" in result.stdout
    assert "state/dead_letters/ingest-" in result.stdout
    es.indices.refresh(index=index_name)
    assert es.count(index=index_name)["count"] == 10
    assert len((workdir / "state" / "dead_letters" / f"ingest-{index_name}.jsonl").read_text().splitlines()) == 2


def test_cli_ingest_refuses_a_bad_jsonpath_and_an_ambiguous_target(
    workdir: Path, es: Elasticsearch, index_name: str
) -> None:
    request = json.loads((workdir / "request.json").read_text())
    request["field_map"]["text"] = "source[1].$.body.input[0"
    (workdir / "bad.json").write_text(json.dumps(request))
    tasks = yaml.safe_load((workdir / "lake_sync.yaml").read_text())
    tasks["connections"]["other"] = tasks["connections"]["es"]
    (workdir / "two.yaml").write_text(yaml.safe_dump(tasks))

    bad = run_cli("ingest", "bad.json", cwd=workdir)
    ambiguous = run_cli("--tasks", "two.yaml", "ingest", "request.json", cwd=workdir)

    assert bad.returncode == 2 and "field_map.text: 'source[1].$.body.input[0' is not a valid JSONPath" in bad.stderr
    assert ambiguous.returncode == 2 and "['es', 'other']; pick one with --target" in ambiguous.stderr
    assert not es.indices.exists(index=index_name)


# --- the cap on concurrent ingests -----------------------------------------------------------------


@pytest.fixture
def held(workdir: Path, es_url: str, es: Elasticsearch, index_name: str) -> Iterator[HeldBulks]:
    """`held.yaml` names the held proxy `slow` and the server `es`; `second.json` is the request into `<index>-b`."""
    with HeldBulks(es_url) as proxy:
        tasks = yaml.safe_load((workdir / "lake_sync.yaml").read_text())
        tasks["connections"]["slow"] = {"type": "elasticsearch", "hosts": [proxy.url]}
        (workdir / "held.yaml").write_text(yaml.safe_dump(tasks))
        request = json.loads((workdir / "request.json").read_text())
        (workdir / "second.json").write_text(json.dumps({**request, "index_name": f"{index_name}-b"}))
        try:
            yield proxy
        finally:
            proxy.release.set()
    es.options(ignore_status=404).indices.delete(index=f"{index_name}-b")


def queued_line(process: subprocess.Popen[str]) -> str:
    """The line saying the process is queued (blocks until it is printed; fails if the process ends without it)."""
    assert process.stdout is not None
    return next(line for line in process.stdout if line.startswith("queued:"))


@contextmanager
def one_running_one_queued(
    workdir: Path, held: HeldBulks, home: Path
) -> Iterator[tuple[subprocess.Popen[str], subprocess.Popen[str], str]]:
    """Two CLI ingests under a cap of 1: the first holds the slot (its bulk request held by the proxy), the
    second is queued; yields both processes and the second's "queued" line, and kills both afterwards."""
    first = start_cli("ingest", "request.json", "--tasks", "held.yaml", "--target", "slow", cwd=workdir, home=home)
    try:
        assert held.arrived.wait(timeout=60), "the first ingest never sent a bulk request"
        second = start_cli("ingest", "second.json", "--tasks", "held.yaml", "--target", "es", cwd=workdir, home=home)
        try:
            yield first, second, queued_line(second)
        finally:
            second.kill()
    finally:
        first.kill()


def pool_slots_and_claims(home: Path) -> tuple[list[Any], list[Any]]:
    """The ingest pool's claimed slots and pending claims in the instance at `home`."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        info = instance.event_log_storage.get_concurrency_info(INGEST_POOL)
    return info.claimed_slots, info.pending_steps


def test_cli_ingest_beyond_the_cap_says_it_is_queued_then_both_complete(
    workdir: Path, held: HeldBulks, es: Elasticsearch, index_name: str, tmp_path: Path
) -> None:
    home = dagster_home(tmp_path / "dagster_home")
    with one_running_one_queued(workdir, held, home) as (first, second, waiting):
        written_while_queued = es.indices.exists(index=f"{index_name}-b")
        held.release.set()
        first_out, first_err = first.communicate(timeout=120)
        second_out, second_err = second.communicate(timeout=120)

    assert first.returncode == 0, first_err
    assert second.returncode == 0, second_err
    first_run = re.search(rf"{index_name}: ingest \(run (\w{{8}})\)", first_out)
    assert first_run is not None and "queued" not in first_out
    assert waiting.startswith(f"queued: 1 ingest running (run {first_run.group(1)}), waiting for a slot in pool ")
    assert f"pool {INGEST_POOL} (limit 1)" in waiting
    assert not written_while_queued
    assert "documents written │ 10" in first_out and "documents written │ 10" in second_out
    for index in (index_name, f"{index_name}-b"):
        es.indices.refresh(index=index)
        assert es.count(index=index)["count"] == 10
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs(dg.RunsFilter(job_name=INGEST_JOB))
    assert [run.status for run in runs] == [dg.DagsterRunStatus.SUCCESS] * 2
    assert pool_slots_and_claims(home) == ([], [])


def test_cli_ingest_interrupted_while_queued_exits_130_and_leaves_no_claim(
    workdir: Path, held: HeldBulks, es: Elasticsearch, index_name: str, tmp_path: Path
) -> None:
    home = dagster_home(tmp_path / "dagster_home")
    with one_running_one_queued(workdir, held, home) as (first, second, _):
        second.send_signal(signal.SIGINT)
        _, second_err = second.communicate(timeout=60)
        _, waiting = pool_slots_and_claims(home)
        held.release.set()
        _, first_err = first.communicate(timeout=120)

    assert second.returncode == 130 and "cancelled while queued: nothing was ingested" in second_err
    # Only the first ingest's own (assigned) claim is left: nothing waits to be handed the next slot.
    assert [step.assigned_timestamp is not None for step in waiting] == [True]
    assert first.returncode == 0, first_err
    assert not es.indices.exists(index=f"{index_name}-b")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert len(instance.get_runs(dg.RunsFilter(job_name=INGEST_JOB))) == 1
    assert pool_slots_and_claims(home) == ([], [])


def test_cli_ingest_interrupted_while_running_ends_cancelled_and_frees_its_slot(
    workdir: Path, held: HeldBulks, tmp_path: Path
) -> None:
    home = dagster_home(tmp_path / "dagster_home")
    ingest = start_cli("ingest", "request.json", "--tasks", "held.yaml", "--target", "slow", cwd=workdir, home=home)
    try:
        assert held.arrived.wait(timeout=60), "the ingest never sent a bulk request"
        ingest.send_signal(signal.SIGINT)
        # The bulk request in flight finishes; nothing after it is sent.
        held.release.set()
        out, err = ingest.communicate(timeout=120)
    finally:
        ingest.kill()

    assert ingest.returncode == 130, err
    assert "│ CANCELLED" in out
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs(dg.RunsFilter(job_name=INGEST_JOB))
    assert [run.status for run in runs] == [dg.DagsterRunStatus.CANCELED]
    assert pool_slots_and_claims(home) == ([], [])
