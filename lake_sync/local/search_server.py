"""A local Elasticsearch-API server (`noida-db`), started as its own binary and stopped by PID.

The `noida-db` console script wraps the binary in a child process and does not pass signals
on, so stopping the wrapper would leave the server running: we start the binary directly.
"""

from __future__ import annotations

import importlib.resources
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from lake_sync.errors import TargetError

_URL = re.compile(rb"elasticsearch\s+(http://[0-9.]+:\d+)")
START_TIMEOUT_SECONDS = 20.0


def noida_binary() -> Path:
    """The noida-db server binary shipped inside the `noida_db` package."""
    return Path(str(importlib.resources.files("noida_db").joinpath("noida-db")))


@dataclass
class LocalSearchServer:
    """A running noida-db process serving the Elasticsearch API on 127.0.0.1."""

    url: str
    process: subprocess.Popen[bytes]
    data_dir: Path

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the server saves its data and exits), then SIGKILL if it does not."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> LocalSearchServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_search_server(data_dir: Path, *, port: int = 0, host: str = "127.0.0.1") -> LocalSearchServer:
    """Start noida-db on `host:port` (0 = any free port) keeping its data under `data_dir`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [
        str(noida_binary()), "start", "--only", "elasticsearch", "--host", host,
        "--elasticsearch-port", str(port), "--data-dir", str(data_dir),
    ]  # fmt: skip
    # Output goes to a file, not a pipe: a pipe nobody reads would block the server once full.
    log_path = data_dir / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        match = _URL.search(log_path.read_bytes())
        if match:
            return LocalSearchServer(match.group(1).decode(), process, data_dir)
        time.sleep(0.02)
    seen = log_path.read_bytes()
    process.kill()
    process.wait()
    raise TargetError(f"noida-db did not start on {host}:{port}: {seen.decode(errors='replace')[-500:]}")
