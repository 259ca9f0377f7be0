"""With `--target`: the mesh's `grpc.health.v1` entries, one per service and per service
part (`scillm.prove.v1.ProveService/smt`, `scillm.codeworld.v1.CodeWorldService/bubblewrap`),
so gRPC health can be read beside the local story."""

from __future__ import annotations

import asyncio

from ._check import Check, Status
from ._tools import PART_HINTS

__all__ = ["mesh_checks"]


async def mesh_checks(target: str, timeout_s: float) -> list[Check]:
    """The health entries of the mesh at `target`; a FAILED `mesh` row when it does not
    answer within 3 × `timeout_s`."""
    try:
        return await asyncio.wait_for(_mesh(target, timeout_s), timeout_s * 3)
    except TimeoutError:
        return [Check("mesh", Status.FAILED, f"{target}: no health answer within "
                      f"{timeout_s * 3:g} s", "start it (scillm serve) or fix --target")]
    except Exception as exc:
        return [Check("mesh", Status.FAILED, f"{target}: {type(exc).__name__}: {exc}",
                      "start it (scillm serve) or fix --target")]


async def _mesh(target: str, timeout_s: float) -> list[Check]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    # Health/Check per known entry: the aio HealthServicer does not implement List.
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        async def ask(name: str) -> int | grpc.StatusCode:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=name),
                                         timeout=timeout_s)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return reply.status

        names = _known_entries()
        answers = dict(zip(names, await asyncio.gather(*(ask(n) for n in names)), strict=True))
    server = answers.pop("")
    if isinstance(server, grpc.StatusCode):
        return [Check("mesh", Status.FAILED, f"no gRPC health at {target}: {server.name}",
                      "start it (scillm serve) or fix --target")]
    checks = [_health_check("", server, target)]
    for name in sorted(answers):
        answer = answers[name]
        if answer == grpc.StatusCode.NOT_FOUND:
            continue  # not served there
        if isinstance(answer, grpc.StatusCode):
            checks.append(Check(name, Status.FAILED, f"health check failed: {answer.name}",
                                "see the server log"))
        else:
            checks.append(_health_check(name, answer, target))
    return checks


def _health_check(name: str, status: int, target: str) -> Check:
    from grpc_health.v1 import health_pb2

    serving = health_pb2.HealthCheckResponse
    label = serving.ServingStatus.Name(status)  # type: ignore[arg-type]
    part, shown = (name, label) if name else ("mesh", f"{target} {label}")
    sub = name.partition("/")[2]
    if status == serving.SERVING:
        return Check(part, Status.OK, shown)
    if status == serving.SERVICE_UNKNOWN:
        return Check(part, Status.SKIPPED, f"{shown}: not served there")
    if sub:
        return Check(part, Status.MISSING, f"{shown}: the server lacks this part",
                     PART_HINTS.get(sub, "see the server log"), optional=sub in _OPTIONAL)
    return Check(part, Status.FAILED, shown,
                 "starting, shutting down, or its engine is not ready; see the server log")


#: The parts a mesh may lack and still be ready (as the local `lean` check is optional).
_OPTIONAL = frozenset({"lean4"})


def _known_entries() -> list[str]:
    from ...services import SERVICE_NAMES

    prove, codeworld = SERVICE_NAMES["prove"], SERVICE_NAMES["codeworld"]
    return ["", *SERVICE_NAMES.values(), f"{prove}/smt", f"{prove}/coq", f"{prove}/lean4",
            f"{codeworld}/bubblewrap"]

