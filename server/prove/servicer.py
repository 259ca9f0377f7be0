"""ProveService over gRPC: translate obligations, stream per-item results, then the summary."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from scillm.prove.v1 import prove_pb2 as pb
from scillm.prove.v1 import prove_pb2_grpc

from ..completion_link import CompletionLink
from ..errors import ErrorTable, StatusError
from ..interceptors import current_request_id
from ..manifests import ManifestClock, RunStore, recording
from ..metrics import Metrics
from . import errors
from ._crosscheck import solvers_of
from ._engine import ProveEngine
from ._formalize import Deadline
from ._types import Diagnostic, FormalizeOptions, ItemResult, Limits, Obligation, Verdict

__all__ = ["BACKENDS", "ERRORS", "SMT_SOLVERS", "ProveServicer", "obligations_from_proto"]

ERRORS: ErrorTable = {
    errors.BatchTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.SourceTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.InvalidObligation: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidBatch: grpc.StatusCode.INVALID_ARGUMENT,
    errors.FormalizeUnavailable: grpc.StatusCode.INVALID_ARGUMENT,
    errors.BackendUnavailable: grpc.StatusCode.FAILED_PRECONDITION,
    errors.EngineClosed: grpc.StatusCode.UNAVAILABLE,
    errors.ProveError: grpc.StatusCode.INTERNAL,
}

#: Backend enum <-> the engine's backend names, in priority order.
BACKENDS: dict[int, str] = {pb.BACKEND_SMT: "smt", pb.BACKEND_COQ: "coq",
                            pb.BACKEND_LEAN4: "lean4"}
_BACKEND_ENUM: dict[str, Any] = {v: k for k, v in BACKENDS.items()}
#: SmtSolver enum <-> the engine's `Obligation.smt_solver` (and each solver's name).
SMT_SOLVERS: dict[int, str] = {pb.SMT_SOLVER_Z3: "z3", pb.SMT_SOLVER_CVC5: "cvc5",
                               pb.SMT_SOLVER_BOTH: "both"}
_SOLVER_ENUM: dict[str, Any] = {v: k for k, v in SMT_SOLVERS.items()}
_VERDICTS = {Verdict.PROVED: pb.VERDICT_PROVED, Verdict.REFUTED: pb.VERDICT_REFUTED,
             Verdict.FAILED: pb.VERDICT_FAILED, Verdict.UNKNOWN: pb.VERDICT_UNKNOWN,
             Verdict.TIMEOUT: pb.VERDICT_TIMEOUT, Verdict.ERROR: pb.VERDICT_ERROR}
_SEVERITY = {"error": pb.SEVERITY_ERROR, "warning": pb.SEVERITY_WARNING,
             "info": pb.SEVERITY_INFO, "information": pb.SEVERITY_INFO}


def _seconds(d: Any) -> float:
    return float(d.seconds + d.nanos / 1e9)


def obligations_from_proto(req: pb.ProveRequest, default_backend: str,
                           usual: Limits | None = None,
                           ) -> tuple[list[Obligation], Limits | None]:
    """The engine's obligations and default limits for a `ProveRequest`; a limit the
    request leaves out is `usual`'s (the engine's defaults)."""
    if not req.items:
        raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, "items must not be empty",
                          param="items")
    if req.default_backend not in (pb.BACKEND_UNSPECIFIED, *BACKENDS):
        raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                          f"unknown default_backend {req.default_backend}",
                          param="default_backend")
    default = BACKENDS.get(req.default_backend, default_backend)
    if req.default_smt_solver not in (pb.SMT_SOLVER_UNSPECIFIED, *SMT_SOLVERS):
        raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                          f"unknown default_smt_solver {req.default_smt_solver}",
                          param="default_smt_solver")
    limits = None
    if req.limits.HasField("timeout") or req.limits.memory_bytes:
        base = usual or Limits()
        values: dict[str, float] = {"timeout_s": base.timeout_s, "memory_mb": base.memory_mb}
        if req.limits.HasField("timeout"):
            values["timeout_s"] = _seconds(req.limits.timeout)
        if req.limits.memory_bytes:
            values["memory_mb"] = max(1, req.limits.memory_bytes // (1024 * 1024))
        try:
            limits = Limits(**values)  # type: ignore[arg-type]
        except ValueError as exc:
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, f"limits: {exc}",
                              param="limits") from None
    items = []
    for i, o in enumerate(req.items):
        if o.backend not in (pb.BACKEND_UNSPECIFIED, *BACKENDS):
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                              f"items[{i}] ({o.item_id or 'no id'}): unknown backend {o.backend}",
                              param=f"items[{i}].backend")
        if o.smt_solver not in (pb.SMT_SOLVER_UNSPECIFIED, *SMT_SOLVERS):
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                              f"items[{i}] ({o.item_id or 'no id'}): unknown smt_solver "
                              f"{o.smt_solver}", param=f"items[{i}].smt_solver")
        backend = BACKENDS.get(o.backend, default)
        # The request's solver is for its smt items; an item's own is checked by the engine.
        solver = SMT_SOLVERS.get(o.smt_solver) or (
            SMT_SOLVERS.get(req.default_smt_solver, "") if backend == "smt" else "")
        items.append(Obligation(
            item_id=o.item_id or f"item-{i}", backend=backend,
            requirement_text=o.requirement_text, statement=o.statement, proof=o.proof,
            preamble=o.preamble, imports=tuple(o.imports), smt_solver=solver))
    return items, limits


def _diagnostic(d: Diagnostic) -> pb.Diagnostic:
    # The engine counts columns from 0 (LSP); the contract counts them from 1.
    # Unknown positions stay 0 ("not set").
    def one_based(column: int | None) -> int:
        return 0 if column is None else column + 1
    return pb.Diagnostic(severity=_SEVERITY.get(str(d.severity).lower(), pb.SEVERITY_ERROR),
                         message=d.message, line=d.line or 0, column=one_based(d.column),
                         end_line=d.end_line or 0, end_column=one_based(d.end_column))


def result_to_proto(r: ItemResult, version: str, metadata: dict[str, str]) -> pb.ItemResult:
    """One item's result as an `ItemResult` message; an smt item's `backend_version` is
    its solvers' (`version` otherwise)."""
    if r.solvers:
        version = " + ".join(s.version for s in r.solvers)
    out = pb.ItemResult(item_id=r.item_id, backend=_BACKEND_ENUM.get(r.backend, 0),
                        verdict=_VERDICTS[r.verdict],
                        diagnostics=[_diagnostic(d) for d in r.diagnostics],
                        counterexample=r.counterexample or "", source=r.source,
                        cached=r.cached, backend_version=version, metadata=metadata,
                        vacuous=r.vacuous, smt_solver=_SOLVER_ENUM.get(r.smt_solver, 0),
                        solver_verdicts=[pb.SolverVerdict(
                            solver=_SOLVER_ENUM.get(s.solver, 0), verdict=_VERDICTS[s.verdict],
                            version=s.version, message=s.message,
                            counterexample=s.counterexample or "") for s in r.solvers],
                        error=r.message if r.verdict in (Verdict.ERROR, Verdict.TIMEOUT,
                                                         Verdict.UNKNOWN) else "")
    out.duration.FromNanoseconds(int(r.duration_s * 1e9))
    for a in r.attempts:
        attempt = out.attempts.add(number=a.index, source=a.source,
                                   verdict=_VERDICTS[a.verdict],
                                   diagnostics=[_diagnostic(d) for d in a.diagnostics])
        attempt.usage.prompt_tokens = a.prompt_tokens
        attempt.usage.completion_tokens = a.completion_tokens
        attempt.usage.total_tokens = a.prompt_tokens + a.completion_tokens
        attempt.duration.FromNanoseconds(int(a.duration_s * 1e9))
    return out


#: Of the time a call has left, the share (at most `_MARGIN_S`) kept for sending the
#: results of a formalisation cut at the call's deadline, and the summary.
_MARGIN = 0.1
_MARGIN_S = 2.0


def _call_deadline(context: grpc.aio.ServicerContext[Any, Any]) -> Deadline | None:
    """When the formalize loops must end for their items' results to reach the caller
    before the call's deadline; None when the call has none."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    at = asyncio.get_running_loop().time() + remaining - min(_MARGIN_S, _MARGIN * remaining)
    return Deadline(at, "the call's deadline", remaining)


class ProveServicer(prove_pb2_grpc.ProveServiceServicer):
    """Thin gRPC edge of the prove engine."""

    def __init__(self, engine: ProveEngine, link: CompletionLink,
                 store: RunStore | None = None, metrics: Metrics | None = None,
                 default_model: str = "") -> None:
        self._engine = engine
        self._link = link
        self._store = store
        self._metrics = metrics
        self._default_model = default_model

    def _default_backend(self) -> str:
        ready = [b.name for b in self._engine.backends() if b.available]
        return ready[0] if ready else "smt"

    async def Prove(self, request: pb.ProveRequest,
                    context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[pb.ProveResponse]:
        items, limits = obligations_from_proto(request, self._default_backend(),
                                               self._engine.settings.default_limits)
        f = request.formalize
        model = f.model or self._default_model
        formalize = FormalizeOptions(
            model=model, max_attempts=f.max_attempts or 3,
            temperature=f.temperature if f.HasField("temperature") else None) if model else None
        clock = ManifestClock("prove", request.context, request_id=current_request_id(),
                              model=model, item_ids=[o.item_id for o in items])
        versions = {b.name: b.version for b in self._engine.backends()}
        metadata = {o.item_id or f"item-{i}": dict(o.metadata)
                    for i, o in enumerate(request.items)}
        run = self._engine.run_batch(items, defaults=limits, formalize=formalize,
                                     complete=self._link.text_and_usage if formalize else None,
                                     no_cache=request.no_cache,
                                     deadline=_call_deadline(context) if formalize else None)
        async with recording(self._store, clock, request) as record:
            recorded = record.events  # kept by a batch that ends without its summary
            async with run:
                async for result in run:
                    if self._metrics is not None:
                        self._metrics.verdicts.labels(result.backend, str(result.verdict)).inc()
                    message = result_to_proto(result, versions.get(result.backend, ""),
                                              metadata.get(result.item_id, {}))
                    recorded.append(message)
                    yield pb.ProveResponse(result=message)
            counts = run.summary.counts
            summary = pb.ProveSummary(
                items=len(items), proved=counts.get(Verdict.PROVED, 0),
                refuted=counts.get(Verdict.REFUTED, 0), failed=counts.get(Verdict.FAILED, 0),
                vacuous=run.summary.vacuous,
                unknown=sum(counts.get(v, 0) for v in (Verdict.UNKNOWN, Verdict.TIMEOUT,
                                                       Verdict.ERROR)))
            summary.duration.FromNanoseconds(int(run.summary.duration_s * 1e9))
            backends = sorted({o.backend for o in items})
            summary.manifest.CopyFrom(clock.finish(backend=",".join(backends)))
            summary.manifest.versions.update({f"{b}": versions.get(b, "") for b in backends})
            summary.manifest.versions.update(self._solver_versions(items))
            await record.put(summary.manifest, summary)
            yield pb.ProveResponse(summary=summary)

    def _solver_versions(self, items: list[Obligation]) -> dict[str, str]:
        """"smt:<solver>" -> version, for each SMT solver the batch's items use."""
        used = {n for o in items if o.backend == "smt" for n in solvers_of(o.smt_solver)}
        return {f"smt:{s.name}": s.version for b in self._engine.backends()
                if b.name == "smt" for s in b.solvers if s.name in used}

    async def ListBackends(self, request: pb.ListBackendsRequest,
                           context: grpc.aio.ServicerContext[Any, Any],
                           ) -> pb.ListBackendsResponse:
        return pb.ListBackendsResponse(backends=[
            pb.BackendInfo(backend=_BACKEND_ENUM.get(b.name, 0), available=b.available,
                           version=b.version, reason=b.reason,
                           isolation=self._engine.isolation,
                           solvers=[pb.SolverInfo(solver=_SOLVER_ENUM.get(s.name, 0),
                                                  available=s.available, version=s.version,
                                                  reason=s.reason) for s in b.solvers])
            for b in self._engine.backends()])
