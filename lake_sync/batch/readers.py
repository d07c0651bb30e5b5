"""Line-by-line readers for batch-ingestion sources, in bounded memory whatever the file size.

source (local path / file:// URI, s3://bucket/key, OpenAI file id) → byte stream (counted) → [gunzip] → numbered lines

A source is read as a stream of 1 MiB buffers: S3 through boto3's `GetObject` body, OpenAI Files
through the official client's streamed `files.content`, local files from disk. Gzip is recognised by
a `.gz` suffix or by its magic bytes. A line longer than `max_line_bytes` is skipped to the next
newline and reported, so one broken line cannot take the memory down.

An S3 body that breaks off mid-stream (dropped connection, read timeout) is resumed below the gzip and
line layers: a new GET asks for `Range: bytes=<bytes handed out>-` with `If-Match: <the first GET's
ETag>`, so the byte stream continues exactly where it stopped, every line is read once, and an object
replaced meanwhile fails clearly (412) instead of splicing two versions.
"""

from __future__ import annotations

import gzip
import io
import os
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

from lake_sync.batch.request import IngestRequest, SourceType
from lake_sync.errors import ConfigError, SourceError

DEFAULT_READ_BUFFER_BYTES = 1 << 20
DEFAULT_MAX_LINE_BYTES = 64 * 1024 * 1024
DEFAULT_S3_TIMEOUT = 60.0
#: Reconnects in a row without a byte of progress before an S3 read gives up; the wait doubles from
#: DEFAULT_S3_RESUME_BACKOFF up to MAX_S3_RESUME_BACKOFF seconds (0.5 + 1 + 2 + 4 + 8: about 15 s of outage).
DEFAULT_S3_RESUME_ATTEMPTS = 5
DEFAULT_S3_RESUME_BACKOFF = 0.5
MAX_S3_RESUME_BACKOFF = 8.0
DEFAULT_OPENAI_TIMEOUT = 600.0
# Local OpenAI-compatible servers usually need no key, but the client refuses to start without one.
_PLACEHOLDER_API_KEY = "unused"
_GZIP_MAGIC = b"\x1f\x8b"


class SourceLine(NamedTuple):
    """One non-blank line: its 1-based number in the file, and its bytes (None if it was too long).

    A NamedTuple rather than a frozen dataclass: one is made per line, several times cheaper.
    """

    number: int
    data: bytes | None


class SourceReader:
    """The lines of one source; `bytes_read` counts the bytes fetched (compressed bytes for gzip)."""

    def __init__(
        self, location: str, size: int | None, read: Callable[[int], bytes], close: Callable[[], None], *, gzipped: bool
    ) -> None:
        self.location = location
        self.size = size
        self._raw = _CountingStream(read)
        self._close = close
        self._gzipped = gzipped
        self.max_line_bytes = DEFAULT_MAX_LINE_BYTES

    @property
    def bytes_read(self) -> int:
        return self._raw.count

    def lines(self) -> Iterator[SourceLine]:
        """Every non-blank line, numbered as in the file; a read failure raises SourceError."""
        stream: io.BufferedIOBase = io.BufferedReader(self._raw, DEFAULT_READ_BUFFER_BYTES)
        try:
            if self._gzipped or stream.peek(2)[:2] == _GZIP_MAGIC:  # type: ignore[attr-defined]
                stream = gzip.GzipFile(fileobj=stream, mode="rb")
            limit = self.max_line_bytes
            number = 0
            while True:
                line = stream.readline(limit + 1)
                if not line:
                    return
                number += 1
                if len(line) > limit and not line.endswith(b"\n"):
                    while line and not line.endswith(b"\n"):
                        line = stream.readline(DEFAULT_READ_BUFFER_BYTES)
                    yield SourceLine(number, None)
                elif line.strip():
                    yield SourceLine(number, line)
        except (gzip.BadGzipFile, EOFError, zlib.error) as error:
            raise SourceError(
                f"{self.location} is not valid gzip ({error}); re-upload it or drop the .gz suffix"
            ) from None

    def close(self) -> None:
        self._close()


class SourceReaders:
    """Opens the sources of one request, sharing one S3 or OpenAI client between them."""

    def __init__(self, request: IngestRequest) -> None:
        if request.connection is not None:
            raise ConfigError(
                f"connection '{request.connection}' is not resolved; call request.with_connection(task_file) first"
            )
        self._request = request
        self._client: Any = None

    def __enter__(self) -> SourceReaders:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._client is not None and hasattr(self._client, "close"):
            self._client.close()
        self._client = None

    def size(self, position: int) -> int | None:
        """The source's size in bytes; checks it exists (and we may read it) before anything is read."""
        location = self._request.sources[position]
        kind = self._request.data_source.type
        if kind is SourceType.FILE:
            path = _local_path(location)
            if not path.is_file():
                raise SourceError(f"source[{position}]: {path} does not exist or is not a file")
            return path.stat().st_size
        if kind is SourceType.S3:
            bucket, key = _s3_parts(location)
            with self._s3_errors(location):
                return int(self._s3().head_object(Bucket=bucket, Key=key)["ContentLength"])
        with self._openai_errors(location):
            return int(self._openai().files.retrieve(location).bytes)

    def open(self, position: int, size: int | None = None) -> SourceReader:
        """A reader over source `position`; close it when done."""
        location = self._request.sources[position]
        kind = self._request.data_source.type
        gzipped = location.endswith(".gz")
        if kind is SourceType.FILE:
            path = _local_path(location)
            try:
                handle = path.open("rb", buffering=0)
            except OSError as error:
                raise SourceError(f"source[{position}]: cannot open {path}: {error.strerror}") from None
            read = _guarded(handle.read, location, (OSError,))
            return SourceReader(str(path), size, read, handle.close, gzipped=gzipped)
        if kind is SourceType.S3:
            bucket, key = _s3_parts(location)
            with self._s3_errors(location):
                body = _ResumableS3Body(self._s3(), bucket, key, location)
            return SourceReader(location, size, body.read, body.close, gzipped=gzipped)
        import openai

        with self._openai_errors(location):
            response = self._openai().files.with_streaming_response.content(location).__enter__()
        chunks = response.iter_bytes(DEFAULT_READ_BUFFER_BYTES)
        read = _guarded(_chunk_reader(chunks), location, (openai.APIError, OSError))
        return SourceReader(f"openAI file {location}", size, read, response.close, gzipped=gzipped)

    def _s3(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            options = self._request.s3_client_options()
            options.setdefault("region_name", "us-east-1")
            config = Config(
                connect_timeout=DEFAULT_S3_TIMEOUT,
                read_timeout=DEFAULT_S3_TIMEOUT,
                retries={"max_attempts": 5, "mode": "standard"},
                # S3-compatible servers on an IP or localhost only answer path-style requests.
                s3={"addressing_style": "path" if options.get("endpoint_url") else "auto"},
            )
            self._client = boto3.session.Session().client("s3", config=config, **options)
        return self._client

    def _openai(self) -> Any:
        if self._client is None:
            from openai import OpenAI

            base_url = self._request.data_source.base_url
            api_key = self._request.openai_api_key() or os.environ.get("OPENAI_API_KEY")
            if api_key is None and base_url is None:
                raise ConfigError("credential.openAI_key is needed to read OpenAI files (or set OPENAI_API_KEY)")
            self._client = OpenAI(
                api_key=api_key or _PLACEHOLDER_API_KEY, base_url=base_url, timeout=DEFAULT_OPENAI_TIMEOUT
            )
        return self._client

    def _s3_errors(self, location: str) -> _Translate:
        from botocore.exceptions import BotoCoreError, ClientError

        return _Translate((BotoCoreError, ClientError), lambda error: _s3_problem(location, error))

    def _openai_errors(self, location: str) -> _Translate:
        import openai

        def describe(error: BaseException) -> str:
            where = str(self._client.base_url) if self._client is not None else "the OpenAI API"
            if isinstance(error, openai.NotFoundError):
                return f"OpenAI file {location} does not exist at {where}"
            if isinstance(error, (openai.AuthenticationError, openai.PermissionDeniedError)):
                return f"{where} refused the credential for file {location}; check credential.openAI_key"
            if isinstance(error, openai.APIStatusError):
                return f"{where} answered {error.status_code} for file {location}"
            return f"cannot reach {where} for file {location}: {type(error).__name__}"

        return _Translate((openai.APIError,), describe)


class _Translate:
    """A context manager turning `kinds` of exception into SourceError(describe(error))."""

    def __init__(self, kinds: tuple[type[BaseException], ...], describe: Callable[[BaseException], str]) -> None:
        self._kinds = kinds
        self._describe = describe

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if error is not None and isinstance(error, self._kinds):
            raise SourceError(self._describe(error)) from None


class _ResumableS3Body:
    """`read(n)` over one S3 object that survives dropped connections (see the module docstring).

    Gives up after DEFAULT_S3_RESUME_ATTEMPTS reconnects in a row without progress, with backoff.
    """

    def __init__(self, client: Any, bucket: str, key: str, location: str) -> None:
        from botocore.exceptions import BotoCoreError
        from urllib3.exceptions import HTTPError

        self._client = client
        self._bucket = bucket
        self._key = key
        self._location = location
        # What a body that broke off raises: botocore wraps urllib3's errors, but not all of them.
        self._dropped: tuple[type[BaseException], ...] = (BotoCoreError, HTTPError, OSError)
        response = client.get_object(Bucket=bucket, Key=key)
        self.etag: str = response["ETag"]
        self.size = int(response["ContentLength"])
        self.offset = 0
        self._body = response["Body"]

    def read(self, size: int) -> bytes:
        failures = 0
        while True:
            try:
                data = self._body.read(size)
            except self._dropped as error:
                failures = self._resume(failures, error)
                continue
            self.offset += len(data)
            return data

    def close(self) -> None:
        self._body.close()

    def _resume(self, failures: int, error: BaseException) -> int:
        """Reopen the body at `offset`; the count of reconnects in a row so far."""
        from botocore.exceptions import ClientError

        while True:
            failures += 1
            if failures > DEFAULT_S3_RESUME_ATTEMPTS:
                raise SourceError(
                    f"reading {self._location} failed at byte {self.offset:,} of {self.size:,}, "
                    f"also after {DEFAULT_S3_RESUME_ATTEMPTS} reconnects: {type(error).__name__}: {error}"
                ) from None
            time.sleep(min(DEFAULT_S3_RESUME_BACKOFF * 2 ** (failures - 1), MAX_S3_RESUME_BACKOFF))
            self._body.close()
            try:
                response = self._client.get_object(
                    Bucket=self._bucket, Key=self._key, Range=f"bytes={self.offset}-", IfMatch=self.etag
                )
            except ClientError as refused:
                code = refused.response.get("Error", {}).get("Code")
                if code in ("PreconditionFailed", "412"):
                    raise SourceError(
                        f"{self._location} was replaced while it was read (its ETag is no longer {self.etag}; "
                        f"{self.offset:,} of {self.size:,} bytes were read); re-run the ingest to read the new object"
                    ) from None
                raise SourceError(_s3_problem(self._location, refused)) from None
            except self._dropped as again:
                error = again
                continue
            served = str(response.get("ContentRange", ""))
            if not served.startswith(f"bytes {self.offset}-"):
                response["Body"].close()
                raise SourceError(
                    f"S3 ignored the Range of a resumed read of {self._location} (asked bytes={self.offset}-, "
                    f"got {served or 'the whole object'}); the read cannot continue without reading lines twice"
                )
            self._body = response["Body"]
            return failures


class _CountingStream(io.RawIOBase):
    """A raw stream over `read(n)`, counting the bytes it hands out."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._read(len(buffer))
        size = len(data)
        buffer[:size] = data
        self.count += size
        return size


def _chunk_reader(chunks: Iterator[bytes]) -> Callable[[int], bytes]:
    """`read(n)` over an iterator of byte chunks."""
    pending = memoryview(b"")

    def read(size: int) -> bytes:
        nonlocal pending
        while not pending:
            chunk = next(chunks, None)
            if chunk is None:
                return b""
            pending = memoryview(chunk)
        data, pending = pending[:size], pending[size:]
        return data.tobytes()

    return read


def _guarded(
    read: Callable[[int], bytes], location: str, kinds: tuple[type[BaseException], ...]
) -> Callable[[int], bytes]:
    """`read`, with a failure mid-stream turned into SourceError naming the source."""

    def guarded(size: int) -> bytes:
        try:
            return read(size)
        except kinds as error:
            raise SourceError(f"reading {location} failed: {type(error).__name__}: {error}") from None

    return guarded


def _s3_problem(location: str, error: BaseException) -> str:
    """What an S3 client error means for `location`, without credentials."""
    from botocore.exceptions import ClientError

    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "error")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("404", "NoSuchKey", "NotFound"):
            return f"{location} does not exist"
        if code == "NoSuchBucket":
            return f"the bucket of {location} does not exist"
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return f"S3 refused access to {location} ({code}); check credential"
        return f"S3 answered {status} {code} for {location}"
    return f"cannot read {location}: {type(error).__name__}: {error}"


def _local_path(location: str) -> Path:
    if location.startswith("file://"):
        parts = urlsplit(location)
        if parts.netloc not in ("", "localhost"):
            raise SourceError(f"{location}: file:// URIs must name a local path (file:///path)")
        return Path(unquote(parts.path))
    return Path(location).expanduser()


def _s3_parts(location: str) -> tuple[str, str]:
    bucket, _, key = location.removeprefix("s3://").partition("/")
    return bucket, key
