"""`DelegatingCall`: a grpc.aio call of our own around another, for a client interceptor that
hands grpc.aio a call object (grpc.aio reads a returned `UnaryUnaryCall` or
`UnaryStreamCall` as the call itself, where a returned iterator loses `read` and the call's
own methods). A subclass overrides what it changes; the rest is the wrapped call's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

__all__ = ["DelegatingCall"]


class DelegatingCall:
    """Everything a grpc.aio call says and does, passed to `self._call` (mix it in before
    `grpc.aio.UnaryUnaryCall` or `grpc.aio.UnaryStreamCall`)."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def cancelled(self) -> bool:
        return bool(self._call.cancelled())

    def done(self) -> bool:
        return bool(self._call.done())

    def time_remaining(self) -> float | None:
        remaining: float | None = self._call.time_remaining()
        return remaining

    def cancel(self) -> bool:
        return bool(self._call.cancel())

    def add_done_callback(self, callback: Callable[..., Any]) -> None:
        self._call.add_done_callback(lambda _: callback(self))

    async def initial_metadata(self) -> Any:
        return await self._call.initial_metadata()

    async def trailing_metadata(self) -> Any:
        return await self._call.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        code: grpc.StatusCode = await self._call.code()
        return code

    async def details(self) -> str:
        return str(await self._call.details())

    async def wait_for_connection(self) -> None:
        await self._call.wait_for_connection()
