"""`lake-sync ingest REQUEST.json`, run as a real subprocess against real files and the local search server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from elasticsearch import Elasticsearch

from lake_sync_tests.batch.conftest import openai_input, openai_output, vector, write_jsonl


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "lake_sync.cli", *args]
    # Wide enough that rich does not wrap the messages the tests look for.
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


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
