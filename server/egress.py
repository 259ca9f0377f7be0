"""Which egress proxy a request to a URL goes through, read from the environment as httpx,
the openai SDK, LiteLLM and curl read it: `HTTPS_PROXY` / `HTTP_PROXY` by the URL's scheme
(either case), else `ALL_PROXY`; none for a host `NO_PROXY` names (a name, a domain
suffix, an address, or `*`). Read when a connection pool for the URL's base is made, so a
change takes a restart."""

from __future__ import annotations

import urllib.request
from urllib.parse import urlsplit

__all__ = ["proxy_for"]


def proxy_for(url: str) -> str | None:
    """The proxy URL a request to `url` goes through; None: directly."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or not parts.hostname:
        return None
    host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    if urllib.request.proxy_bypass(host):  # NO_PROXY (on Linux: the environment only)
        return None
    return proxy
