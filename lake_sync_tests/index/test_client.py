"""The client's first call and the translation of client errors into TargetError, against the real server.

ElasticsearchConnection → build_client → check_cluster / target_errors → version | TargetError (no secrets)
"""

from __future__ import annotations

import pytest

from lake_sync.config import ElasticsearchConnection
from lake_sync.errors import TargetError
from lake_sync.index.client import build_client, check_cluster, target_errors
from lake_sync_tests.fault_proxy import FaultProxy

SECRET = "pw-client-Jm3"


def connection(url: str, **settings: object) -> ElasticsearchConnection:
    return ElasticsearchConnection(type="elasticsearch", hosts=[url], **settings)


def test_check_cluster_returns_the_server_version(es_url: str):
    settings = connection(es_url)

    assert check_cluster(build_client(settings), settings).startswith("8.")


def test_check_cluster_names_the_host_when_it_is_unreachable():
    settings = connection("http://127.0.0.1:1", username="elastic", password=SECRET)

    with pytest.raises(TargetError, match=r"cannot reach Elasticsearch at http://127\.0\.0\.1:1") as raised:
        check_cluster(build_client(settings), settings)

    assert SECRET not in str(raised.value)


def test_check_cluster_names_the_user_but_not_the_password_when_credentials_are_refused(es_url: str):
    with FaultProxy(es_url, require_basic_auth=("elastic", "right")) as proxy:
        settings = connection(proxy.url, username="elastic", password=SECRET)
        with pytest.raises(TargetError, match=r"refused the credentials of user 'elastic' \(401\)") as raised:
            check_cluster(build_client(settings), settings)

    assert SECRET not in str(raised.value)


def test_check_cluster_sends_the_configured_basic_credentials(es_url: str):
    with FaultProxy(es_url, require_basic_auth=("elastic", SECRET)) as proxy:
        settings = connection(proxy.url, username="elastic", password=SECRET)

        assert check_cluster(build_client(settings), settings).startswith("8.")


def test_target_errors_turns_an_api_error_into_a_target_error_with_the_status(es_url: str):
    settings = connection(es_url)
    client = build_client(settings)

    with (
        pytest.raises(TargetError, match=r"answered 404 while refreshing 'no-such-index'"),
        target_errors(settings, "refreshing 'no-such-index'"),
    ):
        client.indices.refresh(index="no-such-index")


def test_target_errors_turns_a_lost_connection_into_a_target_error_naming_the_host():
    settings = connection("http://127.0.0.1:1", username="elastic", password=SECRET)

    with (
        pytest.raises(
            TargetError, match=r"request to Elasticsearch at http://127\.0\.0\.1:1 failed while counting"
        ) as raised,
        target_errors(settings, "counting"),
    ):
        build_client(settings).count(index="x")

    assert SECRET not in str(raised.value)
