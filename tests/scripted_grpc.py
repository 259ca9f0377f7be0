"""A real gRPC CompletionService on 127.0.0.1:0 scripted to fail: `Scripted` fails its first
calls UNAVAILABLE, bare (as a server that never ran the call) or as the mesh's handlers
answer (with their `google.rpc.Status` details), then answers; `serve` starts it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from scillm.completion.v1 import completion_pb2 as pb
from scillm.completion.v1 import completion_pb2_grpc

__all__ = ["REQUEST", "Scripted", "serve"]

REQUEST = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _answer(code: grpc.StatusCode, message: str) -> tuple[tuple[str, bytes], ...]:
    """The trailers a mesh handler's failure carries (server/errors.py `to_status`)."""
    info = error_details_pb2.ErrorInfo(reason="UpstreamError", domain="scillm.dev")
    status = status_pb2.Status(code=code.value[0], message=message)
    status.details.add().Pack(info)
    return (("grpc-status-details-bin", status.SerializeToString()),)


class Scripted(completion_pb2_grpc.CompletionServiceServicer):
    """Fails the first `fails` calls UNAVAILABLE (as the mesh's handler when `answered`,
    with its status details; else bare, as a server that never ran the call), then
    answers. A stream sends one chunk before failing when `midway`."""

    def __init__(self, fails: int, *, answered: bool = False, midway: bool = False) -> None:
        self.fails = fails
        self.answered = answered
        self.midway = midway
        self.calls = 0

    async def _fail(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        message = "down"
        if self.answered:
            await context.abort(grpc.StatusCode.UNAVAILABLE, message,
                                trailing_metadata=_answer(grpc.StatusCode.UNAVAILABLE, message))
        await context.abort(grpc.StatusCode.UNAVAILABLE, message)

    async def Completion(self, request: pb.CompletionRequest,
                         context: grpc.aio.ServicerContext[Any, Any]) -> pb.CompletionResponse:
        self.calls += 1
        if self.calls <= self.fails:
            await self._fail(context)
        return pb.CompletionResponse(id=f"call-{self.calls}")

    async def CompletionStream(self, request: pb.CompletionStreamRequest,
                               context: grpc.aio.ServicerContext[Any, Any],
                               ) -> AsyncIterator[pb.CompletionStreamResponse]:
        self.calls += 1
        if self.calls <= self.fails:
            if self.midway:
                yield pb.CompletionStreamResponse(chunk=pb.CompletionChunk(id="first"))
            await self._fail(context)
        yield pb.CompletionStreamResponse(chunk=pb.CompletionChunk(id=f"call-{self.calls}"))


async def serve(servicer: Scripted) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    completion_pb2_grpc.add_CompletionServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"
