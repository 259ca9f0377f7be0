"""`otlp`: where traces go, and whether that endpoint answers.

The endpoint, plaintext or TLS, is read as the OTLP/gRPC exporter the mesh uses reads it
(`server.telemetry`): OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT;
`https://` means TLS, `http://` plaintext, OTEL_EXPORTER_OTLP_(TRACES_)INSECURE decides
otherwise; OTEL_EXPORTER_OTLP_(TRACES_)CERTIFICATE is the CA to trust. The check is a real
gRPC call with a short deadline: an empty `TraceService/Export`, which a collector accepts
and stores nothing for. OK when it answers; FAILED when nothing listens, the deadline
passes, or the server answers gRPC but is no OTLP trace receiver.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ._check import Check, Job, Status, host_port, one_line, public_url

__all__ = ["otlp_check"]

_HINT = "start the collector (e.g. Jaeger's OTLP gRPC port 4317) or unset {var}"


def _setting(environ: Mapping[str, str], name: str) -> tuple[str, str]:
    """(value, variable) of OTEL_EXPORTER_OTLP_TRACES_<name>, else OTEL_EXPORTER_OTLP_<name>."""
    for var in (f"OTEL_EXPORTER_OTLP_TRACES_{name}", f"OTEL_EXPORTER_OTLP_{name}"):
        if environ.get(var):
            return environ[var], var
    return "", ""


def otlp_check(environ: Mapping[str, str], deadline_s: float) -> Job:
    """The `otlp` part: SKIPPED when tracing is off, else a probe of the endpoint."""
    from ...telemetry import tracing_requested

    if not tracing_requested(environ):
        if environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            return Check("otlp", Status.SKIPPED, "tracing off (OTEL_SDK_DISABLED or "
                         "OTEL_TRACES_EXPORTER=none): spans go nowhere")
        return Check("otlp", Status.SKIPPED, "tracing off: OTEL_EXPORTER_OTLP_ENDPOINT is "
                     "unset, spans go nowhere")
    endpoint, var = _setting(environ, "ENDPOINT")
    insecure_raw, _ = _setting(environ, "INSECURE")
    scheme = endpoint.partition("://")[0].lower() if "://" in endpoint else ""
    if scheme == "https":
        insecure = False
    elif insecure_raw:
        insecure = insecure_raw.lower() == "true"
    else:
        insecure = scheme == "http"
    ca_path, ca_var = _setting(environ, "CERTIFICATE")
    ca: bytes | None = None
    if ca_path and not insecure:
        try:
            ca = Path(ca_path).read_bytes()
        except OSError as exc:
            return Check("otlp", Status.FAILED, f"cannot read {ca_var} {ca_path}: "
                         f"{exc.strerror or exc}", f"fix {ca_var}")
    return "otlp", _probe(endpoint, var, insecure, ca, deadline_s)


async def _probe(endpoint: str, var: str, insecure: bool, ca: bytes | None,
                 deadline_s: float) -> Check:
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    host, port = host_port(endpoint, 4317)
    where = (f"traces go to {public_url(endpoint) if '://' in endpoint else endpoint} "
             f"({var}, {'plaintext' if insecure else 'TLS'})")
    address = f"{host}:{port}"
    if insecure:
        channel = grpc.aio.insecure_channel(address)
    else:
        channel = grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(ca))
    async with channel:
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            await stub.Export(trace_service_pb2.ExportTraceServiceRequest(),
                              timeout=deadline_s)
        except grpc.aio.AioRpcError as err:
            code = err.code()
            if code == grpc.StatusCode.UNIMPLEMENTED:
                return Check("otlp", Status.FAILED, f"{where}: {address} answers gRPC but "
                             "is no OTLP trace receiver (TraceService/Export unimplemented)",
                             "point it at the collector's OTLP gRPC port (4317; 4318 is "
                             "OTLP over HTTP)")
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                why = f"no answer within {deadline_s:g} s"
            else:
                why = one_line(f"{code.name}: {err.details() or ''}".rstrip(": "), width=160)
            return Check("otlp", Status.FAILED, f"{where}: {why}", _HINT.format(var=var))
    return Check("otlp", Status.OK, f"{where}: the OTLP TraceService answers")
