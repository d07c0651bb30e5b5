"""The task file: env expansion, validation messages that name task and field, and secrets kept secret.

YAML → expand_env (${VAR}, ${VAR:-default}) → pydantic models → TaskFile | ConfigError
"""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path
from typing import Any

import pytest

from lake_sync.config import (
    DEFAULT_TEXT_MODEL,
    ElasticsearchConnection,
    PaimonConnection,
    TaskFile,
    expand_env,
    load_task_file,
    parse_task_file,
)
from lake_sync.errors import ConfigError

ES_PASSWORD = "es-pa55-Zq9"
API_KEY = "api-key-Kx81"
PAIMON_SECRET = "oss-secret-Vb27"

VALID: dict[str, Any] = {
    "connections": {
        "lake": {"type": "paimon", "warehouse": "/data/warehouse", "options": {"fs.s3.accessKeySecret": PAIMON_SECRET}},
        "es": {
            "type": "elasticsearch",
            "hosts": ["http://127.0.0.1:9200"],
            "username": "elastic",
            "password": ES_PASSWORD,
            "api_key": API_KEY,
        },
    },
    "tasks": [
        {
            "name": "products",
            "source": {"connection": "lake", "database": "shop", "table": "products"},
            "target": {"connection": "es", "index": "products"},
            "fields": ["id", "name", "description"],
            "transforms": [{"field": "description", "embed": "text", "model": "hash:8", "to": "description_vec"}],
            "mapping": {"name": "title"},
            "primary_key": "id",
        }
    ],
}
SECRETS = (ES_PASSWORD, API_KEY, PAIMON_SECRET)


def config_error(change: Any) -> str:
    """The message of the ConfigError raised for VALID after `change(data)` mutates it."""
    data = copy.deepcopy(VALID)
    change(data)
    with pytest.raises(ConfigError) as raised:
        parse_task_file(data)
    return str(raised.value)


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lake_sync.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


TASK_FILE_WITH_ENV = """
    connections:
      lake: {type: paimon, warehouse: "${WAREHOUSE:-/default/warehouse}"}
      es:
        type: elasticsearch
        hosts: ["http://${ES_HOST}:9200"]
        username: "${ES_USER:-}"
        password: "${ES_PASSWORD:-}"
    tasks:
      - name: products
        source: {connection: lake, database: shop, table: products}
        target: {connection: es, index: "${INDEX:-products}"}
"""


# --- environment expansion ------------------------------------------------------------------------


def test_load_task_file_expands_set_variables_and_uses_defaults_for_unset_ones(tmp_path: Path):
    path = write_yaml(tmp_path, TASK_FILE_WITH_ENV)

    task_file = load_task_file(path, environ={"ES_HOST": "search.internal", "ES_PASSWORD": ES_PASSWORD})

    es = task_file.connections["es"]
    assert isinstance(es, ElasticsearchConnection)
    assert es.hosts == ["http://search.internal:9200"]
    assert es.password is not None and es.password.get_secret_value() == ES_PASSWORD
    assert task_file.connections["lake"].warehouse == "/default/warehouse"  # type: ignore[union-attr]
    assert task_file.task("products").target.index == "products"


def test_empty_default_credentials_mean_no_authentication(tmp_path: Path):
    path = write_yaml(tmp_path, TASK_FILE_WITH_ENV)

    es = load_task_file(path, environ={"ES_HOST": "h"}).connections["es"]

    assert isinstance(es, ElasticsearchConnection)
    assert (es.username, es.password, es.api_key) == (None, None, None)


def test_a_set_but_empty_variable_falls_back_to_the_default_like_the_shell(tmp_path: Path):
    path = write_yaml(tmp_path, TASK_FILE_WITH_ENV)

    task_file = load_task_file(path, environ={"ES_HOST": "h", "WAREHOUSE": "", "INDEX": ""})

    assert task_file.connections["lake"].warehouse == "/default/warehouse"  # type: ignore[union-attr]
    assert task_file.task("products").target.index == "products"


def test_a_set_but_empty_variable_without_default_expands_to_empty():
    assert expand_env({"a": "x${EMPTY}y"}, environ={"EMPTY": ""}) == {"a": "xy"}


def test_missing_variable_without_default_is_a_config_error_naming_the_variable_and_the_field(tmp_path: Path):
    path = write_yaml(tmp_path, TASK_FILE_WITH_ENV)

    with pytest.raises(ConfigError) as raised:
        load_task_file(path, environ={})

    assert "ES_HOST" in str(raised.value)
    assert "connections.es.hosts[0]" in str(raised.value)
    assert "${ES_HOST:-default}" in str(raised.value)  # says how to fix it


def test_expand_env_substitutes_several_references_in_one_string_and_leaves_other_types_alone():
    tree = {"a": "${X}-${Y:-y}-${X}", "n": 3, "flag": True, "items": ["${Y:-}", None]}

    assert expand_env(tree, environ={"X": "x"}) == {"a": "x-y-x", "n": 3, "flag": True, "items": ["", None]}


def test_expand_env_leaves_text_that_only_looks_like_a_reference():
    assert expand_env({"a": "$X and ${lower-case} and $${}"}, environ={"X": "no"}) == {
        "a": "$X and ${lower-case} and $${}"
    }


def test_load_task_file_names_a_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_task_file("/no/such/lake_sync.yaml")


def test_load_task_file_rejects_a_file_that_is_not_a_mapping(tmp_path: Path):
    with pytest.raises(ConfigError, match="expected a mapping with 'connections' and 'tasks'"):
        load_task_file(write_yaml(tmp_path, "- just\n- a list\n"))


# --- validation messages --------------------------------------------------------------------------


def test_valid_task_file_parses_with_defaults():
    task_file = parse_task_file(copy.deepcopy(VALID))

    task = task_file.task("products")
    assert task.primary_key_columns == ["id"]
    assert task.transforms[0].model == "hash:8"
    assert isinstance(task_file.source_connection(task), PaimonConnection)
    assert isinstance(task_file.target_connection(task), ElasticsearchConnection)


def test_transform_model_defaults_to_the_local_text_model():
    data = copy.deepcopy(VALID)
    del data["tasks"][0]["transforms"][0]["model"]

    assert parse_task_file(data).task("products").transforms[0].model == DEFAULT_TEXT_MODEL


def test_unknown_embed_kind_is_rejected_naming_the_task_the_field_and_the_allowed_values():
    message = config_error(lambda d: d["tasks"][0]["transforms"][0].update(embed="video"))

    assert "task 'products'" in message
    assert "transforms.0.embed" in message
    assert "'text' or 'image'" in message
    assert "'video'" in message


def test_unknown_field_is_rejected_naming_the_task_and_the_field():
    message = config_error(lambda d: d["tasks"][0]["source"].update(tabel="products"))

    assert "task 'products': source.tabel: unknown field" in message


def test_unknown_connection_field_is_rejected_naming_the_connection_without_the_union_tag():
    message = config_error(lambda d: d["connections"]["es"].update(hostname="x"))

    assert "connections.es.hostname: unknown field" in message


def test_reference_to_a_missing_connection_is_rejected_listing_the_defined_ones():
    message = config_error(lambda d: d["tasks"][0]["source"].update(connection="warehouse"))

    assert "task 'products': source.connection 'warehouse' is not defined" in message
    assert "['es', 'lake']" in message


def test_reference_to_a_connection_of_the_wrong_type_is_rejected_naming_both_types():
    message = config_error(lambda d: d["tasks"][0]["target"].update(connection="lake"))

    assert "task 'products': target.connection 'lake' has type 'paimon', expected type 'elasticsearch'" in message


def test_unknown_connection_type_is_rejected_listing_the_known_types():
    message = config_error(lambda d: d["connections"]["es"].update(type="opensearch"))

    assert "connections.es" in message
    assert "'paimon', 'elasticsearch'" in message


def test_duplicate_task_names_are_rejected():
    message = config_error(lambda d: d["tasks"].append(copy.deepcopy(d["tasks"][0])))

    assert "names ['products'] are used twice" in message


@pytest.mark.parametrize(
    "host",
    [
        f"http://elastic:{ES_PASSWORD}@127.0.0.1:9200",
        f"https://elastic:{ES_PASSWORD}@search.example.com",
        f"HTTPS://elastic:{ES_PASSWORD}@search.example.com",
        f"elastic:{ES_PASSWORD}@search.example.com:9200",
    ],
)
def test_credentials_inside_a_host_url_are_rejected_without_repeating_them(host: str):
    message = config_error(lambda d: d["connections"]["es"].update(hosts=[host]))

    assert "connections.es.hosts: a host URL carries credentials" in message
    assert "username/password or api_key" in message
    assert ES_PASSWORD not in message


def test_an_at_sign_in_a_host_path_is_not_mistaken_for_credentials():
    data = copy.deepcopy(VALID)
    data["connections"]["es"]["hosts"] = ["http://proxy.example.com/es@eu"]

    assert parse_task_file(data).connections["es"].hosts == ["http://proxy.example.com/es@eu"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["tasks"][0]["target"].update(index="Products"), "task 'products': target.index"),
        (lambda d: d["tasks"][0].update(name="my task"), "task 'my task': name"),
        (lambda d: d["tasks"][0].update(primary_key=[]), "task 'products': primary_key: give a column name"),
        (lambda d: d["tasks"][0].update(bulk={"max_documents": 0}), "task 'products': bulk.max_documents"),
        (lambda d: d["connections"]["es"].update(hosts=[]), "connections.es.hosts"),
        (
            lambda d: d["tasks"][0]["transforms"].append(dict(d["tasks"][0]["transforms"][0])),
            "vector field(s) ['description_vec'] are produced twice",
        ),
        (
            lambda d: d["tasks"][0]["transforms"][0].update(to="title"),
            "'to' field(s) ['title'] would overwrite synced fields",
        ),
    ],
    ids=["index-name", "task-name", "empty-key", "bulk-size", "no-hosts", "duplicate-vector", "vector-over-field"],
)
def test_invalid_settings_are_rejected_naming_the_task_and_the_field(change: Any, expected: str):
    assert expected in config_error(change)


def test_every_problem_in_a_file_is_reported_at_once():
    def break_twice(data: dict[str, Any]) -> None:
        data["tasks"][0]["transforms"][0]["embed"] = "video"
        data["tasks"][0]["source"]["tabel"] = "x"

    message = config_error(break_twice)

    assert "transforms.0.embed" in message
    assert "source.tabel" in message


def test_asking_for_an_unknown_task_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"no task named 'orders'; tasks in this file: \['products'\]"):
        parse_task_file(copy.deepcopy(VALID)).task("orders")


# --- secrets --------------------------------------------------------------------------------------


def test_secrets_never_appear_in_repr_str_or_json_of_the_model():
    task_file = parse_task_file(copy.deepcopy(VALID))

    for rendering in (repr(task_file), str(task_file), task_file.model_dump_json(), repr(task_file.connections)):
        for secret in SECRETS:
            assert secret not in rendering


def test_secrets_are_revealed_only_where_a_client_needs_them():
    task_file = parse_task_file(copy.deepcopy(VALID))

    lake = task_file.connections["lake"]
    es = task_file.connections["es"]
    assert isinstance(lake, PaimonConnection) and isinstance(es, ElasticsearchConnection)
    assert lake.catalog_options() == {"warehouse": "/data/warehouse", "fs.s3.accessKeySecret": PAIMON_SECRET}
    assert es.password is not None and es.password.get_secret_value() == ES_PASSWORD


def test_secrets_from_the_environment_never_appear_in_config_errors_about_other_fields(tmp_path: Path):
    path = write_yaml(
        tmp_path,
        """
        connections:
          lake: {type: paimon, warehouse: /w, options: {fs.oss.accessKeySecret: "${OSS_SECRET}"}}
          es: {type: elasticsearch, hosts: ["http://h:9200"], password: "${ES_PASSWORD}", api_key: "${API_KEY}",
               request_timeout: -1}
        tasks:
          - {name: products, source: {connection: lake, database: d, table: t}, target: {connection: es, index: Bad}}
        """,
    )

    with pytest.raises(ConfigError) as raised:
        load_task_file(path, environ={"OSS_SECRET": PAIMON_SECRET, "ES_PASSWORD": ES_PASSWORD, "API_KEY": API_KEY})

    message = str(raised.value)
    assert "request_timeout" in message and "target.index" in message
    for secret in SECRETS:
        assert secret not in message


@pytest.mark.parametrize(
    ("field", "value"),
    [("password", 12345), ("api_key", ["a", "list"]), ("options", {"token": {"nested": PAIMON_SECRET}})],
)
def test_a_secret_of_the_wrong_type_is_rejected_without_echoing_it(field: str, value: Any):
    def change(data: dict[str, Any]) -> None:
        connection = "lake" if field == "options" else "es"
        data["connections"][connection][field] = value

    message = config_error(change)

    assert "Input should be a valid string" in message
    assert "12345" not in message and PAIMON_SECRET not in message and "list" not in message


def test_a_yaml_syntax_error_does_not_quote_the_line_that_holds_a_literal_secret(tmp_path: Path):
    path = write_yaml(
        tmp_path,
        f"""
        connections:
          es: {{type: elasticsearch, hosts: ["http://h:9200"], password: "{ES_PASSWORD}" oops}}
        tasks: []
        """,
    )

    with pytest.raises(ConfigError) as raised:
        load_task_file(path)

    assert "is not valid YAML" in str(raised.value)
    assert "line 3" in str(raised.value)
    assert ES_PASSWORD not in str(raised.value)


def test_task_file_model_is_frozen():
    task_file = parse_task_file(copy.deepcopy(VALID))

    with pytest.raises(ValueError, match="frozen"):
        task_file.tasks[0].name = "other"  # type: ignore[misc]
    assert isinstance(task_file, TaskFile)


def test_a_chunk_overlap_not_below_the_chunk_size_is_rejected_naming_the_field():
    message = config_error(lambda d: d["tasks"][0]["transforms"][0].update(chunk={"max_tokens": 32, "overlap": 32}))

    assert "task 'products': transforms.0.chunk: overlap (32) must be smaller than max_tokens (32)" in message


def test_chunking_an_image_transform_is_rejected_naming_the_field():
    message = config_error(
        lambda d: d["tasks"][0]["transforms"][0].update(embed="image", chunk={"max_tokens": 100, "overlap": 10})
    )

    assert "task 'products': transforms.0: chunk: only text is chunked" in message
