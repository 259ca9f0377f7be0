"""Which egress proxy a request to a URL goes through, read from the environment as httpx,
the openai SDK, LiteLLM and curl read it: `HTTPS_PROXY` / `HTTP_PROXY` by the URL's scheme
(either case), else `ALL_PROXY`; none for a host `NO_PROXY` names (a name, a domain
suffix, an address, or `*`); a value without a scheme (`127.0.0.1:3128`) is an HTTP
proxy. Read when a connection pool for the URL's base is made, so a change takes a
restart. A proxy URL may hold credentials (`http://user:password@host:port`): what a
message says of one is `shown(proxy)`, never the URL itself."""

from __future__ import annotations

import urllib.request
from urllib.parse import urlsplit

__all__ = ["proxy_for", "shown", "unusable"]


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
    return proxy if "://" in proxy else f"http://{proxy}"


def shown(proxy: str) -> str:
    """`proxy` as a message may show it: its scheme, host and port, no credentials."""
    parts = urlsplit(proxy)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:  # a port that is not one
        port = ""
    return f"{parts.scheme or 'http'}://{host}{port}"


def unusable(proxy: str, exc: BaseException) -> str:
    """Why an httpx transport refused `proxy`, said without its URL (httpx's own message
    repeats it, credentials included): for a SOCKS proxy without `socksio`, what to
    install."""
    if isinstance(exc, ImportError):
        why = "a SOCKS proxy needs httpx's socks extra (pip install 'httpx[socks]')"
    else:
        why = "not a proxy URL httpx can use (http://, https://, socks5://)"
    return f"the egress proxy {shown(proxy)} cannot be used: {why}"
