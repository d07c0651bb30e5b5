"""Local images: images/s of fetching and embedding image files against the model alone on the same images.

Measured, in images/s over N JPEG files in a temporary folder (the model loaded and warmed up before timing):
  model alone       `embedder.embed_images` on the images' bytes already in memory, nothing else.
  fetch alone       `ImageFetcher.fetch` on the file paths (read, size cap, Pillow check), no model.
  fetch + embed     per batch of rows, as a sync reads them: fetch the batch's paths, then embed the images.
  fetch ‖ embed     the same, with the next batch's fetch running while the current batch is embedded.
  full sync         `run_sync` (full) of a Paimon table holding the paths, into the local search server, with
                    an empty embedding cache each round: read, fetch, embed, bulk, cursor, alias swap.
5 rounds of each, the order rotating from round to round. Goal: full sync >= 0.85x the model alone (medians).
The model is a tiny random CLIP unless `--model PATH` names a local CLIP / SigLIP folder; a real CLIP is
about 10x slower per image, so fetching weighs less there.

    .venv/bin/python bench/local_images.py [--images 1024] [--model PATH] [--size 640x480] [--batch-rows 128]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
from _common import median_rate, search_server, timed
from PIL import Image

from lake_sync.config import TaskFile, parse_task_file
from lake_sync.embed.clip import ClipEmbedder
from lake_sync.embed.images import ImageFetcher, ImageResult
from lake_sync.sync import SyncMode, run_sync
from lake_sync_tests.embed.conftest import write_tiny_clip

# Enough batches of rows for the sync's pipeline (fetching a batch ahead) to reach its steady state.
DEFAULT_IMAGES = 1024
DEFAULT_SIZE = "640x480"
DEFAULT_BATCH_ROWS = 128
RUNS = 5
GOAL = 0.85


def write_images(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """`count` distinct photo-sized JPEGs (crops of noise over gradients, so they neither compress away nor repeat)."""
    width, height = size
    canvas = (width * 2, height * 2)
    gradient = Image.linear_gradient("L").resize(canvas)
    noise = Image.merge("RGB", (gradient, Image.effect_noise(canvas, 60), gradient.rotate(90)))
    paths = []
    for index in range(count):
        left, top = (index * 37) % width, (index * 53) % height
        image = noise.crop((left, top, left + width, top + height))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85)
        path = folder / f"image-{index:05d}.jpg"
        path.write_bytes(buffer.getvalue())
        paths.append(path)
    return paths


def checked(results: list[ImageResult]) -> list[bytes]:
    failed = [result.error for result in results if result.data is None]
    assert not failed, f"{len(failed)} images failed to fetch, first: {failed[0]}"
    return [result.data for result in results if result.data is not None]


def image_task_file(workdir: Path, paths: list[str], model_dir: str, es_url: str, batch_rows: int) -> TaskFile:
    """An append-only Paimon table of (sku, image path) and a task embedding the images into `images`."""
    from pypaimon import CatalogFactory, Schema

    warehouse = str(workdir / "warehouse")
    catalog = CatalogFactory.create({"warehouse": warehouse})
    catalog.create_database("db", True)
    rows = pa.table({"sku": [f"sku-{i}" for i in range(len(paths))], "image": paths})
    catalog.create_table("db.images", Schema.from_pyarrow_schema(rows.schema), True)
    builder = catalog.get_table("db.images").new_batch_write_builder()
    writer, commit = builder.new_write(), builder.new_commit()
    writer.write_arrow(rows)
    commit.commit(writer.prepare_commit())
    writer.close()
    commit.close()
    return parse_task_file(
        {
            "connections": {
                "lake": {"type": "paimon", "warehouse": warehouse},
                "es": {"type": "elasticsearch", "hosts": [es_url]},
            },
            "tasks": [
                {
                    "name": "images",
                    "source": {"connection": "lake", "database": "db", "table": "images"},
                    "target": {"connection": "es", "index": "bench-images"},
                    "primary_key": "sku",
                    "read_batch_rows": batch_rows,
                    "transforms": [{"field": "image", "embed": "image", "model": f"clip:{model_dir}", "to": "vec"}],
                }
            ],
            "state_dir": str(workdir / "state"),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES)
    parser.add_argument("--model", help="a local CLIP / SigLIP folder (default: a tiny random CLIP)")
    parser.add_argument("--size", default=DEFAULT_SIZE, help="image width x height")
    parser.add_argument("--batch-rows", type=int, default=DEFAULT_BATCH_ROWS)
    args = parser.parse_args()
    width, height = (int(side) for side in args.size.split("x"))

    with tempfile.TemporaryDirectory(prefix="bench-images-") as tmp, search_server() as es_url:
        started = time.perf_counter()
        model_dir = args.model or str(write_tiny_clip(Path(tmp) / "tiny-clip"))
        embedder = ClipEmbedder(model_dir)
        paths = [str(path) for path in write_images(Path(tmp), args.images, (width, height))]
        images = [Path(path).read_bytes() for path in paths]
        embedder.embed_images(images[: embedder.batch_size])  # warm-up, so torch has seen the batch shape
        fetcher = ImageFetcher()
        mb = sum(map(len, images)) / 1e6
        print(f"{embedder.model_id} ({embedder.dims}-d), {args.images} JPEGs {args.size} ({mb:.0f} MB)")
        print(f"set up in {time.perf_counter() - started:.1f} s")

        batches = [paths[start : start + args.batch_rows] for start in range(0, len(paths), args.batch_rows)]

        def fetch_then_embed() -> None:
            for batch in batches:
                embedder.embed_images(checked(fetcher.fetch(batch)))

        def fetch_while_embedding() -> None:
            with ThreadPoolExecutor(1, thread_name_prefix="bench-prefetch") as prefetch:
                ahead: Future[list[ImageResult]] = prefetch.submit(fetcher.fetch, batches[0])
                for following in [*batches[1:], None]:
                    results = ahead.result()
                    if following is not None:
                        ahead = prefetch.submit(fetcher.fetch, following)
                    embedder.embed_images(checked(results))

        task_file = image_task_file(Path(tmp), paths, model_dir, es_url, args.batch_rows)
        cache = Path(task_file.state_dir) / "embeddings.sqlite"

        def full_sync() -> None:
            cache.unlink(missing_ok=True)  # every round pays for every image
            result = run_sync(task_file, "images", mode=SyncMode.FULL)
            assert result.model_inputs == args.images and not result.dead_lettered, result

        runs: dict[str, Callable[[], object]] = {
            "model alone": lambda: embedder.embed_images(images),
            "fetch alone": lambda: checked(fetcher.fetch(paths)),
            "fetch + embed": fetch_then_embed,
            "fetch ‖ embed": fetch_while_embedding,
            "full sync": full_sync,
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for run in range(RUNS):
            for name in names[run:] + names[:run]:
                times[name].append(timed(runs[name]))
            print(f"round {run + 1}: " + ", ".join(f"{n} {args.images / t[-1]:,.0f}/s" for n, t in times.items()))

        rates = {name: median_rate(name, args.images, seconds) for name, seconds in times.items()}
        model = rates["model alone"]
        for name in ("fetch + embed", "fetch ‖ embed", "full sync"):
            print(f"{name} / model alone: {rates[name] / model:.2f}x  (goal >= {GOAL}x)")


if __name__ == "__main__":
    main()
