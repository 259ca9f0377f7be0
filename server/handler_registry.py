"""What a gRPC server has registered on it, recorded as it is added, for `LocalChannel`.

`HandlerRegistry.recording(server)` hands the servicers' `add_*_to_server` functions a proxy
of the server: every method handler and generic handler they add reaches the server as
before and is recorded here, so the in-process channel finds a method's handler by its full
name (`lookup`) exactly as the server would, without a second registration to keep in step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

__all__ = ["HandlerRegistry"]


class HandlerRegistry:
    """The method handlers registered on a server, recorded as they are added."""

    def __init__(self) -> None:
        self._methods: dict[str, grpc.RpcMethodHandler] = {}
        self._generic: list[grpc.GenericRpcHandler] = []

    def recording(self, server: grpc.aio.Server) -> grpc.aio.Server:
        """`server`, recording every handler added through it."""
        return _RecordingServer(server, self)  # type: ignore[return-value]

    def add_generic(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(handlers)

    def add_methods(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        for name, handler in handlers.items():
            self._methods[f"/{service}/{name}"] = handler

    def lookup(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._methods.get(details.method)
        if handler is None:
            for generic in self._generic:
                handler = generic.service(details)
                if handler is not None:
                    break
        return handler


class _RecordingServer:
    """A `grpc.aio.Server` proxy that tells a registry what is registered on it."""

    def __init__(self, server: grpc.aio.Server, registry: HandlerRegistry) -> None:
        self._server = server
        self._registry = registry

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._registry.add_generic(handlers)
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str,
                                       handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self._registry.add_methods(service, handlers)
        self._server.add_registered_method_handlers(service, handlers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)
