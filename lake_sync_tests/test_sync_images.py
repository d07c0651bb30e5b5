"""Image transforms end to end: image paths in a Paimon column → fetched → a tiny CLIP → the index,
with unreadable images dead-lettered while their rows still sync."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from elasticsearch import Elasticsearch
from PIL import Image

from lake_sync.index.dead_letters import read_dead_letters
from lake_sync.search import search
from lake_sync.sync import SyncMode, run_sync
from lake_sync_tests.conftest import TaskFileFactory, commit_rows, write_paimon_table
from lake_sync_tests.embed.conftest import jpeg_with_broken_scan, write_tiny_clip


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_clip(tmp_path_factory.mktemp("clip"))


def _png(path: Path, colour: tuple[int, int, int]) -> str:
    Image.new("RGB", (40, 40), colour).save(path)
    return str(path)


def test_image_sync_embeds_readable_images_and_dead_letters_the_rest_while_their_rows_sync(
    es: Elasticsearch, tmp_path: Path, warehouse: str, index_name: str, task_file: TaskFileFactory, clip_dir: Path
) -> None:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not an image at all")
    rows = pa.table(
        {
            "sku": ["red", "blue", "gone", "broken", "none"],
            "image": [
                _png(tmp_path / "red.png", (255, 0, 0)),
                _png(tmp_path / "blue.png", (0, 0, 255)),
                str(tmp_path / "missing.png"),
                str(corrupt),
                None,
            ],
        }
    )
    write_paimon_table(warehouse, "db.items", rows)
    transforms = [{"field": "image", "embed": "image", "model": f"clip:{clip_dir}", "to": "image_vec"}]

    result = run_sync(task_file(primary_key="sku", transforms=transforms), "items", mode=SyncMode.FULL)

    es.indices.refresh(index=index_name)
    documents = {hit["_id"]: hit["_source"] for hit in es.search(index=index_name, size=10)["hits"]["hits"]}
    assert sorted(documents) == ["blue", "broken", "gone", "none", "red"]  # every row synced
    assert len(documents["red"]["image_vec"]) == 16
    assert "image_vec" not in documents["gone"] and "image_vec" not in documents["broken"]
    letters = read_dead_letters(Path(result.dead_letter_path))
    reasons = {letter["id"]: letter["reason"] for letter in letters}
    assert set(reasons) == {"gone", "broken"}
    assert "file not found" in reasons["gone"]
    assert "not a decodable image" in reasons["broken"]
    assert {letter["stage"] for letter in letters} == {"image"}
    assert (result.inputs_embedded, result.model_inputs) == (2, 2)

    hits = search(
        task_file(primary_key="sku", transforms=transforms),
        "items",
        image=Path(rows["image"][0].as_py()).read_bytes(),
        k=1,
    )
    assert hits[0].id == "red"


def test_image_sync_embeds_a_changed_image_again_and_an_unchanged_one_from_the_cache(
    tmp_path: Path, warehouse: str, task_file: TaskFileFactory, clip_dir: Path
) -> None:
    first, second = _png(tmp_path / "a.png", (10, 200, 10)), _png(tmp_path / "b.png", (200, 10, 10))
    table = write_paimon_table(
        warehouse,
        "db.items",
        pa.table({"sku": ["a", "b"], "image": [first, second], "_op": ["+I", "+I"]}),
        primary_keys=["sku"],
        options={"rowkind.field": "_op"},
    )
    transforms = [{"field": "image", "embed": "image", "model": f"clip:{clip_dir}", "to": "image_vec"}]
    run_sync(task_file(transforms=transforms), "items", mode=SyncMode.FULL)
    _png(tmp_path / "b.png", (10, 10, 250))  # same path, new picture
    commit_rows(table, pa.table({"sku": ["a", "b"], "image": [first, second], "_op": ["+I", "+I"]}))

    result = run_sync(task_file(transforms=transforms), "items")

    assert (result.inputs_embedded, result.cache_hits, result.model_inputs) == (2, 1, 1)


def test_image_sync_fetching_a_batch_ahead_keeps_every_image_with_its_own_row_across_batches(
    es: Elasticsearch, tmp_path: Path, warehouse: str, index_name: str, task_file: TaskFileFactory, clip_dir: Path
) -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255), (9, 9, 9)]
    skus = [f"sku-{number}" for number in range(len(colours))]
    # Every third row's image is missing, so dead letters fall in different batches of 2 rows.
    images = [
        str(tmp_path / "missing.png") if number % 3 == 1 else _png(tmp_path / f"{sku}.png", colour)
        for number, (sku, colour) in enumerate(zip(skus, colours, strict=True))
    ]
    write_paimon_table(warehouse, "db.items", pa.table({"sku": skus, "image": images}))
    tasks = task_file(
        primary_key="sku",
        read_batch_rows=2,
        transforms=[{"field": "image", "embed": "image", "model": f"clip:{clip_dir}", "to": "image_vec"}],
    )

    result = run_sync(tasks, "items", mode=SyncMode.FULL)

    es.indices.refresh(index=index_name)
    documents = {hit["_id"]: hit["_source"] for hit in es.search(index=index_name, size=10)["hits"]["hits"]}
    assert sorted(documents) == skus
    missing = {sku for number, sku in enumerate(skus) if number % 3 == 1}
    assert {sku for sku, document in documents.items() if "image_vec" not in document} == missing
    assert {letter["id"] for letter in read_dead_letters(Path(result.dead_letter_path))} == missing
    for sku, image in zip(skus, images, strict=True):
        if sku not in missing:
            assert search(tasks, "items", image=Path(image).read_bytes(), k=1)[0].id == sku


def test_image_sync_dead_letters_an_image_only_the_model_finds_undecodable_and_embeds_the_rest(
    es: Elasticsearch, tmp_path: Path, warehouse: str, index_name: str, task_file: TaskFileFactory, clip_dir: Path
) -> None:
    # The fetch checks headers and length only; this JPEG's broken Huffman table shows when the model decodes it.
    broken = tmp_path / "broken-scan.jpg"
    broken.write_bytes(jpeg_with_broken_scan())
    skus = ["red", "broken", "blue"]
    images = [_png(tmp_path / "red.png", (255, 0, 0)), str(broken), _png(tmp_path / "blue.png", (0, 0, 255))]
    write_paimon_table(warehouse, "db.items", pa.table({"sku": skus, "image": images}))
    transforms = [{"field": "image", "embed": "image", "model": f"clip:{clip_dir}", "to": "image_vec"}]

    result = run_sync(task_file(primary_key="sku", transforms=transforms), "items", mode=SyncMode.FULL)

    es.indices.refresh(index=index_name)
    documents = {hit["_id"]: hit["_source"] for hit in es.search(index=index_name, size=10)["hits"]["hits"]}
    assert sorted(documents) == ["blue", "broken", "red"]
    assert "image_vec" not in documents["broken"]
    assert len(documents["red"]["image_vec"]) == len(documents["blue"]["image_vec"]) == 16
    (letter,) = read_dead_letters(Path(result.dead_letter_path))
    assert (letter["id"], letter["stage"]) == ("broken", "image")
    assert "not a decodable image (broken data stream" in letter["reason"]
    assert result.inputs_embedded == 2
