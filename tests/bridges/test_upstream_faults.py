"""Upstream failures as a user of the OpenAI door sees them: typed errors with OpenAI's body,
the upstream status where there is one, Retry-After passed on, in-band errors in streams."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
from collections.abc import Iterator

import httpx
import openai
import pytest
from meshutil import RunningMesh, mesh_settings, start_mesh

from scillm.clients import RPCError, ScillmClient


class FaultyUpstream:
    """An OpenAI-compatible server whose behaviour is chosen by the requested model name."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0
        #: Requests for "silent" that arrived, and those whose client then hung up.
        self.arrived = threading.Semaphore(0)
        self.hung_up = threading.Semaphore(0)
        self._bomb_payload = b""

    def _bomb(self) -> bytes:
        if not self._bomb_payload:  # made once: compressing 200 MiB takes a while
            self._bomb_payload = gzip.compress(b"{\"id\": \"" + b"x" * (200 << 20), 1)
        return self._bomb_payload

    def start(self) -> FaultyUpstream:
        self.thread.start()
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self.loop).result(10)
        self.port = server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            body = json.loads(await reader.readexactly(length))
            model = body["model"]
            if model in _REFUSALS:  # an upstream's own OpenAI error body
                code, error = _REFUSALS[model]
                payload = json.dumps({"error": error}).encode()
                writer.write(b"HTTP/1.1 %d Refused\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (code, len(payload), payload))
            elif model == "rate-limited":
                payload = b'{"error": {"message": "slow down"}}'
                writer.write(b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json"
                             b"\r\nretry-after: 7\r\ncontent-length: " + str(len(payload)).encode()
                             + b"\r\n\r\n" + payload)
            elif model == "broken":
                payload = b"<html>not json</html>"
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: " + str(len(payload)).encode() + b"\r\n\r\n"
                             + payload)
            elif model == "silent":  # never answers; notes when the client hangs up
                self.arrived.release()
                while await reader.read(4096):
                    pass
                self.hung_up.release()
                return
            elif model in ("endless", "endless-event"):  # a body (or one event) without end
                if model == "endless":
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                 b"content-length: 100000000000\r\n\r\n{\"id\": \"")
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                                 b"\r\ndata: {\"id\": \"")
                piece = b"x" * (1 << 20)
                for _ in range(1024):  # 1 GiB, unless the client stops reading first
                    if writer.transport.is_closing():
                        break
                    writer.write(piece)
                    await writer.drain()
            elif model == "bomb":  # 200 MiB once gunzipped, 200 KiB on the wire
                payload = self._bomb()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-encoding: gzip\r\ncontent-length: "
                             + str(len(payload)).encode() + b"\r\n\r\n" + payload)
            elif model.startswith("misshapen-"):  # a chat.completion of another shape
                writer.write(_misshapen(model.removeprefix("misshapen-"), body))
            elif model == "dropping":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
                chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1,
                         "model": model, "choices": [{"index": 0, "finish_reason": None,
                                                      "delta": {"role": "assistant",
                                                                "content": "partial"}}]}
                writer.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.transport.abort()  # the stream dies midway
                return
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


#: Upstream refusals as OpenAI sends them: model -> (HTTP status, error object).
_REFUSALS = {
    "refuses-temperature": (400, {"message": "temperature must be at most 2",
                                  "type": "invalid_request_error", "param": "temperature",
                                  "code": "invalid_value"}),
    "refuses-unprocessable": (422, {"message": "unprocessable", "type": "invalid_request_error",
                                    "param": None, "code": None}),
    "refuses-too-long": (400, {"message": "This model's maximum context length is 8 tokens",
                               "type": "invalid_request_error", "param": "messages",
                               "code": "context_length_exceeded"}),
    "refuses-quota": (429, {"message": "You exceeded your current quota",
                            "type": "insufficient_quota", "param": None,
                            "code": "insufficient_quota"}),
}

#: Replies that look like OpenAI's but are not: (field, value) set in a well-formed one.
_MISSHAPEN = {
    "created": ("created", "yesterday"), "index": ("index", "a"),
    "choice": ("choices", [None]), "content": ("content", 5),
    "logprob": ("logprobs", {"content": [{"token": "a", "logprob": "high"}]}),
}


def _misshapen(kind: str, request: dict[str, object]) -> bytes:
    field, value = _MISSHAPEN[kind]
    choice: dict[str, object] = {"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "ok"}}
    reply: dict[str, object] = {"id": "m", "object": "chat.completion", "created": 1,
                                "model": "m", "choices": [choice]}
    if request.get("stream"):  # the same, as a stream's one chunk
        choice["delta"] = choice.pop("message")
        reply["object"] = "chat.completion.chunk"
    target = choice["message" if "message" in choice else "delta"] if field == "content" \
        else reply if field in ("created", "choices") else choice
    target[field] = value  # type: ignore[index]
    data = json.dumps(reply).encode()
    if request.get("stream"):
        event = b"data: " + data + b"\n\n" + b"data: [DONE]\n\n"
        return (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: "
                + str(len(event)).encode() + b"\r\n\r\n" + event)
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(data)).encode() + b"\r\n\r\n" + data)


#: Upstreams that send (or compress) a great deal: a busy machine may take seconds over it.
_HEAVY = ("endless", "endless-event", "bomb")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def upstream() -> Iterator[FaultyUpstream]:
    running = FaultyUpstream().start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory,
           upstream: FaultyUpstream) -> Iterator[RunningMesh]:
    tmp = tmp_path_factory.mktemp("faults")
    base = f"http://127.0.0.1:{upstream.port}/v1"

    def entry(name: str, api_base: str) -> dict[str, object]:
        # "silent" waits far longer than any test: only a hang-up can end its request.
        return {"model_name": name, "litellm_params": {
            "model": f"openai/{name}", "api_base": api_base, "api_key": "x",
            "timeout": 600 if name == "silent" else 60 if name in _HEAVY else 5}}

    config = tmp / "models.yaml"
    config.write_text(json.dumps({
        "model_list": [entry("rate-limited", base), entry("broken", base),
                       entry("endless", base), entry("endless-event", base),
                       entry("bomb", base),
                       entry("dropping", base), entry("silent", base),
                       *(entry(name, base) for name in _REFUSALS),
                       *(entry(f"misshapen-{kind}", base) for kind in _MISSHAPEN),
                       entry("unreachable", f"http://127.0.0.1:{_closed_port()}/v1"),
                       {"model_name": "keyless", "litellm_params": {
                           "model": "openai/keyless", "api_base": base,
                           "api_key": "os.environ/SCILLM_TEST_ABSENT_KEY"}}],
        "router_settings": {"num_retries": 1, "retry_after": 0},
        "litellm_settings": {"cache": False}}))
    running = start_mesh(mesh_settings(tmp, config_path=config, services=("completion",)))
    yield running
    running.stop()


def _post(mesh: RunningMesh, model: str) -> httpx.Response:
    return httpx.post(f"{mesh.http_url}/v1/chat/completions", timeout=60, json={
        "model": model, "messages": [{"role": "user", "content": "hi"}]})


def _cancelled(mesh: RunningMesh, model: str, code: str = "CANCELLED") -> float:
    text = httpx.get(f"{mesh.http_url}/metrics", timeout=10).text
    prefix = (f'scillm_rpc_requests_total{{code="{code}",'
              f'method="CompletionService/Completion",model="{model}"}}')
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(prefix))


async def _ended(mesh: RunningMesh, model: str, at_least: float,
                 codes: tuple[str, ...] = ("CANCELLED",)) -> float:
    """How many calls to `model` ended with one of `codes`, read once the count reaches
    `at_least` (a call's record lands as it unwinds), or after 30 s."""
    for _ in range(600):
        total = sum([await asyncio.to_thread(_cancelled, mesh, model, code) for code in codes])
        if total >= at_least:
            break
        await asyncio.sleep(0.05)
    return total


async def _arrived(upstream: FaultyUpstream) -> bool:
    return await asyncio.to_thread(upstream.arrived.acquire, timeout=60)


async def _hung_up(upstream: FaultyUpstream) -> bool:
    return await asyncio.to_thread(upstream.hung_up.acquire, timeout=60)


async def test_a_caller_hanging_up_closes_the_upstream_request(faulty: RunningMesh,
                                                               upstream: FaultyUpstream) -> None:
    """Non-streamed: the caller hangs up once its request reached the upstream (which would
    wait 10 minutes more); the upstream sees its connection closed, and the call is counted
    as CANCELLED."""
    before = await asyncio.to_thread(_cancelled, faulty, "silent")
    async with httpx.AsyncClient(timeout=120) as client:
        call = asyncio.ensure_future(client.post(
            f"{faulty.http_url}/v1/chat/completions",
            json={"model": "silent", "messages": [{"role": "user", "content": "hi"}]}))
        assert await _arrived(upstream), "the request never reached the upstream"
        call.cancel()  # closes the connection: the caller hangs up
        with pytest.raises(asyncio.CancelledError):
            await call
    assert await _hung_up(upstream), "the upstream request stayed open"
    assert await _ended(faulty, "silent", before + 1) == before + 1


async def test_an_upstream_past_its_timeout_is_408(faulty: RunningMesh,
                                                  upstream: FaultyUpstream) -> None:
    """README: DEADLINE_EXCEEDED -> 408. An upstream that never answers, asked with a
    per-attempt timeout of 0.5 s and no retry: 408 with OpenAI's body, and the upstream
    request is closed."""
    async with httpx.AsyncClient(timeout=60) as client:
        reply = await client.post(f"{faulty.http_url}/v1/chat/completions", json={
            "model": "silent", "messages": [{"role": "user", "content": "hi"}],
            "scillm": {"timeout_s": 0.5, "num_retries": 0}})
    assert reply.status_code == 408, reply.text
    error = reply.json()["error"]
    assert error["type"] == "timeout_error" and "0.5s" in error["message"], error
    assert await _arrived(upstream), "the request never reached the upstream"
    assert await _hung_up(upstream), "the timed-out upstream request stayed open"


async def test_a_grpc_caller_cancelling_or_timing_out_closes_the_upstream_request(
        faulty: RunningMesh, upstream: FaultyUpstream) -> None:
    """The gRPC door, non-streamed: a call cancelled once its request reached the upstream,
    and a call past its deadline, each close their upstream request (which would otherwise
    wait 10 minutes)."""
    request = {"model": "silent", "messages": [{"role": "user", "content": "hi"}]}
    cancelled = await asyncio.to_thread(_cancelled, faulty, "silent")
    expired = await asyncio.to_thread(_cancelled, faulty, "silent", "DEADLINE_EXCEEDED")
    async with ScillmClient(faulty.grpc_target) as client:
        call = asyncio.ensure_future(client.completion.create(request))
        assert await _arrived(upstream), "the request never reached the upstream"
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert await _hung_up(upstream), "the cancelled call's upstream request stayed open"
        with pytest.raises(RPCError) as info:
            await client.completion.create(request, timeout=5)
        assert info.value.code.name == "DEADLINE_EXCEEDED"
        assert await _arrived(upstream)
        assert await _hung_up(upstream), "the timed-out call's upstream request stayed open"
    # The timed-out call counts as DEADLINE_EXCEEDED, or as CANCELLED when the caller's
    # cancel (sent as its own deadline passes) reaches the server before the server's
    # deadline passes: on a busy machine it often does.
    both = ("CANCELLED", "DEADLINE_EXCEEDED")
    assert await _ended(faulty, "silent", cancelled + expired + 2, both) \
        == cancelled + expired + 2
    assert await _ended(faulty, "silent", cancelled + 1) >= cancelled + 1


def test_upstream_429_keeps_status_and_retry_after(faulty: RunningMesh) -> None:
    resp = _post(faulty, "rate-limited")
    assert resp.status_code == 429, resp.text
    assert resp.json()["error"]["type"] == "rate_limit_error"
    assert int(resp.headers["retry-after"]) >= 1


def test_invalid_json_from_upstream_is_a_bad_gateway(faulty: RunningMesh) -> None:
    resp = _post(faulty, "broken")
    assert resp.status_code == 502, resp.text
    assert set(resp.json()["error"]) == {"message", "type", "param", "code"}


def test_unreachable_upstream_is_unavailable(faulty: RunningMesh) -> None:
    resp = _post(faulty, "unreachable")
    assert resp.status_code == 502, resp.text
    assert "Traceback" not in resp.text


def test_missing_api_key_names_the_variable(faulty: RunningMesh) -> None:
    resp = _post(faulty, "keyless")
    assert resp.status_code in (400, 401), resp.text
    assert "SCILLM_TEST_ABSENT_KEY" in resp.json()["error"]["message"]


def test_stream_dropped_midway_ends_with_an_in_band_error(faulty: RunningMesh) -> None:
    sdk = openai.OpenAI(base_url=f"{faulty.http_url}/v1", api_key="x", max_retries=0)
    with httpx.stream("POST", f"{faulty.http_url}/v1/chat/completions", timeout=60, json={
            "model": "dropping", "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}) as resp:
        lines = [line for line in resp.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert "error" in json.loads(lines[-2][6:])
    assert any("partial" in line for line in lines)
    with pytest.raises(openai.APIError):
        list(sdk.chat.completions.create(model="dropping", stream=True,
                                         messages=[{"role": "user", "content": "hi"}]))




@pytest.mark.parametrize("kind", list(_MISSHAPEN))
def test_a_reply_of_another_shape_is_a_bad_gateway(faulty: RunningMesh, kind: str) -> None:
    """An upstream's chat.completion with `"created": "yesterday"`, a null choice, a
    logprob of "high" or a number for content was an INTERNAL error, or read as the
    caller's invalid request (400): it is the upstream's fault, a 502, unary or in-band."""
    reply = _post(faulty, f"misshapen-{kind}")
    assert reply.status_code == 502, reply.text
    error = reply.json()["error"]
    assert error["type"] == "upstream_error" and "does not fit OpenAI's shape" in \
        error["message"], error
    with httpx.stream("POST", f"{faulty.http_url}/v1/chat/completions", timeout=60, json={
            "model": f"misshapen-{kind}", "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}) as resp:
        lines = [line for line in resp.iter_lines() if line]
    if resp.status_code == 200:  # the stream had started: the error comes in-band
        assert lines[-1] == "data: [DONE]"
        error = json.loads(lines[-2][6:])["error"]
    else:  # refused before the first event (the provider saw the chunk's shape)
        assert resp.status_code == 502, lines
        error = json.loads("".join(lines))["error"]
    assert error["type"] == "upstream_error", error


@pytest.mark.parametrize("model", ["endless", "bomb"])
def test_an_upstream_reply_without_end_fails_the_call_instead_of_filling_memory(
        faulty: RunningMesh, upstream: FaultyUpstream, model: str) -> None:
    """A broken upstream sending a body without end (or a gzip bomb) is read no further
    than 64 MiB: the call fails as an upstream error naming the limit."""
    reply = _post(faulty, model)
    assert reply.status_code == 502, reply.text
    assert "over 67108864 bytes" in reply.json()["error"]["message"]


def test_a_streamed_event_without_end_fails_the_stream(faulty: RunningMesh,
                                                       upstream: FaultyUpstream) -> None:
    reply = httpx.post(f"{faulty.http_url}/v1/chat/completions", timeout=60, json={
        "model": "endless-event", "stream": True,
        "messages": [{"role": "user", "content": "hi"}]})
    assert "a streamed event is over 67108864 bytes" in reply.text, reply.text[:500]


@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstreams_refusal_of_the_request_is_the_callers_400(
        faulty: RunningMesh, stream: bool) -> None:
    """An upstream's 400 (a bad temperature) came back as a 502 `upstream_error`: the SDK
    retried a request that could never succeed and raised InternalServerError, and the
    upstream's `param` and `code` were lost. It is the caller's 400, as OpenAI says it."""
    calls = _upstream_calls(faulty, "refuses-temperature")
    sdk = openai.AsyncOpenAI(base_url=f"{faulty.http_url}/v1", api_key="x", max_retries=2)
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.chat.completions.create(model="refuses-temperature", stream=stream,
                                          messages=[{"role": "user", "content": "hi"}])
    await sdk.close()
    error = info.value.body
    assert isinstance(error, dict), error
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error", "temperature", "invalid_value"), error
    assert "temperature must be at most 2" in error["message"]
    assert _upstream_calls(faulty, "refuses-temperature") == calls + 1  # not retried
    sdk = openai.AsyncOpenAI(base_url=f"{faulty.http_url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError):  # an upstream's 422 is the caller's too
        await sdk.chat.completions.create(model="refuses-unprocessable", stream=stream,
                                          messages=[{"role": "user", "content": "hi"}])
    await sdk.close()


@pytest.mark.parametrize(("model", "status", "code"), [
    ("refuses-too-long", 400, "context_length_exceeded"),
    ("refuses-quota", 429, "insufficient_quota"),
    ("rate-limited", 429, "rate_limit_exceeded"),
])
def test_error_codes_are_openais_not_class_names(faulty: RunningMesh, model: str,
                                                 status: int, code: str) -> None:
    """The door's `code` was the mesh's exception class (`ContextWindowExceeded`,
    `RateLimited`): LangChain looks for `context_length_exceeded`, and an app stopping on
    `insufficient_quota` could not tell it from a passing rate limit."""
    reply = _post(faulty, model)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["code"] == code, reply.json()


def _upstream_calls(mesh: RunningMesh, model: str) -> float:
    text = httpx.get(f"{mesh.http_url}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("scillm_rpc_requests_total{") and f'model="{model}"' in line)
