"""The local CLIP / SigLIP embedder on tiny random checkpoints written in tmp folders.

tiny_clip_dir (CLIPModel + CLIPProcessor) → ClipEmbedder → embed_images / embed_texts → normalised float32 rows
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lake_sync.embed import build_embedder
from lake_sync.embed.clip import ClipEmbedder
from lake_sync.errors import EmbedError, UndecodableImageError
from lake_sync_tests.embed.conftest import (
    TINY_CLIP_DIMS,
    TINY_CLIP_MAX_TEXT_TOKENS,
    jpeg_with_broken_scan,
    write_tiny_clip,
)


def encoded(color: tuple[int, int, int], *, size: tuple[int, int] = (48, 40), image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, image_format)
    return buffer.getvalue()


def test_clip_embedder_dims_come_from_projection_dim(tiny_clip_dir: Path) -> None:
    embedder = ClipEmbedder(str(tiny_clip_dir))

    assert embedder.dims == TINY_CLIP_DIMS
    assert embedder.embeds_images


def test_clip_embedder_returns_normalised_float32_image_vectors(tiny_clip_dir: Path) -> None:
    embedder = ClipEmbedder(str(tiny_clip_dir))
    images = [encoded((255, 0, 0)), encoded((0, 0, 255), image_format="JPEG"), encoded((9, 9, 9), size=(7, 300))]

    vectors = embedder.embed_images(images)

    assert vectors.shape == (3, TINY_CLIP_DIMS)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_clip_embedder_decodes_grayscale_and_alpha_images_as_rgb(tiny_clip_dir: Path) -> None:
    embedder = ClipEmbedder(str(tiny_clip_dir))
    images = []
    for mode in ("L", "RGBA", "P"):
        buffer = io.BytesIO()
        Image.new(mode, (20, 20)).save(buffer, "PNG")
        images.append(buffer.getvalue())

    assert embedder.embed_images(images).shape == (3, TINY_CLIP_DIMS)


def test_clip_embedder_returns_normalised_text_vectors_in_the_image_space(tiny_clip_dir: Path) -> None:
    embedder = ClipEmbedder(str(tiny_clip_dir))
    texts = ["a photo of a red square", "", "word " * (TINY_CLIP_MAX_TEXT_TOKENS * 3)]

    vectors = embedder.embed_texts(texts)

    assert vectors.shape == (3, TINY_CLIP_DIMS)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_clip_embedder_gives_the_same_vector_for_the_same_image_in_any_batch(tiny_clip_dir: Path) -> None:
    embedder = ClipEmbedder(str(tiny_clip_dir), batch_size=2)
    red, blue = encoded((255, 0, 0)), encoded((0, 0, 255))

    alone = embedder.embed_images([red])
    batched = embedder.embed_images([blue, red, blue, red, red])

    for row in (1, 3, 4):
        np.testing.assert_allclose(batched[row], alone[0], atol=1e-5)
    assert not np.allclose(batched[0], alone[0], atol=1e-3)
    assert embedder.calls == 4 and embedder.inputs == 6


def test_clip_embedder_loads_a_folder_once_per_process(tiny_clip_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = ClipEmbedder(str(tiny_clip_dir))
    monkeypatch.chdir(tiny_clip_dir.parent)

    for spelling in (f"{tiny_clip_dir}/", f"./{tiny_clip_dir.name}", str(tiny_clip_dir / ".." / tiny_clip_dir.name)):
        again = ClipEmbedder(spelling)
        assert again._loaded is first._loaded
        assert again.model_id == first.model_id


def test_clip_model_id_is_stable_for_a_copy_and_changes_with_the_weights(tiny_clip_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_clip_dir, tmp_path / tiny_clip_dir.name)
    other = write_tiny_clip(tmp_path / "other" / tiny_clip_dir.name, seed=1)

    model_id = ClipEmbedder(str(tiny_clip_dir)).model_id

    assert model_id.startswith(f"clip:{tiny_clip_dir.name}@")
    assert ClipEmbedder(str(copy)).model_id == model_id
    assert ClipEmbedder(str(other)).model_id != model_id


def test_registry_routes_clip_specs_to_the_clip_embedder(tiny_clip_dir: Path) -> None:
    embedder = build_embedder(f"clip:{tiny_clip_dir}")

    assert isinstance(embedder, ClipEmbedder)
    assert embedder.embed_texts(["query"]).shape == (1, TINY_CLIP_DIMS)


def test_clip_embedder_runs_a_siglip_checkpoint_with_vision_width_dims(tiny_clip_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoProcessor, SiglipConfig, SiglipModel

    tower = {"hidden_size": 24, "intermediate_size": 48, "num_hidden_layers": 1, "num_attention_heads": 2}
    text = {**tower, "vocab_size": 520, "max_position_embeddings": 64, "bos_token_id": 0, "eos_token_id": 1}
    config = SiglipConfig(text_config=text, vision_config={**tower, "image_size": 32, "patch_size": 8})
    folder = tmp_path / "tiny-siglip"
    SiglipModel(config).save_pretrained(folder)
    AutoProcessor.from_pretrained(tiny_clip_dir).save_pretrained(folder)

    embedder = ClipEmbedder(str(folder))

    assert embedder.dims == 24
    assert embedder.embed_images([encoded((1, 2, 3))]).shape == (1, 24)
    np.testing.assert_allclose(np.linalg.norm(embedder.embed_texts(["a", "b c"]), axis=1), 1.0, atol=1e-5)


def test_clip_embedder_rejects_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(EmbedError, match="does not exist"):
        ClipEmbedder(str(tmp_path / "missing"))


def test_clip_embedder_rejects_a_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(EmbedError, match=r"no config\.json"):
        ClipEmbedder(str(tmp_path))


def test_clip_embedder_rejects_a_text_only_model_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))

    with pytest.raises(EmbedError, match="'bert' model, not a CLIP or SigLIP model"):
        ClipEmbedder(str(tmp_path))


def test_clip_embedder_reports_which_image_does_not_decode(tiny_clip_dir: Path) -> None:
    embedder = ClipEmbedder(str(tiny_clip_dir))
    broken = jpeg_with_broken_scan()

    with pytest.raises(UndecodableImageError, match="not a decodable image") as raised:
        embedder.embed_images([encoded((0, 0, 0)), broken])

    assert raised.value.image == broken
