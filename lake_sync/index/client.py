"""An Elasticsearch client built from a connection, and a first call that fails clearly."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from elasticsearch import ApiError, AuthenticationException, AuthorizationException, Elasticsearch, TransportError
from elasticsearch import ConnectionError as ESConnectionError
from elasticsearch.serializer import OrjsonSerializer

from lake_sync.config import ElasticsearchConnection
from lake_sync.errors import TargetError


def build_client(connection: ElasticsearchConnection) -> Elasticsearch:
    """A client with the orjson serializer; retries are the writer's job, so the client makes none."""
    options: dict[str, Any] = {
        "request_timeout": connection.request_timeout,
        "max_retries": 0,
        "verify_certs": connection.verify_certs,
        # orjson serialises numpy vectors natively and several times faster than json.
        "serializers": {
            "application/json": OrjsonSerializer(),
            "application/vnd.elasticsearch+json": OrjsonSerializer(),
        },
    }
    if connection.ca_certs:
        options["ca_certs"] = connection.ca_certs
    if connection.api_key is not None:
        options["api_key"] = connection.api_key.get_secret_value()
    elif connection.username is not None:
        password = connection.password.get_secret_value() if connection.password else ""
        options["basic_auth"] = (connection.username, password)
    return Elasticsearch(connection.hosts, **options)


def check_cluster(client: Elasticsearch, connection: ElasticsearchConnection) -> str:
    """The cluster's version; a TargetError without secrets if it is unreachable or refuses us."""
    where = ", ".join(connection.hosts)
    try:
        return str(client.info()["version"]["number"])
    except ESConnectionError as error:
        raise TargetError(f"cannot reach Elasticsearch at {where}: {type(error).__name__}") from None
    except AuthenticationException:
        who = f"user '{connection.username}'" if connection.username else "the configured api_key"
        raise TargetError(f"Elasticsearch at {where} refused the credentials of {who} (401)") from None
    except AuthorizationException:
        raise TargetError(f"Elasticsearch at {where} denied access (403); the user needs monitor privileges") from None


@contextmanager
def target_errors(connection: ElasticsearchConnection, doing: str) -> Iterator[None]:
    """Turn client errors raised while `doing` something into a TargetError naming hosts, never secrets.

    After `check_cluster` the cluster can still go away or fail mid-run; callers get a
    LakeSyncError instead of a transport traceback.
    """
    where = ", ".join(connection.hosts)
    try:
        yield
    except TargetError as error:
        raise type(error)(f"Elasticsearch at {where}: {error} (while {doing})") from None
    except TransportError as error:
        failure = type(error).__name__
        raise TargetError(f"the request to Elasticsearch at {where} failed while {doing}: {failure}") from None
    except ApiError as error:
        status, message = error.meta.status, error.message
        raise TargetError(f"Elasticsearch at {where} answered {status} while {doing}: {message}") from None
