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


def test_message_cap_keeps_the_pinned_messages_and_the_newest() -> None:
    messages = _history(10)
    pruned = prune_history(messages, 1_000_000, max_messages=6)
    assert [m["role"] for m in pruned] == ["system", "user", "user", "assistant", "tool",
                                           "user"]
    assert pruned[2] == messages[-4] and pruned[-3:] == messages[-3:]


def test_character_cap_drops_oldest_turns_whole() -> None:
    messages = _history(10)
    pruned = prune_history(messages, 1_000_000, max_chars=2_000)
    chars = sum(len(str(m.get("content") or "")) for m in pruned)
    assert chars <= 2_000 + 200  # the tool-call arguments count too
    assert pruned[:2] == messages[:2] and pruned[-3:] == messages[-3:]
    ids = {c["id"] for m in pruned for c in m.get("tool_calls", ())}
    assert all(m["tool_call_id"] in ids for m in pruned if m["role"] == "tool")
    assert len(pruned) < len(messages)


def test_caps_never_drop_system_messages() -> None:
    messages = [{"role": "system", "content": "A" * 5000}, {"role": "user", "content": "hi"},
                {"role": "system", "content": "B" * 5000}, {"role": "assistant", "content": "x"},
                {"role": "user", "content": "y"}]
    pruned = prune_history(messages, 1_000_000, max_messages=1, max_chars=10)
    assert [m["role"] for m in pruned] == ["system", "user", "system", "user"]
