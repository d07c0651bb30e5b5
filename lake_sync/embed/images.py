"""Image inputs for an image column: each value (a location or the bytes) to verified encoded bytes or a reason.

values → ≤ max_in_flight reads (file, S3/OSS, HTTP; capped at max_bytes) → Pillow header check → ImageResult per value

A value may be a local path, a `file://`, `s3://bucket/key`, `oss://bucket/key` or `http(s)://` URL, or the
encoded image itself (a binary column). A value that cannot be used becomes an `ImageResult` with an error,
never an exception, so one bad image costs one document. Errors name the location without credentials
or query strings.
"""

from __future__ import annotations

import base64
import io
import re
import struct
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from lake_sync.config import S3_CLIENT_OPTIONS
from lake_sync.errors import ConfigError

DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_IN_FLIGHT = 8
DEFAULT_FETCH_TIMEOUT = 30.0
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_READ_CHUNK = 1 << 16
_USER_AGENT = "lake-sync"
# Errors Pillow raises on bad input: truncated streams, broken chunks, corrupt headers.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)
_JPEG_END = b"\xff\xd9"
# Some writers pad a JPEG after its end-of-image marker; look for it among the last bytes.
_JPEG_END_WINDOW = 64


@dataclass(frozen=True)
class ImageResult:
    """One value's outcome: the encoded image (`data`) or why there is none (`error`)."""

    data: bytes | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.data is not None


class _FetchError(Exception):
    """A value that cannot be fetched; the message is the `ImageResult` error."""


class _TooLarge(Exception):
    def __init__(self, size: int | None) -> None:
        super().__init__(size)
        self.size = size


class ImageFetcher:
    """Fetches image values concurrently, each read capped at `max_bytes` and checked with Pillow."""

    def __init__(
        self,
        *,
        max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        timeout: float = DEFAULT_FETCH_TIMEOUT,
        s3_options: dict[str, str] | None = None,
    ) -> None:
        if max_bytes <= 0 or max_in_flight <= 0 or timeout <= 0:
            raise ConfigError("image fetching needs max_bytes, max_in_flight and timeout above zero")
        unknown = set(s3_options or {}) - S3_CLIENT_OPTIONS
        if unknown:
            raise ConfigError(f"unknown S3 options {sorted(unknown)}; allowed: {sorted(S3_CLIENT_OPTIONS)}")
        self.max_bytes = max_bytes
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self._s3_options = dict(s3_options or {})
        self._s3_clients: dict[str, Any] = {}
        self._s3_lock = threading.Lock()

    def fetch(self, values: Sequence[str | bytes | None]) -> list[ImageResult]:
        """One `ImageResult` per value, in the order of `values`."""
        if not values:
            return []
        workers = min(self.max_in_flight, len(values))
        with ThreadPoolExecutor(workers, thread_name_prefix="lake-sync-image") as pool:
            return list(pool.map(self.fetch_one, values))

    def fetch_one(self, value: str | bytes | None) -> ImageResult:
        """The `ImageResult` of one value."""
        try:
            data = self._read(value)
        except _TooLarge as error:
            size = f"{_human(error.size)}, " if error.size is not None else ""
            return ImageResult(error=f"image is {size}above the {_human(self.max_bytes)} limit")
        except _FetchError as error:
            return ImageResult(error=str(error))
        reason = _undecodable_reason(data)
        return ImageResult(error=f"not a decodable image ({reason})") if reason else ImageResult(data=data)

    def _read(self, value: str | bytes | None) -> bytes:
        if isinstance(value, bytearray | memoryview):
            value = bytes(value)
        if not value or (isinstance(value, str) and not value.strip()):
            raise _FetchError("empty value")
        if isinstance(value, bytes):
            if len(value) > self.max_bytes:
                raise _TooLarge(len(value))
            return value
        if not isinstance(value, str):
            raise _FetchError(f"unsupported image value of type {type(value).__name__}")
        match = _SCHEME.match(value)
        scheme = match.group(1).lower() if match else ""
        if not scheme:
            return self._read_file(Path(value).expanduser(), value)
        if scheme == "file":
            parts = urlsplit(value)
            if parts.netloc not in ("", "localhost"):
                raise _FetchError(f"file URL names a remote host: {value}")
            return self._read_file(Path(unquote(parts.path)), value)
        if scheme in ("s3", "oss"):
            return self._read_object(scheme, value)
        if scheme in ("http", "https"):
            return self._read_http(value)
        raise _FetchError(f"unsupported image location scheme '{scheme}': {_display_url(value)}")

    def _read_file(self, path: Path, value: str) -> bytes:
        try:
            with path.open("rb") as handle:
                size = path.stat().st_size
                if size > self.max_bytes:
                    raise _TooLarge(size)
                return _read_capped(handle, self.max_bytes)
        except FileNotFoundError:
            raise _FetchError(f"file not found: {value}") from None
        except IsADirectoryError:
            raise _FetchError(f"not a file: {value}") from None
        except PermissionError:
            raise _FetchError(f"permission denied: {value}") from None
        except OSError as error:
            raise _FetchError(f"cannot read {value}: {error.strerror or error}") from None

    def _read_object(self, scheme: str, value: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, _, key = value[len(scheme) + 3 :].partition("/")
        if not bucket or not key:
            raise _FetchError(f"{scheme} location needs a bucket and a key: {value}")
        client = self._object_client(scheme)
        try:
            response = client.get_object(Bucket=bucket, Key=key)
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                raise _FetchError(f"{scheme} object not found: {value}") from None
            if code == "NoSuchBucket":
                raise _FetchError(f"{scheme} bucket not found: {bucket} (for {value})") from None
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise _FetchError(f"{scheme} access denied ({code}) for {value}") from None
            raise _FetchError(f"{scheme} error {code or 'unknown'} for {value}") from None
        except BotoCoreError as error:
            raise _FetchError(f"{scheme} request failed for {value}: {error}") from None
        body = response["Body"]
        try:
            size = response.get("ContentLength")
            if size is not None and size > self.max_bytes:
                raise _TooLarge(size)
            return _read_capped(body, self.max_bytes)
        except BotoCoreError as error:
            raise _FetchError(f"{scheme} read failed for {value}: {error}") from None
        finally:
            body.close()

    def _object_client(self, scheme: str) -> Any:
        with self._s3_lock:
            if scheme not in self._s3_clients:
                self._s3_clients[scheme] = self._new_object_client(scheme)
            return self._s3_clients[scheme]

    def _new_object_client(self, scheme: str) -> Any:
        import boto3
        from botocore.config import Config

        options = dict(self._s3_options)
        if scheme == "oss" and not options.get("endpoint_url"):
            raise _FetchError("oss:// locations need an S3-compatible endpoint_url in the S3 options")
        # OSS serves only virtual-hosted-style requests; S3-compatible servers on an IP need path style.
        addressing_style = options.pop("addressing_style", "virtual" if scheme == "oss" else "auto")
        config = Config(
            connect_timeout=self.timeout,
            read_timeout=self.timeout,
            # One pooled connection per concurrent read, so no read waits for or discards a connection.
            max_pool_connections=max(self.max_in_flight, 10),
            s3={"addressing_style": addressing_style},
        )
        return boto3.session.Session().client("s3", config=config, **options)

    def _read_http(self, value: str) -> bytes:
        url = _display_url(value)
        try:
            request = _http_request(value)
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                length = response.headers.get("Content-Length")
                if length is not None and length.isdigit() and int(length) > self.max_bytes:
                    raise _TooLarge(int(length))
                return _read_capped(response, self.max_bytes)
        except urllib.error.HTTPError as error:
            error.close()
            raise _FetchError(f"http {error.code} for {url}") from None
        except urllib.error.URLError as error:
            raise _FetchError(f"http request failed for {url}: {_reason(error.reason)}") from None
        except TimeoutError:
            raise _FetchError(f"http request timed out after {self.timeout:g} s for {url}") from None
        except OSError as error:
            raise _FetchError(f"http request failed for {url}: {_reason(error)}") from None
        except ValueError:
            raise _FetchError(f"invalid URL: {url}") from None


def _http_request(value: str) -> urllib.request.Request:
    """A GET for `value`; user info in the URL becomes basic auth, which urllib leaves out of the host."""
    parts = urlsplit(value)
    if parts.username is None:
        return urllib.request.Request(value, headers={"User-Agent": _USER_AGENT})
    netloc = parts.netloc.rpartition("@")[2]
    request = urllib.request.Request(urlunsplit(parts._replace(netloc=netloc)), headers={"User-Agent": _USER_AGENT})
    credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
    # Unredirected: a redirect to another host must not receive the credentials.
    request.add_unredirected_header("Authorization", f"Basic {base64.b64encode(credentials).decode()}")
    return request


def _read_capped(stream: Any, max_bytes: int) -> bytes:
    """Read `stream` to its end, stopping as soon as it passes `max_bytes` (the size may be unknown up front)."""
    buffer = bytearray()
    while chunk := stream.read(min(_READ_CHUNK, max_bytes + 1 - len(buffer))):
        buffer += chunk
        if len(buffer) > max_bytes:
            raise _TooLarge(None)
    return bytes(buffer)


def _undecodable_reason(data: bytes) -> str | None:
    """Why `data` is not an image Pillow can open, or None: the cheap checks of format, headers and length.

    A JPEG's scan data is not decoded here (that costs most of a full decode, and a local model decodes
    it anyway): embedders report images whose pixels do not decode (`UndecodableImageError`).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format
            image.verify()
        # A cut-off download keeps a valid header; the end-of-image marker is then missing.
        if image_format == "JPEG" and _JPEG_END not in data[-_JPEG_END_WINDOW:]:
            return "JPEG data ends before its end-of-image marker: truncated"
    except UnidentifiedImageError:
        return "cannot identify image file"
    except Image.DecompressionBombError as error:
        return str(error)
    except _DECODE_ERRORS as error:
        return str(error) or type(error).__name__
    return None


def undecodable_pixels(data: bytes) -> str | None:
    """Why the pixel data of an image that passed the fetch checks does not decode, or None.

    For embedders that send images away: a provider refuses a whole batch for one such image.
    A JPEG is decoded at 1/8 scale, which reads all of its scan data at a fraction of the cost.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (1, 1))
            image.load()
    except Image.DecompressionBombError as error:
        return str(error)
    except _DECODE_ERRORS as error:
        return str(error) or type(error).__name__
    return None


def _display_url(url: str) -> str:
    """`url` without user info or query string, which may carry credentials or signatures."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return url.partition("://")[0] + "://…"
    if ":" in host:
        host = f"[{host}]"
    if port is not None:
        host = f"{host}:{port}"
    return f"{parts.scheme}://{host}{parts.path}" + ("?…" if parts.query else "")


def _reason(reason: object) -> str:
    return str(getattr(reason, "strerror", None) or reason)


def _human(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size} bytes"
