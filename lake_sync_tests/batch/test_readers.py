"""Source readers against real files, a real moto S3 server (also behind the fault proxy, which drops
connections mid-body) and the real model server's Files API."""

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
from lake_sync_tests.batch.conftest import S3_CREDENTIAL, jsonl, vector
from lake_sync_tests.fault_proxy import FaultProxy

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


# --- S3 reads that resume after a dropped connection (moto behind the TCP fault proxy) ---------


def numbered_lines(count: int) -> bytes:
    """Distinct lines of JSON with random floats, so gzip cannot shrink them to nothing."""
    return jsonl({"id": f"d{n}", "vector": vector(8, n)} for n in range(count))


def s3_request(proxy: FaultProxy, key: str) -> Any:
    return request_for("s3", [f"s3://bucket/{key}"], endpoint_url=proxy.url)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_s3_reader_resumes_a_dropped_body_with_range_pinned_to_the_etag_and_reads_every_line_once(
    s3: Any, s3_url: str, monkeypatch: pytest.MonkeyPatch, compress: bool
) -> None:
    monkeypatch.setattr(readers, "DEFAULT_S3_RESUME_BACKOFF", 0.0)
    data = numbered_lines(300)
    body = gzip.compress(data) if compress else data
    key = "out/batch.jsonl.gz" if compress else "out/batch.jsonl"
    etag = s3.put_object(Bucket="bucket", Key=key, Body=body)["ETag"]

    # Both the first answer and the first resumed one break off a third of the way into their bodies.
    with FaultProxy(s3_url, cut_bodies=2, cut_after_bytes=len(body) // 3) as proxy:
        lines, size, read = read_all(s3_request(proxy, key))

    assert [(line.number, line.data) for line in lines] == list(enumerate(data.splitlines(keepends=True), 1))
    assert size == read == len(body)
    gets = [headers for path, headers in zip(proxy.log.paths, proxy.log.headers, strict=True) if path.startswith("GET")]
    cut = len(body) // 3
    assert [headers.get("range") for headers in gets] == [None, f"bytes={cut}-", f"bytes={2 * cut}-"]
    assert [headers.get("if-match") for headers in gets] == [None, etag, etag]
    assert proxy.log.cuts == 2


def test_s3_reader_gives_up_after_the_reconnects_in_a_row_that_bring_no_byte(
    s3: Any, s3_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readers, "DEFAULT_S3_RESUME_BACKOFF", 0.0)
    monkeypatch.setattr(readers, "DEFAULT_S3_RESUME_ATTEMPTS", 2)
    s3.put_object(Bucket="bucket", Key="out.jsonl", Body=numbered_lines(10))

    failure = r"reading s3://bucket/out\.jsonl failed at byte 0 of [\d,]+, also after 2 reconnects"
    with FaultProxy(s3_url, cut_bodies=10, cut_after_bytes=0) as proxy, pytest.raises(SourceError, match=failure):
        read_all(s3_request(proxy, "out.jsonl"))

    assert proxy.log.cuts == 3
