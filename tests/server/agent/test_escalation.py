"""Escalation to a stronger model: on giving up, on the turn budget, on the token budget."""

from __future__ import annotations

from typing import Any

from scillm.server.agent import AgentEngine, AgentSettings, RunConfig, ScriptedModel, StopReason

from .conftest import FIXTURES, SubprocessExecutor

TASK = [{"role": "user", "content": "Solve it."}]


def _models(model: ScriptedModel) -> list[str]:
    return [r["model"] for r in model.requests]


async def test_giving_up_escalates_once() -> None:
    model = ScriptedModel([{"content": "Sorry, I give up."}, {"content": "42"}])
    settings = AgentSettings(model="weak", escalation_model="strong")
    async with AgentEngine(settings, model) as engine:
        result = await engine.run_to_end(TASK)
    assert result.stop_reason is StopReason.SUCCESS and result.answer == "42"
    assert _models(model) == ["weak", "strong"]
    m = result.metrics
    assert (m.escalated, m.escalation_reason, m.used_model, m.iterations) == (
        True, "gave_up", "strong", 2)
    note = model.requests[1]["messages"][-1]
    assert note["role"] == "user" and note["content"].startswith("Escalated to strong")


async def test_the_escalation_model_giving_up_ends_the_run() -> None:
    model = ScriptedModel([{"content": ""}, {"content": "budget exceeded, I stop"}])
    settings = AgentSettings(model="weak", escalation_model="strong")
    async with AgentEngine(settings, model) as engine:
        result = await engine.run_to_end(TASK)
    assert result.stop_reason is StopReason.SUCCESS
    assert result.answer == "budget exceeded, I stop" and _models(model) == ["weak", "strong"]


async def test_without_an_escalation_model_a_give_up_is_the_answer() -> None:
    model = ScriptedModel([{"content": "I give up."}])
    async with AgentEngine(AgentSettings(model="weak"), model) as engine:
        result = await engine.run_to_end(TASK)
    assert result.answer == "I give up." and not result.metrics.escalated
    assert result.metrics.used_model == "weak"


async def test_running_out_of_turns_escalates_with_fresh_turns(
        executor: SubprocessExecutor) -> None:
    looping = ScriptedModel.from_file(FIXTURES / "loop_forever.json")

    async def complete(request: dict[str, Any]) -> dict[str, Any]:
        if request["model"] == "strong" and len(looping.requests) >= 4:
            return await ScriptedModel([{"content": "done"}])(request)
        return await looping(request)

    settings = AgentSettings(model="weak", languages=("python",), max_iterations=2,
                             escalation_model="strong", escalation_iterations=3)
    async with AgentEngine(settings, complete, executor) as engine:
        result = await engine.run_to_end(TASK)
    assert result.stop_reason is StopReason.SUCCESS and result.answer == "done"
    assert _models(looping) == ["weak", "weak", "strong", "strong"]
    m = result.metrics
    assert (m.escalated, m.escalation_reason, m.iterations) == (True, "max_iterations", 5)


async def test_the_escalated_turns_are_a_budget_too(executor: SubprocessExecutor) -> None:
    model = ScriptedModel.from_file(FIXTURES / "loop_forever.json")
    settings = AgentSettings(model="weak", languages=("python",), max_iterations=2,
                             escalation_model="strong", escalation_iterations=2)
    async with AgentEngine(settings, model, executor) as engine:
        result = await engine.run_to_end(TASK)
    assert result.stop_reason is StopReason.MAX_ITERATIONS
    assert _models(model) == ["weak", "weak", "strong", "strong"]
    assert result.metrics.iterations == 4 and result.metrics.used_model == "strong"


async def test_the_token_budget_escalates(executor: SubprocessExecutor) -> None:
    model = ScriptedModel.from_file(FIXTURES / "loop_forever.json")  # 110 tokens a turn
    settings = AgentSettings(model="weak", languages=("python",), max_iterations=50,
                             escalation_model="strong", escalation_iterations=10)
    async with AgentEngine(settings, model, executor) as engine:
        result = await engine.run_to_end(TASK, RunConfig(max_total_tokens=200))
    # 2 turns reach 220 tokens; the strong model gets 200 more: 2 turns again.
    assert _models(model) == ["weak", "weak", "strong", "strong"]
    assert result.stop_reason is StopReason.BUDGET
    assert result.metrics.escalation_reason == "budget"


async def test_a_step_that_gives_up_names_the_model_to_escalate_to() -> None:
    model = ScriptedModel([{"content": "I cannot solve this."}, {"content": "7"}])
    async with AgentEngine(AgentSettings(model="weak"), model) as engine:
        config = RunConfig(escalation_model="strong")
        step = await engine.step(TASK, config)
        assert not step.done and step.escalate_to == "strong" and step.model == "weak"
        assert step.new_messages[-1]["content"].startswith("Escalated to strong")
        again = await engine.step([*TASK, *step.new_messages],
                                  RunConfig(model="strong", escalation_model="strong"))
    assert again.done and again.final_answer == "7" and again.escalate_to is None
    assert _models(model) == ["weak", "strong"]
