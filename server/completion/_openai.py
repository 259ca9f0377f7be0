"""OpenAI-compatible upstreams (OpenAI, vLLM, llama.cpp server, ...) over pooled httpx."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from ._http import ClientPool, api_key, error_from_response, sse_events, transport_error
from ._provider import ProviderCall
from .errors import UpstreamError

__all__ = ["OpenAIProvider"]

DEFAULT_BASE = "https://api.openai.com/v1"


class OpenAIProvider:
    """POSTs `/chat/completions`; streams by SSE with usage requested in the last chunk."""

    name = "openai"

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._pool = ClientPool(transport)

    def _build(self, call: ProviderCall, stream: bool) -> tuple[httpx.AsyncClient, httpx.Request]:
        dep = call.deployment
        base = dep.api_base or DEFAULT_BASE
        headers = {"content-type": "application/json", "accept": "application/json"}
        key = api_key(dep)
        if key:
            headers["authorization"] = f"Bearer {key}"
        headers.update(dep.headers)
        body: dict[str, Any] = {**call.body, "model": call.model}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
            headers["accept"] = "text/event-stream"
        client = self._pool.get(base)
        request = client.build_request(
            "POST", self._pool.url(f"{base}/chat/completions"), headers=headers,
            content=json.dumps(body, separators=(",", ":")).encode(),
            timeout=httpx.Timeout(call.timeout_s))
        return client, request

    async def complete(self, call: ProviderCall) -> dict[str, Any]:
        client, request = self._build(call, stream=False)
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise transport_error(exc, call) from None
        try:
            raw = await response.aread()
        except httpx.HTTPError as exc:
            raise transport_error(exc, call) from None
        finally:
            await response.aclose()
        if response.status_code >= 400:
            raise error_from_response(response, call)
        try:
            data = json.loads(raw)
        except ValueError:
            raise UpstreamError(f"{call.deployment.id}: invalid JSON in the reply "
                                f"(HTTP {response.status_code})", body=raw[:2000].decode(
                                    "utf-8", "replace")) from None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise UpstreamError(f"{call.deployment.id}: the reply is not a chat.completion")
        return data

    async def stream(self, call: ProviderCall) -> AsyncGenerator[dict[str, Any], None]:
        client, request = self._build(call, stream=True)
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise transport_error(exc, call) from None
        try:
            if response.status_code >= 400:
                await response.aread()
                raise error_from_response(response, call)
            finished = False
            async for _, data in sse_events(response):
                if data == "[DONE]":
                    return
                try:
                    chunk = json.loads(data)
                except ValueError:
                    raise UpstreamError(f"{call.deployment.id}: malformed SSE data: "
                                        f"{data[:100]!r}") from None
                if not isinstance(chunk, dict):
                    raise UpstreamError(f"{call.deployment.id}: SSE data is not an object")
                if "error" in chunk:
                    err = chunk["error"] if isinstance(chunk["error"], dict) else {}
                    raise UpstreamError(f"{call.deployment.id}: in-band error: "
                                        f"{err.get('message', chunk['error'])}")
                finished = finished or any(
                    c.get("finish_reason") for c in chunk.get("choices") or ())
                yield chunk
            if not finished:
                raise UpstreamError(f"{call.deployment.id}: the stream ended before it finished")
        except httpx.HTTPError as exc:
            raise transport_error(exc, call) from None
        finally:
            await response.aclose()

    async def close(self) -> None:
        await self._pool.close()
