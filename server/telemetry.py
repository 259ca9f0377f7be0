"""OpenTelemetry set-up: OTLP/gRPC export configured by the standard OTEL_* variables.

Tracing is off unless an OTLP endpoint is configured (OTEL_EXPORTER_OTLP_ENDPOINT or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) and neither OTEL_SDK_DISABLED nor
OTEL_TRACES_EXPORTER=none says otherwise. The exporter reads the rest (headers,
insecure, timeout, service name) from the environment itself.

OpenTelemetry's gRPC client interceptor ends a unary call's span from the call's done
callback, which it adds once it has read the call's status, and a stream's when the stream
ends; it records a failure only if it comes as an `AioRpcError`. When the caller's task is
cancelled mid-call (an HTTP caller hangs up on the door), `CancelledError` comes instead:
the unary span was left unended, never exported (the mesh's clients ended it only because
their retry wrapper, inside, happens to swallow the cancellation and read the call's
status), and a stream's span ended as a success (status code 0). `client_interceptors`
puts one interceptor of ours per kind right inside OpenTelemetry's, where its span is
current: a call cancelled there has its span marked ERROR, status code CANCELLED, and
ended (a unary one by ours, a stream's by OpenTelemetry's).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc

from scillm.clients.calls import DelegatingCall

__all__ = ["client_interceptors", "configure_tracing", "tracing_requested", "wrap_asgi"]


def tracing_requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for trace export."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").lower() == "none":
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def configure_tracing(service_name: str = "scillm") -> bool:
    """Install a global tracer provider exporting over OTLP/gRPC; False when not requested."""
    if not tracing_requested():
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME",
                                                               service_name)})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    # Outbound provider calls get client spans (and traceparent headers) too.
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor().instrument()
    return True


def client_interceptors(tracing: bool, tracer_provider: Any = None) -> list[Any]:
    """gRPC client interceptors carrying the trace context to the next service, their
    spans ended when the caller cancels (see the module); `tracer_provider`, the global
    one's stand-in (tests)."""
    if not tracing:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    otel = aio_client_interceptors(tracer_provider=tracer_provider)  # type: ignore[no-untyped-call]
    return [*otel, _CancelledUnary(), _CancelledStream()]


def wrap_asgi(app: Any, tracing: bool) -> Any:
    """The HTTP shim with a server span per request, when tracing."""
    if not tracing:
        return app
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    return OpenTelemetryMiddleware(app, server_request_hook=_redact_query)


def _redact_query(span: Any, scope: dict[str, Any]) -> None:
    """A request's query values out of its server span: `http.url` carried them whole,
    and `GET /key/info?key=sk-...` exported a key's secret to the trace collector. The
    names stay (`?key=REDACTED`)."""
    query = scope.get("query_string") or b""
    if not query or not span.is_recording():
        return
    raw = query.decode("latin-1")
    redacted = "&".join(f"{name}=REDACTED" if sep else name
                        for name, sep, _ in (part.partition("=") for part in raw.split("&")))
    for name, value in dict(getattr(span, "attributes", None) or {}).items():
        if isinstance(value, str) and raw in value:
            span.set_attribute(name, value.replace(raw, redacted))


def _span_of(details: Any) -> Any:
    """The span OpenTelemetry's interceptor started for the call of `details` (current
    inside it), or None (no tracing of that call)."""
    from opentelemetry.trace import SpanKind, get_current_span

    span = get_current_span()
    method = details.method
    name = method.decode() if isinstance(method, bytes) else method
    if not span.is_recording() or getattr(span, "kind", None) is not SpanKind.CLIENT \
            or getattr(span, "name", None) != name:
        return None
    return span


def _cancelled(span: Any, *, end: bool) -> None:
    """Say on `span` that its call was cancelled (by the caller); end it if `end`."""
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("rpc.grpc.status_code", grpc.StatusCode.CANCELLED.value[0])
    span.set_status(Status(StatusCode.ERROR, "CANCELLED: the caller cancelled the call"))
    if end:
        span.end()


class _SpannedUnary(DelegatingCall, grpc.aio.UnaryUnaryCall):  # type: ignore[misc]
    """A unary call whose span ends if its caller is cancelled while OpenTelemetry's
    interceptor reads its status (it ends the span only once it has read it: code, then
    details). Nobody else reads the call before: grpc.aio hands it out after."""

    def __init__(self, call: Any, span: Any) -> None:
        super().__init__(call)
        self._span = span

    def __await__(self) -> Any:
        return self._call.__await__()

    async def code(self) -> grpc.StatusCode:
        code: grpc.StatusCode = await self._read(super().code)
        return code

    async def details(self) -> str:
        details = str(await self._read(super().details))
        self._span = None  # read: OpenTelemetry's interceptor ends the span
        return details

    async def _read(self, read: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await read()
        except asyncio.CancelledError:
            span, self._span = self._span, None
            if span is not None:
                _cancelled(span, end=True)
            raise


class _SpannedStream(DelegatingCall, grpc.aio.UnaryStreamCall):  # type: ignore[misc]
    """A stream whose span says it was cancelled if its caller is cancelled while
    OpenTelemetry's interceptor reads it (which then ends the span)."""

    def __init__(self, call: Any, span: Any) -> None:
        super().__init__(call)
        self._span = span

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._responses()

    async def _responses(self) -> AsyncIterator[Any]:
        try:
            async for response in self._call:
                yield response
        except asyncio.CancelledError:
            _cancelled(self._span, end=False)
            raise

    async def read(self) -> Any:
        try:
            return await self._call.read()
        except asyncio.CancelledError:
            _cancelled(self._span, end=False)
            raise


async def _started(continuation: Callable[..., Any], details: Any, request: Any,
                   span: Any) -> Any:
    """The call `continuation` starts; a caller cancelled meanwhile ends `span`, which
    OpenTelemetry's interceptor then leaves."""
    try:
        return await continuation(details, request)
    except asyncio.CancelledError:
        _cancelled(span, end=True)
        raise


class _CancelledUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Callable[..., Any],
                                    client_call_details: Any, request: Any) -> Any:
        span = _span_of(client_call_details)
        if span is None:
            return await continuation(client_call_details, request)
        return _SpannedUnary(await _started(continuation, client_call_details, request, span),
                             span)


class _CancelledStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Callable[..., Any],
                                     client_call_details: Any, request: Any) -> Any:
        span = _span_of(client_call_details)
        if span is None:
            return await continuation(client_call_details, request)
        return _SpannedStream(await _started(continuation, client_call_details, request, span),
                              span)
