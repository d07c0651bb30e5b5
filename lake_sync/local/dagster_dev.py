"""`dagster dev` (webserver, daemon, code server) as one process group, stopped cleanly.

dagster dev shuts its children down on SIGTERM; started in its own session, the whole
group can also be killed if it does not, so no webserver or daemon outlives its caller.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

START_TIMEOUT_SECONDS = 120.0
GROUP_EXIT_SECONDS = 10.0


@dataclass
class DagsterDev:
    url: str
    process: subprocess.Popen[bytes]

    def wait_until_ready(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Block until the webserver answers GraphQL (code location loaded), or raise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dagster dev exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/server_info", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"dagster dev did not answer at {self.url} within {timeout:.0f} s")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the group and wait; SIGKILL whatever is left."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        # Children orphaned by the kill are reaped by init a moment later; wait for the group to vanish.
        deadline = time.monotonic() + GROUP_EXIT_SECONDS
        while self.is_group_alive() and time.monotonic() < deadline:
            time.sleep(0.1)

    def is_group_alive(self) -> bool:
        """Whether any process of the dagster dev session is still there."""
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def __enter__(self) -> DagsterDev:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


WORKSPACE = """load_from:
  - python_module: {module_name: lake_sync.defs.definitions, attribute: defs, location_name: lake_sync}
"""


def isolated_dagster_env(workdir: Path, *, task_file: Path, instance_yaml: Path) -> tuple[Path, dict[str, str]]:
    """A workspace and a DAGSTER_HOME of their own under `workdir`, for tests and benchmarks.

    Returns the workspace path and the environment that points Dagster and lake-sync at them.
    """
    home = workdir / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(instance_yaml, home / "dagster.yaml")
    workspace = workdir / "workspace.yaml"
    workspace.write_text(WORKSPACE)
    return workspace, {"DAGSTER_HOME": str(home), "LAKE_SYNC_TASKS": str(task_file)}


def start_dagster_dev(
    workspace: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 3000,
    env: dict[str, str] | None = None,
    log: Path | None = None,
) -> DagsterDev:
    """Start `dagster dev -w workspace` in a new session; DAGSTER_HOME etc. come from `env`."""
    command = [sys.executable, "-m", "dagster", "dev", "-w", str(workspace), "-h", host, "-p", str(port)]
    output = log.open("wb") if log is not None else None
    process = subprocess.Popen(
        command,
        cwd=workspace.parent,
        env={**os.environ, **(env or {})},
        stdout=output,
        stderr=subprocess.STDOUT if output else None,
        start_new_session=True,
    )
    if output is not None:
        output.close()
    return DagsterDev(f"http://{host}:{port}", process)
