"""Remote throughput: with a 100 ms model, 8 requests of 32 texts in flight should reach near 2,560 texts/s.

OpenAIEmbedder (8 in flight, batches of 32) → openai client → lake-sync model server (+100 ms, canned 384-d vectors)

The model server adds 100 ms to every embeddings request and runs no model, so the only costs
beyond the latency are lake-sync's own: batching, the rate/retry wrapper, the official client,
JSON and base64, answer checks. Ideal: 8 in flight x 32 texts / 0.1 s = 2,560 texts/s.
20k texts per run, 3 runs after a warm-up. Goal: median >= 0.8x the ideal.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from _common import median_rate, timed

from lake_sync.config import OpenAIConnection
from lake_sync.embed.openai_compatible import OpenAIEmbedder
from lake_sync.local.model_server import running_model_server

TEXTS = 20_000
RUNS = 3
LATENCY_SECONDS = 0.1
IN_FLIGHT = 8
BATCH = 32
DIMS = 384
MODEL = "latency-384"
GOAL = 0.8
IDEAL = IN_FLIGHT * BATCH / LATENCY_SECONDS


def main() -> None:
    texts = [f"product {number}: a sturdy thing that does what it says, in stock" for number in range(TEXTS)]
    with (
        tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp,
        running_model_server(
            models={MODEL: f"hash:{DIMS}"},
            storage_dir=Path(tmp),
            latency_seconds=LATENCY_SECONDS,
            latency_only_dims=DIMS,
        ) as server,
    ):
        connection = OpenAIConnection(
            type="openai", base_url=server.base_url, batch_size=BATCH, max_in_flight=IN_FLIGHT, dims={MODEL: DIMS}
        )
        embedder = OpenAIEmbedder(MODEL, connection=connection)
        embedder.embed_texts(texts[: IN_FLIGHT * BATCH])  # warm-up: connections opened, code paths loaded
        seconds = []
        for _ in range(RUNS):
            seconds.append(timed(lambda: embedder.embed_texts(texts)))
        embedder.close()
        rate = median_rate(f"OpenAIEmbedder, {IN_FLIGHT} x {BATCH} in flight", TEXTS, seconds)
        print(f"ideal {IN_FLIGHT} x {BATCH} / {LATENCY_SECONDS} s = {IDEAL:,.0f} texts/s")
        print(f"measured / ideal: {rate / IDEAL:.2f}x  (goal >= {GOAL}x)")
        answered = server.requests.embeddings
        print(f"requests sent {embedder.requests:,}, retried {embedder.retries}, answered by the server {answered:,}")


if __name__ == "__main__":
    main()
