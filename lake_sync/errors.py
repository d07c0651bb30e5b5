"""One small exception hierarchy, so callers can tell configuration, source and target failures apart."""

from __future__ import annotations


class LakeSyncError(Exception):
    """Base of every error lake-sync raises on purpose."""


class ConfigError(LakeSyncError):
    """The task file or a command's arguments are invalid; nothing was run."""


class SourceError(LakeSyncError):
    """The Paimon warehouse, database, table or a configured column cannot be used."""


class EmbedError(LakeSyncError):
    """An embedding model cannot be loaded or answered wrongly."""


class UndecodableImageError(EmbedError):
    """An image passed the fetch checks, but its pixel data cannot be decoded: a dead letter, not a failed batch."""

    def __init__(self, image: bytes, reason: str) -> None:
        super().__init__(f"not a decodable image ({reason})")
        self.image = image
        self.reason = reason


class TargetError(LakeSyncError):
    """The search cluster cannot be reached, refused the credentials, or rejected the request."""


class MappingConflictError(TargetError):
    """An existing index has a mapping that disagrees with the task; no document was written."""


class CacheError(LakeSyncError):
    """The shared embedding cache location cannot be reached or answered with an error (transient: retry)."""


class TooManyErrorsError(LakeSyncError):
    """More documents failed than the task's error budget allows; the cursor was not moved."""
