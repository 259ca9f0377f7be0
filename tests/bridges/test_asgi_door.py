"""The shim's outer ASGI layer (bridges/openai/_asgi.py): a chat completion's POST takes
the one-layer door, everything else the middlewares and the router; both give the same
request ids, and an error the endpoint did not map is OpenAI's 500, not a stack trace.
(A caller hanging up is covered end to end in test_upstream_faults.py.)"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from scillm.bridges.openai._asgi import CompletionsDoor

Scope = dict[str, Any]


def _door(endpoint: Any) -> CompletionsDoor:
    async def other(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"other {request.scope['state']['request_id']}")

    return CompletionsDoor(Starlette(routes=[
        Route("/v1/chat/completions", endpoint, methods=["POST"]),
        Route("/v1/models", other, methods=["GET"])]), endpoint)


async def _ok(scope: Scope, receive: Any, send: Any) -> None:
    message = await receive()
    body = b"ok %s %s" % (scope["state"]["request_id"].encode(), message["body"])
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


def _client(app: Any, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(
        app=app, raise_app_exceptions=raise_app_exceptions), base_url="http://door")


async def test_both_roads_keep_or_make_the_request_id() -> None:
    async with _client(_door(_ok)) as client:
        mine = await client.post("/v1/chat/completions", content=b"{}",
                                 headers={"x-request-id": "req-1"})
        made = await client.post("/chat/completions", content=b"{}")
        other = await client.get("/v1/models", headers={"x-request-id": "req-2"})
        refused = await client.get("/v1/chat/completions", headers={"x-request-id": "req-3"})
    assert (mine.status_code, mine.text) == (200, "ok req-1 {}")
    assert mine.headers["x-request-id"] == "req-1"
    assert len(made.headers["x-request-id"]) == 32 and made.text.startswith(
        f"ok {made.headers['x-request-id']}")
    assert (other.text, other.headers["x-request-id"]) == ("other req-2", "req-2")
    # A GET of the completions path goes to the router, which refuses the method.
    assert (refused.status_code, refused.headers["x-request-id"]) == (405, "req-3")


async def test_an_unmapped_error_is_openais_500_with_the_request_id(
        caplog: pytest.LogCaptureFixture) -> None:
    async def broken(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        raise RuntimeError("a bug, not for the caller's eyes")

    with caplog.at_level(logging.ERROR, logger="scillm.bridges.openai"):
        async with _client(_door(broken)) as client:
            response = await client.post("/v1/chat/completions", content=b"{}",
                                         headers={"x-request-id": "req-9"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "req-9"
    assert response.json() == {"error": {"message": "internal error", "type": "api_error",
                                         "param": None, "code": None}}
    assert "a bug" not in response.text
    assert any("req-9" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_an_error_after_the_response_started_is_left_to_the_server() -> None:
    async def half(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("mid-response")

    async with _client(_door(half)) as client:
        with pytest.raises(RuntimeError, match="mid-response"):
            await client.post("/v1/chat/completions", content=b"{}")


async def test_a_cancellation_from_outside_goes_through() -> None:
    entered = asyncio.Event()

    async def slow(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        entered.set()
        await asyncio.Event().wait()

    async def sent(message: Any) -> None:
        raise AssertionError(f"nothing is sent: {message}")

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "headers": []}
    task = asyncio.create_task(_door(slow)(scope, receive, sent))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/chat/completions"),
                                              ("POST", "/agent/run")])
async def test_the_shims_unmapped_errors_are_openais_500(
        monkeypatch: pytest.MonkeyPatch, method: str, path: str) -> None:
    """The shim as `create_app` builds it, both roads: a bug in an endpoint (here, made to
    raise where each endpoint starts its work) answers OpenAI's 500 with the request id."""
    from scillm.bridges.openai import app as shim_app
    from scillm.clients import ScillmClient

    def bug(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug, not for the caller's eyes")

    monkeypatch.setattr(shim_app.runs, "route", bug)
    monkeypatch.setattr(shim_app.seed_doors, "agent_run", bug)
    async with ScillmClient("127.0.0.1:1") as mesh_client:  # never dialled
        async with _client(shim_app.create_app(mesh_client),
                           raise_app_exceptions=False) as client:
            response = await client.request(method, path, json={"model": "m", "messages": []},
                                            headers={"x-request-id": "req-5"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "req-5"
    assert response.json() == {"error": {"message": "internal error", "type": "api_error",
                                         "param": None, "code": None}}
