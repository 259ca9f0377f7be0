"""HTTP tools: the seed's tool-server protocol, beside MCP.

    GET  <url>/tools    -> [{"type": "function", "function": {name, description, parameters}}]
                           (or {"tools": [...]})
    POST <url>/invoke   {"name": "<tool>", "arguments": {...}}
                        -> {"ok": bool, "text" | "result" | "answer" | "stdout": ...,
                            "error"?, "rc"?, "stderr"?}  (or plain text)

Tools are listed when a run starts (a tool server may come and go) and offered as
`<server>__<tool>`. A call answered 429 is retried (`retries` times) after its
`Retry-After` (seconds or an HTTP date), when that wait fits in the call's time; other
failures become error results the model sees.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..bounded import decoded_response, read_bounded
from ..retry_after import retry_after_s as retry_after_seconds
from ._settings import HttpToolServerConfig
from ._tools import RemoteTool, ToolOutput
from .errors import HttpToolServerError, ToolExecutionError, ToolTimeoutError

__all__ = ["HttpTool", "HttpToolServer", "retry_after_seconds"]

#: Timeout of `GET /tools`, seconds.
_LIST_TIMEOUT_S = 10.0
#: The most a tool server's reply may take, bytes (decoded); a tool's output is cut to
#: `max_tool_output_chars` after, but a server gone wrong must not fill the memory first.
MAX_REPLY_BYTES = 16 * 1024 * 1024
_TAIL = 256
#: Configured headers whose name holds one of these carry a credential (see _credentials).
_CREDENTIAL_WORDS = ("auth", "key", "token", "secret", "cookie", "session", "password")
_REDACTED = "[redacted]"


def _credentials(headers: Mapping[str, str]) -> tuple[str, ...]:
    """The credentials among the operator's configured headers: each value, and its last
    word (`Bearer <token>`: a server may quote the token alone) when 8 characters or
    more; longest first, so no shorter one splits a longer one before it is blanked."""
    found: set[str] = set()
    for name, value in headers.items():
        if value and any(word in name.lower() for word in _CREDENTIAL_WORDS):
            found.add(value)
            last = value.split()[-1] if value.split() else ""
            if len(last) >= 8:
                found.add(last)
    return tuple(sorted(found, key=len, reverse=True))


class HttpToolServer:
    """One configured tool server: an HTTP client, and its tools listed per run."""

    def __init__(self, config: HttpToolServerConfig, *, retries: int) -> None:
        self.config = config
        self._retries = retries
        self._client: httpx.AsyncClient | None = None
        #: A server's reply or error may quote the credential it was sent (a 401 "invalid
        #: token ..."), and what it says reaches the model and the caller, who must never
        #: see the operator's credential: it is blanked from both.
        self._secrets = _credentials(config.headers)

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, _REDACTED)
        return text

    @property
    def name(self) -> str:
        return self.config.name

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(headers=dict(self.config.headers))
        return self._client

    async def list_tools(self, headers: Mapping[str, str]) -> list[HttpTool]:
        """`GET /tools`; HttpToolServerError when it cannot be reached or read, naming the
        server, not its address (the caller logs where it is: `config.url`)."""
        try:
            return await self._list_tools(headers)
        except HttpToolServerError as exc:
            # The caller (and the model) learn its name, not an internal address.
            raise HttpToolServerError(self._said(str(exc)), server=self.name) from None

    def _said(self, text: str) -> str:
        """`text` as the caller and the model may read it: the operator's credentials
        blanked, the server's URL (or its host and port) named by the server's name."""
        url = self.config.url.rstrip("/")
        text = self._redact(text)
        for where in (url, urlsplit(url).netloc):
            if where:
                text = text.replace(where, self.name)
        return text

    async def _list_tools(self, headers: Mapping[str, str]) -> list[HttpTool]:
        where = f"HTTP tool server {self.name!r}"
        try:
            response = await _bounded(self._http(), "GET",
                                      f"{self.config.url.rstrip('/')}/tools",
                                      headers=dict(headers), timeout=_LIST_TIMEOUT_S)
        except httpx.HTTPError as exc:
            raise HttpToolServerError(f"{where} is unreachable: {type(exc).__name__}: {exc}",
                                      server=self.name) from exc
        if response.status_code >= 400:
            raise HttpToolServerError(f"{where}: GET /tools answered {response.status_code}: "
                                      f"{response.text[:_TAIL]}", server=self.name)
        try:
            data = response.json()
        except ValueError as exc:
            raise HttpToolServerError(f"{where}: GET /tools is not JSON", server=self.name) \
                from exc
        specs = data.get("tools") if isinstance(data, Mapping) else data
        if not isinstance(specs, list):
            raise HttpToolServerError(f"{where}: GET /tools must list tools", server=self.name)
        tools: list[HttpTool] = []
        for spec in specs:
            function = spec.get("function") if isinstance(spec, Mapping) else None
            if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
                raise HttpToolServerError(f"{where}: a tool has no function.name",
                                          server=self.name)
            tools.append(HttpTool(self, function, headers))
        return tools

    async def invoke(self, remote: str, arguments: dict[str, Any], *, timeout_s: float,
                     tool: str, headers: Mapping[str, str]) -> ToolOutput:
        """`POST /invoke`, retrying a 429 after its Retry-After while time remains."""
        try:
            out = await self._invoke(remote, arguments, timeout_s=timeout_s, tool=tool,
                                     headers=headers)
        except ToolExecutionError as exc:
            said = self._said(str(exc))
            if said == str(exc):
                raise
            raise ToolExecutionError(said, tool=tool) from None
        if not self._secrets:
            return out
        redact = self._redact
        return dataclasses.replace(
            out, text=redact(out.text),
            stdout=None if out.stdout is None else redact(out.stdout),
            stderr=None if out.stderr is None else redact(out.stderr))

    async def _invoke(self, remote: str, arguments: dict[str, Any], *, timeout_s: float,
                      tool: str, headers: Mapping[str, str]) -> ToolOutput:
        deadline = time.monotonic() + timeout_s
        body = {"name": remote, "arguments": arguments}
        url = f"{self.config.url.rstrip('/')}/invoke"
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            try:
                response = await _bounded(self._http(), "POST", url, json=body,
                                          headers=dict(headers),
                                          timeout=max(0.05, remaining))
            except httpx.TimeoutException as exc:
                raise ToolTimeoutError(f"HTTP tool {tool!r} timed out after {timeout_s:g} s",
                                       tool=tool, timeout_s=timeout_s) from exc
            except httpx.HTTPError as exc:
                raise ToolExecutionError(f"HTTP tool server {self.name!r} failed during "
                                         f"{tool!r}: {type(exc).__name__}: {exc}",
                                         tool=tool) from exc
            if response.status_code != 429:
                return _output(response, tool)
            wait = retry_after_seconds(response.headers.get("retry-after")) or 0.0
            if attempt >= self._retries or time.monotonic() + wait >= deadline:
                raise ToolExecutionError(
                    f"HTTP tool {tool!r} is rate limited (429) after {attempt + 1} "
                    f"attempt(s); Retry-After: {response.headers.get('retry-after', 'none')}",
                    tool=tool)
            attempt += 1
            await asyncio.sleep(wait)

    async def close(self) -> None:
        """Close the HTTP client. Idempotent."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


class _ReplyTooLarge(httpx.HTTPError):
    """A tool server's reply passed MAX_REPLY_BYTES."""


async def _bounded(client: httpx.AsyncClient, method: str, url: str,
                   **kwargs: Any) -> httpx.Response:
    """`client.request(...)` with its reply read no further than MAX_REPLY_BYTES (decoded):
    past it, _ReplyTooLarge, which callers report as the server's failure."""
    async with client.stream(method, url, **kwargs) as response:
        body = await read_bounded(response.aiter_bytes(), MAX_REPLY_BYTES, lambda: _ReplyTooLarge(
            f"the reply is over {MAX_REPLY_BYTES} bytes"))
    return decoded_response(response, body)


def _output(response: httpx.Response, tool: str) -> ToolOutput:
    status = response.status_code
    if not 200 <= status < 300:  # a redirect is not followed: no answer either
        said = (f"redirected to {response.headers.get('location', '(nowhere)')[:_TAIL]!r}, "
                "which is not followed" if 300 <= status < 400 else response.text[:_TAIL])
        raise ToolExecutionError(f"HTTP tool {tool!r}: {status}: {said}", tool=tool)
    try:
        data = response.json()
    except ValueError:
        return ToolOutput(response.text)
    if not isinstance(data, Mapping):
        return ToolOutput(json.dumps(data, ensure_ascii=False))
    failed = data.get("ok") is False
    text = next((data[k] for k in ("text", "result", "answer", "stdout")
                 if isinstance(data.get(k), str)), None)
    if text is None:
        text = str(data["error"]) if failed and data.get("error") else \
            json.dumps(dict(data), ensure_ascii=False, sort_keys=True)
    rc = data.get("rc", data.get("returncode"))
    return ToolOutput(text, is_error=failed, exit_code=rc if isinstance(rc, int) else None,
                      stdout=data.get("stdout") if isinstance(data.get("stdout"), str) else None,
                      stderr=data.get("stderr") if isinstance(data.get("stderr"), str) else None)


class HttpTool(RemoteTool):
    """One tool of an HTTP tool server, offered as `<server>__<tool>`."""

    def __init__(self, server: HttpToolServer, function: Mapping[str, Any],
                 headers: Mapping[str, str]) -> None:
        super().__init__(server.name, str(function["name"]),
                         str(function.get("description") or ""), function.get("parameters"))
        self._server = server
        self._headers = dict(headers)

    async def call(self, arguments: Mapping[str, Any], *, timeout_s: float) -> ToolOutput:
        return await self._server.invoke(self.remote_name, dict(arguments), timeout_s=timeout_s,
                                         tool=self._name, headers=self._headers)
