"""Rows to documents: `_id` encoding, key validation and Arrow → JSON value conversion (pure functions).

pa.RecordBatch + FieldPlan → batch_documents → RowDocument(id | rejected, body)
"""

from __future__ import annotations

import datetime as dt
import decimal
import json

import orjson
import pyarrow as pa
import pytest

from lake_sync.documents import MAX_ID_BYTES, FieldPlan, batch_documents, encode_id, key_problem


def convert(values: list, data_type: pa.DataType) -> list:
    """The JSON values batch_documents gives for one column of `data_type`."""
    batch = pa.record_batch({"k": pa.array([str(n) for n in range(len(values))]), "v": pa.array(values, data_type)})
    return [document.body["v"] for document in batch_documents(batch, FieldPlan({"v": "v"}, ["k"]))]


# --- document ids ---------------------------------------------------------------------------------


def test_composite_ids_are_unambiguous_where_joining_with_underscore_is_not():
    assert encode_id(["a_b", "c"]) != encode_id(["a", "b_c"])
    assert encode_id(["a_b", "c"]) == '["a_b","c"]'
    assert encode_id(["a", "b_c"]) == '["a","b_c"]'


def test_composite_ids_escape_quotes_and_separators_inside_values():
    assert encode_id(['a","b', "c"]) != encode_id(["a", "b", "c"])
    assert json.loads(encode_id(['a","b', "c"])) == ['a","b', "c"]


def test_composite_ids_keep_the_difference_between_a_string_and_a_number_key_part():
    assert encode_id(["1", 2]) == '["1",2]'
    assert encode_id([1, "2"]) == '[1,"2"]'
    assert encode_id(["1", 2]) != encode_id([1, "2"])


def test_single_column_string_and_number_keys_with_the_same_digits_share_an_id():
    # Documented, not a collision in practice: one key column has one type, so a table
    # never holds both "1" and 1 under the same key. Strings stay readable as `_id`.
    assert encode_id(["1"]) == "1"
    assert encode_id([1]) == "1"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("sku-42", "sku-42"),
        ("Grüße 日本語 🚀", "Grüße 日本語 🚀"),
        ('with "quotes"', 'with "quotes"'),
        (42, "42"),
        (-7, "-7"),
        (2**63 - 1, "9223372036854775807"),
        (1.5, "1.5"),
        (True, "true"),
        # Non-string values are written as JSON, so values converted to strings keep their quotes.
        (decimal.Decimal("12.50"), '"12.50"'),
        (dt.date(2024, 2, 29), '"2024-02-29"'),
        (dt.datetime(2024, 5, 6, 7, 8, 9), '"2024-05-06T07:08:09+00:00"'),
        (b"\x00\xff", '"AP8="'),
    ],
    ids=[
        "string",
        "unicode",
        "quotes",
        "int",
        "negative",
        "int64-max",
        "float",
        "bool",
        "decimal",
        "date",
        "ts",
        "bytes",
    ],
)
def test_single_column_id_encoding(value: object, expected: str):
    assert encode_id([value]) == expected


def test_composite_ids_convert_dates_decimals_and_bytes_to_json_strings():
    encoded = encode_id([dt.date(2024, 1, 2), decimal.Decimal("1.50"), b"hi", dt.datetime(2024, 1, 2, 3, 4, 5)])

    assert json.loads(encoded) == ["2024-01-02", "1.50", "aGk=", "2024-01-02T03:04:05+00:00"]


def test_decimal_keys_keep_their_exact_digits_instead_of_becoming_floats():
    big = decimal.Decimal("12345678901234567.01")

    assert encode_id([big, "x"]) != encode_id([decimal.Decimal("12345678901234567.02"), "x"])


# --- key validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ([None], "primary key column 'id' is null"),
        ([""], "primary key column 'id' is empty"),
        ([b""], "primary key column 'id' is empty"),
    ],
)
def test_key_problem_rejects_null_and_empty_single_keys(values: list, reason: str):
    assert key_problem(values, ["id"]) == reason


def test_key_problem_names_the_offending_column_of_a_composite_key():
    assert key_problem(["shop-1", None], ["shop", "sku"]) == "primary key column 'sku' is null"
    assert key_problem(["", "sku-1"], ["shop", "sku"]) == "primary key column 'shop' is empty"


@pytest.mark.parametrize("values", [[0], [False], [" "], ["0"], [0.0]])
def test_key_problem_accepts_falsy_but_present_key_values(values: list):
    assert key_problem(values, ["id"]) is None


def test_batch_documents_rejects_null_empty_and_oversized_keys_and_keeps_the_row_body():
    batch = pa.record_batch(
        {"id": pa.array(["ok", None, "", "x" * (MAX_ID_BYTES + 1)]), "title": pa.array(["a", "b", "c", "d"])}
    )

    documents = list(batch_documents(batch, FieldPlan({"id": "id", "title": "title"}, ["id"])))

    assert [document.id for document in documents] == ["ok", None, None, None]
    assert [document.rejected for document in documents] == [
        None,
        "primary key column 'id' is null",
        "primary key column 'id' is empty",
        f"primary key encodes to more than {MAX_ID_BYTES} bytes",
    ]
    assert [document.body["title"] for document in documents] == ["a", "b", "c", "d"]


def test_batch_documents_measures_the_id_limit_in_utf8_bytes_not_characters():
    fits = "é" * (MAX_ID_BYTES // 2)  # 2 bytes each: exactly the limit
    too_long = "é" * (MAX_ID_BYTES // 2 + 1)
    batch = pa.record_batch({"id": pa.array([fits, too_long])})

    documents = list(batch_documents(batch, FieldPlan({}, ["id"])))

    assert documents[0].id == fits
    assert documents[1].id is None


def test_batch_documents_builds_composite_ids_from_the_key_columns_in_key_order():
    batch = pa.record_batch({"sku": pa.array(["c", "b_c"]), "shop": pa.array(["a_b", "a"])})

    documents = list(batch_documents(batch, FieldPlan({"sku": "sku"}, ["shop", "sku"])))

    assert [document.id for document in documents] == ['["a_b","c"]', '["a","b_c"]']


def test_batch_documents_renames_fields_and_leaves_out_unmapped_key_columns():
    batch = pa.record_batch({"id": pa.array([1, 2], pa.int64()), "name": pa.array(["x", "y"])})

    documents = list(batch_documents(batch, FieldPlan({"name": "title"}, ["id"])))

    assert [(document.id, document.body) for document in documents] == [("1", {"title": "x"}), ("2", {"title": "y"})]


# --- value conversion -----------------------------------------------------------------------------


def test_zoneless_timestamps_become_iso8601_in_utc_with_an_explicit_offset():
    values = convert([dt.datetime(2024, 5, 6, 7, 8, 9, 123456), None], pa.timestamp("us"))

    assert values == ["2024-05-06T07:08:09.123456+00:00", None]


def test_zoned_timestamps_keep_their_zone_offset():
    instant = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)

    (value,) = convert([instant], pa.timestamp("ms", tz="Europe/Berlin"))

    assert value == "2024-05-06T09:08:09+02:00"
    assert dt.datetime.fromisoformat(value) == instant


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_timestamps_of_every_unit_become_parseable_iso8601(unit: str):
    (value,) = convert([dt.datetime(2024, 1, 1, 12, 0, 0)], pa.timestamp(unit))

    assert dt.datetime.fromisoformat(value) == dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC)


def test_dates_become_iso_dates():
    assert convert([dt.date(2024, 2, 29), None], pa.date32()) == ["2024-02-29", None]


def test_decimals_become_json_numbers():
    values = convert([decimal.Decimal("12.34"), decimal.Decimal("-0.01"), None], pa.decimal128(10, 2))

    assert values == [12.34, -0.01, None]


def test_binary_becomes_base64():
    assert convert([b"\x00\xffhi", b"", None], pa.binary()) == ["AP9oaQ==", "", None]


def test_lists_convert_their_items_and_keep_nulls_inside():
    assert convert([[1, 2, None], [], None], pa.list_(pa.int64())) == [[1, 2, None], [], None]
    assert convert([[dt.date(2024, 1, 1), None]], pa.list_(pa.date32())) == [["2024-01-01", None]]


def test_structs_become_objects_with_converted_fields():
    data_type = pa.struct([("city", pa.string()), ("since", pa.date32()), ("blob", pa.binary())])

    values = convert([{"city": "Zürich", "since": dt.date(2020, 1, 1), "blob": b"hi"}, None], data_type)

    assert values == [{"city": "Zürich", "since": "2020-01-01", "blob": "aGk="}, None]


def test_maps_become_objects_with_string_keys_and_converted_values():
    values = convert([[("k", dt.date(2024, 1, 1)), ("z", None)], None], pa.map_(pa.string(), pa.date32()))
    numbered = convert([[(1, "one"), (2, "two")]], pa.map_(pa.int32(), pa.string()))

    assert values == [{"k": "2024-01-01", "z": None}, None]
    assert numbered == [{"1": "one", "2": "two"}]


def test_nulls_stay_null_for_every_type():
    for data_type in (
        pa.string(),
        pa.int64(),
        pa.float64(),
        pa.bool_(),
        pa.timestamp("us"),
        pa.struct([("a", pa.int8())]),
    ):
        assert convert([None], data_type) == [None]


def test_unicode_text_passes_through_unchanged():
    texts = ["Grüße", "日本語のテキスト", "emoji 🚀🥾", "right-to-left עברית", "zero\u200bwidth"]

    assert convert(texts, pa.string()) == texts


def test_every_converted_document_serialises_to_json():
    batch = pa.record_batch(
        {
            "id": pa.array(["k"]),
            "ts": pa.array([dt.datetime(2024, 1, 1)], pa.timestamp("us")),
            "price": pa.array([decimal.Decimal("1.10")], pa.decimal128(5, 2)),
            "blob": pa.array([b"\x01"], pa.binary()),
            "day": pa.array([dt.date(2024, 1, 1)], pa.date32()),
            "at": pa.array([dt.time(1, 2, 3)], pa.time64("us")),
            "took": pa.array([dt.timedelta(seconds=90)], pa.duration("s")),
        }
    )
    plan = FieldPlan({name: name for name in batch.schema.names}, ["id"])

    (document,) = batch_documents(batch, plan)

    assert json.loads(orjson.dumps(document.body)) == {
        "id": "k",
        "ts": "2024-01-01T00:00:00+00:00",
        "price": 1.1,
        "blob": "AQ==",
        "day": "2024-01-01",
        "at": "01:02:03",
        "took": 90.0,
    }
