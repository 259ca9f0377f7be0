"""A real HTTP tool server (the seed's protocol) on 127.0.0.1:0, for the tests.

    GET  /tools    -> OpenAI tool specs: add, echo, fail, busy, flood, whoami, deny
    POST /invoke   {"name", "arguments"} -> {"ok", "text" | "result" | "error"}

`busy` answers 429 with `Retry-After: <retry_after>` to its first `busy_429s` calls;
`flood` answers 64 MiB of text (a tool server gone wrong). `whoami` answers with the
authorization it was sent, and `deny` with a 401 quoting its token, as careless servers
do; with `deny_listing`, GET /tools is such a 401 too.
Every request is kept in `requests` as (monotonic time, method, path, headers, body).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _tool(name: str, description: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": properties,
                       "required": list(properties)}}}


TOOLS = [
    _tool("add", "Add two integers.", {"a": {"type": "integer"}, "b": {"type": "integer"}}),
    _tool("echo", "Echo the text.", {"text": {"type": "string"}}),
    _tool("fail", "Always fails.", {}),
    _tool("busy", "Rate limited at first.", {}),
    _tool("flood", "Answers far too much.", {}),
    _tool("whoami", "Says who called.", {}),
    _tool("deny", "Refuses the caller's token.", {}),
    _tool("elsewhere", "Redirects elsewhere.", {}),
]


class HttpToolServer:
    """Serve the tools in a thread; `url` is the base URL."""

    def __init__(self, *, busy_429s: int = 1, retry_after: str = "1",
                 deny_listing: bool = False) -> None:
        self.busy_429s = busy_429s
        self.deny_listing = deny_listing
        self.retry_after = retry_after
        self.requests: list[tuple[float, str, str, dict[str, str], Any]] = []
        self._busy_seen = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None
                       ) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _record(self, body: Any) -> None:
                server.requests.append((time.monotonic(), self.command, self.path,
                                        {k.lower(): v for k, v in self.headers.items()}, body))

            def do_GET(self) -> None:
                self._record(None)
                if self.path != "/tools":
                    self._reply(404, {"error": "not found"})
                    return
                if server.deny_listing:
                    self._reply(401, {"error": f"invalid token {self._token()}"})
                    return
                self._reply(200, TOOLS)

            def _token(self) -> str:
                sent = self.headers.get("authorization") or self.headers.get("x-api-key")
                return (sent or "none").split()[-1]

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                self._record(body)
                if self.path != "/invoke":
                    self._reply(404, {"error": "not found"})
                    return
                name, args = body.get("name"), body.get("arguments") or {}
                if name == "add":
                    self._reply(200, {"ok": True, "result": str(args["a"] + args["b"])})
                elif name == "echo":
                    self._reply(200, {"ok": True, "text": args.get("text", "")})
                elif name == "fail":
                    self._reply(200, {"ok": False, "error": "fail: it always fails"})
                elif name == "flood":
                    with contextlib.suppress(ConnectionError):  # the client stops reading
                        self._reply(200, {"ok": True, "text": "x" * (64 << 20)})
                elif name == "whoami":
                    who = self.headers.get("authorization") or ""
                    self._reply(200, {"ok": True, "text": f"you are {who}",
                                      "stderr": f"auth={who}"})
                elif name == "elsewhere":  # a redirect, to where the caller must not go
                    self._reply(307, {}, {"location": "http://169.254.169.254/invoke"})
                elif name == "deny":
                    self._reply(401, {"error": f"invalid token {self._token()}"})
                elif name == "busy":
                    server._busy_seen += 1
                    if server._busy_seen <= server.busy_429s:
                        self._reply(429, {"error": "slow down"},
                                    {"retry-after": server.retry_after})
                    else:
                        self._reply(200, {"ok": True, "text": "done after waiting"})
                else:
                    self._reply(404, {"ok": False, "error": "tool_not_found"})

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> HttpToolServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def invokes(self, name: str) -> list[tuple[float, dict[str, str], Any]]:
        """(time, headers, body) of every POST /invoke of tool `name`."""
        return [(t, h, b) for t, m, p, h, b in self.requests
                if m == "POST" and isinstance(b, dict) and b.get("name") == name]
