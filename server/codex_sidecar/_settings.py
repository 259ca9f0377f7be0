"""Settings of the Codex sidecar, read once at start-up (`scillm codex-sidecar --help`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..completion import Secret

__all__ = ["MODES", "SidecarSettings"]

MODES = ("echo", "forward", "cli")


@dataclass(frozen=True)
class SidecarSettings:
    """How the sidecar answers `/v1/chat/completions`.

    `mode`: `echo` answers with the last user message; `forward` passes the request to
    the OpenAI-compatible `forward_base` (a request with `X-Codex-Force-Local: 1` runs the
    CLI instead, when `codex_cmd` is set); `cli` runs `codex exec --json` per request.

    CLI runs: at most `max_concurrency` at once (others wait their turn); each attempt is
    killed with its whole process group after `timeout_s`; an exit code in
    `transient_exit_codes` is retried up to `retries` times while nothing has been
    streamed yet. Each run works in `workdir`, else a fresh temporary directory.
    """

    mode: str = "echo"
    host: str = "127.0.0.1"
    port: int = 8077
    models: tuple[str, ...] = ("gpt-5",)
    forward_base: str | None = None
    forward_key: Secret | None = None
    codex_cmd: tuple[str, ...] = ()
    codex_args: tuple[str, ...] = ()
    workdir: Path | None = None
    max_concurrency: int = 4
    timeout_s: float = 90.0
    retries: int = 1
    transient_exit_codes: frozenset[int] = field(default_factory=lambda: frozenset({70, 75}))
    #: When set, every route but /healthz needs `Authorization: Bearer <key>` (the mesh's
    #: codex-agent provider sends CODEX_AGENT_API_KEY): whoever reaches the sidecar can
    #: otherwise spend the operator's Codex login or forward key.
    api_key: Secret | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; use one of {', '.join(MODES)}")
        if self.mode == "forward" and not self.forward_base:
            raise ValueError("mode forward needs --forward-base (or CODEX_FORWARD_BASE)")
        if self.mode == "cli" and not self.codex_cmd:
            raise ValueError("mode cli needs the Codex CLI (--codex-bin)")
        if self.max_concurrency < 1:
            raise ValueError("--max-concurrency must be at least 1")
        if self.timeout_s <= 0:
            raise ValueError("--timeout must be positive")
        if self.retries < 0:
            raise ValueError("--retries must not be negative")
        if not self.models:
            raise ValueError("at least one --model is needed")
