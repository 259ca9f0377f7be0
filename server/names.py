"""How long a name a caller chooses may be: a model name (a request's, a key's) and a key's
alias. A wildcard (`echo/*`) serves any model name, and one of megabytes was served,
memoised by the router and kept as a metrics label: names are short."""

from __future__ import annotations

__all__ = ["MAX_NAME_CHARS"]

MAX_NAME_CHARS = 256
