"""With `--target`: the mesh's `grpc.health.v1` entries, one per service and per service
part (`scillm.prove.v1.ProveService/smt`, `scillm.codeworld.v1.CodeWorldService/bubblewrap`),
so gRPC health can be read beside the local story.

A process's health lists only the services it serves. One that sends the calls of a
service to another process (a door, `scillm serve --service none --prove-target ...`) so
looked like a whole, ready mesh, whatever the processes behind it were doing. So for each
service the target does not serve, doctor asks it where it sends that service's calls: its
answer to a call of the service (UNIMPLEMENTED, the target in its `scillm-served-at`
trailer, `services.SERVED_AT`; behind a master key the call needs `--api-key`). It then
asks that target's health for the service and its parts, on a channel to it as the door's
`GET /readyz` does, and reports each entry "at <target>". A process serving everything
itself is asked nothing more.

A target that is a list of addresses (`a:1,b:2`, replicas) is asked through one
round-robin channel, as the mesh's callers dial it, which passes over a replica that is
down; so each replica is also asked for its health on its own, a `replica <address>` row
each, and one that is down is FAILED, named (a `dns:///` name is asked as one target).

Every target is dialed as the mesh's own processes dial each other (`Settings.client_tls`:
TLS with the mesh's certificate settings, else plaintext). A dial that fails is followed
by a TLS handshake of its own, so that a plaintext dial meeting a TLS server (or the
reverse) is said as such rather than as a server that is down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from ._check import Check, Status, one_line
from ._tools import PART_HINTS

if TYPE_CHECKING:  # imported where used, so building the CLI parser stays cheap
    import grpc

    from scillm.clients import TlsConfig

__all__ = ["mesh_checks"]

#: The health entries of each service's parts that doctor reads; one a server does not
#: list (`cvc5` on a server older than that entry) is left out of the report.
_PARTS = {"prove": ("smt", "coq", "lean4", "cvc5"), "codeworld": ("bubblewrap",)}
#: Per service, the method doctor calls to learn where a process sends the service's
#: calls: unary, and asked only of a process whose health lacks the service.
_WHERE = {"completion": "ListModels", "prove": "ListBackends",
          "codeworld": "ListLanguages", "agent": "AgentStep"}
#: The parts a mesh may lack and still be ready (as the local `lean` and `cvc5` checks
#: are optional).
_OPTIONAL = frozenset({"lean4", "cvc5"})

_HINT_START = "start it (scillm serve) or fix --target"
_HINT_PLAINTEXT = ("dial it with the mesh's TLS settings: --tls-cert and --tls-key "
                   "(SCILLM_TLS_CERT, SCILLM_TLS_KEY), and --tls-client-ca with mutual TLS")
_HINT_TLS = ("this server takes plaintext: drop --tls-cert/--tls-key (SCILLM_TLS_CERT, "
             "SCILLM_TLS_KEY), or point --target at the TLS mesh")
_HINT_HANDSHAKE = ("its certificate must chain to --tls-client-ca (mutual TLS), else to the "
                   "--tls-cert chain, and name the host dialed; with mutual TLS it must "
                   "accept --tls-cert as a client certificate")


async def mesh_checks(target: str, timeout_s: float, *, tls: TlsConfig | None = None,
                      api_key: str | None = None) -> list[Check]:
    """The health entries of the mesh at `target`, and of the targets it sends the calls
    of services it does not serve to; a FAILED `mesh` row when all that takes more than
    4 × `timeout_s` (its health, where its services are, their health, a TLS probe)."""
    bound = timeout_s * 4
    try:
        return await asyncio.wait_for(_mesh(target, timeout_s, tls, api_key), bound)
    except TimeoutError:
        return [Check("mesh", Status.FAILED, f"{target}: no health answer within {bound:g} s",
                      _HINT_START)]
    except Exception as exc:
        return [Check("mesh", Status.FAILED, f"{target}: {type(exc).__name__}: {exc}",
                      _HINT_START)]


async def _health(channel: grpc.aio.Channel, names: Sequence[str],
                  timeout_s: float) -> dict[str, int | grpc.aio.AioRpcError]:
    """Health/Check of each entry (the aio HealthServicer does not implement List): its
    serving status, or the error the call ended with."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(channel)

    async def ask(name: str) -> int | grpc.aio.AioRpcError:
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=name),
                                     timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            return exc
        return int(reply.status)

    return dict(zip(names, await asyncio.gather(*(ask(n) for n in names)), strict=True))


def _not_found(answer: int | grpc.aio.AioRpcError) -> bool:
    import grpc

    return isinstance(answer, grpc.aio.AioRpcError) and answer.code() == grpc.StatusCode.NOT_FOUND


async def _mesh(target: str, timeout_s: float, tls: TlsConfig | None,
                api_key: str | None) -> list[Check]:
    import grpc

    from scillm.clients import ScillmClient

    from ...services import SERVICE_NAMES

    entries = [e for name in SERVICE_NAMES for e in _entries(name)]
    async with ScillmClient(target, tls=tls) as client:
        answers = await _health(client.channel, ["", *entries], timeout_s)
        server = answers.pop("")
        if isinstance(server, grpc.aio.AioRpcError):
            return [await _unreachable("mesh", target, server, tls, timeout_s, _HINT_START)]
        unserved = [n for n, full in SERVICE_NAMES.items() if _not_found(answers[full])]
        fronted, refused = await _where(client.channel, unserved, api_key, timeout_s)
    door = len(unserved) == len(SERVICE_NAMES)  # it serves no service itself
    checks = []
    for name in answers:
        answer = answers[name]
        if _not_found(answer):
            continue  # not served there
        if isinstance(answer, grpc.aio.AioRpcError):
            checks.append(Check(name, Status.FAILED, f"health check failed: {answer.code().name}",
                                "see the server log"))
        else:
            checks.append(_health_check(name, answer))
    by_target: dict[str, list[str]] = {}
    for name, at in fronted.items():
        by_target.setdefault(at, []).append(name)
    for more in await asyncio.gather(
            *(_fronted(at, names, target, tls, timeout_s) for at, names in by_target.items()),
            *(_replicas(at, tls, timeout_s) for at in {target, *by_target})):
        checks.extend(more)
    return [_server_check(server, target, door, bool(fronted), refused),
            *sorted(checks, key=lambda c: c.part)]


async def _replicas(target: str, tls: TlsConfig | None, timeout_s: float) -> list[Check]:
    """A `replica <address>` row per address of a list target (none for one address or a
    `dns:///` name): its server's health, asked on a channel to it alone."""
    from scillm.clients import ScillmClient

    addresses = [a.strip() for a in target.split(",") if a.strip()]
    if len(addresses) < 2:
        return []

    async def one(address: str) -> Check:
        part = f"replica {address}"
        async with ScillmClient(address, tls=tls) as client:
            answer = (await _health(client.channel, [""], timeout_s))[""]
        if isinstance(answer, int):
            return _health_check(part, answer, address)
        return await _unreachable(part, address, answer, tls, timeout_s,
                                  f"start it (scillm serve) or drop it from {target}")

    return list(await asyncio.gather(*(one(a) for a in dict.fromkeys(addresses))))


def _entries(name: str) -> list[str]:
    """The health entries doctor reads for service `name`: the service's, then its parts'."""
    from ...services import SERVICE_NAMES

    full = SERVICE_NAMES[name]
    return [full, *(f"{full}/{part}" for part in _PARTS.get(name, ()))]


async def _where(channel: grpc.aio.Channel, names: Sequence[str], api_key: str | None,
                 timeout_s: float) -> tuple[dict[str, str], grpc.StatusCode | None]:
    """Where the process on `channel` sends the calls of each service in `names`, by its
    answer to a call of it, for those it has a target for; and the status that refused
    such a call, if one did (UNAUTHENTICATED behind a master key, without `api_key`)."""
    import grpc

    from ...services import SERVED_AT, SERVICE_NAMES

    metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None

    async def ask(name: str) -> tuple[str, grpc.StatusCode | None]:
        call = channel.unary_unary(f"/{SERVICE_NAMES[name]}/{_WHERE[name]}")
        try:
            await call(b"", timeout=timeout_s, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            at = next((str(v) for k, v in exc.trailing_metadata() or () if k == SERVED_AT), "")
            return at, None if exc.code() == grpc.StatusCode.UNIMPLEMENTED else exc.code()
        return "", None  # served after all, whatever its health said

    found = dict(zip(names, await asyncio.gather(*(ask(n) for n in names)), strict=True))
    refused = next((code for _, code in found.values() if code is not None), None)
    return {name: at for name, (at, _) in found.items() if at}, refused


def _server_check(status: int, target: str, door: bool, fronts: bool,
                  refused: grpc.StatusCode | None) -> Check:
    """The `mesh` row: the process at `target`, and, when it serves no service itself,
    whether doctor could see what it fronts."""
    check = _health_check("mesh", status, target)
    if not door or check.status is not Status.OK:
        return check
    if fronts:
        return replace(check, detail=f"{check.detail}; serves no service itself (a door)")
    if refused is not None:
        keyed = refused.name in ("UNAUTHENTICATED", "PERMISSION_DENIED")
        return Check("mesh", Status.FAILED,
                     f"{check.detail}, but serves no service itself, and where it sends "
                     f"their calls went unsaid: {refused.name}",
                     "behind a master key, give --api-key (or SCILLM_API_KEY) so doctor can "
                     "ask it" if keyed else "see its log")
    return Check("mesh", Status.FAILED,
                 f"{check.detail}, but serves no service and sends none elsewhere",
                 "give it --service NAME, or targets (--completion-target, --prove-target, "
                 "...), or point --target at the mesh")


async def _fronted(at: str, names: Sequence[str], via: str, tls: TlsConfig | None,
                   timeout_s: float) -> list[Check]:
    """The health entries of services `names` at `at`, where the process at `via` sends
    their calls: each "at <target>", or FAILED naming that target."""
    from scillm.clients import ScillmClient

    from ...services import SERVICE_NAMES

    async with ScillmClient(at, tls=tls) as client:
        answers = await _health(client.channel, [e for n in names for e in _entries(n)],
                                timeout_s)
    checks: list[Check] = []
    down: Check | None = None  # why `at` cannot be asked: once, for all its services
    for name in names:
        full = SERVICE_NAMES[name]
        fix = f"--{name}-target of {via} (SCILLM_{name.upper()}_TARGET)"
        answer = answers[full]
        if _not_found(answer):
            checks.append(Check(full, Status.FAILED, f"{at}, where {via} sends its calls, "
                                "does not serve it", f"fix {fix}"))
            continue
        if not isinstance(answer, int):
            if down is None:
                down = await _unreachable(full, at, answer, tls, timeout_s, "",
                                          shown=f"{at} (--{name}-target of {via})")
            checks.append(replace(down, part=full, hint=down.hint or
                                  f"start it (scillm serve --service {name}) or fix {fix}"))
            continue
        checks.append(_health_check(full, answer, at))
        for entry in _entries(name)[1:]:
            part = answers[entry]
            if isinstance(part, int):
                checks.append(_health_check(entry, part, at))
    return checks


def _health_check(part: str, status: int, at: str = "") -> Check:
    """A health entry's row; `at`: the target it was read at, when not --target itself
    (for `mesh`, --target: its detail leads with it)."""
    from grpc_health.v1 import health_pb2

    serving = health_pb2.HealthCheckResponse
    label = serving.ServingStatus.Name(status)  # type: ignore[arg-type]
    shown = (f"{at} {label}" if part == "mesh" else f"{label} at {at}") if at else label
    sub = part.partition("/")[2]
    if status == serving.SERVING:
        return Check(part, Status.OK, shown)
    if status == serving.SERVICE_UNKNOWN:
        return Check(part, Status.SKIPPED, f"{shown}: not served there")
    if sub:
        return Check(part, Status.MISSING, f"{shown}: the server lacks this part",
                     PART_HINTS.get(sub, "see the server log"), optional=sub in _OPTIONAL)
    return Check(part, Status.FAILED, shown,
                 "starting, shutting down, or its engine is not ready; see the server log")


async def _unreachable(part: str, at: str, error: grpc.aio.AioRpcError, tls: TlsConfig | None,
                       timeout_s: float, hint: str, *, shown: str = "") -> Check:
    """FAILED for a health call to `at` (`shown` so, when given) that ended in `error`:
    when the dial failed, a plaintext dial of a TLS server or the reverse is named as such."""
    import grpc

    from scillm.clients.probe import speaks_tls

    code = error.code()
    why = _reason(error.details() or "")
    shown = shown or at
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        speaks = await speaks_tls(at, timeout_s)
        if speaks and tls is None:
            return Check(part, Status.FAILED, f"{shown} speaks TLS, and doctor dialed it in "
                         "plaintext", _HINT_PLAINTEXT)
        if speaks is False and tls is not None:
            return Check(part, Status.FAILED, f"{shown} speaks plaintext, and doctor dialed it "
                         "with TLS", _HINT_TLS)
        if speaks and tls is not None:
            return Check(part, Status.FAILED, f"{shown} speaks TLS, but the handshake failed: "
                         f"{why or code.name}", _HINT_HANDSHAKE)
    return Check(part, Status.FAILED,
                 f"no gRPC health at {shown}: {code.name}" + (f" ({why})" if why else ""), hint)


def _reason(details: str) -> str:
    """The telling end of gRPC's error details ("failed to connect to all addresses; last
    error: UNKNOWN: ipv4:127.0.0.1:1: Failed to connect to remote host: Connection
    refused"; "...: SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: ...: OK")."""
    _, found, text = details.rpartition("last error: ")
    text = text if found else details
    code, found, rest = text.partition(": ")
    if found and code.replace("_", "").isupper():
        text = rest
    address, found, rest = text.partition(": ")
    if found and address.startswith(("ipv4:", "ipv6:", "unix:", "dns:")):
        text = rest
    _, found, rest = text.partition("OPENSSL_internal:")
    text = (rest if found else text).removesuffix(": OK")
    return one_line(text.removeprefix("Failed to connect to remote host: "), width=90)
