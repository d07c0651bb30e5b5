"""The embedding cache: content seen before by the same model is never sent to it again."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lake_sync.embed.cache import EmbeddingCache
from lake_sync.embed.hashing import HashingEmbedder


def test_cache_sends_only_unseen_texts_to_the_model_and_returns_vectors_in_input_order(tmp_path: Path) -> None:
    model = HashingEmbedder(8)
    cache = EmbeddingCache(tmp_path / "cache.sqlite")

    first = cache.embed_texts(model, ["boots", "tent"])
    second = cache.embed_texts(model, ["tent", "stove", "boots"])

    assert (first.hits, second.hits) == (0, 2)
    assert model.inputs == 3  # boots, tent, then only stove
    assert np.array_equal(second.vectors, model.embed_texts(["tent", "stove", "boots"]))


def test_cache_embeds_equal_texts_of_one_batch_once(tmp_path: Path) -> None:
    model = HashingEmbedder(8)
    cache = EmbeddingCache(tmp_path / "cache.sqlite")

    result = cache.embed_texts(model, ["same", "same", "other", "same"])

    assert model.inputs == 2
    assert result.hits == 0
    assert np.array_equal(result.vectors[0], result.vectors[3])


def test_cache_keeps_models_apart_and_survives_a_new_process(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    EmbeddingCache(path).embed_texts(HashingEmbedder(8), ["boots"])
    other_model, same_model = HashingEmbedder(16), HashingEmbedder(8)
    reopened = EmbeddingCache(path)

    assert reopened.embed_texts(other_model, ["boots"]).hits == 0
    assert reopened.embed_texts(same_model, ["boots"]).hits == 1
    assert same_model.calls == 0


def test_cache_keys_images_by_their_bytes_so_a_changed_image_is_embedded_again(tmp_path: Path) -> None:
    class ImageModel(HashingEmbedder):
        embeds_images = True

        def _embed_images(self, images: list[bytes]) -> np.ndarray:
            return self._embed_texts([image.hex() for image in images])

    model = ImageModel(8)
    cache = EmbeddingCache(tmp_path / "cache.sqlite")

    cache.embed_images(model, [b"\x89PNG one"])
    again = cache.embed_images(model, [b"\x89PNG one", b"\x89PNG two"])

    assert again.hits == 1
    assert model.inputs == 2
