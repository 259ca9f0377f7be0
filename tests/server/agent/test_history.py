"""History pruning within a token budget."""

from __future__ import annotations

from typing import Any

from scillm.server.agent import estimate_tokens, prune_history


def _history(turns: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "S" * 40},
                                      {"role": "user", "content": "task " * 20}]
    for i in range(turns):
        messages.append({"role": "assistant", "content": "", "tool_calls": [
            {"id": f"c{i}", "type": "function",
             "function": {"name": "run_python", "arguments": "{}"}}]})
        messages.append({"role": "tool", "tool_call_id": f"c{i}", "content": "x" * 400})
        messages.append({"role": "user", "content": f"note {i} " * 30})
    return messages


def test_within_budget_nothing_is_pruned() -> None:
    messages = _history(2)
    assert prune_history(messages, 10_000) == messages


def test_pruning_keeps_system_task_and_last_tool_pair() -> None:
    messages = _history(10)
    pruned = prune_history(messages, 300)
    assert sum(estimate_tokens(m) for m in pruned) < sum(estimate_tokens(m) for m in messages)
    assert pruned[0] == messages[0] and pruned[1] == messages[1]
    last_call = messages[-3]
    assert last_call in pruned and messages[-2] in pruned and pruned[-1] == messages[-1]
    # no tool result without its call, order kept
    ids = {c["id"] for m in pruned for c in m.get("tool_calls", ())}
    assert all(m["tool_call_id"] in ids for m in pruned if m["role"] == "tool")
    assert [messages.index(m) for m in pruned] == sorted(messages.index(m) for m in pruned)


def test_tiny_budget_still_keeps_the_pinned_messages() -> None:
    messages = _history(3)
    pruned = prune_history(messages, 1)
    assert [m["role"] for m in pruned] == ["system", "user", "assistant", "tool", "user"]
