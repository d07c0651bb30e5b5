"""The task file: named connections and sync tasks, validated before anything runs.

lake_sync.yaml → `${VAR}` / `${VAR:-default}` expansion → pydantic models → `TaskFile`.
Secrets are `SecretStr`, so they never show up in reprs, logs, run config or errors.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from lake_sync.errors import ConfigError

DEFAULT_TASK_FILE = "lake_sync.yaml"
TASK_FILE_ENV = "LAKE_SYNC_TASKS"
DEFAULT_TEXT_MODEL = "local:all-MiniLM-L6-v2"

# Bulk sizing: 500 documents or 8 MiB per request, whichever comes first, keeps a 384-d
# document (~4 KiB of JSON) request around 2 MiB, well under ES's 100 MiB http limit.
DEFAULT_BULK_DOCUMENTS = 500
DEFAULT_BULK_BYTES = 8 * 1024 * 1024
# Two requests in flight keep a single-node cluster busy while the next chunk is built.
DEFAULT_BULK_IN_FLIGHT = 2
DEFAULT_BULK_RETRIES = 5
DEFAULT_READ_BATCH_ROWS = 1024
DEFAULT_POLL_SECONDS = 30

#: boto3 client arguments an `images.s3` or `embedding_cache.s3` mapping may hold.
S3_CLIENT_OPTIONS = frozenset(
    {
        "endpoint_url",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "region_name",
        "addressing_style",
    }
)
# pypaimon's `fs.s3.*` / `fs.oss.*` warehouse options → boto3 client arguments.
_PAIMON_OBJECT_STORE_OPTIONS = {
    "endpoint": "endpoint_url",
    "region": "region_name",
    "accessKeyId": "aws_access_key_id",
    "accessKeySecret": "aws_secret_access_key",
    "securityToken": "aws_session_token",
}
_OBJECT_STORE_URI = re.compile(r"^(s3|oss)://([^/]+)(/.*)?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PaimonConnection(_Model):
    """A Paimon catalog: a filesystem warehouse (local, s3://, oss://) or a REST catalog such as DLF."""

    type: Literal["paimon"]
    warehouse: str
    # Passed to pypaimon's CatalogFactory as they are: fs.s3.endpoint, metastore=rest, uri, token, dlf.*
    options: dict[str, SecretStr] = Field(default_factory=dict)

    def catalog_options(self) -> dict[str, str]:
        """The options pypaimon expects, secrets revealed; never log the result."""
        revealed = {key: value.get_secret_value() for key, value in self.options.items()}
        return {"warehouse": self.warehouse, **revealed}

    def object_store_options(self, scheme: str) -> dict[str, SecretStr]:
        """boto3 client arguments from this warehouse's `fs.<scheme>.*` options (`scheme`: s3 or oss)."""
        names = {f"fs.{scheme}.{option}": argument for option, argument in _PAIMON_OBJECT_STORE_OPTIONS.items()}
        return {names[key]: value for key, value in self.options.items() if key in names}


class ElasticsearchConnection(_Model):
    """An Elasticsearch 8.15+ cluster reached with the official client."""

    type: Literal["elasticsearch"]
    hosts: list[str] = Field(min_length=1)
    username: str | None = None
    password: SecretStr | None = None
    api_key: SecretStr | None = None
    ca_certs: str | None = None
    verify_certs: bool = True
    request_timeout: float = Field(default=60.0, gt=0)

    @field_validator("hosts")
    @classmethod
    def _no_credentials_in_urls(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            if re.match(r"^([a-z][a-z0-9+.-]*://)?[^/]*@", host, re.IGNORECASE):
                raise ValueError(
                    "a host URL carries credentials; put them in username/password or api_key "
                    "(they are kept secret there)"
                )
        return hosts

    @model_validator(mode="after")
    def _blank_credentials_mean_none(self) -> ElasticsearchConnection:
        # `${ES_USER:-}` expands to "" when unset: treat that as "no authentication".
        if self.password is not None and not self.password.get_secret_value():
            object.__setattr__(self, "password", None)
        if self.api_key is not None and not self.api_key.get_secret_value():
            object.__setattr__(self, "api_key", None)
        if self.username == "":
            object.__setattr__(self, "username", None)
        return self


class OpenAIConnection(_Model):
    """An OpenAI-compatible embeddings API: OpenAI, vLLM, TEI, or the local `lake-sync serve-models`.

    Used by transforms as `model: <connection name>:<model name>`.
    """

    type: Literal["openai"]
    base_url: str
    api_key: SecretStr | None = None
    #: Inputs per request, requests in flight and a requests-per-second cap (None: no cap).
    batch_size: int = Field(default=32, ge=1, le=2048)
    max_in_flight: int = Field(default=4, ge=1)
    requests_per_second: float | None = Field(default=None, gt=0)
    timeout: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=5, ge=0)
    #: Vector dims per model name, when known; otherwise one probe call finds them.
    dims: dict[str, int] = Field(default_factory=dict)
    #: Input limit per model name in tokens, over the built-in defaults; lake-sync cuts longer texts to
    #: this many UTF-8 bytes (see embed/limits.py: no tokenizer of the provider is available here).
    max_input_tokens: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)
    #: How the server takes images, for multimodal models (None: texts only). "object" sends
    #: `input: [{"image": "data:image/png;base64,..."}]` (Jina-style servers); "modality" sends
    #: `input: ["data:image/png;base64,..."]` with `modality: "image"` (infinity-emb).
    image_input: Literal["object", "modality"] | None = None


class AISearchConnection(_Model):
    """Alibaba Cloud AI Search Open Platform (native text- and multimodal-embedding APIs).

    Used by transforms as `model: <connection name>:<service id>`, e.g. `aisearch:ops-text-embedding-002`.
    """

    type: Literal["aisearch"]
    host: str
    workspace: str = "default"
    api_key: SecretStr
    # The platform takes at most 32 inputs per request; QPS limits are per account and model.
    batch_size: int = Field(default=32, ge=1, le=32)
    max_in_flight: int = Field(default=4, ge=1)
    requests_per_second: float | None = Field(default=10.0, gt=0)
    timeout: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=5, ge=0)
    dims: dict[str, int] = Field(default_factory=dict)
    #: As for `openai` connections; the documented limits of the built-in services are the defaults.
    max_input_tokens: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)


ModelConnection = OpenAIConnection | AISearchConnection
Connection = Annotated[
    PaimonConnection | ElasticsearchConnection | OpenAIConnection | AISearchConnection, Field(discriminator="type")
]


class SourceConfig(_Model):
    connection: str
    database: str
    table: str


class TargetConfig(_Model):
    connection: str
    index: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")


class ChunkConfig(_Model):
    """Split a long text into chunks of `max_tokens` tokens, each repeating the last `overlap` tokens of
    the one before, and embed every chunk: the field becomes a `nested` list of chunks."""

    max_tokens: int = Field(ge=1)
    overlap: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _overlap_below_size(self) -> ChunkConfig:
        if self.overlap >= self.max_tokens:
            raise ValueError(
                f"overlap ({self.overlap}) must be smaller than max_tokens ({self.max_tokens}), "
                "or every chunk would start where the one before did"
            )
        return self


class Transform(_Model):
    """Embed one column into a vector field, or with `chunk` into a nested field of chunk vectors.

    `model` is `<provider>:<name>`: a built-in provider (`local`, `clip`, `hash`) or the name of
    an `openai` / `aisearch` connection.
    """

    field: str
    embed: Literal["text", "image"]
    model: str = DEFAULT_TEXT_MODEL
    to: str
    chunk: ChunkConfig | None = None

    @model_validator(mode="after")
    def _chunks_are_text(self) -> Transform:
        if self.chunk is not None and self.embed != "text":
            raise ValueError(
                f"chunk: only text is chunked; remove chunk from the '{self.embed}' transform of '{self.field}'"
            )
        return self


class ScheduleConfig(_Model):
    """The snapshot sensor: how often it polls, and whether the task has one at all."""

    enabled: bool = True
    poll_seconds: int = Field(default=DEFAULT_POLL_SECONDS, ge=1)


class BulkConfig(_Model):
    max_documents: int = Field(default=DEFAULT_BULK_DOCUMENTS, ge=1)
    max_bytes: int = Field(default=DEFAULT_BULK_BYTES, ge=1024)
    max_in_flight: int = Field(default=DEFAULT_BULK_IN_FLIGHT, ge=1)
    max_retries: int = Field(default=DEFAULT_BULK_RETRIES, ge=0)


class ImagesConfig(_Model):
    """How image column values (paths, s3:// / oss:// / http(s):// URIs, bytes) are fetched."""

    max_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    max_in_flight: int = Field(default=8, ge=1)
    timeout: float = Field(default=30.0, gt=0)
    #: For s3:// and oss:// values: endpoint_url, aws_access_key_id, aws_secret_access_key, region_name, ...
    s3: dict[str, SecretStr] = Field(default_factory=dict)


class ErrorBudgetConfig(_Model):
    """How many dead-lettered documents a run tolerates before it fails (cursor unmoved)."""

    max_errors: int | None = Field(default=None, ge=0)
    max_error_rate: float = Field(default=1.0, ge=0.0, le=1.0)


class Task(_Model):
    """One sync task: a Paimon table → documents (+ vectors) → an Elasticsearch index."""

    name: str = Field(pattern=_NAME)
    source: SourceConfig
    target: TargetConfig
    fields: list[str] | None = None
    transforms: list[Transform] = Field(default_factory=list)
    mapping: dict[str, str] = Field(default_factory=dict)
    primary_key: str | list[str] | None = None
    schedule: ScheduleConfig = ScheduleConfig()
    bulk: BulkConfig = BulkConfig()
    errors: ErrorBudgetConfig = ErrorBudgetConfig()
    images: ImagesConfig = ImagesConfig()
    read_batch_rows: int = Field(default=DEFAULT_READ_BATCH_ROWS, ge=1)

    @property
    def primary_key_columns(self) -> list[str] | None:
        if self.primary_key is None:
            return None
        return [self.primary_key] if isinstance(self.primary_key, str) else list(self.primary_key)

    @model_validator(mode="after")
    def _consistent(self) -> Task:
        if self.primary_key is not None and not self.primary_key_columns:
            raise ValueError("primary_key: give a column name or a non-empty list of column names")
        targets = [transform.to for transform in self.transforms]
        duplicated = sorted({name for name in targets if targets.count(name) > 1})
        if duplicated:
            raise ValueError(
                f"transforms: vector field(s) {duplicated} are produced twice; give each 'to' its own name"
            )
        document_fields = set(self.mapping.get(name, name) for name in self.fields or [])
        clashing = sorted(document_fields.intersection(targets))
        if clashing:
            raise ValueError(f"transforms: 'to' field(s) {clashing} would overwrite synced fields; rename them")
        return self


class EmbeddingCacheConfig(_Model):
    """The embedding cache shared between machines: vector segments under an `s3://` or `oss://` prefix.

    Every machine keeps its local SQLite cache; a run imports the segments it has not seen yet
    and uploads the vectors it computed as a new segment. Endpoint and keys come from `s3`, over
    the `fs.<scheme>.*` options of the paimon `connection`, over the AWS environment.
    """

    location: str
    connection: str | None = None
    s3: dict[str, SecretStr] = Field(default_factory=dict)

    @field_validator("location")
    @classmethod
    def _object_store_prefix(cls, location: str) -> str:
        match = _OBJECT_STORE_URI.match(location)
        if match is None or not _BUCKET.match(match.group(2)):
            raise ValueError(f"write s3://bucket/prefix or oss://bucket/prefix (got {location!r})")
        return location.rstrip("/")

    @field_validator("s3")
    @classmethod
    def _known_options(cls, options: dict[str, SecretStr]) -> dict[str, SecretStr]:
        unknown = sorted(set(options) - S3_CLIENT_OPTIONS)
        if unknown:
            raise ValueError(f"unknown option(s) {unknown}; allowed: {sorted(S3_CLIENT_OPTIONS)}")
        return options

    @property
    def scheme(self) -> str:
        return self.location.partition("://")[0]


class TaskFile(_Model):
    """Connections by name, and the tasks that use them."""

    connections: dict[str, Connection]
    tasks: list[Task] = Field(default_factory=list)
    state_dir: str = ".lake_sync"
    embedding_cache: EmbeddingCacheConfig | None = None

    @model_validator(mode="after")
    def _references_resolve(self) -> TaskFile:
        names = [task.name for task in self.tasks]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(f"tasks: names {duplicated} are used twice; task names must be unique")
        for task in self.tasks:
            for number, transform in enumerate(task.transforms):
                provider = transform.model.partition(":")[0]
                if provider in self.connections and not isinstance(self.connections[provider], ModelConnection):
                    raise ValueError(
                        f"task '{task.name}': transforms.{number}.model: connection '{provider}' has type "
                        f"'{self.connections[provider].type}'; models need an openai or aisearch connection"
                    )
            for role, ref, kind in (
                ("source", task.source.connection, PaimonConnection),
                ("target", task.target.connection, ElasticsearchConnection),
            ):
                connection = self.connections.get(ref)
                if connection is None:
                    raise ValueError(
                        f"task '{task.name}': {role}.connection '{ref}' is not defined; "
                        f"defined connections: {sorted(self.connections)}"
                    )
                if not isinstance(connection, kind):
                    expected = kind.model_fields["type"].annotation.__args__[0]
                    raise ValueError(
                        f"task '{task.name}': {role}.connection '{ref}' has type '{connection.type}', "
                        f"expected type '{expected}'"
                    )
        return self

    @model_validator(mode="after")
    def _embedding_cache_resolves(self) -> TaskFile:
        cache = self.embedding_cache
        if cache is None:
            return self
        if cache.connection is not None:
            connection = self.connections.get(cache.connection)
            if not isinstance(connection, PaimonConnection):
                found = f"has type '{connection.type}'" if connection else "is not defined"
                raise ValueError(
                    f"embedding_cache.connection: '{cache.connection}' {found}; name a paimon connection whose "
                    f"fs.{cache.scheme}.* options reach the cache location, or give embedding_cache.s3 instead"
                )
        options = self.embedding_cache_options()
        if ("aws_access_key_id" in options) != ("aws_secret_access_key" in options):
            raise ValueError(
                "embedding_cache.s3: give both aws_access_key_id and aws_secret_access_key, or neither "
                "(then the AWS environment: AWS_ACCESS_KEY_ID, a profile or a role)"
            )
        if cache.scheme == "oss" and not options.get("endpoint_url"):
            raise ValueError(
                "embedding_cache.s3.endpoint_url: oss:// locations need the OSS endpoint, "
                "e.g. https://oss-cn-hangzhou.aliyuncs.com (or fs.oss.endpoint on the paimon connection)"
            )
        return self

    def embedding_cache_options(self) -> dict[str, str]:
        """boto3 client arguments for `embedding_cache`: its `s3` over its connection's options; never log them."""
        cache = self.embedding_cache
        if cache is None:
            return {}
        connection = self.connections.get(cache.connection or "")
        inherited = connection.object_store_options(cache.scheme) if isinstance(connection, PaimonConnection) else {}
        options = {key: value.get_secret_value() for key, value in {**inherited, **cache.s3}.items()}
        endpoint = options.get("endpoint_url")
        # Paimon takes bare hosts (`oss-cn-hangzhou.aliyuncs.com`); boto3 needs a URL.
        if endpoint and "://" not in endpoint:
            options["endpoint_url"] = f"https://{endpoint}"
        return options

    def task(self, name: str) -> Task:
        """The task called `name`; a ConfigError lists the known names otherwise."""
        for task in self.tasks:
            if task.name == name:
                return task
        raise ConfigError(f"no task named '{name}'; tasks in this file: {[t.name for t in self.tasks]}")

    def source_connection(self, task: Task) -> PaimonConnection:
        return self.connections[task.source.connection]  # type: ignore[return-value]

    def model_connection(self, model: str) -> ModelConnection | None:
        """The connection a `<connection>:<model>` spec names, or None for built-in providers."""
        connection = self.connections.get(model.partition(":")[0])
        return connection if isinstance(connection, ModelConnection) else None

    def target_connection(self, task: Task) -> ElasticsearchConnection:
        return self.connections[task.target.connection]  # type: ignore[return-value]


def expand_env(value: Any, *, environ: dict[str, str] | None = None, where: str = "") -> Any:
    """Replace `${VAR}` and `${VAR:-default}` in every string of a parsed YAML tree."""
    env = os.environ if environ is None else environ
    if isinstance(value, dict):
        return {key: expand_env(item, environ=env, where=f"{where}.{key}".lstrip(".")) for key, item in value.items()}
    if isinstance(value, list):
        return [expand_env(item, environ=env, where=f"{where}[{i}]") for i, item in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = env.get(name)
        # As in the shell, `${VAR:-default}` also replaces a variable that is set but empty.
        if default is not None and not value:
            return default
        if value is not None:
            return value
        raise ConfigError(f"{where}: environment variable {name} is not set; set it or write ${{{name}:-default}}")

    return _ENV_REFERENCE.sub(substitute, value)


def resolve_task_file_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The task file to use: the given path, else $LAKE_SYNC_TASKS, else ./lake_sync.yaml."""
    return Path(path or os.environ.get(TASK_FILE_ENV) or DEFAULT_TASK_FILE)


def load_task_file(path: str | os.PathLike[str] | None = None, *, environ: dict[str, str] | None = None) -> TaskFile:
    """Read, expand and validate a task file; any problem is a ConfigError naming task and field."""
    file_path = resolve_task_file_path(path)
    try:
        raw = yaml.safe_load(file_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"task file {file_path} does not exist; create it or pass --tasks PATH") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{file_path} is not valid YAML: {_yaml_problem(error)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{file_path}: expected a mapping with 'connections' and 'tasks'")
    return parse_task_file(expand_env(raw, environ=environ), source=str(file_path))


def parse_task_file(data: dict[str, Any], *, source: str = "task file") -> TaskFile:
    """Validate an already-expanded task-file tree."""
    try:
        return TaskFile.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{source} is invalid:\n" + "\n".join(_describe(e, data) for e in error.errors())) from None


def _yaml_problem(error: yaml.YAMLError) -> str:
    """What is wrong and where, without the parser's quote of the line: that line may hold a secret."""
    problem = getattr(error, "problem", None) or type(error).__name__
    mark = getattr(error, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def _describe(error: Any, data: dict[str, Any]) -> str:
    location = list(error["loc"])
    if len(location) >= 3 and location[0] == "connections" and location[2] in ("paimon", "elasticsearch"):
        # pydantic puts the union's tag in the path (`connections.es.elasticsearch.hosts`); it is no field.
        del location[2]
    prefix = ""
    if len(location) >= 2 and location[0] == "tasks" and isinstance(location[1], int):
        tasks = data.get("tasks") or []
        task = tasks[location[1]] if location[1] < len(tasks) else {}
        name = task.get("name") if isinstance(task, dict) else None
        prefix = f"task '{name}': " if name else f"task #{location[1] + 1}: "
        location = location[2:]
    field = ".".join(str(part) for part in location)
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "literal_error":
        message = f"{message} (got {error.get('input')!r})"
    if error["type"] == "extra_forbidden":
        message = "unknown field; check the spelling against the README's task-file reference"
    return f"  - {prefix}{field + ': ' if field else ''}{message}"
