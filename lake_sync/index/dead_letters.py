"""The dead-letter store: one JSON line per document that could not be synced, with the reason.

Records go to `<state_dir>/dead_letters/<task>.jsonl` (appended, one file per task), so a
user can read, grep or replay them; the document body is kept so nothing needs re-reading.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Literal

import orjson

# "line" and "join" are batch ingest's: an unusable input line, an id some joined sources lack.
Stage = Literal["key", "image", "embed", "index", "line", "join"]


@dataclass(frozen=True)
class DeadLetter:
    """Why one document did not reach the index."""

    task: str
    snapshot_id: int | None
    id: str | None
    stage: Stage
    status: int
    reason: str
    document: dict[str, Any] | None


class DeadLetterFile:
    """Appends dead letters to a JSONL file, created on the first record only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._file: IO[bytes] | None = None

    def add(self, letter: DeadLetter) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("ab")
        record = {"at": dt.datetime.now(dt.UTC).isoformat(), **asdict(letter)}
        self._file.write(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
        self.count += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> DeadLetterFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_dead_letters(path: Path) -> list[dict[str, Any]]:
    """Every record of a dead-letter file, oldest first; empty if there is none."""
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
