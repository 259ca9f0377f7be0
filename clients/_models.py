"""Model preflight: which served model a name means, from a cached model list.

    catalog = ModelCatalog(client)                     # gRPC ListModels
    catalog = ModelCatalog(base_url="http://127.0.0.1:4000/v1")   # GET /v1/models
    found = await catalog.resolve("gpt4o")
    print(found)             # 'gpt4o' resolved to 'gpt-4o' (alias)
    request["model"] = found.model

A name resolves, in this order: `exact` (served as is); `wildcard` (a configured pattern
such as `echo/*` serves it); `alias` (the only served name equal to it once case and
punctuation are ignored, `gpt4o` -> `gpt-4o`, also against the part after a provider
prefix, `gpt4o` -> `openai/gpt-4o`). Several equally good names are ambiguous; none is
`ModelNotAvailable` with close names. The list is fetched once and kept for `ttl_s`; a
name it does not know refetches it once, in case the model is new.
"""

from __future__ import annotations

import asyncio
import difflib
import fnmatch
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import ModelListError, ModelNotAvailable, RPCError

if TYPE_CHECKING:
    from ._client import ScillmClient

__all__ = ["ModelCatalog", "ModelResolution", "resolve_model"]

_PUNCTUATION = re.compile(r"[^a-z0-9]")


@dataclass(frozen=True)
class ModelResolution:
    """What a requested name resolved to, and how (`exact`, `wildcard` or `alias`)."""

    requested: str
    model: str
    how: str

    def __str__(self) -> str:
        return f"{self.requested!r} resolved to {self.model!r} ({self.how})"


def _loose(name: str) -> str:
    return _PUNCTUATION.sub("", name.lower())


def _loose_tail(name: str) -> str:
    """`_loose` of the part after a provider prefix (`openai/gpt-4o` -> `gpt4o`)."""
    return _loose(name.rsplit("/", 1)[-1])


def resolve_model(requested: str, names: Sequence[str]) -> ModelResolution:
    """Resolve `requested` against served `names` (see the module docstring)."""
    if requested in names:
        return ModelResolution(requested, requested, "exact")
    patterns = [n for n in names if "*" in n]
    if any(fnmatch.fnmatchcase(requested, p) for p in patterns):
        return ModelResolution(requested, requested, "wildcard")
    concrete = [n for n in names if "*" not in n]
    want = _loose(requested)
    for key in (_loose, _loose_tail):
        found = [n for n in concrete if want and key(n) == want]
        if len(found) == 1:
            return ModelResolution(requested, found[0], "alias")
        if found:
            raise ModelNotAvailable(
                f"model {requested!r} is ambiguous: it could be {', '.join(found)}",
                model=requested, candidates=found)
    close = difflib.get_close_matches(requested, concrete, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ModelNotAvailable(f"model {requested!r} is not served{hint}", model=requested,
                            suggestions=close)


class ModelCatalog:
    """The served model names, fetched once (gRPC `ListModels` through `client`, or
    `GET <base_url>/models`) and kept for `ttl_s` seconds."""

    def __init__(self, client: ScillmClient | None = None, *, base_url: str | None = None,
                 api_key: str | None = None, ttl_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if (client is None) == (base_url is None):
            raise ValueError("give ModelCatalog a client or a base_url, not both")
        self._client = client
        self._base_url = base_url.rstrip("/") if base_url else None
        self._api_key = api_key
        self._ttl_s = ttl_s
        self._clock = clock
        self._names: tuple[str, ...] | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()
        #: Model lists fetched so far (a cache hit fetches none).
        self.fetches = 0

    async def names(self, *, refresh: bool = False) -> tuple[str, ...]:
        """The served model names (wildcard patterns included). Concurrent callers share
        one fetch."""
        seen = self.fetches
        async with self._lock:
            fresh = self._names is not None and self._clock() - self._fetched_at < self._ttl_s
            if self._names is not None and fresh and (not refresh or self.fetches != seen):
                return self._names
            self._names = tuple(await self._fetch())
            self._fetched_at = self._clock()
            self.fetches += 1
            return self._names

    async def resolve(self, model: str) -> ModelResolution:
        """Which served model `model` means; ModelNotAvailable when none (or several)."""
        before = self.fetches
        names = await self.names()
        try:
            return resolve_model(model, names)
        except ModelNotAvailable as exc:
            if exc.candidates or self.fetches != before:  # ambiguous, or the list is new
                raise
            return resolve_model(model, await self.names(refresh=True))

    async def _fetch(self) -> list[str]:
        if self._client is not None:
            try:
                return await self._client.completion.list_models()
            except RPCError as exc:
                raise ModelListError(f"ListModels failed: {exc}") from exc
        import httpx

        url = f"{self._base_url}/models"
        headers = {"authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        try:
            async with httpx.AsyncClient(timeout=10.0, trust_env=False) as http:
                response = await http.get(url, headers=headers)
            data = response.json().get("data") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            raise ModelListError(f"GET {url} failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(data, list):
            raise ModelListError(f"GET {url} answered {response.status_code} without a "
                                 f"model list")
        return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]
