"""Embeddings from any OpenAI-compatible `/embeddings` endpoint, through the official `openai` client.

texts | images → batches → RemoteCaller (rate, retries) → openai client → POST {base_url}/embeddings → vectors

OpenAI, vLLM, TEI, infinity-emb, DashScope / AI Search compatible mode and lake-sync's own model
server all answer `{"data": [{"index", "embedding"}], "usage": {"prompt_tokens"}}`. The client's own
retries are off (`max_retries=0`): `RemoteCaller` retries instead, so waits honour `Retry-After`,
are shared by all worker threads and are counted. Vectors are asked for as base64 (what the
official client does by default; a quarter of the bytes of JSON floats), and float lists from
servers that ignore the option are accepted too.

Images, for connections with `image_input` set, in one of the two batched request shapes servers use:
- `"object"`: `{"input": [{"image": "data:image/png;base64,..."}]}` (Jina-style multimodal servers);
- `"modality"`: `{"input": ["data:image/png;base64,..."], "modality": "image"}` (infinity-emb).
vLLM's chat-style `messages` form takes one input per request and is not supported.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import numpy as np
import openai

from lake_sync.config import OpenAIConnection
from lake_sync.embed.limits import Utf8ByteTokens
from lake_sync.embed.remote import (
    RemoteEmbedder,
    TransientError,
    image_data_uri,
    is_transient_status,
    parse_retry_after,
    vectors_from_items,
)

#: Documented input limits (tokens) of OpenAI's embedding models; the API refuses longer inputs.
KNOWN_MAX_INPUT_TOKENS = {
    "text-embedding-3-small": 8191,
    "text-embedding-3-large": 8191,
    "text-embedding-ada-002": 8191,
}

# Sent when the connection has no key: the client insists on one, and falling back to its
# OPENAI_API_KEY environment variable would hand a real key to whatever server base_url names.
NO_API_KEY = "no-key"


class OpenAIEmbedder(RemoteEmbedder):
    """`<connection>:<model>` on an `openai` connection."""

    def __init__(self, name: str, *, connection: OpenAIConnection, connection_name: str = "openai") -> None:
        api_key = connection.api_key.get_secret_value() if connection.api_key else None
        super().__init__(f"openai:{_host(connection.base_url)}/{name}", connection=connection, api_key=api_key)
        self.name = name
        self.connection_name = connection_name
        self.image_input = connection.image_input
        self.embeds_images = connection.image_input is not None
        self.timeout = connection.timeout
        # Other servers (vLLM, TEI, serve-models) have no documented default: their limit is configured or unknown.
        self.text_tokens = Utf8ByteTokens(
            max_tokens=connection.max_input_tokens.get(name, KNOWN_MAX_INPUT_TOKENS.get(name))
        )
        self._client = openai.OpenAI(
            base_url=connection.base_url, api_key=api_key or NO_API_KEY, max_retries=0, timeout=connection.timeout
        )
        known = connection.dims.get(name)
        self.dims = known if known is not None else self._probe_dims()

    def close(self) -> None:
        self._client.close()

    def _texts_request(self, texts: list[str], *, dims: int | None) -> np.ndarray:
        return self._embed(texts, dims=dims)

    def _embed_images(self, images: list[bytes]) -> np.ndarray:
        uris = [image_data_uri(image) for image in images]
        if self.image_input == "object":
            return self._embed([{"image": uri} for uri in uris], dims=self.dims)
        if self.image_input == "modality":
            return self._embed(uris, dims=self.dims, extra_body={"modality": "image"})
        return super()._embed_images(images)

    def _embed(self, inputs: list[Any], *, dims: int | None, extra_body: dict[str, Any] | None = None) -> np.ndarray:
        answer = self._caller.call(lambda: self._send(inputs, extra_body))
        if "data" not in answer:
            raise self._caller.fail(f"answer has no 'data' list (keys: {sorted(answer)[:10]})")
        vectors = vectors_from_items(answer["data"], count=len(inputs), dims=dims, fail=self._caller.fail)
        usage = answer.get("usage")
        self._count_usage(usage.get("prompt_tokens", usage.get("total_tokens")) if isinstance(usage, dict) else None)
        return vectors

    def _send(self, inputs: list[Any], extra_body: dict[str, Any] | None) -> dict[str, Any]:
        try:
            response = self._client.embeddings.with_raw_response.create(
                model=self.name, input=inputs, encoding_format="base64", extra_body=extra_body
            )
        except openai.APITimeoutError:
            raise TransientError(f"no answer within {self.timeout:g} s") from None
        except openai.APIConnectionError as error:
            cause = error.__cause__ or error
            raise TransientError(f"connection failed: {type(cause).__name__}: {cause}") from None
        except openai.APIStatusError as error:
            reason = f"HTTP {error.status_code}: {_server_message(error)}"
            if is_transient_status(error.status_code):
                raise TransientError(reason, retry_after=parse_retry_after(error.response.headers)) from None
            raise self._caller.fail(reason) from None
        try:
            answer = response.http_response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise self._caller.fail(f"answer is not a JSON object: {response.http_response.text[:200]!r}")
        return answer


def _server_message(error: openai.APIStatusError) -> str:
    """The `error.message` of an OpenAI-shaped error body, else the client's summary of the body."""
    body = error.body
    message = body.get("message") if isinstance(body, dict) else None
    return message if isinstance(message, str) and message else error.message


def _host(base_url: str) -> str:
    """`host[:port]` of a URL, without any credentials it carries."""
    parts = urlsplit(base_url if "://" in base_url else f"http://{base_url}")
    host = parts.hostname or base_url
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port}" if parts.port else host
