"""OpenTelemetry set-up: OTLP/gRPC export configured by the standard OTEL_* variables.

Tracing is off unless an OTLP endpoint is configured (OTEL_EXPORTER_OTLP_ENDPOINT or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) and neither OTEL_SDK_DISABLED nor
OTEL_TRACES_EXPORTER=none says otherwise. The exporter reads the rest (headers,
insecure, timeout, service name) from the environment itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

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


def client_interceptors(tracing: bool) -> list[Any]:
    """gRPC client interceptors carrying the trace context to the next service."""
    if not tracing:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors())  # type: ignore[no-untyped-call]


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
