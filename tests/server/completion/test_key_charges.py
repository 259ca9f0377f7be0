"""What a virtual key pays: a stream it leaves early, a call whose upstream reports no
usage, and the model calls a service (here the agent) makes for it.

A key is charged the usage a stream ends with, and OpenAI's upstreams send it last, after
the text and the finish reason. A caller who read the text and left before that message
was charged nothing; here such a stream is charged an estimate (a token per four
characters of prompt and answer: `server/completion/_estimate.py`). The services reach
Completion with the mesh's own key, so an agent run cost its caller nothing; each of its
model calls is now charged to the caller's key. Through the OpenAI door with the openai
SDK and through gRPC, against a real mesh and a loopback upstream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from completion_upstream import (
    Upstream,
    openai_chunks,
    openai_reply,
    send_json,
    sse_event,
    sse_head,
    status,
)
from keyed import key_spend, new_key
from meshutil import RunningMesh, mesh_settings, start_mesh

from scillm.agent.v1 import agent_pb2
from scillm.clients import ScillmClient
from scillm.completion.v1 import completion_pb2 as cpb

MASTER = "sk-master-accounting"
#: Prices per token: a cost is read back as tokens (prompt at 1, completion at 1000).
PRICE_IN, PRICE_OUT = 1.0, 1000.0
PROMPT = "twelve chars"  # 12 characters: 3 tokens
ANSWER = "one two three four five"  # 23 characters: 6 tokens


async def _text_then_usage_once_the_caller_left(up: Upstream, req: dict[str, Any],
                                                r: asyncio.StreamReader,
                                                w: asyncio.StreamWriter) -> bool:
    """The text and its finish reason, then (only after the mesh hung up, or 10 s) the
    usage, as a caller leaving at the finish reason sees it."""
    sse_head(w)
    chunks = openai_chunks(req, ANSWER)
    for data in chunks[:-1]:
        sse_event(w, data)
    await w.drain()
    try:
        await asyncio.wait_for(r.read(1), 10)
        sse_event(w, chunks[-1])
        sse_event(w, "[DONE]")
        w.write(b"0\r\n\r\n")
    except (ConnectionError, TimeoutError):
        pass
    return False


async def _no_usage(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                    w: asyncio.StreamWriter) -> bool:
    """A whole answer or stream from an upstream that reports no usage."""
    if not req.get("stream"):
        answer = openai_reply(req, ANSWER)
        del answer["usage"]
        send_json(w, 200, answer)
        return True
    sse_head(w)
    for data in [*openai_chunks(req, ANSWER)[:-1], "[DONE]"]:
        sse_event(w, data)
    w.write(b"0\r\n\r\n")
    return True


@pytest.fixture
def keyed(tmp_path: Path, upstream: Upstream) -> Iterator[RunningMesh]:
    upstream.plan("leave", _text_then_usage_once_the_caller_left)
    upstream.plan("silent", _no_usage)
    upstream.plan("down", status(500))
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({
        "model_list": [{"model_name": name, "litellm_params": {
            "model": f"openai/{name}", "api_base": f"{upstream.url}/v1", "api_key": "x",
            "input_cost_per_token": PRICE_IN, "output_cost_per_token": PRICE_OUT}}
            for name in ("leave", "silent", "whole", "echo", "odd", "down")]
        + [{"model_name": "backup", "litellm_params": {  # ten times dearer
            "model": "openai/backup", "api_base": f"{upstream.url}/v1", "api_key": "x",
            "input_cost_per_token": 10 * PRICE_IN, "output_cost_per_token": 10 * PRICE_OUT}}]
        # A wildcard deployment, priced as the others (ten times dearer): its models are
        # the callers' names (`wild/whole`), its prices the pattern's.
        + [{"model_name": "wild/*", "litellm_params": {
            "model": "openai/*", "api_base": f"{upstream.url}/v1", "api_key": "x",
            "input_cost_per_token": 10 * PRICE_IN, "output_cost_per_token": 10 * PRICE_OUT}}],
        "general_settings": {"master_key": MASTER}}))
    running = start_mesh(mesh_settings(tmp_path, config_path=config,
                                       services=("completion", "agent")))
    yield running
    running.stop()


def _sdk(mesh: RunningMesh, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{mesh.http_url}/v1", api_key=key, max_retries=0)


async def _whole_answer(mesh: RunningMesh, model: str) -> tuple[str, tuple[int, int]]:
    """A new key asks `model` once: the answer, and the tokens the key was charged."""
    key = new_key(mesh, MASTER)
    sdk = _sdk(mesh, key)
    reply = await sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPT}])
    await sdk.close()
    text = reply.choices[0].message.content or ""
    return text, _tokens(await key_spend(mesh, MASTER, key, at_least=PRICE_OUT))


async def _whole_stream(mesh: RunningMesh, model: str) -> tuple[str, tuple[int, int]]:
    """A new key streams `model` to its end: the text, and the tokens the key was charged."""
    key = new_key(mesh, MASTER)
    sdk = _sdk(mesh, key)
    stream = await sdk.chat.completions.create(
        model=model, stream=True, messages=[{"role": "user", "content": PROMPT}])
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    await sdk.close()
    return text, _tokens(await key_spend(mesh, MASTER, key, at_least=PRICE_OUT))


def _tokens(spend: float) -> tuple[int, int]:
    """(prompt, completion) tokens from a spend at PRICE_IN and PRICE_OUT."""
    completion = int(spend // PRICE_OUT)
    return round(spend - completion * PRICE_OUT), completion


async def test_leaving_a_stream_before_its_usage_is_charged_an_estimate(
        keyed: RunningMesh) -> None:
    key = new_key(keyed, MASTER)
    sdk = _sdk(keyed, key)
    stream = await sdk.chat.completions.create(
        model="leave", stream=True, messages=[{"role": "user", "content": PROMPT}])
    text = ""
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].finish_reason:
            break
        text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    await stream.close()  # the caller leaves with the whole text and no usage
    await sdk.close()
    assert text == ANSWER
    assert _tokens(await key_spend(keyed, MASTER, key, at_least=PRICE_OUT)) == (3, 6)


async def test_leaving_a_grpc_stream_before_its_usage_is_charged_too(keyed: RunningMesh) -> None:
    key = new_key(keyed, MASTER)
    async with ScillmClient(keyed.grpc_target, api_key=key) as client:
        stream = client.completion.stream(
            {"model": "leave", "messages": [{"role": "user", "content": PROMPT}]})
        async for event in stream:
            if event.HasField("chunk") and event.chunk.choices[0].finish_reason:
                break
        await stream.aclose()
    assert _tokens(await key_spend(keyed, MASTER, key, at_least=PRICE_OUT)) == (3, 6)


async def test_a_stream_whose_upstream_reports_no_usage_is_charged_an_estimate(
        keyed: RunningMesh) -> None:
    assert await _whole_stream(keyed, "silent") == (ANSWER, (3, 6))


async def test_a_whole_stream_is_charged_its_usage_and_nothing_more(keyed: RunningMesh) -> None:
    key = new_key(keyed, MASTER)
    sdk = _sdk(keyed, key)
    stream = await sdk.chat.completions.create(
        model="whole", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": PROMPT}])
    usage = [c.usage async for c in stream if c.usage is not None]
    await sdk.close()
    assert [(u.prompt_tokens, u.completion_tokens) for u in usage] == [(3, 2)]  # upstream's
    await asyncio.sleep(0.5)  # an extra charge would come now, when the stream is closed
    assert _tokens(await key_spend(keyed, MASTER, key, at_least=2 * PRICE_OUT)) == (3, 2)


async def test_an_answer_without_usage_is_charged_an_estimate(keyed: RunningMesh) -> None:
    assert await _whole_answer(keyed, "silent") == (ANSWER, (3, 6))


async def test_an_agent_run_charges_its_model_calls_to_the_callers_key(
        keyed: RunningMesh) -> None:
    """The upstream answers at once (3 prompt and 2 completion tokens): a one-turn run
    through the door costs the caller that; it cost nothing before."""
    key = new_key(keyed, MASTER)
    sdk = _sdk(keyed, key)
    reply = await sdk.chat.completions.create(
        model="agent/whole", messages=[{"role": "user", "content": PROMPT}])
    await sdk.close()
    assert reply.choices[0].message.content == PROMPT  # the upstream echoes the prompt
    assert reply.usage is not None  # the door reports what the run's model calls used
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (3, 2)
    assert _tokens(await key_spend(keyed, MASTER, key, at_least=PRICE_OUT)) == (3, 2)


async def test_an_agent_step_is_charged_once(keyed: RunningMesh) -> None:
    """AgentStep's reply carries its usage too: the key pays the model call, not both."""
    key = new_key(keyed, MASTER)
    async with ScillmClient(keyed.grpc_target, api_key=key) as client:
        reply = await client.agent.step(agent_pb2.AgentStepRequest(
            messages=[cpb.Message(role=cpb.ROLE_USER, content=[cpb.ContentPart(text=PROMPT)])],
            config=agent_pb2.AgentConfig(model="whole")))
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (3, 2)
    await asyncio.sleep(0.5)
    assert _tokens(await key_spend(keyed, MASTER, key, at_least=PRICE_OUT)) == (3, 2)


async def test_an_agent_run_past_the_keys_model_list_is_refused(keyed: RunningMesh) -> None:
    """A key limited to one model may not reach another through the agent's escalation
    model (the outer check reads only `config.model`): each model call a service makes for
    the key is admitted by the key."""
    key = new_key(keyed, MASTER, models=["echo"])
    request = agent_pb2.AgentRunRequest(  # the upstream echoes it: the model gives up
        messages=[cpb.Message(role=cpb.ROLE_USER, content=[cpb.ContentPart(text="I give up")])],
        config=agent_pb2.AgentConfig(model="echo", escalation_model="whole"))
    async with ScillmClient(keyed.grpc_target, api_key=key) as client:
        events = [e async for e in client.agent.run(request)]
    final = events[-1].final
    assert "may not call model 'whole'" in final.error, final
    # The allowed model's turn was charged; the refused one was never called.
    assert _tokens(await key_spend(keyed, MASTER, key, at_least=PRICE_OUT)) == (3, 2)


def _answer_with_usage(usage: Any) -> Any:
    """An upstream whose answer (or stream's last chunk) reports `usage` as given."""
    async def act(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                  w: asyncio.StreamWriter) -> bool:
        if req.get("stream"):
            chunks = openai_chunks(req, ANSWER)
            last = {**json.loads(chunks[-1]), "usage": usage}
            sse_head(w)
            for data in [*chunks[:-1], json.dumps(last), "[DONE]"]:
                sse_event(w, data)
            w.write(b"0\r\n\r\n")
            return True
        answer = openai_reply(req, ANSWER)
        answer["usage"] = usage
        send_json(w, 200, answer)
        return True
    return act


@pytest.mark.parametrize("usage", [
    {"prompt_tokens": -5000, "completion_tokens": -5000, "total_tokens": -10000},
    {"prompt_tokens": 1e30, "completion_tokens": 1},
    {"prompt_tokens": 10**23, "completion_tokens": 1},
    {"prompt_tokens": 2.5, "completion_tokens": 1},
    "lots",
    [3, 6],
])
async def test_a_usage_that_is_not_one_neither_fails_the_call_nor_bends_the_bill(
        keyed: RunningMesh, upstream: Upstream, usage: Any) -> None:
    """An upstream's usage was converted as it came: a negative or huge count, or a
    usage that is not an object, made an answered call INTERNAL (and a negative count
    would have refilled a key's budget). Such a usage is now none: the answer comes
    back, and the key pays the estimate."""
    upstream.plan("odd", _answer_with_usage(usage))
    assert await _whole_answer(keyed, "odd") == (ANSWER, (3, 6))


async def test_a_streams_usage_that_is_not_one_is_none_too(keyed: RunningMesh,
                                                            upstream: Upstream) -> None:
    upstream.plan("odd", _answer_with_usage({"prompt_tokens": -9, "completion_tokens": 1}))
    assert await _whole_stream(keyed, "odd") == (ANSWER, (3, 6))


async def test_a_usage_without_its_total_gets_the_sum(keyed: RunningMesh,
                                                      upstream: Upstream) -> None:
    upstream.plan("odd", _answer_with_usage({"prompt_tokens": "5", "completion_tokens": 2}))
    sdk = _sdk(keyed, MASTER)
    reply = await sdk.chat.completions.create(
        model="odd", messages=[{"role": "user", "content": PROMPT}])
    await sdk.close()
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens,
            reply.usage.total_tokens) == (5, 2, 7)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_fallback_the_caller_names_is_a_model_its_key_must_allow(
        keyed: RunningMesh, upstream: Upstream, stream: bool) -> None:
    """A key limited to `down` named `backup` as its fallback and was answered by it:
    the check read only the requested model. A fallback outside the key's models is a
    403 naming it now, before any upstream call."""
    key = new_key(keyed, MASTER, models=["down"])
    sdk = _sdk(keyed, key)
    with pytest.raises(openai.PermissionDeniedError) as info:
        await sdk.chat.completions.create(
            model="down", stream=stream, messages=[{"role": "user", "content": PROMPT}],
            extra_body={"scillm": {"fallbacks": ["backup"]}})
    await sdk.close()
    assert "may not call model 'backup'" in str(info.value), info.value
    assert upstream.calls("down") == upstream.calls("backup") == 0


async def test_a_grpc_fallback_outside_the_key_is_refused_too(keyed: RunningMesh) -> None:
    key = new_key(keyed, MASTER, models=["down"])
    request = {"model": "down", "messages": [{"role": "user", "content": PROMPT}],
               "scillm": {"fallbacks": ["down", "backup"]}}
    async with ScillmClient(keyed.grpc_target, api_key=key) as client:
        with pytest.raises(Exception, match="may not call model 'backup'"):
            await client.completion.create(request)
        with pytest.raises(Exception, match="may not call model 'backup'"):
            async for _ in client.completion.stream(request):
                pass


@pytest.mark.parametrize("stream", [False, True])
async def test_a_fallbacks_answer_is_charged_at_the_fallbacks_prices(
        keyed: RunningMesh, stream: bool) -> None:
    """`down` fails, `backup` (ten times dearer) answers: the key pays `backup`'s prices,
    not those of the model it asked for."""
    key = new_key(keyed, MASTER, models=["down", "backup"])
    sdk = _sdk(keyed, key)
    messages: Any = [{"role": "user", "content": PROMPT}]
    extra = {"scillm": {"fallbacks": ["backup"], "num_retries": 0}}
    if stream:
        chunks = await sdk.chat.completions.create(
            model="down", stream=True, messages=messages, extra_body=extra)
        assert [c async for c in chunks]
    else:
        reply = await sdk.chat.completions.create(model="down", messages=messages,
                                                  extra_body=extra)
        assert reply.choices[0].message.content == PROMPT
    await sdk.close()
    spend = await key_spend(keyed, MASTER, key, at_least=10 * PRICE_OUT)
    assert spend == 10 * (3 * PRICE_IN + 2 * PRICE_OUT), spend


async def test_a_model_a_wildcard_serves_is_charged_at_the_patterns_prices(
        keyed: RunningMesh) -> None:
    """The prices were kept by the config's model_name (`wild/*`) and looked up by the
    name called (`wild/whole`): a key spent nothing on a wildcard's models, and a budget
    never stopped it. A call is charged at the prices of the pattern serving it."""
    key = new_key(keyed, MASTER, models=["wild/whole"], max_budget=15 * PRICE_OUT)
    sdk = _sdk(keyed, key)
    codes = []
    for _ in range(3):
        try:
            await sdk.chat.completions.create(
                model="wild/whole", messages=[{"role": "user", "content": PROMPT}])
            codes.append(200)
        except openai.PermissionDeniedError:
            codes.append(403)
    await sdk.close()
    assert codes == [200, 403, 403]  # the first call spent (3 + 2000) * 10 of 15000
    assert await key_spend(keyed, MASTER, key) == 10 * (3 * PRICE_IN + 2 * PRICE_OUT)


async def test_a_fallback_a_wildcard_serves_is_charged_at_the_patterns_prices(
        keyed: RunningMesh) -> None:
    key = new_key(keyed, MASTER, models=["down", "wild/backup"])
    sdk = _sdk(keyed, key)
    reply = await sdk.chat.completions.create(
        model="down", messages=[{"role": "user", "content": PROMPT}],
        extra_body={"scillm": {"fallbacks": ["wild/backup"], "num_retries": 0}})
    await sdk.close()
    assert reply.choices[0].message.content == PROMPT
    spend = await key_spend(keyed, MASTER, key, at_least=10 * PRICE_OUT)
    assert spend == 10 * (3 * PRICE_IN + 2 * PRICE_OUT), spend
