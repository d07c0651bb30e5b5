"""Rows to documents: `_id` from the primary key, column renames, Arrow values to JSON values.

pa.RecordBatch → (document id | rejection reason, JSON-ready body) per row

The source knows nothing of the index and the index nothing of Paimon; this module is the
agreed shape between them: plain dicts whose values Elasticsearch accepts.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa

# Elasticsearch rejects ids longer than 512 bytes.
MAX_ID_BYTES = 512
_TOO_LONG = f"primary key encodes to more than {MAX_ID_BYTES} bytes"

Converter = Callable[[Any], Any]


@dataclass(frozen=True)
class FieldPlan:
    """Which columns become which document fields, and which columns make the `_id`."""

    renames: dict[str, str]
    key_columns: list[str]

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys([*self.key_columns, *self.renames]))


@dataclass(frozen=True)
class RowDocument:
    """One row as a document; `id` is None when the key is unusable, with the reason in `rejected`."""

    id: str | None
    body: dict[str, Any]
    rejected: str | None = None


def encode_id(values: list[Any]) -> str:
    """The `_id` of a primary key: the value itself for one column, a JSON array for several.

    A JSON array is unambiguous where joining with a separator is not (`("a_b", "c")` and
    `("a", "b_c")` would both give `a_b_c`): strings are quoted and escaped, numbers are not.
    """
    if len(values) == 1:
        value = values[0]
        return value if isinstance(value, str) else orjson.dumps(_json_value(value)).decode()
    return orjson.dumps([_json_value(value) for value in values]).decode()


def key_problem(values: list[Any], columns: list[str]) -> str | None:
    """Why these key values cannot make an `_id`, or None if they can."""
    for column, value in zip(columns, values, strict=True):
        if value is None:
            return f"primary key column '{column}' is null"
        if isinstance(value, (str, bytes)) and len(value) == 0:
            return f"primary key column '{column}' is empty"
    return None


def batch_documents(batch: pa.RecordBatch, plan: FieldPlan) -> Iterator[RowDocument]:
    """Turn one Arrow batch into documents, converting column by column for speed."""
    ids = _document_ids(batch, plan.key_columns)
    targets = list(plan.renames.values())
    columns = [_convert_column(batch.column(source)) for source in plan.renames]
    rows = zip(*columns, strict=True) if columns else itertools.repeat((), batch.num_rows)
    for (document_id, problem), values in zip(ids, rows, strict=True):
        body = dict(zip(targets, values, strict=True))
        if problem is None:
            yield RowDocument(document_id, body)
        else:
            yield RowDocument(None, body, rejected=problem)


def _document_ids(batch: pa.RecordBatch, key_columns: list[str]) -> list[tuple[str | None, str | None]]:
    """(`_id`, None) or (None, why not) per row.

    Keys use the raw Python values: converting first (decimal → float) could merge distinct keys.
    """
    if len(key_columns) == 1:
        ids = _single_key_ids(batch.column(key_columns[0]), key_columns[0])
        if ids is not None:
            return ids
    keys = [_pylist(batch.column(name)) for name in key_columns]
    rows = zip(*keys, strict=True) if keys else itertools.repeat((), batch.num_rows)
    return [_document_id(list(values), key_columns) for values in rows]


def _document_id(values: list[Any], columns: list[str]) -> tuple[str | None, str | None]:
    problem = key_problem(values, columns)
    if problem is not None:
        return None, problem
    document_id = encode_id(values)
    if len(document_id.encode()) > MAX_ID_BYTES:
        return None, _TOO_LONG
    return document_id, None


def _single_key_ids(column: pa.Array, name: str) -> list[tuple[str | None, str | None]] | None:
    """The fast path of `_document_id` for one string or integer key column; None for other types."""
    null = (None, f"primary key column '{name}' is null")
    if pa.types.is_integer(column.type):
        # An integer's JSON is its decimal digits, far below the length limit.
        return [null if value is None else (str(value), None) for value in _pylist(column)]
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        empty = (None, f"primary key column '{name}' is empty")
        ids: list[tuple[str | None, str | None]] = []
        for value in _pylist(column):
            if value is None:
                ids.append(null)
            elif not value:
                ids.append(empty)
            # A character is at most 4 UTF-8 bytes, so only longer strings need encoding to check.
            elif len(value) * 4 > MAX_ID_BYTES and len(value.encode()) > MAX_ID_BYTES:
                ids.append((None, _TOO_LONG))
            else:
                ids.append((value, None))
        return ids
    return None


def _convert_column(column: pa.Array) -> list[Any]:
    values = _pylist(column)
    converter = _converter(column.type)
    if converter is None:
        return values
    return [None if value is None else converter(value) for value in values]


def _pylist(column: pa.Array) -> list[Any]:
    """`column.to_pylist()`, through numpy for the types where that gives the same values ~10x faster."""
    data_type = column.type
    if pa.types.is_string(data_type) or pa.types.is_large_string(data_type) or pa.types.is_decimal(data_type):
        return column.to_numpy(zero_copy_only=False).tolist()  # objects, with None for nulls
    if column.null_count == 0:  # numpy has no null for these: NaN or NaT would stand in
        if pa.types.is_integer(data_type) or pa.types.is_boolean(data_type) or data_type in _FLOATS:
            return column.to_numpy(zero_copy_only=False).tolist()
        if pa.types.is_timestamp(data_type) and data_type.tz is None and data_type.unit != "ns":
            values = column.to_numpy(zero_copy_only=False).tolist()
            # Beyond datetime's years 1-9999 numpy gives ints where to_pylist raises: let it raise.
            if all(type(value) is dt.datetime for value in values):
                return values
    return column.to_pylist()


_FLOATS = (pa.float32(), pa.float64())


def _converter(data_type: pa.DataType) -> Converter | None:
    """A per-value conversion to JSON for types `to_pylist` does not give as JSON already."""
    if pa.types.is_timestamp(data_type):
        # Paimon TIMESTAMP has no zone: it is read as UTC, like Elasticsearch reads zoneless dates.
        return _timestamp if data_type.tz is not None else _zoneless_timestamp
    if pa.types.is_date(data_type):
        return dt.date.isoformat
    if pa.types.is_time(data_type):
        return dt.time.isoformat
    if pa.types.is_decimal(data_type):
        return float
    if pa.types.is_binary(data_type) or pa.types.is_large_binary(data_type) or pa.types.is_fixed_size_binary(data_type):
        return _base64
    if pa.types.is_map(data_type):
        item = _converter(data_type.item_type)
        return lambda pairs: {str(k): (v if item is None or v is None else item(v)) for k, v in pairs}
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type) or pa.types.is_fixed_size_list(data_type):
        inner = _converter(data_type.value_type)
        return None if inner is None else (lambda items: [None if v is None else inner(v) for v in items])
    if pa.types.is_struct(data_type):
        converters = {field.name: _converter(field.type) for field in data_type}
        if all(converter is None for converter in converters.values()):
            return None
        return lambda record: {
            k: (v if v is None or converters.get(k) is None else converters[k](v)) for k, v in record.items()
        }
    if pa.types.is_duration(data_type):
        return lambda value: value.total_seconds()
    return None


def _timestamp(value: dt.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.isoformat()


def _zoneless_timestamp(value: dt.datetime) -> str:
    # `_timestamp` for values without a zone, without building a zoned copy of each one.
    if type(value) is dt.datetime:
        return value.isoformat() + "+00:00"
    return _timestamp(value)  # e.g. pandas.Timestamp for nanosecond units


def _base64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _json_value(value: Any) -> Any:
    converter = _python_converters.get(type(value))
    return value if converter is None else converter(value)


_python_converters: dict[type, Converter] = {
    dt.datetime: _timestamp,
    dt.date: dt.date.isoformat,
    dt.time: dt.time.isoformat,
    dt.timedelta: dt.timedelta.total_seconds,
    decimal.Decimal: str,
    bytes: _base64,
}
