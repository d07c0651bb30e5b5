"""Image fetching against real local files, a local HTTP server and a local S3 server (moto).

values → ImageFetcher.fetch → (tmp files | http.server on 127.0.0.1 | ThreadedMotoServer) → ImageResult per value
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from lake_sync.embed.images import ImageFetcher, ImageResult
from lake_sync.errors import ConfigError
from lake_sync_tests.s3_server import S3Server

SLOW_RESPONSE_S = 0.05


def encoded(
    image_format: str, *, color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (40, 30)
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, image_format)
    return buffer.getvalue()


def noisy(image_format: str, size: int = 64) -> bytes:
    """An image that does not compress away, for size limits and truncation."""
    buffer = io.BytesIO()
    Image.effect_noise((size, size), 80).convert("RGB").save(buffer, image_format)
    return buffer.getvalue()


PNG = encoded("PNG")
JPEG = encoded("JPEG", color=(10, 120, 240))


# --- local HTTP server ------------------------------------------------------------------------------


@dataclass
class HttpImages:
    """What the server serves (`files`), and how many requests it handled at once at most."""

    url: str
    files: dict[str, bytes] = field(default_factory=dict)
    authorizations: list[str] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture(scope="module")
def http_images() -> Iterator[HttpImages]:
    """A ThreadingHTTPServer on 127.0.0.1:0; `/slow/...` answers after a delay, `/stream/...` without a length."""
    state = HttpImages(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with state.lock:
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
                if "Authorization" in self.headers:
                    state.authorizations.append(self.headers["Authorization"])
            try:
                if self.path.startswith("/slow/"):
                    time.sleep(SLOW_RESPONSE_S)
                body = state.files.get(self.path.split("?")[0])
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if self.path.startswith("/stream/"):
                    # No Content-Length: the client learns the size only by reading.
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for start in range(0, len(body), 4096):
                        self.wfile.write(body[start : start + 4096])
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading at its size cap
            finally:
                with state.lock:
                    state.in_flight -= 1

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --- local S3 server --------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Images:
    options: dict[str, str]
    bucket: str


@pytest.fixture(scope="module")
def s3_images(s3_server: S3Server) -> S3Images:
    """A bucket of the local S3 server holding `a.png`, `dir/b.jpg` and `big.png`."""
    bucket = s3_server.new_bucket()
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="a.png", Body=PNG)
    client.put_object(Bucket=bucket, Key="dir/b.jpg", Body=JPEG)
    client.put_object(Bucket=bucket, Key="big.png", Body=noisy("PNG"))
    return S3Images(s3_server.options, bucket)


# --- local files and bytes --------------------------------------------------------------------------


def test_fetch_reads_local_png_and_jpeg_paths(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(PNG)
    (tmp_path / "b.jpg").write_bytes(JPEG)

    results = ImageFetcher().fetch([str(tmp_path / "a.png"), str(tmp_path / "b.jpg")])

    assert results == [ImageResult(data=PNG), ImageResult(data=JPEG)]
    assert all(result.ok for result in results)


def test_fetch_passes_binary_values_through_after_checking_them() -> None:
    results = ImageFetcher().fetch([PNG, bytearray(JPEG)])

    assert results == [ImageResult(data=PNG), ImageResult(data=JPEG)]


def test_fetch_reads_file_urls_with_escaped_characters(tmp_path: Path) -> None:
    (tmp_path / "with space.png").write_bytes(PNG)

    results = ImageFetcher().fetch(
        [f"file://{tmp_path}/with%20space.png", f"file://localhost{tmp_path}/with%20space.png"]
    )

    assert results == [ImageResult(data=PNG), ImageResult(data=PNG)]


def test_fetch_reports_a_missing_file_by_its_path(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.png")

    results = ImageFetcher().fetch([missing, f"file://{missing}", str(tmp_path)])

    assert [result.error for result in results] == [
        f"file not found: {missing}",
        f"file not found: file://{missing}",
        f"not a file: {tmp_path}",
    ]


def test_fetch_reports_random_bytes_as_not_decodable(tmp_path: Path) -> None:
    (tmp_path / "corrupt.png").write_bytes(os.urandom(2048))

    result = ImageFetcher().fetch([str(tmp_path / "corrupt.png")])[0]

    assert result == ImageResult(error="not a decodable image (cannot identify image file)")


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_fetch_reports_a_truncated_image_as_not_decodable(image_format: str) -> None:
    whole = noisy(image_format)

    result = ImageFetcher().fetch([whole[: len(whole) // 2]])[0]

    assert result.data is None
    assert result.error is not None and result.error.startswith("not a decodable image (")


def test_fetch_rejects_images_above_max_bytes_with_their_size(tmp_path: Path) -> None:
    big = noisy("PNG")
    (tmp_path / "big.png").write_bytes(big)
    fetcher = ImageFetcher(max_bytes=1024)

    results = fetcher.fetch([str(tmp_path / "big.png"), big, PNG[:1000] if len(PNG) > 1024 else PNG])

    size = f"{len(big) / 1024:.1f}".removesuffix(".0")
    assert results[0].error == f"image is {size} KiB, above the 1 KiB limit"
    assert results[1].error == results[0].error
    assert results[2].ok


@pytest.mark.parametrize("value", [None, "", "   ", b""])
def test_fetch_reports_empty_values(value: str | bytes | None) -> None:
    assert ImageFetcher().fetch([value]) == [ImageResult(error="empty value")]


def test_fetch_reports_an_unsupported_scheme() -> None:
    result = ImageFetcher().fetch(["ftp://host/a.png"])[0]

    assert result.error == "unsupported image location scheme 'ftp': ftp://host/a.png"


def test_image_fetcher_rejects_unknown_s3_options() -> None:
    with pytest.raises(ConfigError, match="unknown S3 options"):
        ImageFetcher(s3_options={"endpoint": "http://x"})


# --- HTTP ---------------------------------------------------------------------------------------------


def test_fetch_reads_http_urls(http_images: HttpImages) -> None:
    http_images.files["/a.png"] = PNG

    result = ImageFetcher().fetch([f"{http_images.url}/a.png"])[0]

    assert result == ImageResult(data=PNG)


def test_fetch_reports_http_status_without_credentials_or_query(http_images: HttpImages) -> None:
    host = http_images.url.removeprefix("http://")

    results = ImageFetcher().fetch(
        [f"{http_images.url}/missing.png", f"http://user:hunter2@{host}/missing.png?signature=s3cr3t"]
    )

    assert results[0].error == f"http 404 for {http_images.url}/missing.png"
    assert results[1].error == f"http 404 for {http_images.url}/missing.png?…"
    assert http_images.authorizations[-1] == "Basic dXNlcjpodW50ZXIy"  # user:hunter2


def test_fetch_reports_an_unreachable_http_server() -> None:
    result = ImageFetcher(timeout=2).fetch(["http://127.0.0.1:9/a.png"])[0]

    assert result.error is not None and result.error.startswith("http request failed for http://127.0.0.1:9/a.png: ")


def test_fetch_stops_reading_an_http_body_without_length_at_max_bytes(http_images: HttpImages) -> None:
    http_images.files["/stream/big.png"] = noisy("PNG", size=256)
    http_images.files["/stream/small.png"] = PNG

    results = ImageFetcher(max_bytes=4096).fetch(
        [f"{http_images.url}/stream/big.png", f"{http_images.url}/stream/small.png"]
    )

    assert results == [ImageResult(error="image is above the 4 KiB limit"), ImageResult(data=PNG)]


def test_fetch_keeps_at_most_max_in_flight_requests_and_the_input_order(http_images: HttpImages) -> None:
    colors = [(index * 20, 255 - index * 20, 7) for index in range(12)]
    for index, color in enumerate(colors):
        http_images.files[f"/slow/{index}.png"] = encoded("PNG", color=color)
    http_images.max_in_flight = 0

    results = ImageFetcher(max_in_flight=3).fetch([f"{http_images.url}/slow/{index}.png" for index in range(12)])

    assert [result.data for result in results] == [http_images.files[f"/slow/{index}.png"] for index in range(12)]
    assert 2 <= http_images.max_in_flight <= 3


def test_fetch_keeps_the_order_of_mixed_values(tmp_path: Path, http_images: HttpImages) -> None:
    (tmp_path / "a.jpg").write_bytes(JPEG)
    http_images.files["/slow/mixed.png"] = PNG

    results = ImageFetcher().fetch(
        [f"{http_images.url}/slow/mixed.png", None, JPEG, str(tmp_path / "missing.png"), str(tmp_path / "a.jpg")]
    )

    assert results == [
        ImageResult(data=PNG),
        ImageResult(error="empty value"),
        ImageResult(data=JPEG),
        ImageResult(error=f"file not found: {tmp_path / 'missing.png'}"),
        ImageResult(data=JPEG),
    ]


# --- S3 and OSS ---------------------------------------------------------------------------------------


def test_fetch_reads_s3_objects(s3_images: S3Images) -> None:
    fetcher = ImageFetcher(s3_options=s3_images.options)

    results = fetcher.fetch([f"s3://{s3_images.bucket}/a.png", f"s3://{s3_images.bucket}/dir/b.jpg"])

    assert results == [ImageResult(data=PNG), ImageResult(data=JPEG)]


def test_fetch_reports_missing_s3_keys_and_buckets(s3_images: S3Images) -> None:
    fetcher = ImageFetcher(s3_options=s3_images.options)

    results = fetcher.fetch(
        [f"s3://{s3_images.bucket}/missing.png", "s3://no-such-bucket-x1/a.png", "s3://only-bucket"]
    )

    assert [result.error for result in results] == [
        f"s3 object not found: s3://{s3_images.bucket}/missing.png",
        "s3 bucket not found: no-such-bucket-x1 (for s3://no-such-bucket-x1/a.png)",
        "s3 location needs a bucket and a key: s3://only-bucket",
    ]
    assert not any("test-secret" in str(result.error) for result in results)


def test_fetch_rejects_a_large_s3_object_by_its_length(s3_images: S3Images) -> None:
    result = ImageFetcher(max_bytes=1024, s3_options=s3_images.options).fetch([f"s3://{s3_images.bucket}/big.png"])[0]

    assert result.error is not None and result.error.endswith("above the 1 KiB limit")
    assert result.error.startswith("image is ") and "KiB, above" in result.error


def test_fetch_reads_oss_objects_through_the_s3_compatible_endpoint(s3_images: S3Images) -> None:
    fetcher = ImageFetcher(s3_options={**s3_images.options, "addressing_style": "path"})

    results = fetcher.fetch([f"oss://{s3_images.bucket}/a.png", f"oss://{s3_images.bucket}/missing.png"])

    assert results == [
        ImageResult(data=PNG),
        ImageResult(error=f"oss object not found: oss://{s3_images.bucket}/missing.png"),
    ]


def test_fetch_needs_an_endpoint_for_oss() -> None:
    result = ImageFetcher().fetch(["oss://bucket/a.png"])[0]

    assert result.error == "oss:// locations need an S3-compatible endpoint_url in the S3 options"
