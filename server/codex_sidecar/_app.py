"""The sidecar's HTTP app (Starlette): OpenAI's chat surface in front of the Codex CLI.

    GET  /healthz               mode, concurrency, runs going and waiting, CLI and login
    GET  /v1/models             the models, each with `capabilities: {"chat": ...}`
    POST /v1/chat/completions   JSON, or SSE ending in `data: [DONE]` with "stream": true
    POST /chat/completions      the same, for clients that leave out `/v1`

Errors use OpenAI's body `{"error": {message, type, param, code}}` with the status of
`errors.SidecarError`. A streamed CLI run starts its response only once the CLI has
reported something, so a failure before that (no credentials, a timeout, a crash) still
gets its own status; after that it goes in-band, then `[DONE]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import shutil
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from scillm.bridges.openai import sse

from ..bounded import read_bounded
from . import _request
from ._cli import CodexJob, CodexRunner
from ._events import CodexTurn
from ._replies import Reply, error_json, word_usage
from ._settings import SidecarSettings
from .errors import BadRequest, CallerUnauthorized, NotRunnable, SidecarError, UpstreamFailed

__all__ = ["Sidecar", "create_app"]

_MAX_BODY = 8 * 1024 * 1024
#: The most of a forwarded answer read, bytes (decoded).
_MAX_REPLY = 64 * 1024 * 1024
#: Model ids that name no chat model, for a forwarded list without `capabilities`.
_NOT_CHAT = ("embed", "rerank", "tts", "whisper", "transcribe", "moderation", "dall-e",
             "image")
_SSE_HEADERS = {"cache-control": "no-cache"}
T = TypeVar("T")


def _error(exc: SidecarError) -> JSONResponse:
    return JSONResponse(error_json(exc), status_code=exc.status)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def auth_present() -> bool:
    """Whether the CLI can find a login: `$CODEX_HOME/auth.json` or an API key variable."""
    home = Path(os.environ.get("CODEX_HOME") or Path.home() / ".codex")
    return (home / "auth.json").is_file() or bool(
        os.environ.get("CODEX_API_KEY") or os.environ.get("OPENAI_API_KEY"))


class Sidecar:
    """The handlers, over one `CodexRunner` (when the CLI is configured) and, in forward
    mode, one pooled HTTP client."""

    def __init__(self, settings: SidecarSettings) -> None:
        self.settings = settings
        self.runner = CodexRunner(settings) if settings.codex_cmd else None
        self._http: httpx.AsyncClient | None = None

    async def close(self) -> None:
        """Kill the CLI runs still going; close the forward client."""
        if self.runner is not None:
            self.runner.close()
        if self._http is not None:
            await self._http.aclose()

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(self.settings.timeout_s),
                                           trust_env=False)
        return self._http

    def _forward_headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        key = self.settings.forward_key
        if key is not None and key.value:
            headers["authorization"] = f"Bearer {key.value}"
        return headers

    def _without_key(self, content: bytes) -> bytes:
        """An error the forward base sent, with the forward key blanked out: some
        OpenAI-compatible servers quote the key they were sent ("Incorrect API key
        provided: sk-..."), and the error reaches the sidecar's caller."""
        key = self.settings.forward_key
        secret = key.value.encode() if key is not None and key.value else b""
        return content.replace(secret, b"[redacted]") if secret else content

    async def healthz(self, request: Request) -> Response:
        s = self.settings
        out: dict[str, Any] = {"ok": True, "mode": s.mode, "max_concurrency": s.max_concurrency}
        if self.runner is not None:
            out.update(running=self.runner.running, waiting=self.runner.waiting,
                       codex=shutil.which(s.codex_cmd[0]) or s.codex_cmd[0],
                       auth_present=auth_present())
        if s.forward_base:
            out["forward_base"] = str(httpx.URL(s.forward_base).copy_with(
                username=None, password=None))
        return JSONResponse(out)

    def _refused(self, request: Request) -> Response | None:
        """401 unless the request carries the sidecar's key (when it requires one)."""
        key = self.settings.api_key
        if key is None or not key.value:
            return None
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if hmac.compare_digest(token.encode(), key.value.encode()):
            return None
        return _error(CallerUnauthorized("this sidecar requires its key: send "
                                         "'Authorization: Bearer <CODEX_SIDECAR_API_KEY>'"))

    async def models(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        s = self.settings
        if s.mode != "forward":
            return JSONResponse({"object": "list", "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "codex-sidecar",
                 "capabilities": {"chat": True}} for m in s.models]})
        try:
            upstream = await self._client().get(f"{s.forward_base}/models",
                                                headers=self._forward_headers())
            payload = upstream.json()
        except (httpx.HTTPError, ValueError) as exc:
            return _error(UpstreamFailed(f"the forward base's /models failed: "
                                         f"{type(exc).__name__}: {exc}"))
        if upstream.status_code >= 400 or not isinstance(payload, dict):
            return Response(self._without_key(upstream.content),
                            status_code=upstream.status_code, media_type="application/json")
        for entry in payload.get("data") or ():
            if isinstance(entry, dict) and "capabilities" not in entry:
                name = str(entry.get("id", "")).lower()
                entry["capabilities"] = {"chat": not any(x in name for x in _NOT_CHAT)}
        return JSONResponse(payload)

    async def chat(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        try:
            raw = await read_bounded(request.stream(), _MAX_BODY, lambda: BadRequest(
                f"request body exceeds {_MAX_BODY} bytes"))
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise BadRequest(f"request body is not valid JSON: {exc}") from None
            model, messages = _request.check(body)
            stream = body.get("stream") is True
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            mode = self.settings.mode
            if mode == "forward" and _truthy(request.headers.get("x-codex-force-local")):
                if self.runner is None:
                    raise NotRunnable("X-Codex-Force-Local asks for the Codex CLI, and this "
                                      "forwarding sidecar runs none (start it with "
                                      "--codex-bin)")
                mode = "cli"
            if mode == "echo":
                return self._echo(model, messages, stream, include_usage)
            if mode == "forward":
                return await self._forward(body, stream)
            return await self._cli(request, _request.job_of(body, model, messages), model,
                                   stream, include_usage)
        except SidecarError as exc:
            return _error(exc)

    def _echo(self, model: str, messages: list[dict[str, Any]], stream: bool,
              include_usage: bool) -> Response:
        text = _request.last_user_text(messages)
        reply = Reply(model)
        usage = word_usage(_request.prompt_of(messages), text)
        if stream:
            return Response(b"".join(reply.echo_stream(text, usage, include_usage)),
                            media_type="text/event-stream", headers=_SSE_HEADERS)
        return JSONResponse(reply.completion(text, usage))

    async def _cli(self, request: Request, job: CodexJob, model: str, stream: bool,
                   include_usage: bool) -> Response:
        assert self.runner is not None
        reply = Reply(model)
        if not stream:
            turn = await _unless_gone(request, self.runner.run(job))
            if turn is None:  # the caller hung up: the run was killed
                return Response(status_code=499)
            return JSONResponse(reply.completion(turn.answer or "", turn.usage, turn.reasoning))
        events = self.runner.events(job)
        try:
            first = await anext(events)
        except BaseException:
            await events.aclose()
            raise
        if isinstance(first, CodexTurn):
            await events.aclose()
        return StreamingResponse(reply.cli_stream(first, events, include_usage),
                                 media_type="text/event-stream", headers=_SSE_HEADERS)

    async def _forward(self, body: dict[str, Any], stream: bool) -> Response:
        s = self.settings
        payload = {**body, "model": _request.plain_model(body["model"])}
        request = self._client().build_request(
            "POST", f"{s.forward_base}/chat/completions", content=orjson.dumps(payload),
            headers=self._forward_headers())
        try:
            upstream = await self._client().send(request, stream=True)
        except httpx.HTTPError as exc:
            raise UpstreamFailed(f"the forward base could not be reached: "
                                 f"{type(exc).__name__}: {exc}") from None
        media = upstream.headers.get("content-type", "application/json")
        if not stream or upstream.status_code >= 400:
            try:
                over = f"the forward base's answer is over {_MAX_REPLY} bytes"
                content = await read_bounded(upstream.aiter_bytes(), _MAX_REPLY,
                                             lambda: UpstreamFailed(over))
            except httpx.HTTPError as exc:
                raise UpstreamFailed(f"the forward base's answer broke off: "
                                     f"{type(exc).__name__}: {exc}") from None
            finally:
                await upstream.aclose()
            if upstream.status_code >= 400:
                content = self._without_key(content)
            return Response(content, status_code=upstream.status_code, media_type=media)
        return StreamingResponse(_relay(upstream), media_type=media, headers=_SSE_HEADERS)


async def _unless_gone(request: Request, work: Awaitable[T]) -> T | None:
    """`work`'s result, or None when the caller hangs up first (`work` is then cancelled,
    which kills a CLI run's process group and frees its slot)."""
    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, watch = asyncio.ensure_future(work), asyncio.ensure_future(gone())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return None if task.cancelled() else task.result()


async def _relay(upstream: httpx.Response) -> AsyncIterator[bytes]:
    """The upstream's SSE bytes as they come; a break goes in-band, then `[DONE]`."""
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    except httpx.HTTPError as exc:
        yield sse.event(error_json(UpstreamFailed(
            f"the forward base's stream broke off: {type(exc).__name__}: {exc}")))
        yield sse.DONE
    finally:
        await upstream.aclose()


def create_app(settings: SidecarSettings) -> tuple[Starlette, Sidecar]:
    """The sidecar's ASGI app and its handlers (`await sidecar.close()` at shutdown)."""
    sidecar = Sidecar(settings)
    app = Starlette(routes=[
        Route("/healthz", sidecar.healthz),
        Route("/v1/models", sidecar.models),
        Route("/v1/chat/completions", sidecar.chat, methods=["POST"]),
        Route("/chat/completions", sidecar.chat, methods=["POST"]),
    ])
    return app, sidecar
