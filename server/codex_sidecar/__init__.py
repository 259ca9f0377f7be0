"""The Codex sidecar: an OpenAI-compatible HTTP server in front of the Codex CLI.

`scillm codex-sidecar --mode echo|forward|cli` serves it in its own process; the
`codex-agent/<model>` Completion provider is its client. Modes: `echo` answers with the
last user message (for tests and wiring checks); `forward` passes requests to another
OpenAI-compatible base; `cli` runs `codex exec --json` per request and turns its JSONL
events into a chat completion (reasoning as `reasoning_content`, the last agent message
as `content`), streamed as SSE when asked. Errors are in `errors`.
"""

from ._app import Sidecar, create_app
from ._events import CodexTurn
from ._settings import MODES, SidecarSettings

__all__ = ["MODES", "CodexTurn", "Sidecar", "SidecarSettings", "create_app"]
