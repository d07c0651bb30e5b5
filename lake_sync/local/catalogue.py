"""A sample product catalogue written as a real Paimon primary-key table, for the demo and benchmarks.

Rows are generated deterministically from a seed: outdoor, kitchen, office and home products
with names, descriptions, URLs, prices and update times a search engineer would recognise.
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from typing import Any

import pyarrow as pa

CATALOGUE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("name", pa.string()),
        pa.field("description", pa.string()),
        pa.field("url", pa.string()),
        pa.field("source", pa.string()),
        pa.field("price", pa.decimal128(10, 2)),
        pa.field("updated_at", pa.timestamp("us")),
        pa.field("_op", pa.string()),
    ]
)

_PRODUCTS: dict[str, list[tuple[str, str]]] = {
    "outdoor": [
        ("hiking boots", "waterproof leather uppers, a grippy rubber outsole and ankle support for rocky trails"),
        ("trail running shoes", "light mesh, a cushioned midsole and lugs that bite into mud and gravel"),
        ("rain jacket", "a breathable waterproof shell with taped seams and a packable hood"),
        ("down sleeping bag", "rated to minus ten degrees, with a draft collar and a compression sack"),
        ("two-person tent", "a freestanding dome with two doors, a rainfly and aluminium poles"),
        ("trekking poles", "adjustable carbon poles with cork grips and snow baskets"),
        ("headlamp", "a rechargeable 400 lumen beam with a red night mode"),
        ("water filter", "a hollow-fibre filter that makes stream water safe to drink"),
    ],
    "kitchen": [
        ("chef's knife", "a forged stainless steel blade balanced for slicing, dicing and mincing"),
        ("cast iron skillet", "pre-seasoned, oven safe and even heating for searing steaks"),
        ("espresso machine", "fifteen bar pressure, a steam wand for milk foam and a removable tank"),
        ("stand mixer", "a five litre bowl, a dough hook and ten speeds for bread and cakes"),
        ("rice cooker", "fuzzy logic cooking for fluffy rice, porridge and steamed vegetables"),
        ("cutting board", "end-grain walnut that is gentle on knife edges"),
    ],
    "office": [
        ("ergonomic office chair", "lumbar support, adjustable armrests and a breathable mesh back"),
        ("standing desk", "an electric frame that lifts from sitting to standing height in seconds"),
        ("mechanical keyboard", "hot-swappable tactile switches and a sturdy aluminium case"),
        ("noise cancelling headphones", "active noise cancellation and thirty hours of battery for focus"),
        ("monitor arm", "a gas spring arm that holds a screen at eye level and frees desk space"),
        ("notebook", "dotted recycled paper that takes fountain pen ink without bleeding"),
    ],
    "home": [
        ("robot vacuum", "maps the rooms, avoids stairs and empties itself into a dock"),
        ("air purifier", "a HEPA filter that removes pollen, dust and smoke from a large room"),
        ("wool blanket", "soft merino wool that keeps you warm on cold winter evenings"),
        ("table lamp", "a dimmable warm light with a linen shade for reading"),
        ("houseplant pot", "glazed ceramic with a drainage hole and a bamboo saucer"),
        ("smart thermostat", "learns your schedule and lowers the heating when nobody is home"),
    ],
}
_BRANDS = ["Nordkap", "Alpenlicht", "Sierra & Co", "Kōbō", "Maison Verte", "Ridgeway", "Pacífica", "Ørsted Works"]
_ADJECTIVES = ["Classic", "Pro", "Ultralight", "Everyday", "Expedition", "Compact", "Premium", "Eco"]
_SOURCES = ["web", "store", "marketplace", "partner-feed"]
_EPOCH = dt.datetime(2026, 1, 1)


def catalogue_rows(count: int, *, seed: int = 7, start_id: int = 1) -> pa.Table:
    """`count` products with ids from `start_id`, as an Arrow table matching CATALOGUE_SCHEMA."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for product_id in range(start_id, start_id + count):
        category = rng.choice(list(_PRODUCTS))
        kind, features = rng.choice(_PRODUCTS[category])
        brand, adjective = rng.choice(_BRANDS), rng.choice(_ADJECTIVES)
        name = f"{brand} {adjective} {kind}"
        rows.append(
            {
                "id": product_id,
                "name": name,
                "description": f"The {name} ({category}): {features}. Model year {2020 + product_id % 7}.",
                "url": f"https://shop.example.com/{category}/{product_id}",
                "source": rng.choice(_SOURCES),
                "price": Decimal(rng.randint(500, 50000)) / 100,
                "updated_at": _EPOCH + dt.timedelta(minutes=rng.randint(0, 500_000)),
                "_op": "+I",
            }
        )
    return pa.Table.from_pylist(rows, schema=CATALOGUE_SCHEMA)


def commit_changes(
    warehouse: str,
    *,
    updated: dict[int, str],
    deleted: list[int],
    added: list[tuple[str, str]],
    database: str = "shop",
    table: str = "products",
) -> int:
    """One commit that rewrites some descriptions, deletes some products and adds new ones.

    Returns the new snapshot id. Updated rows keep their other fields from the latest snapshot.
    """
    from pypaimon import CatalogFactory

    paimon_table = CatalogFactory.create({"warehouse": warehouse}).get_table(f"{database}.{table}")
    builder = paimon_table.new_read_builder()
    builder = builder.with_filter(builder.new_predicate_builder().is_in("id", list(updated)))
    current = {row["id"]: row for row in builder.new_read().to_arrow(builder.new_scan().plan().splits()).to_pylist()}
    now = dt.datetime(2026, 11, 21)
    rows = [{**current[key], "description": text, "updated_at": now, "_op": "+I"} for key, text in updated.items()]
    rows += [{**{name: None for name in CATALOGUE_SCHEMA.names}, "id": key, "_op": "-D"} for key in deleted]
    next_id = max(current, default=0) + 1_000_000
    for offset, (name, description) in enumerate(added):
        rows.append(
            {
                "id": next_id + offset,
                "name": name,
                "description": description,
                "url": f"https://shop.example.com/new/{next_id + offset}",
                "source": "web",
                "price": Decimal("149.00"),
                "updated_at": now,
                "_op": "+I",
            }
        )
    write_builder = paimon_table.new_batch_write_builder()
    writer, commit = write_builder.new_write(), write_builder.new_commit()
    writer.write_arrow(pa.Table.from_pylist(rows, schema=CATALOGUE_SCHEMA))
    commit.commit(writer.prepare_commit())
    writer.close()
    commit.close()
    return paimon_table.snapshot_manager().get_latest_snapshot().id


def write_catalogue(
    warehouse: str, *, rows: int, database: str = "shop", table: str = "products", buckets: int = 2
) -> int:
    """Create the catalogue table (replacing it) and commit `rows` products; returns the snapshot id."""
    from pypaimon import CatalogFactory, Schema

    catalog = CatalogFactory.create({"warehouse": warehouse})
    catalog.create_database(database, True)
    identifier = f"{database}.{table}"
    catalog.drop_table(identifier, True)
    options = {"bucket": str(buckets), "rowkind.field": "_op"}
    catalog.create_table(
        identifier, Schema.from_pyarrow_schema(CATALOGUE_SCHEMA, primary_keys=["id"], options=options), False
    )
    paimon_table = catalog.get_table(identifier)
    builder = paimon_table.new_batch_write_builder()
    # One commit per 50k rows keeps the writer's memory flat for large benchmark tables.
    for start in range(0, rows, 50_000):
        writer, commit = builder.new_write(), builder.new_commit()
        writer.write_arrow(catalogue_rows(min(50_000, rows - start), start_id=start + 1, seed=start + 7))
        commit.commit(writer.prepare_commit())
        writer.close()
        commit.close()
    return paimon_table.snapshot_manager().get_latest_snapshot().id
