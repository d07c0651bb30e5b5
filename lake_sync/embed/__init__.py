"""Embedding providers: texts in, float32 vectors out, dimensions known before the first call."""

from lake_sync.embed.base import Embedder
from lake_sync.embed.registry import build_embedder

__all__ = ["Embedder", "build_embedder"]
