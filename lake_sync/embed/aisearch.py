"""Alibaba Cloud AI Search Open Platform embeddings through its native REST APIs.

texts | images → ≤32 inputs → POST {host}/v3/openapi/workspaces/{ws}/{text|multi-modal}-embedding/{service} → vectors

Request and answer shapes, as the platform documents them (developer reference pages "Text
embedding" and "Multimodal embedding"):

- text models: `{"input": ["...", ...], "input_type": "document"}`;
- multimodal models (`ops-m2-encoder*`, `ops-gme-*`): `{"input": [{"text": "..."} | {"image": "..."}]}`,
  one text or one image per input (the m2 models refuse both in one input). Texts sent to a
  multimodal model go to the multimodal endpoint too, so texts and images share one vector space;
- header `Authorization: Bearer <api key>`; at most 32 inputs and 8 MB per request;
- answer `{"request_id", "latency", "usage": {"token_count": n}, "result": {"embeddings": [{"index", "embedding"}]}}`;
  an error is an HTTP status with `{"request_id", "code", "message"}`.

Not verified against the live service (no account here), so two choices are ours: images are sent
as `data:<media type>;base64,...` URIs (the docs say "URL or Base64" without naming the form), and
the model id is `aisearch:<service_id>` without host or workspace, since a built-in service id
names one fixed model in every region, so cached vectors stay valid across endpoints.
"""

from __future__ import annotations

from typing import Any

import httpx2
import numpy as np

from lake_sync.config import AISearchConnection
from lake_sync.embed.limits import Utf8ByteTokens
from lake_sync.embed.remote import (
    RemoteEmbedder,
    TransientError,
    image_data_uri,
    is_transient_status,
    parse_retry_after,
    vectors_from_items,
)

#: Output dimension of the documented built-in services, known without a call.
KNOWN_DIMS = {
    "ops-text-embedding-001": 1536,
    "ops-text-embedding-zh-001": 768,
    "ops-text-embedding-en-001": 768,
    "ops-text-embedding-002": 1024,
    "ops-gte-sentence-embedding-multilingual-base": 768,
    "ops-qwen3-embedding-0.6b": 1024,
    "ops-m2-encoder": 768,
    "ops-m2-encoder-large": 1024,
    "ops-gme-qwen2-vl-2b-instruct": 1536,
}
#: Documented maximum input length (tokens) of the text services; the multimodal ones document none.
KNOWN_MAX_INPUT_TOKENS = {
    "ops-text-embedding-001": 300,
    "ops-text-embedding-zh-001": 1024,
    "ops-text-embedding-en-001": 512,
    "ops-text-embedding-002": 8192,
    "ops-gte-sentence-embedding-multilingual-base": 8192,
    "ops-qwen3-embedding-0.6b": 32_000,
}
#: Services reached through the multimodal endpoint (texts and images).
MULTIMODAL_SERVICES = frozenset({"ops-m2-encoder", "ops-m2-encoder-large", "ops-gme-qwen2-vl-2b-instruct"})
#: `input_type` of the text services: stored documents and search queries are embedded differently.
DOCUMENT_INPUT_TYPE = "document"
QUERY_INPUT_TYPE = "query"


class AISearchEmbedder(RemoteEmbedder):
    """`<connection>:<service_id>` on an `aisearch` connection, e.g. `aisearch:ops-text-embedding-002`."""

    def __init__(self, name: str, *, connection: AISearchConnection, connection_name: str = "aisearch") -> None:
        api_key = connection.api_key.get_secret_value()
        super().__init__(f"aisearch:{name}", connection=connection, api_key=api_key)
        self.service_id = name
        self.connection_name = connection_name
        self.embeds_images = name in MULTIMODAL_SERVICES
        self.text_tokens = Utf8ByteTokens(
            max_tokens=connection.max_input_tokens.get(name, KNOWN_MAX_INPUT_TOKENS.get(name))
        )
        kind = "multi-modal-embedding" if self.embeds_images else "text-embedding"
        # A host without a scheme gets https, so the key never travels in clear text by accident.
        host = connection.host if "://" in connection.host else f"https://{connection.host}"
        self._path = f"/v3/openapi/workspaces/{connection.workspace}/{kind}/{name}"
        self._client = httpx2.Client(
            base_url=host.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=connection.timeout,
            limits=httpx2.Limits(max_connections=self.max_in_flight, max_keepalive_connections=self.max_in_flight),
        )
        known = connection.dims.get(name) or KNOWN_DIMS.get(name)
        self.dims = known if known is not None else self._probe_dims()

    def close(self) -> None:
        self._client.close()

    def _texts_request(self, texts: list[str], *, dims: int | None) -> np.ndarray:
        if self.embeds_images:
            return self._post([{"text": text} for text in texts], dims=dims)
        return self._post(texts, dims=dims)

    def _embed_queries(self, texts: list[str]) -> np.ndarray:
        if self.embeds_images:
            return self._embed_texts(texts)
        return self._post(self.text_tokens.fit(texts).texts, dims=self.dims, input_type=QUERY_INPUT_TYPE)

    def _embed_images(self, images: list[bytes]) -> np.ndarray:
        if not self.embeds_images:
            return super()._embed_images(images)
        return self._post([{"image": image_data_uri(image)} for image in images], dims=self.dims)

    def _post(self, inputs: list[Any], *, dims: int | None, input_type: str = DOCUMENT_INPUT_TYPE) -> np.ndarray:
        body: dict[str, Any] = {"input": inputs}
        if not self.embeds_images:
            body["input_type"] = input_type
        answer = self._caller.call(lambda: self._send(body))
        result = answer.get("result")
        items = result.get("embeddings") if isinstance(result, dict) else None
        if items is None:
            raise self._caller.fail(f"answer has no result.embeddings{_platform_error(answer)}")
        vectors = vectors_from_items(items, count=len(inputs), dims=dims, fail=self._caller.fail)
        usage = answer.get("usage")
        self._count_usage(usage.get("token_count") if isinstance(usage, dict) else None)
        return vectors

    def _send(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._client.post(self._path, json=body)
        except httpx2.TimeoutException:
            raise TransientError(f"no answer within {self._client.timeout.read} s") from None
        except httpx2.TransportError as error:
            raise TransientError(f"connection failed: {type(error).__name__}: {error}") from None
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code != 200:
            reason = f"AI Search answered HTTP {response.status_code}{_platform_error(answer)}"
            if is_transient_status(response.status_code):
                raise TransientError(reason, retry_after=parse_retry_after(response.headers))
            raise self._caller.fail(f"{reason} at {self._path}")
        if not isinstance(answer, dict):
            raise self._caller.fail(f"answer is not a JSON object: {response.text[:200]!r}")
        return answer


def _platform_error(answer: Any) -> str:
    """` (code: message, request <id>)` from a platform error body, or nothing."""
    if not isinstance(answer, dict) or not (answer.get("code") or answer.get("message")):
        return ""
    request = f", request {answer['request_id']}" if answer.get("request_id") else ""
    return f" ({answer.get('code', '')}: {answer.get('message', '')}{request})"
