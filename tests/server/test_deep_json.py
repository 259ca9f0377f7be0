"""JSON nested past any reader's depth from the model (tool arguments, a JSON-mode
answer) is the model's bad output, as JSON that does not parse: json.loads raises
RecursionError for it, not ValueError, and the run failed as a bug."""

from __future__ import annotations

import pytest

from scillm.server.agent._json_mode import json_problem
from scillm.server.agent._records import ToolCall
from scillm.server.agent._tools import parse_arguments
from scillm.server.agent.errors import ToolArgumentsError

DEEP = "[" * 100_000 + "]" * 100_000


def test_tool_arguments_nested_too_deeply_are_a_tool_argument_error() -> None:
    with pytest.raises(ToolArgumentsError, match="nest too deeply"):
        parse_arguments(ToolCall("c1", "demo__add", DEEP))


def test_a_json_mode_answer_nested_too_deeply_asks_for_a_repair() -> None:
    assert json_problem({"type": "json_object"}, DEEP) == "it nests too deeply to read"


def test_an_upstream_body_nested_too_deeply_reads_as_not_json() -> None:
    """The OpenAI provider's reader (orjson, then json for NaN and big integers) and the
    error-body reader: a ValueError, as for any body that is not JSON."""
    from scillm.server.completion._http import _error_object, load_json

    with pytest.raises(ValueError, match="nested too deeply"):
        load_json("[NaN, " + DEEP + "]")
    assert _error_object(DEEP) == {}


def test_a_codex_event_nested_too_deeply_is_no_event() -> None:
    from scillm.server.codex_sidecar._events import _parse

    assert _parse(DEEP) is None
