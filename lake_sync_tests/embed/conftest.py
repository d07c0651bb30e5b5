"""Embedding fixtures: a tiny randomly initialised CLIP checkpoint, written once per session.

CLIPConfig (small towers) + CLIPProcessor (byte-level tokenizer, 32 px images) → save_pretrained → tmp folder

No CLIP weights ship in any package, so the CLIP code path is exercised on random weights:
the vectors mean nothing, but loading, preprocessing, dims and normalisation are real.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

TINY_CLIP_DIMS = 16
TINY_CLIP_IMAGE_SIZE = 32
TINY_CLIP_MAX_TEXT_TOKENS = 77


def write_tiny_clip(folder: Path, *, seed: int = 0) -> Path:
    """Write a random CLIPModel (16-d projections) and its processor to `folder`, offline; returns `folder`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

    # One token per byte, alone and word-final, so any text tokenizes without merges.
    symbols = sorted(ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in symbols:
        vocab.setdefault(symbol, len(vocab))
        vocab.setdefault(f"{symbol}</w>", len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TINY_CLIP_MAX_TEXT_TOKENS)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": TINY_CLIP_IMAGE_SIZE},
        crop_size={"height": TINY_CLIP_IMAGE_SIZE, "width": TINY_CLIP_IMAGE_SIZE},
    )
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={
            **tower,
            "vocab_size": len(vocab),
            "max_position_embeddings": TINY_CLIP_MAX_TEXT_TOKENS,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={**tower, "image_size": TINY_CLIP_IMAGE_SIZE, "patch_size": 8},
        projection_dim=TINY_CLIP_DIMS,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIP checkpoint folder, usable as `clip:<folder>`."""
    return write_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def png_bytes(colour: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (8, 8)) -> bytes:
    """A small real PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg_with_broken_scan() -> bytes:
    """A JPEG that opens, verifies and ends with its end-of-image marker, but whose Huffman table is bogus:
    only decoding its pixels finds that out (Pillow: "broken data stream")."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.effect_noise((32, 32), 50).convert("RGB").save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    table = data.index(b"\xff\xc4")
    # Marker, length (2 bytes) and class/id byte, then the 16 code counts: all 255 cannot form a table.
    data[table + 5 : table + 21] = b"\xff" * 16
    return bytes(data)
