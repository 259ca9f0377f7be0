"""`POST /agent/run` and the seed-shaped `POST /bridge/complete`: envelope in, run, reply out.

Which envelope a request is, and so how it is answered, is `bridges.seed.envelope`'s rule.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format

from scillm.clients import ScillmClient
from scillm.clients.errors import InvalidRequestError

from ..seed import agent as agent_seed
from ..seed import codeworld as codeworld_seed
from ..seed import envelope, replies
from ..seed import prove as prove_seed
from . import runs

__all__ = ["agent_run", "bridge_complete"]


async def agent_run(client: ScillmClient, body: Mapping[str, Any], headers: Mapping[str, str],
                    request_id: str, metadata: runs.Metadata) -> dict[str, Any]:
    """Our agent envelope answered with the AgentFinal as JSON; the seed's with its reply."""
    started = time.perf_counter()
    seed = envelope.is_seed_agent(body, headers)
    model = agent_seed.text_field(body, "model")
    request = agent_seed.request_from_seed(body) if seed else \
        agent_seed.request_from_envelope(body, model)
    run = runs.RoutedRun("agent", f"agent/{model}", client.agent.run(
        request, request_id=request_id, metadata=metadata), "final", str)
    final, _ = await run.outcome()
    if seed:
        return agent_seed.seed_reply(final, (time.perf_counter() - started) * 1000)
    return json_format.MessageToDict(final, preserving_proto_field_name=True)


async def bridge_complete(client: ScillmClient, body: Mapping[str, Any], request_id: str,
                          metadata: runs.Metadata) -> dict[str, Any]:
    """A seed-shaped `/bridge/complete` body, answered as the seed's bridges did."""
    started = time.perf_counter()
    body = {**body, "model": envelope.service_model(body)}
    run = runs.route(client, body, request_id, metadata)
    if run is None or run.service not in ("codeworld", "prove"):
        raise InvalidRequestError("the seed's /bridge/complete serves codeworld, certainly "
                                  "and lean4 (provider.name or model)", param="model")
    terminal, events = await run.outcome()
    duration_ms = (time.perf_counter() - started) * 1000
    if run.service == "codeworld":
        return replies.codeworld_reply(
            body, codeworld_seed.request_from_envelope(body), terminal,
            [e for kind, e in events if kind == "run"], duration_ms,
            codeworld_seed.call_timeout(body))
    return replies.prove_reply(body, prove_seed.request_from_envelope(body), terminal,
                               [e for kind, e in events if kind == "result"], duration_ms)
