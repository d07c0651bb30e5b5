"""The shared embedding cache: append-only vector segments in object storage, next to the lake.

`<location>/segments/<utc time>-<uuid>.arrow` ⇄ each machine's `<state_dir>/embeddings.sqlite`

Every machine keeps its SQLite cache as the working cache (`cache.py`); a run imports the
segments it has not seen yet and uploads the vectors it computed as new segments. A segment is
written once under a name no other writer can pick and is never changed or deleted, so
concurrent writers never conflict; a vector in two segments is harmless (same key, same
model, same content). A segment is an Arrow IPC file of (key, dims, vector) rows, written and
read one record batch at a time, and moved through a local file, so memory stays bounded by a
batch whatever the segment's size. Nothing here logs or raises credentials.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pyarrow as pa

from lake_sync.config import TaskFile
from lake_sync.errors import CacheError, ConfigError

#: Written into every segment's schema metadata; a file without it is not a lake-sync segment.
SEGMENT_FORMAT = "lake-sync/embedding-cache-segment/1"
SEGMENT_SCHEMA = pa.schema(
    [
        # sha256(model id, NUL, exact input content): the cache key of `cache.py`.
        pa.field("key", pa.binary(32), nullable=False),
        pa.field("dims", pa.int32(), nullable=False),
        pa.field("vector", pa.binary(), nullable=False),
    ],
    metadata={"lake_sync.format": SEGMENT_FORMAT, "lake_sync.vector": "float32 little-endian"},
)
SEGMENT_SUFFIX = ".arrow"
#: Rows per record batch: ~6 MiB of 384-d vectors, ~25 MiB of 1536-d ones.
SEGMENT_BATCH_ROWS = 4096
#: A large export (a whole local cache shared for the first time) is cut into segments of about this
#: size, so each upload is bounded and an interrupted export keeps the segments already uploaded.
SEGMENT_MAX_BYTES = 128 * 1024 * 1024
FIELD = "embedding_cache"
# Fail fast on an unreachable store (3 attempts, ~3 s of backoff), but ride out a brief hiccup.
_CONNECT_TIMEOUT = 10.0
_READ_TIMEOUT = 60.0
_MAX_ATTEMPTS = 3
_COPY_BUFFER = 1 << 20
_DENIED = frozenset({"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken"})
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})

#: One segment row: (key, dims, float32 vector bytes).
SegmentRow = tuple[bytes, int, bytes]


class SegmentError(Exception):
    """A segment that cannot be imported (corrupt, foreign, malformed); the message says why."""


class SegmentWriter:
    """Writes (key, dims, vector) rows into a new segment file, one record batch per `write` call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = 0
        #: Vector bytes written so far: what the segment's size is made of.
        self.vector_bytes = 0
        self._writer = pa.ipc.new_file(str(path), SEGMENT_SCHEMA)

    def write(self, rows: list[SegmentRow]) -> None:
        keys, dims, vectors = zip(*rows, strict=True)
        batch = pa.record_batch(
            [pa.array(keys, pa.binary(32)), pa.array(dims, pa.int32()), pa.array(vectors, pa.binary())],
            schema=SEGMENT_SCHEMA,
        )
        self._writer.write_batch(batch)
        self.rows += len(rows)
        self.vector_bytes += sum(len(vector) for vector in vectors)

    def close(self) -> None:
        self._writer.close()


def read_segment(path: Path) -> Iterator[list[SegmentRow]]:
    """The rows of a segment file, one record batch at a time; SegmentError if it is not a usable segment."""
    with pa.memory_map(str(path)) as source:
        try:
            reader = pa.ipc.open_file(source)
        except (pa.ArrowInvalid, OSError) as error:
            raise SegmentError(f"not an Arrow IPC file ({_first_line(error)})") from None
        metadata = reader.schema.metadata or {}
        found = metadata.get(b"lake_sync.format", b"").decode(errors="replace")
        if found != SEGMENT_FORMAT:
            what = f"format {found!r}" if found else "no 'lake_sync.format' in its schema metadata"
            raise SegmentError(f"not a lake-sync embedding cache segment ({what}; expected {SEGMENT_FORMAT!r})")
        if not reader.schema.remove_metadata().equals(SEGMENT_SCHEMA.remove_metadata()):
            raise SegmentError(f"columns {_columns(reader.schema)}, expected {_columns(SEGMENT_SCHEMA)}")
        for number in range(reader.num_record_batches):
            try:
                batch = reader.get_batch(number)
                batch.validate(full=True)
            except (pa.ArrowInvalid, OSError) as error:
                raise SegmentError(f"record batch {number} is corrupt ({_first_line(error)})") from None
            yield _checked_rows(batch, number)


def _checked_rows(batch: pa.RecordBatch, number: int) -> list[SegmentRow]:
    """The batch's rows after checking that no value is null, every vector has `dims` finite floats."""
    if batch.num_rows == 0:
        return []
    if any(column.null_count for column in batch.columns):
        raise SegmentError(f"record batch {number} holds nulls")
    dims = batch.column(1).to_numpy()
    vectors = batch.column(2)
    _, offsets_buffer, data = vectors.buffers()
    offsets = np.frombuffer(offsets_buffer, np.int32, count=len(vectors) + 1, offset=vectors.offset * 4)
    lengths = np.diff(offsets)
    wrong = np.flatnonzero((dims <= 0) | (lengths != dims.astype(np.int64) * 4))
    if wrong.size:
        row = int(wrong[0])
        raise SegmentError(
            f"record batch {number}, row {row}: the vector has {lengths[row]} bytes, not {dims[row]} float32 values"
        )
    floats = np.frombuffer(data, "<f4", count=int(lengths.sum()) // 4, offset=int(offsets[0]))
    if not np.isfinite(floats).all():
        raise SegmentError(f"record batch {number} holds NaN or infinite vector values")
    return list(zip(batch.column(0).to_pylist(), dims.tolist(), vectors.to_pylist(), strict=True))


class SegmentStore:
    """The segments under `<location>/segments/` in an S3-compatible object store (S3, OSS, MinIO)."""

    def __init__(self, location: str, options: dict[str, str]) -> None:
        import boto3
        from botocore.config import Config

        self.location = location
        bucket_and_prefix = location.partition("://")[2]
        self.bucket, _, prefix = bucket_and_prefix.partition("/")
        self.prefix = f"{prefix.strip('/')}/segments/".lstrip("/")
        options = dict(options)
        self.endpoint = _without_userinfo(options.get("endpoint_url") or "the default S3 endpoint")
        scheme = location.partition("://")[0]
        # OSS serves only virtual-hosted-style requests; S3-compatible servers on an IP need path style.
        default_style = "virtual" if scheme == "oss" else ("path" if options.get("endpoint_url") else "auto")
        addressing_style = options.pop("addressing_style", default_style)
        options.setdefault("region_name", "us-east-1")
        session = boto3.session.Session()
        if "aws_access_key_id" not in options and session.get_credentials() is None:
            raise ConfigError(
                f"{FIELD}: no credentials for {location}; set {FIELD}.s3.aws_access_key_id and "
                f"aws_secret_access_key (from ${{VARS}}), or name a paimon connection with fs.{scheme}.accessKeyId "
                f"and fs.{scheme}.accessKeySecret in {FIELD}.connection, or provide AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY, a profile or a role in the environment"
            )
        # S3-compatible stores (OSS, COS, older MinIO) reject the aws-chunked uploads that boto3's
        # default checksums switch to; segments are verified on import whole anyway.
        checksums = "when_required" if options.get("endpoint_url") else "when_supported"
        config = Config(
            connect_timeout=_CONNECT_TIMEOUT,
            read_timeout=_READ_TIMEOUT,
            retries={"max_attempts": _MAX_ATTEMPTS, "mode": "standard"},
            s3={"addressing_style": addressing_style},
            request_checksum_calculation=checksums,
            response_checksum_validation=checksums,
        )
        self._client: Any = session.client("s3", config=config, **options)

    def uri(self, name: str) -> str:
        """Where segment `name` lives, for messages."""
        return f"{self.location.partition('://')[0]}://{self.bucket}/{self.prefix}{name}"

    def names(self) -> list[str]:
        """Every object name under the segments prefix, oldest name first."""
        names: list[str] = []
        with self._errors("listing the segments"):
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
            for page in pages:
                names.extend(item["Key"][len(self.prefix) :] for item in page.get("Contents", []))
        return sorted(name for name in names if name and not name.endswith("/"))

    def download(self, name: str, path: Path) -> None:
        """Stream segment `name` into the local file `path`; SegmentError if it was deleted meanwhile."""
        with self._errors(f"downloading {self.uri(name)}"), path.open("wb") as file:
            body = self._client.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"]
            with closing(body):
                shutil.copyfileobj(body, file, _COPY_BUFFER)

    def upload(self, path: Path) -> str:
        """Upload the segment file at `path` under a new name no other writer can pick; the name."""
        name = f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex}{SEGMENT_SUFFIX}"
        # One PUT: the object appears whole or not at all (segments stay far below its 5 GB limit).
        with self._errors(f"uploading {self.uri(name)}"), path.open("rb") as file:
            self._client.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=file)
        return name

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Object-store failures as errors naming the setting to fix, never credentials.

        A missing bucket or refused credentials will not fix themselves (ConfigError); anything
        else — unreachable endpoint, timeouts, 5xx — may (CacheError).
        """
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as error:
            code = _code(error)
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
            if code in _MISSING:
                raise SegmentError(f"the object was deleted before {doing} finished") from None
            if code == "NoSuchBucket":
                raise ConfigError(
                    f"{FIELD}.location: bucket '{self.bucket}' does not exist at {self.endpoint} (while {doing}); "
                    "create it or correct the location"
                ) from None
            if code in _DENIED:
                raise ConfigError(
                    f"{FIELD}: {self.endpoint} refused access to {self.location} ({code}) while {doing}; check the "
                    f"keys in {FIELD}.s3 or on {FIELD}.connection, and the bucket policy"
                ) from None
            raise CacheError(
                f"{FIELD}.location {self.location}: {self.endpoint} answered {status} {code} while {doing}"
            ) from None
        except BotoCoreError as error:
            raise CacheError(
                f"{FIELD}.location {self.location}: cannot reach {self.endpoint} while {doing} "
                f"({type(error).__name__}); check {FIELD}.s3.endpoint_url (or fs.*.endpoint on {FIELD}.connection) "
                "and the network"
            ) from None


def open_segment_store(task_file: TaskFile) -> SegmentStore | None:
    """The task file's shared cache location, or None when it has no `embedding_cache`; no request is made."""
    if task_file.embedding_cache is None:
        return None
    return SegmentStore(task_file.embedding_cache.location, task_file.embedding_cache_options())


def _columns(schema: pa.Schema) -> str:
    return ", ".join(f"{field.name}: {field.type}" for field in schema)


def _code(error: Any) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if not parts.netloc or "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
