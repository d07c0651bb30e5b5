"""A real local S3 server for tests: moto's ThreadedMotoServer on 127.0.0.1 with port 0, one bucket per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3

#: Never printed by lake-sync: tests assert it stays out of errors and results.
S3_SECRET = "s3-secret-Zq9-never-shown"


@dataclass(frozen=True)
class S3Server:
    """Where the server listens, with boto3 client options that reach it."""

    endpoint_url: str

    @property
    def options(self) -> dict[str, str]:
        return {
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": "test-key",
            "aws_secret_access_key": S3_SECRET,
            "region_name": "us-east-1",
        }

    def client(self) -> Any:
        return boto3.client("s3", **self.options)

    def new_bucket(self) -> str:
        bucket = f"cache-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=bucket)
        return bucket


@contextmanager
def running_s3_server() -> Iterator[S3Server]:
    """Start moto's S3 server on a free local port and stop it afterwards."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()
