"""The batch-ingestion request: OpenSearch ML Commons' `_batch_ingestion` body, validated before anything is read.

request JSON → `IngestRequest` (JSONPaths parsed, sources and credentials checked) → `plan()` → `SourcePlan`*

Bodies written for ML Commons are accepted unchanged. Our extensions: data_source type `file`,
`data_source.endpoint_url` (S3-compatible servers) and `base_url` (OpenAI-compatible servers),
`connection` (a task-file connection, in place of `connector_id`) and `options` (bulk sizing,
the join's memory bound, what to do with ids missing from some sources, and the error budget).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from jsonpath_ng import JSONPath
from jsonpath_ng.exceptions import JSONPathError
from jsonpath_ng.ext import parse as parse_jsonpath
from jsonpath_ng.jsonpath import Child, Fields, Index, Root
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from lake_sync.config import (
    DEFAULT_BULK_BYTES,
    DEFAULT_BULK_DOCUMENTS,
    DEFAULT_BULK_IN_FLIGHT,
    DEFAULT_BULK_RETRIES,
    ElasticsearchConnection,
    OpenAIConnection,
    PaimonConnection,
    TaskFile,
)
from lake_sync.errors import ConfigError

ID_FIELD = "_id"
# The join holds one partition of spilled records in memory at a time; above this many bytes of
# records it spills every source to hash partitions on disk (see ingest.py).
DEFAULT_JOIN_MEMORY_BYTES = 64 * 1024 * 1024
_SOURCE_PREFIX = re.compile(r"^source\[(\d+)\]\.(.*)$", re.DOTALL)
_S3_URI = re.compile(r"^s3://([^/]+)/(.+)$")
_INDEX_NAME = re.compile(r"^[a-z0-9][a-z0-9_.+-]*$")
# Credential keys per source type: ML Commons' names first, then boto3's / the openai client's.
_S3_CREDENTIAL_KEYS = {
    "region": "region_name",
    "access_key": "aws_access_key_id",
    "secret_key": "aws_secret_access_key",
    "session_token": "aws_session_token",
    "region_name": "region_name",
    "aws_access_key_id": "aws_access_key_id",
    "aws_secret_access_key": "aws_secret_access_key",
    "aws_session_token": "aws_session_token",
}
_OPENAI_CREDENTIAL_KEYS = ("openAI_key", "api_key")


class SourceType(StrEnum):
    S3 = "s3"
    OPENAI = "openAI"
    FILE = "file"


class MissingIds(StrEnum):
    """What a join does with an id that some sources have and others lack."""

    DEAD_LETTER = "dead_letter"  # one dead letter per id, with what the present sources gave
    SKIP = "skip"  # counted and sampled in the result, nothing written
    PARTIAL = "partial"  # written with the fields of the sources that have it


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSource(_Model):
    """Where the JSONL lines come from: S3 objects, OpenAI file ids, or local paths / file:// URIs."""

    type: SourceType
    source: list[str] = Field(min_length=1)
    #: S3-compatible servers (MinIO, OSS, moto): the endpoint boto3 talks to.
    endpoint_url: str | None = None
    #: OpenAI-compatible servers (vLLM, `lake-sync serve-models`): the API root, e.g. http://host:8000/v1.
    base_url: str | None = None

    @field_validator("type", mode="before")
    @classmethod
    def _known_type(cls, value: Any) -> Any:
        # ML Commons registers its ingesters lower-cased ("openai"), and its docs write "openAI".
        known = {member.value.lower(): member for member in SourceType}
        if isinstance(value, str) and value.lower() in known:
            return known[value.lower()]
        raise ValueError(f"unknown type {value!r}; use one of {[member.value for member in SourceType]}")

    @model_validator(mode="after")
    def _locations_fit_type(self) -> DataSource:
        for position, location in enumerate(self.source):
            if not location.strip():
                raise ValueError(f"source[{position}] is empty")
            if self.type is SourceType.S3 and not _S3_URI.match(location):
                raise ValueError(
                    f"source[{position}] {location!r} is not an S3 object URI; write s3://bucket/key "
                    "(an exact object: prefixes and wildcards are not listed)"
                )
            if self.type is SourceType.OPENAI and ("/" in location or location.startswith("s3:")):
                raise ValueError(f"source[{position}] {location!r} is not an OpenAI file id (like 'file-abc123')")
        if self.endpoint_url is not None and self.type is not SourceType.S3:
            raise ValueError("endpoint_url is for type 's3'; for OpenAI-compatible servers use base_url")
        if self.base_url is not None and self.type is not SourceType.OPENAI:
            raise ValueError("base_url is for type 'openAI'; for S3-compatible servers use endpoint_url")
        return self


class IngestOptions(_Model):
    """How the ingest writes (our extension; ML Commons sizes bulks with a cluster setting)."""

    bulk_size: int = Field(default=DEFAULT_BULK_DOCUMENTS, ge=1)
    bulk_bytes: int = Field(default=DEFAULT_BULK_BYTES, ge=1024)
    max_in_flight: int = Field(default=DEFAULT_BULK_IN_FLIGHT, ge=1)
    max_retries: int = Field(default=DEFAULT_BULK_RETRIES, ge=0)
    missing_ids: MissingIds = MissingIds.DEAD_LETTER
    join_memory_bytes: int = Field(default=DEFAULT_JOIN_MEMORY_BYTES, ge=1)
    #: The dead-letter budget, as a task's `errors`: above `max_errors` writing stops, above
    #: `max_error_rate` (dead letters per document) the ingest ends FAILED. Unset: no limit.
    max_errors: int | None = Field(default=None, ge=0)
    max_error_rate: float | None = Field(default=None, ge=0.0, le=1.0)


@dataclass(frozen=True)
class FieldPath:
    """One JSONPath of the field map, bound to the source it reads."""

    field: str
    source: int
    text: str
    expression: JSONPath
    #: Plain keys and indexes (`$.a.b[0]`) for the fast path; None when the path needs jsonpath-ng.
    steps: tuple[str | int, ...] | None

    @property
    def definite(self) -> bool:
        """A definite path names one value; others (wildcards, filters, slices) give a list of matches."""
        return self.steps is not None


@dataclass(frozen=True)
class SourcePlan:
    """What one source contributes: where its id is and which fields it fills."""

    position: int
    location: str
    id_path: FieldPath | None
    fields: tuple[FieldPath, ...]


class IngestRequest(_Model):
    """A batch-ingestion request; see the module docstring for what goes beyond ML Commons."""

    index_name: str
    #: Index field → JSONPath (`$.a.b[0]`, `source[1].$.x`); `_id` may list one path per source.
    field_map: dict[str, str | list[str]] = Field(min_length=1)
    #: JSONPaths copied into a field named after the path's last key (`$.meta.lang` → `lang`).
    ingest_fields: list[str] = Field(default_factory=list)
    credential: dict[str, SecretStr] | None = None
    #: A task-file connection holding the credentials (our stand-in for `connector_id`).
    connection: str | None = None
    data_source: DataSource
    options: IngestOptions = IngestOptions()

    @model_validator(mode="before")
    @classmethod
    def _no_connector_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and "connector_id" in data:
            raise ValueError(
                "connector_id: ML Commons connectors do not exist here; name a task-file connection with "
                "'connection' (an openai connection for openAI files, a paimon connection's fs.s3.* options for S3) "
                "or give 'credential'"
            )
        return data

    @field_validator("index_name")
    @classmethod
    def _valid_index_name(cls, name: str) -> str:
        if not _INDEX_NAME.match(name) or len(name.encode()) > 255:
            raise ValueError(f"{name!r} is not a valid index name; use lower-case letters, digits, '_', '-', '.'")
        return name

    @model_validator(mode="after")
    def _consistent(self) -> IngestRequest:
        if self.credential is not None and self.connection is not None:
            raise ValueError("give either 'credential' or 'connection', not both")
        _check_credential(self.data_source.type, self.credential)
        self.plan()
        return self

    @property
    def sources(self) -> list[str]:
        return self.data_source.source

    def plan(self) -> list[SourcePlan]:
        """Each source's id path and fields; raises ValueError naming the entry and the fix."""
        count = len(self.sources)
        id_paths = self._id_paths(count)
        fields: list[list[FieldPath]] = [[] for _ in range(count)]
        for name, value in self.field_map.items():
            if name == ID_FIELD:
                continue
            if not name or name.startswith("_"):
                raise ValueError(f"field_map.{name}: index field names may not be empty or start with '_'")
            if not isinstance(value, str):
                raise ValueError(f"field_map.{name}: a list of paths is only for _id (one per source); give one path")
            path = _field_path(f"field_map.{name}", name, value, count)
            fields[path.source].append(path)
        seen = {name: f"field_map.{name}" for name in self.field_map if name != ID_FIELD}
        for position, value in enumerate(self.ingest_fields):
            where = f"ingest_fields[{position}]"
            path = _field_path(where, None, value, count)
            if path.field in seen:
                raise ValueError(
                    f"{where}: {value!r} is stored as field '{path.field}', which {seen[path.field]} already fills; "
                    "map it under another name in field_map instead"
                )
            seen[path.field] = where
            fields[path.source].append(path)
        return [
            SourcePlan(position, location, id_paths[position], tuple(fields[position]))
            for position, location in enumerate(self.sources)
        ]

    def _id_paths(self, count: int) -> list[FieldPath | None]:
        value = self.field_map.get(ID_FIELD)
        if value is None:
            if count > 1:
                raise ValueError(
                    f"field_map._id: joining {count} sources needs the id of each line, e.g. "
                    f'"_id": ["source[0].$.custom_id", "source[1].$.custom_id"]'
                )
            return [None]
        values = [value] if isinstance(value, str) else value
        if not values:
            raise ValueError("field_map._id: give a path, or a list with one path per source")
        paths: dict[int, FieldPath] = {}
        for position, text in enumerate(values):
            where = "field_map._id" if isinstance(value, str) else f"field_map._id[{position}]"
            explicit = _SOURCE_PREFIX.match(text) is not None
            if not explicit and count > 1 and isinstance(value, list):
                # A list without prefixes is positional: entry i is source i's id.
                text = f"source[{position}].{text}"
            path = _field_path(where, ID_FIELD, text, count, every_source=not explicit and isinstance(value, str))
            if path.source in paths:
                raise ValueError(f"{where}: source[{path.source}] already has an _id path ({paths[path.source].text})")
            if not path.definite:
                raise ValueError(f"{where}: {text!r} may match several values; an _id path must name exactly one")
            paths[path.source] = path
        if isinstance(value, str) and _SOURCE_PREFIX.match(value) is None:
            return [paths[0], *(_rebind(paths[0], position) for position in range(1, count))]
        missing = [position for position in range(count) if position not in paths]
        if missing:
            shared = {str(path.expression) for path in paths.values()}
            if len(shared) > 1:
                raise ValueError(
                    f"field_map._id: source(s) {missing} have no _id path and the others differ "
                    f"({sorted(shared)}); list one path per source"
                )
            # ML Commons' multi-file example lists ids for two of three files; the third uses the same key.
            template = next(iter(paths.values()))
            paths.update({position: _rebind(template, position) for position in missing})
        return [paths[position] for position in range(count)]

    def with_connection(self, task_file: TaskFile) -> IngestRequest:
        """The request with `connection` replaced by that connection's credentials and endpoint."""
        if self.connection is None:
            return self
        connection = task_file.connections.get(self.connection)
        if connection is None:
            raise ConfigError(
                f"connection: '{self.connection}' is not defined in the task file; "
                f"defined connections: {sorted(task_file.connections)}"
            )
        data_source = self.data_source
        credential: dict[str, SecretStr] = {}
        if data_source.type is SourceType.OPENAI and isinstance(connection, OpenAIConnection):
            if connection.api_key is not None:
                credential["api_key"] = connection.api_key
            data_source = data_source.model_copy(update={"base_url": data_source.base_url or connection.base_url})
        elif data_source.type is SourceType.S3 and isinstance(connection, PaimonConnection):
            options = connection.object_store_options("s3")
            endpoint = options.pop("endpoint_url", None)
            credential.update(options)
            if endpoint is not None and data_source.endpoint_url is None:
                data_source = data_source.model_copy(update={"endpoint_url": endpoint.get_secret_value()})
        else:
            wanted = {SourceType.OPENAI: "openai", SourceType.S3: "paimon (with fs.s3.* options)"}
            kind = "elasticsearch" if isinstance(connection, ElasticsearchConnection) else connection.type
            raise ConfigError(
                f"connection: '{self.connection}' has type '{kind}'; data_source type '{data_source.type.value}' "
                f"needs {wanted.get(data_source.type, 'no connection')}"
            )
        return self.model_copy(update={"connection": None, "credential": credential, "data_source": data_source})

    def s3_client_options(self) -> dict[str, str]:
        """boto3 client arguments from `credential` and `endpoint_url`; secrets revealed, never log them."""
        options = {_S3_CREDENTIAL_KEYS[key]: value.get_secret_value() for key, value in (self.credential or {}).items()}
        if self.data_source.endpoint_url:
            options["endpoint_url"] = self.data_source.endpoint_url
        return options

    def openai_api_key(self) -> str | None:
        for key in _OPENAI_CREDENTIAL_KEYS:
            if self.credential and key in self.credential:
                return self.credential[key].get_secret_value()
        return None


def parse_request(data: Any, *, source: str = "ingest request") -> IngestRequest:
    """Validate a request body; a ConfigError names each bad field and how to fix it."""
    try:
        return IngestRequest.model_validate(data)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            where = ".".join(str(part) for part in item["loc"])
            message = str(item["msg"]).removeprefix("Value error, ")
            problems.append(f"  {where}: {message}" if where else f"  {message}")
        raise ConfigError(f"{source} is invalid:\n" + "\n".join(problems)) from None


def _check_credential(kind: SourceType, credential: dict[str, SecretStr] | None) -> None:
    if not credential:
        return
    allowed: tuple[str, ...] = ()
    if kind is SourceType.S3:
        allowed = tuple(_S3_CREDENTIAL_KEYS)
    elif kind is SourceType.OPENAI:
        allowed = _OPENAI_CREDENTIAL_KEYS
    unknown = sorted(set(credential) - set(allowed))
    if unknown:
        hint = f"known keys: {list(allowed)}" if allowed else "local files take no credential; remove it"
        raise ValueError(f"credential: unknown key(s) {unknown} for type '{kind.value}'; {hint}")


def _field_path(where: str, field: str | None, text: str, count: int, *, every_source: bool = False) -> FieldPath:
    """Parse `[source[i].]$.path`; `every_source` lets an unprefixed _id stand for all sources."""
    match = _SOURCE_PREFIX.match(text)
    if match is not None:
        source, expression_text = int(match.group(1)), match.group(2)
        if source >= count:
            raise ValueError(
                f"{where}: {text!r} reads source[{source}], but data_source.source has {count} "
                f"entr{'y' if count == 1 else 'ies'} (source[0]..source[{count - 1}])"
            )
    elif count > 1 and not every_source:
        raise ValueError(f"{where}: with {count} sources, say which one the path reads, e.g. 'source[0].{text}'")
    else:
        source, expression_text = 0, text
    if not expression_text.startswith("$"):
        raise ValueError(f"{where}: {text!r} is not a JSONPath; paths start at the line's root, e.g. '$.{text}'")
    try:
        expression = parse_jsonpath(expression_text)
    except JSONPathError as error:
        raise ValueError(
            f"{where}: {text!r} is not a valid JSONPath ({error}); e.g. '$.response.body.data[0]'"
        ) from None
    steps = _plain_steps(expression)
    if field is None:
        keys = _all_fields(expression)
        if not keys:
            raise ValueError(f"{where}: {text!r} names no key to call the field after; map it in field_map instead")
        field = keys[-1]
    return FieldPath(field, source, text, expression, steps)


def _rebind(path: FieldPath, source: int) -> FieldPath:
    match = _SOURCE_PREFIX.match(path.text)
    relative = match.group(2) if match else path.text
    return FieldPath(path.field, source, f"source[{source}].{relative}", path.expression, path.steps)


def _plain_steps(expression: JSONPath) -> tuple[str | int, ...] | None:
    """`$.a.b[0]` → ("a", "b", 0); None for anything else (wildcards, filters, slices, unions)."""
    if isinstance(expression, Root):
        return ()
    if not isinstance(expression, Child):
        return None
    head = _plain_steps(expression.left)
    if head is None:
        return None
    right = expression.right
    if type(right) is Fields and len(right.fields) == 1 and right.fields[0] != "*":
        return (*head, right.fields[0])
    if type(right) is Index and len(right.indices) == 1:
        return (*head, right.indices[0])
    return None


def _all_fields(expression: JSONPath) -> list[str]:
    if isinstance(expression, Child):
        return _all_fields(expression.left) + _all_fields(expression.right)
    if type(expression) is Fields and len(expression.fields) == 1 and expression.fields[0] != "*":
        return [expression.fields[0]]
    return []


def extract(path: FieldPath, line: Any) -> tuple[bool, Any]:
    """(found, value) of `path` in a parsed line; an indefinite path gives the list of its matches."""
    if path.steps is not None:
        value = line
        try:
            for step in path.steps:
                # JSON strings are not indexable in JSONPath, though Python would index them.
                if type(value) is str:
                    return False, None
                value = value[step]
        except (KeyError, IndexError, TypeError):
            return False, None
        return True, value
    matches = path.expression.find(line)
    return True, [match.value for match in matches]
