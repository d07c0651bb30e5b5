"""The shared embedding cache: SQLite caches on two "machines" mirrored through segments on a real local S3 server.

cache A → export_shared → s3://bucket/team/embeddings/segments/*.arrow → import_shared → cache B

The S3 server is moto's ThreadedMotoServer on 127.0.0.1 (no mocks); models are the zero-cost hashing embedder,
which counts its calls.
"""

from __future__ import annotations

import io
import sqlite3
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from lake_sync.config import parse_task_file
from lake_sync.embed import segments
from lake_sync.embed.cache import EmbeddingCache
from lake_sync.embed.hashing import HashingEmbedder
from lake_sync.embed.segments import SegmentStore, SegmentWriter, open_segment_store, read_segment
from lake_sync.errors import CacheError, ConfigError
from lake_sync_tests.s3_server import S3_SECRET, S3Server

TEXTS = [f"waterproof hiking boot {number}" for number in range(30)]


@pytest.fixture
def location(s3_server: S3Server) -> str:
    return f"s3://{s3_server.new_bucket()}/team/embeddings"


def machine(tmp_path: Path, name: str, s3_server: S3Server, location: str) -> EmbeddingCache:
    """The cache of one machine: its own state dir, the shared location."""
    return EmbeddingCache(tmp_path / name / "embeddings.sqlite", shared=SegmentStore(location, s3_server.options))


def segment_names(s3_server: S3Server, location: str) -> list[str]:
    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    listing = s3_server.client().list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/segments/")
    return [item["Key"].rpartition("/")[2] for item in listing.get("Contents", [])]


def put_segment(s3_server: S3Server, location: str, name: str, body: bytes) -> None:
    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    s3_server.client().put_object(Bucket=bucket, Key=f"{prefix}/segments/{name}", Body=body)


def segment_bytes(tmp_path: Path, *batches: list[tuple[bytes, int, bytes]]) -> bytes:
    path = tmp_path / "made.arrow"
    writer = SegmentWriter(path)
    for rows in batches:
        writer.write(rows)
    writer.close()
    return path.read_bytes()


def task_file_with(cache: dict[str, Any], **connections: Any) -> Any:
    return parse_task_file(
        {"connections": connections or {"es": {"type": "elasticsearch", "hosts": ["h"]}}, "embedding_cache": cache}
    )


# --- the segment format ---------------------------------------------------------------------------


def test_segment_file_gives_back_its_rows_one_record_batch_at_a_time(tmp_path: Path) -> None:
    first = [(bytes([n]) * 32, 2, np.array([n, -n], "<f4").tobytes()) for n in range(3)]
    second = [(b"\xff" * 32, 3, np.array([1, 2, 3], "<f4").tobytes())]
    path = tmp_path / "segment.arrow"
    path.write_bytes(segment_bytes(tmp_path, first, second))

    assert list(read_segment(path)) == [first, second]


# --- sharing between machines ---------------------------------------------------------------------


def test_second_machine_gets_every_vector_the_first_exported_without_a_model_call(
    tmp_path: Path, s3_server: S3Server, location: str
) -> None:
    model_a, model_b = HashingEmbedder(8), HashingEmbedder(8)
    with machine(tmp_path, "a", s3_server, location) as cache_a:
        expected = cache_a.embed_texts(model_a, TEXTS).vectors
    with machine(tmp_path, "b", s3_server, location) as cache_b:
        result = cache_b.embed_texts(model_b, TEXTS)

    assert (cache_a.exported, cache_b.imported) == (30, 30)
    assert (result.hits, model_b.calls) == (30, 0)
    assert np.array_equal(result.vectors, expected)
    assert len(segment_names(s3_server, location)) == 1


def test_cache_imports_each_segment_once_and_never_its_own(tmp_path: Path, s3_server: S3Server, location: str) -> None:
    with machine(tmp_path, "a", s3_server, location) as cache_a:
        cache_a.embed_texts(HashingEmbedder(8), TEXTS)
    with machine(tmp_path, "b", s3_server, location):
        pass

    again_a, again_b = machine(tmp_path, "a", s3_server, location), machine(tmp_path, "b", s3_server, location)
    with again_a, again_b:
        pass

    assert (again_a.imported, again_b.imported) == (0, 0)
    assert (again_a.exported, again_b.exported) == (0, 0)
    assert len(segment_names(s3_server, location)) == 1


def test_concurrent_exports_write_separate_segments_and_lose_no_vector(
    tmp_path: Path, s3_server: S3Server, location: str
) -> None:
    caches = [machine(tmp_path, name, s3_server, location) for name in ("a", "b")]
    caches[0].embed_texts(HashingEmbedder(8), TEXTS[:20])
    caches[1].embed_texts(HashingEmbedder(8), TEXTS[10:])
    start = threading.Barrier(2)

    def export(cache: EmbeddingCache) -> None:
        start.wait()
        cache.export_shared()

    threads = [threading.Thread(target=export, args=(cache,)) for cache in caches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    model = HashingEmbedder(8)
    with machine(tmp_path, "c", s3_server, location) as cache_c:
        result = cache_c.embed_texts(model, TEXTS)

    assert len(segment_names(s3_server, location)) == 2
    assert [cache.exported for cache in caches] == [20, 20]
    assert (cache_c.imported, result.hits, model.calls) == (30, 30, 0)


def test_leaving_the_cache_after_a_failure_still_exports_what_was_embedded(
    tmp_path: Path, s3_server: S3Server, location: str
) -> None:
    cache_a = machine(tmp_path, "a", s3_server, location)
    with pytest.raises(RuntimeError, match="index write failed"), cache_a:
        cache_a.embed_texts(HashingEmbedder(8), TEXTS)
        raise RuntimeError("index write failed")

    assert cache_a.exported == 30
    with machine(tmp_path, "b", s3_server, location) as cache_b:
        assert cache_b.embed_texts(HashingEmbedder(8), TEXTS).hits == 30


def test_a_large_export_is_cut_into_bounded_segments(
    tmp_path: Path, s3_server: S3Server, location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segments, "SEGMENT_BATCH_ROWS", 10)
    monkeypatch.setattr(segments, "SEGMENT_MAX_BYTES", 1000)  # 4 batches of 10 × 32-byte vectors
    texts = [f"text {number}" for number in range(100)]
    with machine(tmp_path, "a", s3_server, location) as cache_a:
        cache_a.embed_texts(HashingEmbedder(8), texts)
    with machine(tmp_path, "b", s3_server, location) as cache_b:
        hits = cache_b.embed_texts(HashingEmbedder(8), texts).hits

    assert len(segment_names(s3_server, location)) == 3  # 40 + 40 + 20 vectors
    assert (cache_a.exported, cache_b.imported, hits) == (100, 100, 100)


def test_vectors_cached_before_sharing_was_configured_go_out_with_the_first_shared_run(
    tmp_path: Path, s3_server: S3Server, location: str
) -> None:
    local_only = EmbeddingCache(tmp_path / "a" / "embeddings.sqlite")
    local_only.embed_texts(HashingEmbedder(8), TEXTS)
    local_only.close()

    # Without a location nothing is queued for upload: no write per vector for it.
    with closing(sqlite3.connect(tmp_path / "a" / "embeddings.sqlite")) as connection:
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    with machine(tmp_path, "a", s3_server, location) as cache_a:
        pass
    # Sharing switched off again: what is cached meanwhile still waits for the next shared run.
    switched_off = EmbeddingCache(tmp_path / "a" / "embeddings.sqlite")
    switched_off.embed_texts(HashingEmbedder(8), ["cached while sharing was off"])
    switched_off.close()
    with machine(tmp_path, "a", s3_server, location) as again:
        pass

    assert "unshared" not in tables
    assert (cache_a.exported, again.exported) == (30, 1)


def test_a_failed_upload_keeps_the_vectors_waiting_and_a_later_run_uploads_them(
    tmp_path: Path, s3_server: S3Server, location: str
) -> None:
    path = tmp_path / "a" / "embeddings.sqlite"
    no_bucket = EmbeddingCache(path, shared=SegmentStore("s3://no-such-bucket-here/x", s3_server.options))
    no_bucket.embed_texts(HashingEmbedder(8), TEXTS)
    failed = no_bucket.export_shared()
    no_bucket.close()

    with EmbeddingCache(path, shared=SegmentStore(location, s3_server.options)) as fixed:
        pass

    assert failed == 0
    assert len(no_bucket.problems) == 1
    assert no_bucket.problems[0].startswith(
        "uploading to s3://no-such-bucket-here/x failed, 30 vectors wait for the next run: "
        f"embedding_cache.location: bucket 'no-such-bucket-here' does not exist at {s3_server.endpoint_url}"
    )
    assert fixed.exported == 30


# --- segments that cannot be used -----------------------------------------------------------------


def test_corrupt_foreign_and_malformed_segments_are_skipped_whole_and_reported_on_every_run(
    tmp_path: Path, s3_server: S3Server, location: str
) -> None:
    with machine(tmp_path, "a", s3_server, location) as cache_a:
        cache_a.embed_texts(HashingEmbedder(8), TEXTS)
    good_key, bad_key, nan_key = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    vector = np.ones(8, "<f4").tobytes()
    foreign = io.BytesIO()
    with pa.ipc.new_file(foreign, pa.schema([("id", pa.int64())])) as writer:
        writer.write_batch(pa.record_batch([pa.array([1, 2])], names=["id"]))
    put_segment(s3_server, location, "corrupt.arrow", b"ARROW1\x00\x00 definitely not a segment")
    put_segment(s3_server, location, "foreign.arrow", foreign.getvalue())
    put_segment(
        s3_server,
        location,
        "short.arrow",
        segment_bytes(tmp_path, [(good_key, 8, vector)], [(bad_key, 8, vector[:28])]),
    )
    put_segment(
        s3_server,
        location,
        "nan.arrow",
        segment_bytes(tmp_path, [(nan_key, 2, np.array([1, np.nan], "<f4").tobytes())]),
    )

    with machine(tmp_path, "b", s3_server, location) as cache_b:
        hits = cache_b.embed_texts(HashingEmbedder(8), TEXTS).hits
    again = machine(tmp_path, "b", s3_server, location)
    with again:
        pass

    prefix = f"segment {location}/segments/"
    expected = [
        f"{prefix}corrupt.arrow skipped: not an Arrow IPC file (",
        f"{prefix}foreign.arrow skipped: not a lake-sync embedding cache segment (no 'lake_sync.format' in its schema "
        "metadata; expected 'lake-sync/embedding-cache-segment/1')",
        f"{prefix}nan.arrow skipped: record batch 0 holds NaN or infinite vector values",
        f"{prefix}short.arrow skipped: record batch 1, row 0: the vector has 28 bytes, not 8 float32 values",
    ]
    for problems in (cache_b.problems, again.problems):
        assert len(problems) == 4
        assert all(problem.startswith(start) for problem, start in zip(problems, expected, strict=True))
    assert (cache_b.imported, hits, again.imported) == (30, 30, 0)
    with closing(sqlite3.connect(tmp_path / "b" / "embeddings.sqlite")) as stored:
        kept = stored.execute("SELECT count(*) FROM vectors WHERE key IN (?, ?, ?)", (good_key, bad_key, nan_key))
        assert kept.fetchone() == (0,)  # not even the valid first batch of the short segment


# --- configuration and reachability ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("cache", "connections", "message"),
    [
        (
            {"location": "gs://bucket/x"},
            {},
            "embedding_cache.location: write s3://bucket/prefix or oss://bucket/prefix",
        ),
        ({"location": "s3://B/x"}, {}, "embedding_cache.location: write s3://bucket/prefix"),
        (
            {"location": "s3://bucket/x", "s3": {"endpoint": "h"}},
            {},
            "embedding_cache.s3: unknown option(s) ['endpoint']",
        ),
        ({"location": "s3://bucket/x", "connection": "lake"}, {}, "embedding_cache.connection: 'lake' is not defined"),
        (
            {"location": "s3://bucket/x", "connection": "es"},
            {"es": {"type": "elasticsearch", "hosts": ["h"]}},
            "embedding_cache.connection: 'es' has type 'elasticsearch'; name a paimon connection whose fs.s3.*",
        ),
        (
            {"location": "s3://bucket/x", "s3": {"aws_access_key_id": "AK"}},
            {},
            "embedding_cache.s3: give both aws_access_key_id and aws_secret_access_key, or neither",
        ),
        (
            {"location": "oss://bucket/x"},
            {},
            "embedding_cache.s3.endpoint_url: oss:// locations need the OSS endpoint",
        ),
    ],
)
def test_embedding_cache_settings_that_cannot_work_are_config_errors_naming_the_field(
    cache: dict[str, Any], connections: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        task_file_with(cache, **connections)

    assert message in str(raised.value)


def test_endpoint_and_keys_come_from_the_paimon_connection_unless_embedding_cache_s3_overrides_them(
    tmp_path: Path, s3_server: S3Server, location: str
) -> None:
    lake = {
        "type": "paimon",
        "warehouse": location.rpartition("/")[0] + "/warehouse",
        "options": {
            "fs.s3.endpoint": s3_server.endpoint_url,
            "fs.s3.accessKeyId": "lake-key",
            "fs.s3.accessKeySecret": S3_SECRET,
            "fs.s3.region": "us-east-1",
        },
    }
    task_file = task_file_with(
        {
            "location": location,
            "connection": "lake",
            "s3": {"aws_access_key_id": "cache-key", "aws_secret_access_key": "k"},
        },
        lake=lake,
    )
    oss = task_file_with(
        {"location": "oss://bucket/x", "connection": "lake"},
        lake={
            "type": "paimon",
            "warehouse": "oss://bucket/wh",
            "options": {"fs.oss.endpoint": "oss-cn-hangzhou.aliyuncs.com"},
        },
    )

    assert task_file.embedding_cache_options() == {
        "endpoint_url": s3_server.endpoint_url,
        "aws_access_key_id": "cache-key",
        "aws_secret_access_key": "k",
        "region_name": "us-east-1",
    }
    assert oss.embedding_cache_options() == {"endpoint_url": "https://oss-cn-hangzhou.aliyuncs.com"}
    store = open_segment_store(task_file_with({"location": location, "connection": "lake"}, lake=lake))
    with EmbeddingCache(tmp_path / "a.sqlite", shared=store) as cache:
        cache.embed_texts(HashingEmbedder(8), TEXTS)
    assert cache.exported == 30 and len(segment_names(s3_server, location)) == 1


def test_a_location_without_credentials_fails_before_any_request_naming_the_fields_to_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookup off EC2

    with pytest.raises(ConfigError) as raised:
        open_segment_store(task_file_with({"location": "s3://bucket/x", "s3": {"endpoint_url": "http://127.0.0.1:9"}}))

    assert str(raised.value).startswith(
        "embedding_cache: no credentials for s3://bucket/x; set embedding_cache.s3.aws_access_key_id and "
        "aws_secret_access_key"
    )
    assert "embedding_cache.connection" in str(raised.value)


def test_an_unreachable_location_fails_naming_the_location_and_endpoint_but_not_the_secret(
    tmp_path: Path, s3_server: S3Server
) -> None:
    options = {**s3_server.options, "endpoint_url": "http://127.0.0.1:9"}  # the discard port: nothing listens
    cache = EmbeddingCache(tmp_path / "a.sqlite", shared=SegmentStore("s3://bucket/x", options))

    with pytest.raises(CacheError) as raised, cache:
        pass

    assert str(raised.value) == (
        "embedding_cache.location s3://bucket/x: cannot reach http://127.0.0.1:9 while listing the segments "
        "(EndpointConnectionError); check embedding_cache.s3.endpoint_url (or fs.*.endpoint on "
        "embedding_cache.connection) and the network"
    )
    assert S3_SECRET not in str(raised.value) and raised.value.__cause__ is None


def test_a_missing_bucket_is_a_config_error_naming_the_location(tmp_path: Path, s3_server: S3Server) -> None:
    cache = EmbeddingCache(tmp_path / "a.sqlite", shared=SegmentStore("s3://no-such-bucket-here/x", s3_server.options))

    with pytest.raises(ConfigError, match=r"^embedding_cache.location: bucket 'no-such-bucket-here' does not exist"):
        cache.import_shared()
