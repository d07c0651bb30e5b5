"""Rows to documents: `_id` from the primary key, column renames, Arrow values to JSON values.

pa.RecordBatch → (document id | rejection reason, JSON-ready body) per row

The source knows nothing of the index and the index nothing of Paimon; this module is the
agreed shape between them: plain dicts whose values Elasticsearch accepts.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa

# Elasticsearch rejects ids longer than 512 bytes.
MAX_ID_BYTES = 512

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
    # Keys use the raw Python values: converting first (decimal → float) could merge distinct keys.
    keys = [batch.column(name).to_pylist() for name in plan.key_columns]
    fields = [(target, _convert_column(batch.column(source))) for source, target in plan.renames.items()]
    for row in range(batch.num_rows):
        body = {target: values[row] for target, values in fields}
        key_values = [values[row] for values in keys]
        problem = key_problem(key_values, plan.key_columns)
        if problem is None:
            document_id = encode_id(key_values)
            if len(document_id.encode()) > MAX_ID_BYTES:
                problem = f"primary key encodes to more than {MAX_ID_BYTES} bytes"
            else:
                yield RowDocument(document_id, body)
                continue
        yield RowDocument(None, body, rejected=problem)


def _convert_column(column: pa.Array) -> list[Any]:
    values = column.to_pylist()
    converter = _converter(column.type)
    if converter is None:
        return values
    return [None if value is None else converter(value) for value in values]


def _converter(data_type: pa.DataType) -> Converter | None:
    """A per-value conversion to JSON for types `to_pylist` does not give as JSON already."""
    if pa.types.is_timestamp(data_type):
        # Paimon TIMESTAMP has no zone: it is read as UTC, like Elasticsearch reads zoneless dates.
        return _timestamp
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
