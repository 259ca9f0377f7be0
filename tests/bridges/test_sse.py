"""The shim's event-stream response (bridges/openai/sse.py) against the ASGI calls it
makes: what it sends, in order, and when it asks the server to flush."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from scillm.bridges.openai import sse


async def _events(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def _run(scope: dict[str, Any], chunks: tuple[bytes, ...], log: list[Any]) -> None:
    """Stream `chunks` through an EventStream, logging what it sends into `log`."""
    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the caller never hangs up
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        log.append((message["type"], message.get("body")))

    async def go() -> None:
        await sse.EventStream(_events(*chunks))(scope, receive, send)

    asyncio.run(go())


def test_the_head_and_first_event_are_flushed_once_and_before_the_second() -> None:
    log: list[Any] = []
    scope = {"type": "http", "extensions": {"scillm.flush": {"flush": lambda: log.append("flush")}}}
    _run(scope, (b"one", b"two", b"three"), log)
    assert log == [("http.response.start", None), ("http.response.body", b"one"), "flush",
                   ("http.response.body", b"two"), ("http.response.body", b"three"),
                   ("http.response.body", b"")]


def test_without_the_extension_the_stream_is_the_same() -> None:
    log: list[Any] = []
    _run({"type": "http"}, (b"one", b"two"), log)
    assert log == [("http.response.start", None), ("http.response.body", b"one"),
                   ("http.response.body", b"two"), ("http.response.body", b"")]
