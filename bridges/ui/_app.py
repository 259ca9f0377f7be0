"""The runs UI served by the shim at `/ui`: server-rendered pages over the run store.

    GET  /ui/                        the runs, newest first, filtered, paged; live
    GET  /ui/rows                    the table's rows alone (what the page polls)
    GET  /ui/runs/{run_id}           one run: CodeWorld, Prove, agent or completion
    POST /ui/runs/{run_id}/replay    re-execute it; JSON {identical, differences, ...}
    GET  /ui/api/runs                the runs as JSON (same filters, `page_token`)
    GET  /ui/api/runs/{run_id}       one run as JSON (manifest, request, result, events)
    GET  /ui/login, POST /ui/login, POST /ui/logout    a browser's key (see _access)
    GET  /ui/static/...              the page's CSS and JS, and plotly.min.js

A page answers 303 to /ui/login without a key and 403 with a key that may not read
runs; the JSON routes answer 401 and 403 with OpenAI's error body.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import urllib.parse
from collections.abc import Awaitable, Callable
from html import escape as html_escape
from pathlib import Path
from typing import Any

import jinja2
from google.protobuf import json_format
from google.protobuf.message import Message
from starlette.applications import Starlette
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from scillm.agent.v1 import agent_pb2
from scillm.clients import ScillmClient
from scillm.clients.errors import RPCError
from scillm.codeworld.v1 import codeworld_pb2
from scillm.prove.v1 import prove_pb2
from scillm.server.keys import Authenticator
from scillm.server.manifests import (
    BadPageToken,
    RunPage,
    RunQuery,
    RunStore,
    StoredRun,
    replay,
    run_state,
)

from ..openai.errors import error_body, error_response
from ._access import CSRF_HEADER, Caller, Denied, UiAccess
from ._agent import agent_view
from ._charts import span_timings
from ._codeworld import codeworld_view
from ._completion import completion_view
from ._prove import prove_view
from ._views import duration_ms, facts, outcome, row, trace_link

__all__ = ["create_ui"]

_Handler = Callable[[Request], Awaitable[Response]]

SERVICES = ("completion", "prove", "codeworld", "agent")
#: Rows per page, and the most a caller may ask for.
PAGE_SIZE, MAX_PAGE_SIZE = 50, 200
#: Seconds between the runs page's polls for new runs.
POLL_S = 2.0
#: The most a sign-in form may hold (a key and a path), bytes.
_LOGIN_FORM_BYTES = 8192

_SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'"),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def _plotly_js() -> tuple[Path | None, str]:
    """Where the installed `plotly` package keeps plotly.min.js, and its version."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None, ""
    path = Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"
    if not path.is_file():
        return None, ""
    return path, importlib.metadata.version("plotly")


def _fmt_ms(ms: float) -> str:
    if ms >= 10_000:
        return f"{ms / 1000:.1f} s"
    if ms >= 1000:
        return f"{ms / 1000:.2f} s"
    return f"{ms:.1f} ms" if ms >= 1 else f"{ms:.2f} ms"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("scillm.bridges.ui", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["ms"] = _fmt_ms
    env.filters["when"] = lambda d: d.strftime("%Y-%m-%d %H:%M:%S")
    return env


def _query(request: Request) -> RunQuery:
    """The filters and page of a runs request (unknown services and sizes: 400)."""
    params = request.query_params
    service = params.get("service", "")
    if service and service not in SERVICES:
        raise _BadRequest(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
    raw_limit = params.get("limit", str(PAGE_SIZE))
    # ASCII digits only: str.isdigit() takes "²", which int() refuses (a 500).
    if not (raw_limit.isascii() and raw_limit.isdigit()) \
            or not 1 <= int(raw_limit) <= MAX_PAGE_SIZE:
        raise _BadRequest(f"limit must be 1..{MAX_PAGE_SIZE}")
    return RunQuery(service=service, session_id=params.get("session", "").strip(),
                    track=params.get("track", "").strip(),
                    model=params.get("model", "").strip(), limit=int(raw_limit),
                    page_token=params.get("page", ""))


def _from_this_site(request: Request) -> bool:
    """Whether a sign-in or sign-out form came from this site, as far as the browser
    says: `Sec-Fetch-Site` (same-origin, or none: typed or bookmarked), else `Origin`
    (this host). A request saying neither is a script's, let through. Another site's
    form signed a victim out, or in with the attacker's key."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None or origin == "null":  # our pages' no-referrer policy sends "null"
        return True
    return urllib.parse.urlsplit(origin).netloc == request.headers.get("host", "")


class _BadRequest(Exception):
    """A request the UI cannot answer as asked (400)."""


def _dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


class _Ui:
    def __init__(self, store: RunStore, access: UiAccess, client: ScillmClient,
                 trace_url_template: str) -> None:
        self.store = store
        self.access = access
        self.client = client
        self.trace_url_template = trace_url_template
        self.env = _environment()
        self.plotly_path, self.plotly_version = _plotly_js()

    # ------------------------------------------------------------------ plumbing

    def _page(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(
            keys=self.access.enabled, plotly_version=self.plotly_version,
            charts=self.plotly_path is not None, **context)
        return HTMLResponse(html, status_code=status, headers=_SECURITY_HEADERS)

    async def _gate(self, request: Request, *, api: bool,
                    changes: bool = False) -> Caller | Response:
        """The caller when they may read runs, else the refusal to send."""
        caller = self.access.caller(request)
        try:
            await self.access.check(caller.key)
            if changes and caller.from_cookie and request.headers.get(CSRF_HEADER) != "1":
                raise Denied(403, f"a signed-in browser's request needs '{CSRF_HEADER}: 1'")
        except Denied as denied:
            if api:
                kind = "authentication_error" if denied.status == 401 else "permission_error"
                return JSONResponse(error_body(denied.message, kind), denied.status)
            if denied.status == 401:
                target = request.url.path + (f"?{request.url.query}" if request.url.query
                                             else "")
                return RedirectResponse(
                    "/ui/login?" + urllib.parse.urlencode({"next": target}), 303)
            return self._page("denied.html", 403, message=denied.message)
        return caller

    async def _runs_page(self, query: RunQuery) -> RunPage:
        return await asyncio.to_thread(self.store.page, query)

    # ------------------------------------------------------------------ pages

    async def runs(self, request: Request) -> Response:
        gate = await self._gate(request, api=False)
        if isinstance(gate, Response):
            return gate
        try:
            query = _query(request)
            page = await self._runs_page(query)
        except (_BadRequest, BadPageToken) as exc:
            return self._page("denied.html", 400, message=str(exc))
        facets = {c: await asyncio.to_thread(self.store.distinct, c)
                  for c in ("session_id", "track", "model")}
        filters = {k: v for k, v in (("service", query.service), ("session", query.session_id),
                                     ("track", query.track), ("model", query.model),
                                     ("limit", str(query.limit) if query.limit != PAGE_SIZE
                                      else "")) if v}
        return self._page(
            "runs.html", rows=[row(r.manifest, r.result) for r in page.runs], query=query,
            services=SERVICES, facets=facets, filters=filters,
            filter_query=urllib.parse.urlencode(filters),
            next_page=page.next_page_token, live=not query.page_token, poll_s=POLL_S)

    async def rows(self, request: Request) -> Response:
        gate = await self._gate(request, api=False)
        if isinstance(gate, Response):
            return gate
        try:
            page = await self._runs_page(_query(request))
        except (_BadRequest, BadPageToken) as exc:  # the message may echo the query: escaped
            return HTMLResponse(html_escape(str(exc)), 400, headers=_SECURITY_HEADERS)
        html = self.env.get_template("_rows.html").render(
            rows=[row(r.manifest, r.result) for r in page.runs])
        return HTMLResponse(html, headers=_SECURITY_HEADERS)

    async def run(self, request: Request) -> Response:
        gate = await self._gate(request, api=False)
        if isinstance(gate, Response):
            return gate
        run_id = request.path_params["run_id"]
        stored = await asyncio.to_thread(self.store.get, run_id)
        if stored is None:
            return self._page("denied.html", 404, message=f"no single run matches {run_id!r}")
        kind, view = self._detail(stored)
        spans = list(getattr(view, "spans", []))
        m = stored.manifest
        return self._page(
            "run.html", m=m, kind=kind, view=view, facts=facts(m),
            outcome=outcome(stored.result, m), trace_url=trace_link(m, self.trace_url_template),
            timings=span_timings([*spans]) if spans else None,
            total_ms=duration_ms(m.duration))

    @staticmethod
    def _detail(stored: StoredRun) -> tuple[str, Any]:
        request, result = stored.request, stored.result
        if run_state(stored.manifest, result) != "done":
            return "pending", None
        if isinstance(result, codeworld_pb2.CodeWorldRunSummary) and isinstance(
                request, codeworld_pb2.CodeWorldRunRequest):
            return "codeworld", codeworld_view(request, result, stored.events)
        if isinstance(result, prove_pb2.ProveSummary) and isinstance(
                request, prove_pb2.ProveRequest):
            return "prove", prove_view(request, result, stored.events)
        if isinstance(result, agent_pb2.AgentFinal) and isinstance(
                request, agent_pb2.AgentRunRequest):
            return "agent", agent_view(request, result, stored.events)
        return "completion", completion_view(request, result)

    # ------------------------------------------------------------------ JSON

    async def api_runs(self, request: Request) -> Response:
        gate = await self._gate(request, api=True)
        if isinstance(gate, Response):
            return gate
        try:
            page = await self._runs_page(_query(request))
        except (_BadRequest, BadPageToken) as exc:
            return JSONResponse(error_body(str(exc), "invalid_request_error"), 400)
        return JSONResponse({
            "runs": [{"manifest": _dict(r.manifest),
                      "outcome": {"text": (o := outcome(r.result, r.manifest)).text,
                                  "tone": o.tone}}
                     for r in page.runs],
            "next_page_token": page.next_page_token})

    async def api_run(self, request: Request) -> Response:
        gate = await self._gate(request, api=True)
        if isinstance(gate, Response):
            return gate
        stored = await asyncio.to_thread(self.store.get, request.path_params["run_id"])
        if stored is None:
            return JSONResponse(error_body("no single run matches", "not_found_error"), 404)
        return JSONResponse({"manifest": _dict(stored.manifest),
                             "request": _dict(stored.request),
                             "result": _dict(stored.result), "events": list(stored.events)})

    async def replay(self, request: Request) -> Response:
        """Re-execute a stored run through the mesh as the caller, and say what differs."""
        gate = await self._gate(request, api=True, changes=True)
        if isinstance(gate, Response):
            return gate
        stored = await asyncio.to_thread(self.store.get, request.path_params["run_id"])
        if stored is None:
            return JSONResponse(error_body("no single run matches", "not_found_error"), 404)
        # The caller's key rides on every call of the replay, so it is their run.
        as_caller = self.client.with_api_key(gate.key)
        try:
            result, diffs, volatile = await replay(stored, as_caller)
        except RPCError as exc:
            return error_response(exc)
        except ValueError as exc:  # a service replay does not know
            return JSONResponse(error_body(str(exc), "invalid_request_error"), 400)
        new = getattr(result, "manifest", None)
        # The same JSON as `scillm runs replay`.
        return JSONResponse({"run_id": stored.manifest.run_id,
                             "replay_run_id": new.run_id if new is not None else "",
                             "identical": not diffs, "differences": diffs,
                             "volatile": volatile})

    # ------------------------------------------------------------------ sign-in

    @staticmethod
    def _next(value: str | None) -> str:
        """Where to go after signing in: a /ui/ path of this site only."""
        if value and value.startswith("/ui/") and not value.startswith("/ui//") \
                and "\\" not in value:
            return value
        return "/ui/"

    async def login_form(self, request: Request) -> Response:
        target = self._next(request.query_params.get("next"))
        if not self.access.enabled:
            return RedirectResponse(target, 303)
        return self._page("login.html", next=target, error="")

    async def login(self, request: Request) -> Response:
        if not _from_this_site(request):
            return self._page("login.html", 403, next="/ui/",
                              error="a sign-in from another site is refused")
        body = b""
        async for chunk in request.stream():  # open to anyone: read no more than a form
            body += chunk
            if len(body) > _LOGIN_FORM_BYTES:
                return self._page("login.html", 413, next="/ui/",
                                  error=f"the form is over {_LOGIN_FORM_BYTES} bytes")
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
        key = (form.get("key") or [""])[0].strip()
        target = self._next((form.get("next") or [""])[0])
        try:
            await self.access.check(key or None)
        except Denied as denied:
            return self._page("login.html", denied.status, next=target, error=denied.message)
        response = RedirectResponse(target, 303)
        if self.access.enabled:
            self.access.sign_in(response, request, key)
        return response

    async def logout(self, request: Request) -> Response:
        if not _from_this_site(request):
            return Response("a sign-out from another site is refused", 403)
        response = RedirectResponse("/ui/login", 303)
        self.access.sign_out(response)
        return response

    async def plotly(self, request: Request) -> Response:
        if self.plotly_path is None:
            return Response("plotly is not installed: pip install plotly", 404)
        return FileResponse(self.plotly_path, media_type="text/javascript", headers={
            "cache-control": "public, max-age=604800, immutable"})


def create_ui(store: RunStore, auth: Authenticator, client: ScillmClient, *,
              trace_url_template: str = "") -> ASGIApp:
    """The runs UI, to be mounted at `/ui` of the shim.

    `store` is the run store it reads; `auth` the mesh's keys; `client` the shim's client,
    through which a replay runs (carrying the caller's key); `trace_url_template` a URL
    holding `{trace_id}` that a run's trace link points to (empty: no link).
    """
    ui = _Ui(store, UiAccess(auth), client, trace_url_template)
    routes: list[tuple[str, _Handler, list[str]]] = [
        ("/", ui.runs, ["GET"]),
        ("/rows", ui.rows, ["GET"]),
        ("/runs/{run_id}", ui.run, ["GET"]),
        ("/runs/{run_id}/replay", ui.replay, ["POST"]),
        ("/api/runs", ui.api_runs, ["GET"]),
        ("/api/runs/{run_id}", ui.api_run, ["GET"]),
        ("/login", ui.login_form, ["GET"]),
        ("/login", ui.login, ["POST"]),
        ("/logout", ui.logout, ["POST"]),
        ("/static/plotly.min.js", ui.plotly, ["GET"]),
    ]
    app = Starlette(routes=[
        *(Route(path, endpoint, methods=methods) for path, endpoint, methods in routes),
        Mount("/static", StaticFiles(packages=[("scillm.bridges.ui", "static")])),
    ])
    return GZipMiddleware(app, minimum_size=1024)
