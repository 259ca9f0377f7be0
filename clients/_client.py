"""Typed async clients over one `grpc.aio.Channel`, and a small sync facade.

    async with ScillmClient("127.0.0.1:50051") as client:
        reply = await client.completion.create({"model": "echo/x", "messages": [...]})
        async for event in client.completion.stream(request): ...
        vectors = await client.completion.embed({"model": "echo/embed", "input": ["a", "b"]})
        more = await client.completion.text({"model": "local/gemma3-270m", "prompt": "Once"})
        async for event in client.completion.text_stream({"model": "echo/x", "prompt": "Once"}): ...

`api_key=` sends `authorization: Bearer <key>` on every call (a mesh with a master key
needs it). A target may be one address, a comma-separated list of addresses, or a `dns:///`
name; lists and DNS names are balanced with gRPC's `round_robin` policy. A mesh split
over processes is one client too: `targets={"completion": "dns:///completion:50051"}`
sends that service's calls to its own target (one channel per distinct target). Failed
calls raise `RPCError` (with the status code, details and request id); a call no server
answered (UNAVAILABLE without the mesh's status details: a replica stopping or gone) is
tried again, up to 5 times, and a server's answer is final (`_retry.py`). A call a stopping
server cut at its grace's end, its handler having run, fails ABORTED (reason
`ServerShuttingDown`) and is not retried (server/grace_end.py).
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from scillm.agent.v1 import agent_pb2, agent_pb2_grpc
from scillm.codeworld.v1 import codeworld_pb2, codeworld_pb2_grpc
from scillm.completion.v1 import completion_pb2, completion_pb2_grpc
from scillm.keys.v1 import keys_pb2, keys_pb2_grpc
from scillm.prove.v1 import prove_pb2, prove_pb2_grpc

from . import openai_wire
from ._retry import retry_interceptors
from .errors import RPCError
from .ids import new_id

__all__ = ["KeyClient", "ScillmClient", "SyncScillmClient", "TlsConfig", "channel_target"]

T = TypeVar("T")

#: Round robin over a target's addresses. No retry policy: `_retry.py` retries the calls no
#: server answered, which gRPC's policy cannot tell from a server's answer.
_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


#: How soon a channel tries again to reach a target it lost: after 1 s, then at most
#: every 5 s. gRPC's default backoff grows to 2 minutes, and a mesh's door answered 503 for
#: 20-50 s after the service behind it was back (a replica it balances over was left out
#: as long).
_RECONNECT = (("grpc.initial_reconnect_backoff_ms", 1000),
              ("grpc.max_reconnect_backoff_ms", 5000))


def channel_target(target: str) -> str:
    """A gRPC target for one address, a comma-separated list, or a `dns:///` name."""
    target = target.strip()
    if "," in target and "://" not in target and not target.startswith(("ipv4:", "ipv6:")):
        return "ipv4:" + ",".join(a.strip() for a in target.split(","))
    return target


def _first_of_list(target: str) -> str:
    """The first address of an `ipv4:`/`ipv6:` list ("" for any other target). gRPC's C core
    sends such a list whole as the call's :authority ("127.0.0.1:1,127.0.0.1:2"), which is
    not a valid authority: grpcio's server lets it pass, other HTTP/2 servers (the mesh's
    native one, hyper's) refuse the call. Plaintext only: with TLS the authority is the
    name the certificate is checked against, and the mesh's TLS server is grpcio's."""
    scheme, _, rest = target.partition(":")
    if scheme not in ("ipv4", "ipv6") or "," not in rest:
        return ""
    return rest.lstrip("/").split(",", 1)[0].strip()


Metadata = Sequence[tuple[str, str]]


def _metadata(request_id: str | None, extra: Metadata | None,
              default: Metadata = ()) -> list[tuple[str, str]]:
    md = [("x-request-id", request_id or new_id()), *default]
    if extra:
        md.extend(extra)
    return md


class CompletionClient:
    """CompletionService: `create`, `stream`, `embed`, `text`, `text_stream`, `list_models`,
    `get_model`."""

    def __init__(self, channel: grpc.aio.Channel, default: Metadata = ()) -> None:
        self._stub = completion_pb2_grpc.CompletionServiceStub(channel)
        self._default = default

    async def create(self, request: completion_pb2.CompletionRequest | Mapping[str, Any], *,
                     timeout: float | None = 600.0, request_id: str | None = None,
                     metadata: Metadata | None = None) -> completion_pb2.CompletionResponse:
        """One completion. A dict is OpenAI's request JSON."""
        if not isinstance(request, completion_pb2.CompletionRequest):
            request = openai_wire.request_to_proto(request)
        try:
            reply: completion_pb2.CompletionResponse = await self._stub.Completion(
                request, timeout=timeout, metadata=_metadata(request_id, metadata, self._default))
            return reply
        except grpc.aio.AioRpcError as err:
            raise RPCError.from_aio(err) from None

    async def stream(self, request: completion_pb2.CompletionRequest | Mapping[str, Any], *,
                     include_usage: bool = True, timeout: float | None = 3600.0,
                     request_id: str | None = None, metadata: Metadata | None = None,
                     ) -> AsyncIterator[completion_pb2.CompletionStreamResponse]:
        """A streamed completion: chunks, then one `end` event. Closing the iterator
        cancels the call."""
        if not isinstance(request, completion_pb2.CompletionRequest):
            request = openai_wire.request_to_proto(request)
        call = self._stub.CompletionStream(
            completion_pb2.CompletionStreamRequest(request=request, include_usage=include_usage),
            timeout=timeout, metadata=_metadata(request_id, metadata, self._default))
        try:
            async for event in call:
                yield event
        except grpc.aio.AioRpcError as err:
            raise RPCError.from_aio(err) from None
        finally:
            call.cancel()

    async def embed(self, request: completion_pb2.EmbeddingRequest | Mapping[str, Any], *,
                    timeout: float | None = 600.0, request_id: str | None = None,
                    metadata: Metadata | None = None) -> completion_pb2.EmbeddingResponse:
        """Embeddings: one vector per input. A dict is OpenAI's embeddings request JSON
        (`{"model": ..., "input": "text" or [...]}`)."""
        if not isinstance(request, completion_pb2.EmbeddingRequest):
            request = openai_wire.embedding_request_to_proto(request)
        try:
            reply: completion_pb2.EmbeddingResponse = await self._stub.Embedding(
                request, timeout=timeout, metadata=_metadata(request_id, metadata, self._default))
            return reply
        except grpc.aio.AioRpcError as err:
            raise RPCError.from_aio(err) from None

    async def text(self, request: completion_pb2.TextCompletionRequest | Mapping[str, Any], *,
                   timeout: float | None = 600.0, request_id: str | None = None,
                   metadata: Metadata | None = None) -> completion_pb2.TextCompletionResponse:
        """A text completion (OpenAI's legacy `/completions`): a continuation of each
        prompt, as base models want. A dict is OpenAI's completions request JSON
        (`{"model": ..., "prompt": "text" or [...], "max_tokens": 16}`)."""
        if not isinstance(request, completion_pb2.TextCompletionRequest):
            request = openai_wire.text_request_to_proto(request)
        try:
            reply: completion_pb2.TextCompletionResponse = await self._stub.TextCompletion(
                request, timeout=timeout, metadata=_metadata(request_id, metadata, self._default))
            return reply
        except grpc.aio.AioRpcError as err:
            raise RPCError.from_aio(err) from None

    async def text_stream(self, request: completion_pb2.TextCompletionRequest
                          | Mapping[str, Any], *, timeout: float | None = 3600.0,
                          request_id: str | None = None, metadata: Metadata | None = None,
                          ) -> AsyncIterator[completion_pb2.TextCompletionStreamResponse]:
        """A streamed text completion: chunks, then one `end` event (usage, routing,
        manifest). A dict is OpenAI's completions request JSON (its `stream` and
        `stream_options` are this call's to set, and left out). Closing the iterator
        cancels the call."""
        if not isinstance(request, completion_pb2.TextCompletionRequest):
            request = openai_wire.text_request_to_proto(
                {k: v for k, v in request.items() if k not in ("stream", "stream_options")})
        call = self._stub.TextCompletionStream(
            completion_pb2.TextCompletionStreamRequest(request=request), timeout=timeout,
            metadata=_metadata(request_id, metadata, self._default))
        try:
            async for event in call:
                yield event
        except grpc.aio.AioRpcError as err:
            raise RPCError.from_aio(err) from None
        finally:
            call.cancel()

    async def list_models(self, *, timeout: float | None = 10.0,
                          metadata: Metadata | None = None) -> list[str]:
        """Configured model names."""
        try:
            reply = await self._stub.ListModels(
                completion_pb2.ListModelsRequest(), timeout=timeout,
                metadata=_metadata(None, metadata, self._default))
        except grpc.aio.AioRpcError as err:
            raise RPCError.from_aio(err) from None
        return [m.id for m in reply.models]

    async def get_model(self, model: str, *, timeout: float | None = 10.0,
                        metadata: Metadata | None = None) -> completion_pb2.Model:
        """One model the caller may call (a configured name, or one a wildcard serves);
        RPCError NOT_FOUND (reason ModelNotFound) otherwise."""
        try:
            reply: completion_pb2.GetModelResponse = await self._stub.GetModel(
                completion_pb2.GetModelRequest(model=model), timeout=timeout,
                metadata=_metadata(None, metadata, self._default))
        except grpc.aio.AioRpcError as err:
            raise RPCError.from_aio(err) from None
        return reply.model


async def _stream(call: Any) -> AsyncIterator[Any]:
    try:
        async for event in call:
            yield event
    except grpc.aio.AioRpcError as err:
        raise RPCError.from_aio(err) from None
    finally:
        call.cancel()


class ProveClient:
    """ProveService: `prove` (a stream of results, then the summary), `backends`."""

    def __init__(self, channel: grpc.aio.Channel, default: Metadata = ()) -> None:
        self._stub = prove_pb2_grpc.ProveServiceStub(channel)
        self._default = default

    def prove(self, request: prove_pb2.ProveRequest, *, timeout: float | None = 3600.0,
              request_id: str | None = None, metadata: Metadata | None = None,
              ) -> AsyncIterator[prove_pb2.ProveResponse]:
        """Check a batch; yields per-item results as they finish, then the summary."""
        return _stream(self._stub.Prove(request, timeout=timeout, metadata=_metadata(
            request_id, metadata, self._default)))

    async def backends(self, *, timeout: float | None = 10.0) -> prove_pb2.ListBackendsResponse:
        """Backend readiness."""
        try:
            reply: prove_pb2.ListBackendsResponse = await self._stub.ListBackends(
                prove_pb2.ListBackendsRequest(), timeout=timeout,
                metadata=_metadata(None, None, self._default))
            return reply
        except grpc.aio.AioRpcError as err:
            raise RPCError.from_aio(err) from None


class CodeWorldClient:
    """CodeWorldService: `run` (runs, progress, then the summary), `languages`."""

    def __init__(self, channel: grpc.aio.Channel, default: Metadata = ()) -> None:
        self._stub = codeworld_pb2_grpc.CodeWorldServiceStub(channel)
        self._default = default

    def run(self, request: codeworld_pb2.CodeWorldRunRequest, *,
            timeout: float | None = 3600.0, request_id: str | None = None,
            metadata: Metadata | None = None,
            ) -> AsyncIterator[codeworld_pb2.CodeWorldRunResponse]:
        """Run strategies; yields events, the summary last."""
        return _stream(self._stub.CodeWorldRun(request, timeout=timeout, metadata=_metadata(
            request_id, metadata, self._default)))

    async def languages(self, *, timeout: float | None = 10.0
                        ) -> codeworld_pb2.ListLanguagesResponse:
        """Strategy languages: available or not (with why), versions."""
        try:
            reply: codeworld_pb2.ListLanguagesResponse = await self._stub.ListLanguages(
                codeworld_pb2.ListLanguagesRequest(), timeout=timeout,
                metadata=_metadata(None, None, self._default))
            return reply
        except grpc.aio.AioRpcError as err:
            raise RPCError.from_aio(err) from None


class AgentClient:
    """AgentService: `step` and `run`."""

    def __init__(self, channel: grpc.aio.Channel, default: Metadata = ()) -> None:
        self._stub = agent_pb2_grpc.AgentServiceStub(channel)
        self._default = default

    async def step(self, request: agent_pb2.AgentStepRequest, *,
                   timeout: float | None = 600.0, request_id: str | None = None,
                   metadata: Metadata | None = None) -> agent_pb2.AgentStepResponse:
        """One model turn and its tool calls."""
        try:
            reply: agent_pb2.AgentStepResponse = await self._stub.AgentStep(
                request, timeout=timeout,
                metadata=_metadata(request_id, metadata, self._default))
            return reply
        except grpc.aio.AioRpcError as err:
            raise RPCError.from_aio(err) from None

    def run(self, request: agent_pb2.AgentRunRequest, *, timeout: float | None = 3600.0,
            request_id: str | None = None, metadata: Metadata | None = None,
            ) -> AsyncIterator[agent_pb2.AgentRunResponse]:
        """A whole run; yields turns, tool calls and results, the final answer last."""
        return _stream(self._stub.AgentRun(request, timeout=timeout, metadata=_metadata(
            request_id, metadata, self._default)))


class KeyClient:
    """KeyService: `generate`, `get`, `update`, `list`, `delete` (the master key is
    needed, but for a virtual key's `get` of itself)."""

    def __init__(self, channel: grpc.aio.Channel, default: Metadata = ()) -> None:
        self._stub = keys_pb2_grpc.KeyServiceStub(channel)
        self._default = default

    async def _call(self, method: Any, request: Any, metadata: Metadata | None) -> Any:
        try:
            return await method(request, timeout=30.0,
                                metadata=_metadata(None, metadata, self._default))
        except grpc.aio.AioRpcError as err:
            raise RPCError.from_aio(err) from None

    async def generate(self, request: keys_pb2.GenerateKeyRequest, *,
                       metadata: Metadata | None = None) -> keys_pb2.GenerateKeyResponse:
        """A new virtual key (its secret is in the reply, once)."""
        reply: keys_pb2.GenerateKeyResponse = await self._call(
            self._stub.GenerateKey, request, metadata)
        return reply

    async def get(self, key: str, *, metadata: Metadata | None = None) -> keys_pb2.VirtualKey:
        """A key's description, by secret or key_id."""
        reply: keys_pb2.GetKeyResponse = await self._call(
            self._stub.GetKey, keys_pb2.GetKeyRequest(key=key), metadata)
        return reply.info

    async def delete(self, keys: Sequence[str], *,
                     metadata: Metadata | None = None) -> list[str]:
        """Revoke keys; the key_ids revoked."""
        reply: keys_pb2.DeleteKeyResponse = await self._call(
            self._stub.DeleteKey, keys_pb2.DeleteKeyRequest(keys=list(keys)), metadata)
        return list(reply.deleted_key_ids)

    async def update(self, request: keys_pb2.UpdateKeyRequest, *,
                     metadata: Metadata | None = None) -> keys_pb2.VirtualKey:
        """Change the fields of a key that `request.update_mask` names; the key as changed.

            await client.keys.update(keys_pb2.UpdateKeyRequest(
                key="sk-...", models=["echo/x"], rpm_limit=60,
                update_mask={"paths": ["models", "rpm_limit"]}))
        """
        reply: keys_pb2.UpdateKeyResponse = await self._call(
            self._stub.UpdateKey, request, metadata)
        return reply.info

    async def list(self, *, page: int = 0, page_size: int = 0, key_alias: str = "",
                   metadata: Metadata | None = None) -> keys_pb2.ListKeysResponse:
        """One page of keys, oldest first, without their secrets (`page` from 1 and
        `page_size` up to 100; 0: the first page, of 10 keys), and how many there are."""
        reply: keys_pb2.ListKeysResponse = await self._call(
            self._stub.ListKeys, keys_pb2.ListKeysRequest(
                page=page, page_size=page_size, key_alias=key_alias), metadata)
        return reply


@dataclass(frozen=True)
class TlsConfig:
    """TLS for the channel: the CA to trust, and a client certificate for mutual TLS."""

    #: PEM of the CA (or self-signed certificate) the server's certificate chains to;
    #: None trusts the system's roots.
    root_certificates: bytes | None = None
    #: PEM private key of the client certificate (mutual TLS).
    private_key: bytes | None = None
    #: PEM client certificate chain (mutual TLS).
    certificate_chain: bytes | None = None

    @classmethod
    def from_files(cls, ca: str | None = None, key: str | None = None,
                   cert: str | None = None) -> TlsConfig:
        """Read the PEM files (any may be None)."""
        def read(path: str | None) -> bytes | None:
            if path is None:
                return None
            with open(path, "rb") as f:
                return f.read()
        return cls(read(ca), read(key), read(cert))


#: The services a client calls, as named in `ScillmClient(targets=...)`.
SERVICES: tuple[str, ...] = ("completion", "prove", "codeworld", "agent", "keys")


class ScillmClient:
    """A typed client per service over one channel, or one channel per service's target."""

    def __init__(self, target: str = "127.0.0.1:50051", *,
                 options: Sequence[tuple[str, Any]] = (),
                 interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
                 api_key: str | None = None, tls: TlsConfig | None = None,
                 channel: grpc.aio.Channel | None = None,
                 targets: Mapping[str, str] | None = None) -> None:
        """`targets` maps a service (completion, prove, codeworld, agent, keys) to the
        target its calls go to; the others use `target`. `channel`, when given, is used
        instead of dialing `target` (the mesh passes its in-process channel to its own
        clients); `options`, `interceptors` and `tls` then apply to `targets` only."""
        unknown = sorted(set(targets or ()) - set(SERVICES))
        if unknown:
            raise ValueError(f"unknown service(s) in targets: {unknown}; "
                             f"use {', '.join(SERVICES)}")
        opts = [("grpc.service_config", _SERVICE_CONFIG), ("grpc.enable_retries", 1),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024), *_RECONNECT,
                *options]

        # Innermost: each attempt crosses the caller's interceptors' one call.
        chain = [*(interceptors or ()), *retry_interceptors()]

        def dial(address: str) -> grpc.aio.Channel:
            if tls is None:
                first = _first_of_list(address)
                named = any(key == "grpc.default_authority" for key, _ in opts)
                plain = [*opts, ("grpc.default_authority", first)] if first and not named \
                    else opts
                return grpc.aio.insecure_channel(address, options=plain,
                                                 interceptors=chain)
            credentials = grpc.ssl_channel_credentials(
                tls.root_certificates, tls.private_key, tls.certificate_chain)
            return grpc.aio.secure_channel(address, credentials, options=opts,
                                           interceptors=chain)

        self.target = channel_target(target)
        self.channel = channel if channel is not None else dial(self.target)
        dialed: dict[str, grpc.aio.Channel] = {}
        #: The channel each service's calls use (see `targets`).
        self.channels: dict[str, grpc.aio.Channel] = {}
        for name in SERVICES:
            own = (targets or {}).get(name, "").strip()
            if not own:
                self.channels[name] = self.channel
                continue
            address = channel_target(own)
            if address not in dialed:
                dialed[address] = dial(address)
            self.channels[name] = dialed[address]
        self._bind(api_key)

    def _bind(self, api_key: str | None) -> None:
        default: Metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self.completion = CompletionClient(self.channels["completion"], default)
        self.prove = ProveClient(self.channels["prove"], default)
        self.codeworld = CodeWorldClient(self.channels["codeworld"], default)
        self.agent = AgentClient(self.channels["agent"], default)
        self.keys = KeyClient(self.channels["keys"], default)

    def with_api_key(self, api_key: str | None) -> ScillmClient:
        """A client over this one's channels whose calls carry `api_key` instead (the
        shim acting for one caller). It shares the channels: close only this one."""
        other = copy.copy(self)
        other._bind(api_key)
        return other

    async def close(self) -> None:
        """Close every channel, cancelling calls in flight."""
        for channel in {id(c): c for c in (self.channel, *self.channels.values())}.values():
            await channel.close()

    async def __aenter__(self) -> ScillmClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _LoopThread:
    """An event loop in a daemon thread, for the sync facade."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="scillm-client",
                                        daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


class SyncScillmClient:
    """Blocking facade over `ScillmClient` for scripts and notebooks."""

    def __init__(self, target: str = "127.0.0.1:50051", **kwargs: Any) -> None:
        """`kwargs` as for ScillmClient (api_key, tls, ...)."""
        self._loop = _LoopThread()
        self._client: ScillmClient = self._loop.run(self._make(target, kwargs))

    @staticmethod
    async def _make(target: str, kwargs: dict[str, Any]) -> ScillmClient:
        return ScillmClient(target, **kwargs)

    def complete(self, request: Mapping[str, Any], **kwargs: Any,
                 ) -> completion_pb2.CompletionResponse:
        """One completion (see CompletionClient.create)."""
        return self._loop.run(self._client.completion.create(request, **kwargs))

    def stream(self, request: Mapping[str, Any], **kwargs: Any,
               ) -> list[completion_pb2.CompletionStreamResponse]:
        """A streamed completion, collected."""
        async def collect() -> list[completion_pb2.CompletionStreamResponse]:
            return [e async for e in self._client.completion.stream(request, **kwargs)]
        return self._loop.run(collect())

    def embed(self, request: Mapping[str, Any], **kwargs: Any,
              ) -> completion_pb2.EmbeddingResponse:
        """Embeddings (see CompletionClient.embed)."""
        return self._loop.run(self._client.completion.embed(request, **kwargs))

    def text(self, request: Mapping[str, Any], **kwargs: Any,
             ) -> completion_pb2.TextCompletionResponse:
        """A text completion (see CompletionClient.text)."""
        return self._loop.run(self._client.completion.text(request, **kwargs))

    def text_stream(self, request: Mapping[str, Any], **kwargs: Any,
                    ) -> list[completion_pb2.TextCompletionStreamResponse]:
        """A streamed text completion, collected (see CompletionClient.text_stream)."""
        async def collect() -> list[completion_pb2.TextCompletionStreamResponse]:
            return [e async for e in self._client.completion.text_stream(request, **kwargs)]
        return self._loop.run(collect())

    def list_models(self) -> list[str]:
        """Configured model names."""
        return self._loop.run(self._client.completion.list_models())

    def get_model(self, model: str) -> completion_pb2.Model:
        """One model the caller may call; RPCError NOT_FOUND otherwise."""
        return self._loop.run(self._client.completion.get_model(model))

    def call(self, awaitable: Awaitable[T]) -> T:
        """Run any coroutine of the async client (`client.async_client`) to completion."""
        async def wrap() -> T:
            return await awaitable
        return self._loop.run(wrap())

    @property
    def async_client(self) -> ScillmClient:
        """The async client underneath (use with `call`)."""
        return self._client

    def close(self) -> None:
        """Close the channel and stop the loop thread."""
        self._loop.run(self._client.close())
        self._loop.stop()

    def __enter__(self) -> SyncScillmClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
