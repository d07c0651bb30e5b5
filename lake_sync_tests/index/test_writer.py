"""The bulk writer against the real search server: chunking, per-document outcomes, retries.

IndexAction* → BulkWriter → (FaultProxy →) noida-db → IndexOutcome* (one per action, in order)
"""

from __future__ import annotations

import copy

import orjson
import pyarrow as pa
import pytest
from elasticsearch import Elasticsearch

from lake_sync.config import ElasticsearchConnection
from lake_sync.errors import TargetError
from lake_sync.index.client import build_client
from lake_sync.index.mapping import build_mappings
from lake_sync.index.target import count_documents, ensure_index
from lake_sync.index.writer import BulkLimits, BulkWriter, IndexAction
from lake_sync_tests.fault_proxy import FaultProxy

FAST_BACKOFF = {"backoff_initial": 0.01, "backoff_max": 0.05}


# --- fixtures and helpers -------------------------------------------------------------------------


def client_for(url: str, **connection: object) -> Elasticsearch:
    """The client the sync would build: no client-side retries, orjson serialiser."""
    return build_client(ElasticsearchConnection(type="elasticsearch", hosts=[url], **connection))


def limits(**overrides: object) -> BulkLimits:
    settings: dict[str, object] = {"max_documents": 500, "max_bytes": 8 * 1024 * 1024, "max_in_flight": 2}
    settings.update({"max_retries": 5, **FAST_BACKOFF})
    settings.update(overrides)
    return BulkLimits(**settings)  # type: ignore[arg-type]


@pytest.fixture
def vector_index(es: Elasticsearch, index_name: str) -> str:
    """An index with a keyword id, a text title, a long rank and a 3-d vector."""
    columns = {"id": pa.string(), "title": pa.string(), "rank": pa.int64()}
    ensure_index(es, index_name, build_mappings(columns, {"vec": 3}, keyword_fields={"id"}))
    return index_name


def documents(count: int, *, start: int = 0) -> list[IndexAction]:
    return [
        IndexAction(
            "index", f"doc-{n}", {"id": f"doc-{n}", "title": f"title {n}", "rank": n, "vec": [1.0, 0.5, n + 1.0]}
        )
        for n in range(start, start + count)
    ]


# --- chunking -------------------------------------------------------------------------------------


def test_writer_sends_one_bulk_request_per_max_documents_chunk(es: Elasticsearch, es_url: str, vector_index: str):
    writer = BulkWriter(client_for(es_url), vector_index, limits(max_documents=3))

    outcomes = list(writer.write(documents(10)))

    assert writer.requests == 4  # 3 + 3 + 3 + 1
    assert [outcome.ok for outcome in outcomes] == [True] * 10
    assert count_documents(es, vector_index) == 10


def test_writer_splits_chunks_so_no_request_exceeds_max_bytes(es: Elasticsearch, es_url: str, vector_index: str):
    actions = documents(12)
    line_bytes = [len(orjson.dumps({"index": {"_id": a.id}})) + len(orjson.dumps(a.body)) + 2 for a in actions]
    max_bytes = 3 * max(line_bytes) + 1  # three documents fit, four never do
    with FaultProxy(es_url) as proxy:
        writer = BulkWriter(client_for(proxy.url), vector_index, limits(max_documents=1000, max_bytes=max_bytes))
        outcomes = list(writer.write(actions))

    assert all(outcome.ok for outcome in outcomes)
    assert writer.requests == 4
    assert all(len(body) <= max_bytes for body in proxy.log.bulk_bodies)
    assert count_documents(es, vector_index) == 12


def test_writer_sends_a_document_larger_than_max_bytes_alone_instead_of_dropping_it(
    es: Elasticsearch, es_url: str, vector_index: str
):
    actions = [*documents(1), IndexAction("index", "big", {"id": "big", "title": "x" * 5000}), *documents(1, start=1)]
    writer = BulkWriter(client_for(es_url), vector_index, limits(max_bytes=1024))

    outcomes = list(writer.write(actions))

    assert writer.requests == 3
    assert [outcome.ok for outcome in outcomes] == [True, True, True]
    assert count_documents(es, vector_index) == 3


def test_writer_keeps_at_most_max_in_flight_bulk_requests_open(es: Elasticsearch, es_url: str, vector_index: str):
    with FaultProxy(es_url, bulk_delay=0.05) as proxy:
        writer = BulkWriter(client_for(proxy.url), vector_index, limits(max_documents=2, max_in_flight=2))
        outcomes = list(writer.write(documents(16)))

    assert all(outcome.ok for outcome in outcomes)
    assert proxy.log.bulk_requests == 8
    assert proxy.log.max_in_flight == 2


# --- per-document outcomes ------------------------------------------------------------------------


def test_writer_returns_one_outcome_per_action_in_input_order(es_url: str, vector_index: str):
    actions = documents(7)
    writer = BulkWriter(client_for(es_url), vector_index, limits(max_documents=2, max_in_flight=3))

    outcomes = list(writer.write(iter(actions)))

    assert [outcome.action for outcome in outcomes] == actions
    assert all(outcome.ok for outcome in outcomes)


def test_writer_does_not_mutate_the_actions_it_sends(es_url: str, vector_index: str):
    actions = documents(3)
    before = copy.deepcopy(actions)

    list(BulkWriter(client_for(es_url), vector_index, limits()).write(actions))

    assert actions == before


def test_writer_reports_rejected_documents_as_failed_outcomes_and_indexes_the_rest(
    es: Elasticsearch, es_url: str, vector_index: str
):
    good = documents(4)
    wrong_dims = IndexAction("index", "bad-dims", {"id": "bad-dims", "vec": [1.0, 2.0]})
    wrong_type = IndexAction("index", "bad-rank", {"id": "bad-rank", "rank": "not a number"})
    actions = [good[0], wrong_dims, good[1], good[2], wrong_type, good[3]]
    writer = BulkWriter(client_for(es_url), vector_index, limits())

    outcomes = list(writer.write(actions))

    failed = {outcome.action.id: outcome for outcome in outcomes if not outcome.ok}
    assert set(failed) == {"bad-dims", "bad-rank"}
    assert failed["bad-dims"].status == 400
    assert "dimensions" in (failed["bad-dims"].reason or "")
    assert failed["bad-rank"].status == 400
    assert "rank" in (failed["bad-rank"].reason or "")
    assert failed["bad-dims"].action is wrong_dims  # the body travels with the outcome for the dead letter
    assert writer.requests == 1  # a 400 is final: no retry
    assert count_documents(es, vector_index) == 4


def test_writer_treats_deleting_a_missing_document_as_success(es: Elasticsearch, es_url: str, vector_index: str):
    writer = BulkWriter(client_for(es_url), vector_index, limits())
    list(writer.write(documents(2)))

    outcomes = list(writer.write([IndexAction("delete", "doc-0"), IndexAction("delete", "never-indexed")]))

    assert [outcome.ok for outcome in outcomes] == [True, True]
    assert outcomes[1].status in (200, 404)  # 404 where the cluster flags the bulk response as having errors
    assert count_documents(es, vector_index) == 1


# --- retries --------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
def test_writer_retries_whole_bulk_requests_answered_with_a_retryable_status_until_all_land(
    es: Elasticsearch, es_url: str, vector_index: str, status: int
):
    with FaultProxy(es_url, reject_bulk_requests=2, reject_status=status) as proxy:
        writer = BulkWriter(client_for(proxy.url), vector_index, limits(max_documents=5, max_in_flight=1))
        outcomes = list(writer.write(documents(10)))

    assert all(outcome.ok for outcome in outcomes)
    assert proxy.log.bulk_requests == 2 + 2  # two rejected attempts, then one request per chunk
    assert writer.requests == proxy.log.bulk_requests
    assert count_documents(es, vector_index) == 10


def test_writer_retries_only_the_items_a_bulk_response_rejected_with_429(
    es: Elasticsearch, es_url: str, vector_index: str
):
    actions = documents(6)
    with FaultProxy(es_url, reject_bulk_items=1) as proxy:
        writer = BulkWriter(client_for(proxy.url), vector_index, limits(max_in_flight=1))
        outcomes = list(writer.write(actions))

    assert all(outcome.ok for outcome in outcomes)
    assert proxy.log.rejected_ids == ["doc-0", "doc-2", "doc-4"]
    assert proxy.log.bulk_requests == 2
    retried = [orjson.loads(line) for line in proxy.log.bulk_bodies[1].splitlines()[::2]]
    assert [header["index"]["_id"] for header in retried] == ["doc-0", "doc-2", "doc-4"]
    assert count_documents(es, vector_index) == 6


def test_writer_raises_target_error_instead_of_dead_lettering_when_429s_outlast_the_retries(
    es: Elasticsearch, es_url: str, vector_index: str
):
    with FaultProxy(es_url, reject_bulk_requests=100, reject_status=429) as proxy:
        writer = BulkWriter(client_for(proxy.url), vector_index, limits(max_retries=2))
        with pytest.raises(TargetError, match=r"still failed after 2 retries \(3 of 3 documents unacknowledged\).*429"):
            list(writer.write(documents(3)))

    assert proxy.log.bulk_requests == 3  # first attempt + 2 retries
    assert count_documents(es, vector_index) == 0


def test_writer_raises_target_error_naming_the_connection_error_when_the_cluster_is_unreachable():
    writer = BulkWriter(client_for("http://127.0.0.1:1"), "anything", limits(max_retries=2))

    with pytest.raises(TargetError, match="connection error: ConnectionError"):
        list(writer.write(documents(3)))

    assert writer.requests == 3


def test_writer_raises_target_error_without_retrying_when_the_cluster_refuses_the_credentials(
    es: Elasticsearch, es_url: str, vector_index: str
):
    with FaultProxy(es_url, require_basic_auth=("elastic", "right-password")) as proxy:
        client = client_for(proxy.url, username="elastic", password="wrong-password-s3cret")
        writer = BulkWriter(client, vector_index, limits())
        with pytest.raises(TargetError, match="refused the bulk request") as raised:
            list(writer.write(documents(3)))

    assert vector_index in str(raised.value)
    assert "401" in str(raised.value)
    assert "s3cret" not in str(raised.value)
    assert writer.requests == 1
    assert count_documents(es, vector_index) == 0
