"""Virtual keys in LiteLLM's shape: the door's `/key/*` routes, each one KeyService call.

    POST /key/generate   models, duration, max_budget, rpm/tpm limits, alias, metadata
    GET  /key/info       ?key=... (without `key`: the caller's own key)
    POST /key/update     `key` and the fields to change
    GET  /key/list       ?page=&size=&key_alias=&return_full_object=
    POST /key/delete     {"keys": [...]}

The bodies are read as the door reads its own (a body it refuses raises the door's own
exception, which its handler answers); the request and reply shapes are seed/keys.py's;
errors are OpenAI's body with the status of the one table (errors.py), a body or query
the door refuses itself answered after the caller's key (401 first: _key_first.py). The
caller's key goes on as gRPC metadata: the keys service wants the master key, but for a
key reading itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from scillm.clients import ScillmClient
from scillm.clients.errors import InvalidRequestError, RPCError

from ..seed import keys as keys_seed
from ._key_first import Refuse

__all__ = ["routes"]

ReadJson = Callable[[Request], Awaitable[dict[str, Any]]]
Credentials = Callable[[Request], Sequence[tuple[str, str]]]
Endpoint = Callable[[Request], Awaitable[Response]]


def routes(client: ScillmClient, read_json: ReadJson, credentials: Credentials,
           refuse: Refuse) -> list[Route]:
    """The `/key/*` routes over `client.keys`; `read_json` reads a body as the door does,
    `credentials` are the caller's key as metadata, `refuse` answers a failed request (the
    key first)."""
    keys = client.keys

    def answered(handle: Callable[[Request], Awaitable[dict[str, Any]]]) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            try:
                return JSONResponse(await handle(request))
            except (InvalidRequestError, RPCError) as exc:
                return await refuse(credentials(request), exc)
        endpoint.__doc__ = handle.__doc__
        return endpoint

    async def generate(request: Request) -> dict[str, Any]:
        """LiteLLM's `POST /key/generate`."""
        reply = await keys.generate(keys_seed.generate_request(await read_json(request)),
                                    metadata=credentials(request))
        return {"key": reply.key, **keys_seed.info_json(reply.info)}

    async def info(request: Request) -> dict[str, Any]:
        """LiteLLM's `GET /key/info?key=...` (without `key`: the caller's own key)."""
        # Without `key`, an empty one: GetKey reads the caller's own from the metadata, as
        # every route does (the door stripped only "Bearer ": `bearer sk-...` was a 403).
        found = await keys.get(request.query_params.get("key") or "",
                               metadata=credentials(request))
        return {"key": found.key_id, "info": keys_seed.info_json(found)}

    async def update(request: Request) -> dict[str, Any]:
        """LiteLLM's `POST /key/update`: `key` and the fields to change."""
        changed = await keys.update(keys_seed.update_request(await read_json(request)),
                                    metadata=credentials(request))
        return {"key": changed.key_id, **keys_seed.info_json(changed)}

    async def listed(request: Request) -> dict[str, Any]:
        """LiteLLM's `GET /key/list?page=&size=&key_alias=&return_full_object=`."""
        query, full = keys_seed.list_request(request.query_params)
        reply = await keys.list(page=query.page, page_size=query.page_size,
                                key_alias=query.key_alias, metadata=credentials(request))
        return keys_seed.list_json(reply, full)

    async def delete(request: Request) -> dict[str, Any]:
        """LiteLLM's `POST /key/delete` with `{"keys": [...]}`."""
        body = await read_json(request)
        names = body.get("keys")
        if not isinstance(names, list) or not all(isinstance(k, str) for k in names) \
                or not names:
            raise InvalidRequestError("'keys' must be a non-empty array of strings",
                                      param="keys")
        return {"deleted_keys": await keys.delete(names, metadata=credentials(request))}

    return [Route("/key/generate", answered(generate), methods=["POST"]),
            Route("/key/info", answered(info), methods=["GET"]),
            Route("/key/update", answered(update), methods=["POST"]),
            Route("/key/list", answered(listed), methods=["GET"]),
            Route("/key/delete", answered(delete), methods=["POST"])]
