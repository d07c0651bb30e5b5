"""Local images: images/s of fetching and embedding image files against the model alone on the same images.

Measured, in images/s over N JPEG files in a temporary folder (the model loaded and warmed up before timing):
  model alone       `embedder.embed_images` on the images' bytes already in memory, nothing else.
  fetch alone       `ImageFetcher.fetch` on the file paths (read, size cap, Pillow check), no model.
  fetch + embed     per batch of rows, as a sync reads them: fetch the batch's paths, then embed the images.
  fetch ‖ embed     the same, with the next batch's fetch running while the current batch is embedded.
3 rounds of each, the order rotating from round to round. Goal: the sync (here fetch + embed, until the full
sync is measured) >= 0.85x the model alone (medians). The model is a tiny random CLIP unless `--model PATH`
names a local CLIP / SigLIP folder; a real CLIP is about 10x slower per image, so fetching weighs less there.

    .venv/bin/python bench/local_images.py [--images 256] [--model PATH] [--size 640x480] [--batch-rows 128]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from _common import median_rate, timed
from PIL import Image

from lake_sync.embed.clip import ClipEmbedder
from lake_sync.embed.images import ImageFetcher, ImageResult
from lake_sync_tests.embed.conftest import write_tiny_clip

DEFAULT_IMAGES = 256
DEFAULT_SIZE = "640x480"
DEFAULT_BATCH_ROWS = 128
RUNS = 3
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES)
    parser.add_argument("--model", help="a local CLIP / SigLIP folder (default: a tiny random CLIP)")
    parser.add_argument("--size", default=DEFAULT_SIZE, help="image width x height")
    parser.add_argument("--batch-rows", type=int, default=DEFAULT_BATCH_ROWS)
    args = parser.parse_args()
    width, height = (int(side) for side in args.size.split("x"))

    with tempfile.TemporaryDirectory(prefix="bench-images-") as tmp:
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

        runs: dict[str, Callable[[], object]] = {
            "model alone": lambda: embedder.embed_images(images),
            "fetch alone": lambda: checked(fetcher.fetch(paths)),
            "fetch + embed": fetch_then_embed,
            "fetch ‖ embed": fetch_while_embedding,
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for run in range(RUNS):
            for name in names[run:] + names[:run]:
                times[name].append(timed(runs[name]))
            print(f"round {run + 1}: " + ", ".join(f"{n} {args.images / t[-1]:,.0f}/s" for n, t in times.items()))

        rates = {name: median_rate(name, args.images, seconds) for name, seconds in times.items()}
        model = rates["model alone"]
        for name in ("fetch + embed", "fetch ‖ embed"):
            print(f"{name} / model alone: {rates[name] / model:.2f}x  (goal >= {GOAL}x)")


if __name__ == "__main__":
    main()
