"""Source readers against real files, a real moto S3 server and the real model server's Files API."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from lake_sync.batch import readers
from lake_sync.batch.readers import SourceLine, SourceReaders
from lake_sync.batch.request import parse_request
from lake_sync.errors import SourceError
from lake_sync.local.model_server import ModelServer
from lake_sync_tests.batch.conftest import S3_CREDENTIAL

LINES = b'{"n": 1}\n\n{"n": 2}\r\n{"n": 3}'


def request_for(kind: str, sources: list[str], **data_source: Any) -> Any:
    body: dict[str, Any] = {
        "index_name": "i",
        "field_map": {"n": "$.n"},
        "data_source": {"type": kind, "source": sources, **data_source},
    }
    if kind == "s3":
        body["credential"] = S3_CREDENTIAL
    return parse_request(body)


def read_all(request: Any, position: int = 0) -> tuple[list[SourceLine], int | None, int]:
    with SourceReaders(request) as sources:
        size = sources.size(position)
        reader = sources.open(position, size)
        try:
            return list(reader.lines()), size, reader.bytes_read
        finally:
            reader.close()


def test_file_reader_numbers_lines_as_in_the_file_and_skips_blank_ones(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(LINES)

    lines, size, read = read_all(request_for("file", [path.as_uri()]))

    assert [(line.number, line.data) for line in lines] == [(1, b'{"n": 1}\n'), (3, b'{"n": 2}\r\n'), (4, b'{"n": 3}')]
    assert size == read == len(LINES)


@pytest.mark.parametrize("name", ["out.jsonl.gz", "out.jsonl"])
def test_file_reader_gunzips_by_suffix_or_by_magic_bytes(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(gzip.compress(LINES))

    lines, size, read = read_all(request_for("file", [str(path)]))

    assert [line.number for line in lines] == [1, 3, 4]
    assert size == read == path.stat().st_size


def test_file_reader_skips_an_overlong_line_and_reads_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readers, "DEFAULT_MAX_LINE_BYTES", 16)
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"n": 1}\n{"text": "' + b"x" * 100 + b'"}\n{"n": 3}\n')

    lines, _, _ = read_all(request_for("file", [str(path)]))

    assert [(line.number, line.data) for line in lines] == [(1, b'{"n": 1}\n'), (2, None), (3, b'{"n": 3}\n')]


def test_file_reader_names_a_missing_file_and_a_broken_gzip(tmp_path: Path) -> None:
    broken = tmp_path / "out.jsonl.gz"
    broken.write_bytes(gzip.compress(LINES)[:20])

    with pytest.raises(SourceError, match=r"source\[0\]: .*missing.jsonl does not exist"):
        read_all(request_for("file", [str(tmp_path / "missing.jsonl")]))
    with pytest.raises(SourceError, match="is not valid gzip"):
        read_all(request_for("file", [str(broken)]))


def test_s3_reader_streams_an_exact_object_from_an_s3_compatible_endpoint(s3: Any, s3_url: str) -> None:
    s3.put_object(Bucket="bucket", Key="out/batch.jsonl.gz", Body=gzip.compress(LINES))

    lines, size, read = read_all(request_for("s3", ["s3://bucket/out/batch.jsonl.gz"], endpoint_url=s3_url))

    assert [line.number for line in lines] == [1, 3, 4]
    assert size == read


def test_s3_reader_names_a_missing_object_or_bucket(s3: Any, s3_url: str) -> None:
    with pytest.raises(SourceError, match=r"s3://bucket/nope\.jsonl does not exist"):
        read_all(request_for("s3", ["s3://bucket/nope.jsonl"], endpoint_url=s3_url))
    with pytest.raises(SourceError, match=r"s3://elsewhere/out\.jsonl does not exist"):
        read_all(request_for("s3", ["s3://elsewhere/out.jsonl"], endpoint_url=s3_url))


def test_openai_reader_streams_file_content_through_the_official_client(model_server: ModelServer) -> None:
    with OpenAI(base_url=model_server.base_url, api_key="x") as client:
        uploaded = client.files.create(file=("batch.jsonl", LINES), purpose="batch")

    request = request_for("openAI", [uploaded.id], base_url=model_server.base_url)
    lines, size, read = read_all(request)

    assert [line.data for line in lines] == [b'{"n": 1}\n', b'{"n": 2}\r\n', b'{"n": 3}']
    assert size == read == len(LINES)
    with pytest.raises(SourceError, match=r"OpenAI file file-0+ does not exist at http://127\.0\.0\.1"):
        read_all(request_for("openAI", ["file-" + "0" * 24], base_url=model_server.base_url))
