"""An agent run's explicit empty list of tool servers offers none.

A repeated proto field has no presence: `"http_tool_servers": []` (or `"mcp_servers": []`)
through the door reached the engine as the field left out, every configured server, so a
caller could not ask for a run without them. `AgentConfig.*_given` says the list was
given; the engine's `()` offers none (tests/server/agent/test_http_tools.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from scillm.bridges.seed.agent import request_from_envelope
from scillm.server.agent.servicer import config_from_proto

_ASK = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("given", "expected"), [
    ({}, None),  # left out: every configured server
    ({"http_tool_servers": [], "mcp_servers": []}, ()),  # given empty: none
    ({"http_tool_servers": ["lab"], "mcp_servers": ["demo"]}, "named"),
])
def test_a_list_given_empty_offers_none(given: dict[str, Any], expected: Any) -> None:
    request = request_from_envelope({"messages": _ASK, **given}, "echo/x")
    config = config_from_proto(request.config)
    if expected == "named":
        assert (config.http_tool_servers, config.mcp_servers) == (("lab",), ("demo",))
    else:
        assert (config.http_tool_servers, config.mcp_servers) == (expected, expected)
