"""Local CLIP / SigLIP models on the CPU: images and texts into one vector space, loaded once per process.

image bytes → Pillow RGB → image processor → get_image_features ─┐
texts ──────→ tokenizer ──────────────────→ get_text_features ───┴→ L2-normalised float32 rows

The folder is a Hugging Face checkpoint (`save_pretrained` layout) read offline. Text vectors come
from the text tower, so a text query searches the image vectors of the same model.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from lake_sync.embed.base import Embedder
from lake_sync.embed.limits import TokenizerTokens
from lake_sync.errors import EmbedError, UndecodableImageError

#: `model_type` values of config.json whose models have both `get_image_features` and `get_text_features`.
SUPPORTED_MODEL_TYPES = frozenset({"clip", "siglip", "siglip2"})
DEFAULT_CLIP_BATCH_SIZE = 32
#: Bytes read from each end of a weights file for the model id; enough to tell fine-tunes apart cheaply.
_WEIGHTS_SAMPLE_BYTES = 1 << 20
_WEIGHTS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")
# SigLIP was trained on texts padded to the tokenizer's full length; CLIP masks its padding.
_PAD_TO_MAX_LENGTH = frozenset({"siglip", "siglip2"})


@dataclass(frozen=True)
class _LoadedModel:
    model: Any
    processor: Any
    model_type: str
    dims: int
    max_text_tokens: int
    #: Shared by every embedder of this folder: torch already uses every core.
    lock: threading.Lock


class ClipEmbedder(Embedder):
    """A CLIP or SigLIP checkpoint in a local folder; embeds images and texts."""

    embeds_images = True

    def __init__(self, path: str, *, batch_size: int = DEFAULT_CLIP_BATCH_SIZE) -> None:
        super().__init__()
        folder = _model_folder(path)
        self._loaded = _load(folder)
        self.model_id = f"clip:{folder.name}@{_fingerprint(folder)}"
        self.dims = self._loaded.dims
        self.batch_size = batch_size
        # The text tower reads max_text_tokens tokens (77 for CLIP), special tokens included, and cuts the rest.
        tokenizer = self._loaded.processor.tokenizer
        self.text_tokens = TokenizerTokens(
            tokenizer, max_tokens=self._loaded.max_text_tokens - tokenizer.num_special_tokens_to_add()
        )

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        loaded = self._loaded
        inputs = loaded.processor.tokenizer(
            texts,
            padding="max_length" if loaded.model_type in _PAD_TO_MAX_LENGTH else True,
            truncation=True,
            max_length=loaded.max_text_tokens,
            return_tensors="pt",
        )
        return self._features(loaded.model.get_text_features, inputs)

    def _embed_images(self, images: list[bytes]) -> np.ndarray:
        decoded = [_decode(data) for data in images]
        inputs = self._loaded.processor.image_processor(decoded, return_tensors="pt")
        return self._features(self._loaded.model.get_image_features, inputs)

    def _features(self, call: Callable[..., Any], inputs: Mapping[str, Any]) -> np.ndarray:
        import torch

        with self._loaded.lock, torch.inference_mode():
            output = call(**inputs)
            # transformers 5 returns the projected vectors as `pooler_output`; older versions a bare tensor.
            features = output if isinstance(output, torch.Tensor) else output.pooler_output
            features = torch.nn.functional.normalize(features.float(), dim=-1)
        return features.numpy()


def _decode(data: bytes) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise UndecodableImageError(data, str(error) or type(error).__name__) from error


def _model_folder(path: str) -> Path:
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise EmbedError(f"CLIP model folder '{path}' does not exist")
    return folder


def _model_type(folder: Path) -> str:
    config_file = folder / "config.json"
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except FileNotFoundError:
        raise EmbedError(f"'{folder}' is not a Hugging Face model folder: it has no config.json") from None
    except (OSError, ValueError) as error:
        raise EmbedError(f"cannot read {config_file}: {error}") from error
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise EmbedError(
            f"'{folder}' holds a '{model_type}' model, not a CLIP or SigLIP model "
            f"(config.json model_type must be one of {sorted(SUPPORTED_MODEL_TYPES)})"
        )
    return model_type


@cache
def _load(folder: Path) -> _LoadedModel:
    model_type = _model_type(folder)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoModel, AutoProcessor
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(str(folder)).eval()
        processor = AutoProcessor.from_pretrained(str(folder))
    except Exception as error:
        raise EmbedError(f"cannot load CLIP model from {folder}: {error}") from error
    if not hasattr(processor, "tokenizer") or not hasattr(processor, "image_processor"):
        raise EmbedError(f"{folder} has no image processor and tokenizer for a {model_type} model")
    config = model.config
    # SigLIP has no projection: its image vectors are the vision tower's width.
    dims = getattr(config, "projection_dim", None) or config.vision_config.hidden_size
    max_text_tokens = min(processor.tokenizer.model_max_length, config.text_config.max_position_embeddings)
    return _LoadedModel(model, processor, model_type, int(dims), int(max_text_tokens), threading.Lock())


@cache
def _fingerprint(folder: Path) -> str:
    """12 hex digits from config.json and each weights file's name, size and first and last bytes.

    Stable when the folder is copied (no mtimes), different for another checkpoint of the same
    architecture, and cheap for multi-GB weights.
    """
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    weights = sorted({file for pattern in _WEIGHTS_PATTERNS for file in folder.glob(pattern)})
    for file in weights:
        size = file.stat().st_size
        digest.update(f"\0{file.name}\0{size}\0".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(_WEIGHTS_SAMPLE_BYTES))
            handle.seek(max(size - _WEIGHTS_SAMPLE_BYTES, 0))
            digest.update(handle.read(_WEIGHTS_SAMPLE_BYTES))
    return digest.hexdigest()[:12]
