"""Model specs (`provider:name`) to embedder instances, one per spec per process.

Built-in providers: `local:` (sentence-transformers text model, bundled or a folder), `clip:`
(a local CLIP / SigLIP folder, images and text), `hash:` (zero-cost vectors). Any other prefix
names an `openai` or `aisearch` connection of the task file.
"""

from __future__ import annotations

import threading

from lake_sync.config import AISearchConnection, ModelConnection, OpenAIConnection
from lake_sync.embed.base import Embedder
from lake_sync.errors import ConfigError

_cache: dict[tuple[str, str], Embedder] = {}
_cache_lock = threading.Lock()


def build_embedder(spec: str, connection: ModelConnection | None = None) -> Embedder:
    """The embedder for `spec`, created once per process (so a model loads once)."""
    key = (spec, connection.model_dump_json() if connection is not None else "")
    with _cache_lock:
        if key not in _cache:
            _cache[key] = _create(spec, connection)
        return _cache[key]


def _create(spec: str, connection: ModelConnection | None) -> Embedder:
    provider, _, name = spec.partition(":")
    if isinstance(connection, OpenAIConnection) and name:
        from lake_sync.embed.openai_compatible import OpenAIEmbedder

        return OpenAIEmbedder(name, connection=connection, connection_name=provider)
    if isinstance(connection, AISearchConnection) and name:
        from lake_sync.embed.aisearch import AISearchEmbedder

        return AISearchEmbedder(name, connection=connection, connection_name=provider)
    if provider == "local" and name:
        from lake_sync.embed.local_text import LocalTextEmbedder

        return LocalTextEmbedder(name)
    if provider == "clip" and name:
        from lake_sync.embed.clip import ClipEmbedder

        return ClipEmbedder(name)
    if provider == "hash" and name.isdigit() and 0 < int(name) <= 4096:
        from lake_sync.embed.hashing import HashingEmbedder

        return HashingEmbedder(int(name))
    raise ConfigError(
        f"model '{spec}' is not understood; use local:all-MiniLM-L6-v2, local:/path/to/model, clip:/path/to/clip, "
        "hash:<dims>, or <connection>:<model> with an openai or aisearch connection"
    )
