"""Model specs (`provider:name`) to embedder instances, one per spec per process."""

from __future__ import annotations

from functools import cache

from lake_sync.embed.base import Embedder
from lake_sync.errors import ConfigError

PROVIDERS = ("local", "hash")


@cache
def build_embedder(spec: str) -> Embedder:
    """The embedder for `local:<model or folder>` or `hash:<dims>`; cached so models load once."""
    provider, _, name = spec.partition(":")
    if provider == "local" and name:
        from lake_sync.embed.local_text import LocalTextEmbedder

        return LocalTextEmbedder(name)
    if provider == "hash" and name.isdigit() and 0 < int(name) <= 4096:
        from lake_sync.embed.hashing import HashingEmbedder

        return HashingEmbedder(int(name))
    raise ConfigError(
        f"model '{spec}' is not understood; use one of: local:all-MiniLM-L6-v2, local:/path/to/model, hash:<dims>"
    )
