"""Configuration of the agent: engine settings (start-up) and per-run options."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ..headers import header_problem
from ._shell import shell_prefixes
from .errors import AgentConfigError

__all__ = [
    "DEFAULT_BASH_ALLOWLIST",
    "DEFAULT_GIVE_UP_MARKERS",
    "AgentSettings",
    "HttpToolServerConfig",
    "McpServerConfig",
    "RunConfig",
]

#: Commands a bash code tool may run. Shell keywords and builtins like `cd` are not listed.
#: The list is a policy in front of the sandbox, which is the boundary: awk (`system()`),
#: sed (its `e` command) and sort (`--compress-program=sh`) can run any other command, as an
#: allowed `bash -c` would. (Refusing such options word by word would not close this: the
#: script's own variables, `o=--compress-program=sh; sort $o`, are expanded after the check.)
DEFAULT_BASH_ALLOWLIST: tuple[str, ...] = (
    "awk", "basename", "bc", "cat", "cut", "dirname", "echo", "expr", "false", "grep",
    "head", "ls", "printf", "pwd", "sed", "seq", "sort", "tail", "test", "tr", "true",
    "uniq", "wc", "[",
)

#: Phrases (case-insensitive) that make a final answer a give-up, which escalates when an
#: escalation model is configured. An empty answer is a give-up too.
DEFAULT_GIVE_UP_MARKERS: tuple[str, ...] = (
    "budget exceeded", "i give up", "i cannot solve", "i can't solve", "unable to solve",
)


def _check_name(kind: str, name: str, param: str) -> None:
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise AgentConfigError(f"{kind} name {name!r} must be alphanumeric, '_' or '-'",
                               param=param)


@dataclass(frozen=True)
class McpServerConfig:
    """One MCP server whose tools the agent may offer: a stdio command or an HTTP url."""

    #: Name used in tool names (`<name>__<tool>`) and in `RunConfig.mcp_servers`.
    name: str
    #: Executable started for the stdio transport.
    command: str | None = None
    #: Its arguments.
    args: tuple[str, ...] = ()
    #: Extra environment variables for the process.
    env: Mapping[str, str] = field(default_factory=dict)
    #: Streamable HTTP endpoint (e.g. `http://127.0.0.1:8000/mcp`), instead of `command`.
    url: str | None = None

    @property
    def transport(self) -> str:
        """`stdio` or `http`."""
        return "stdio" if self.command is not None else "http"

    def validate(self) -> None:
        """Raise AgentConfigError if the entry is unusable."""
        _check_name("MCP server", self.name, "mcp_servers.name")
        if (self.command is None) == (self.url is None):
            raise AgentConfigError(f"MCP server {self.name!r} needs exactly one of command "
                                   "or url", param="mcp_servers")


@dataclass(frozen=True)
class HttpToolServerConfig:
    """A tool server speaking the seed's HTTP tool protocol: `GET <url>/tools` lists
    OpenAI tool specs, `POST <url>/invoke` with `{"name", "arguments"}` runs one."""

    #: Name used in tool names (`<name>__<tool>`) and in `RunConfig.http_tool_servers`.
    name: str
    #: Base URL (`http://127.0.0.1:8791`); `/tools` and `/invoke` are appended.
    url: str
    #: Headers sent with every request (e.g. authorization).
    headers: Mapping[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise AgentConfigError if the entry is unusable."""
        _check_name("HTTP tool server", self.name, "http_tool_servers.name")
        if not self.url.startswith(("http://", "https://")):
            raise AgentConfigError(f"HTTP tool server {self.name!r}: url must start with "
                                   "http:// or https://", param="http_tool_servers.url")
        _check_fields(self.headers, "http_tool_servers.headers")


@dataclass(frozen=True)
class AgentSettings:
    """Engine settings, read once at start-up; `RunConfig` may change them per run,
    within the ceilings of `_check_limits`."""

    #: Model named in requests when a run names none.
    model: str = ""
    #: Maximum model turns in a run.
    max_iterations: int = 10
    #: Wall-clock budget of a run, seconds.
    max_total_seconds: float = 300.0
    #: Token budget of a run (prompt + completion, as reported by the model).
    max_total_tokens: int = 200_000
    #: After a failed tool call, add a repair observation and go on.
    enable_repair: bool = True
    #: Offer tools to the model.
    use_tools: bool = True
    #: Run a fenced code block found in a reply that has no tool calls.
    auto_run_code: bool = False
    #: Code tool languages: python, javascript, bash, typescript, c, cpp, java, go, rust
    #: (the last six need their toolchains).
    languages: tuple[str, ...] = ("python", "javascript", "bash")
    #: Commands a bash code tool may run.
    bash_allowlist: tuple[str, ...] = DEFAULT_BASH_ALLOWLIST
    #: Estimated tokens of history sent to the model; older turns are pruned beyond it.
    history_token_budget: int = 16_000
    #: Timeout of one tool call, seconds.
    tool_timeout_seconds: float = 30.0
    #: Most tool calls run of one model turn; each call past them is answered with an
    #: error (TooManyToolCallsError), not run.
    max_tool_calls_per_turn: int = 64
    #: Timeout for starting and listing one MCP server, seconds.
    mcp_connect_timeout_seconds: float = 15.0
    #: MCP servers whose tools may be offered.
    mcp_servers: tuple[McpServerConfig, ...] = ()
    #: Fail `start()` when an MCP server is unreachable (else it is skipped and reported).
    mcp_required: bool = False
    #: Largest tool output given back to the model, characters (the rest is cut).
    max_tool_output_chars: int = 20_000
    #: Most non-system messages sent to the model (the pinned ones are always sent).
    max_history_messages: int = 50
    #: Most characters of message content sent to the model (pinned ones always sent).
    max_history_chars: int = 64_000
    #: Stronger model a run switches to once (budget out, or the model gave up); "": none.
    escalation_model: str = ""
    #: Model turns the escalation model gets.
    escalation_iterations: int = 3
    #: Phrases that make a final answer a give-up (case-insensitive).
    give_up_markers: tuple[str, ...] = DEFAULT_GIVE_UP_MARKERS
    #: `run_shell` command prefixes (argv words); with `shell_presets`, empty: no shell tool.
    shell_allowlist: tuple[str, ...] = ()
    #: Named shell presets (python, javascript, rust, go, bash) adding prefixes.
    shell_presets: tuple[str, ...] = ()
    #: HTTP tool servers whose tools may be offered.
    http_tool_servers: tuple[HttpToolServerConfig, ...] = ()
    #: Retries of an HTTP tool call answered 429, each after its Retry-After.
    http_tool_retries: int = 2

    def validate(self) -> None:
        """Raise AgentConfigError naming the first setting that is out of range."""
        _check_limits(self.max_iterations, self.max_total_seconds, self.max_total_tokens)
        for name in ("history_token_budget", "max_tool_output_chars", "max_history_messages",
                     "max_history_chars", "escalation_iterations", "max_tool_calls_per_turn"):
            if getattr(self, name) < 1:
                raise AgentConfigError(f"{name} must be >= 1", param=name)
        if self.http_tool_retries < 0:
            raise AgentConfigError("http_tool_retries must be >= 0", param="http_tool_retries")
        for name in ("tool_timeout_seconds", "mcp_connect_timeout_seconds"):
            if getattr(self, name) <= 0:
                raise AgentConfigError(f"{name} must be > 0", param=name)
        unknown = [lang for lang in self.languages if lang not in KNOWN_LANGUAGES]
        if unknown:
            raise AgentConfigError(f"unknown language(s) {unknown}; choose from "
                                   f"{', '.join(KNOWN_LANGUAGES)}", param="languages")
        names = [s.name for s in self.mcp_servers]
        if len(set(names)) != len(names):
            raise AgentConfigError("MCP server names must be unique", param="mcp_servers")
        for server in self.mcp_servers:
            server.validate()
        names = [s.name for s in self.http_tool_servers]
        if len(set(names)) != len(names):
            raise AgentConfigError("HTTP tool server names must be unique",
                                   param="http_tool_servers")
        for http in self.http_tool_servers:
            http.validate()
        shell_prefixes(self.shell_allowlist, self.shell_presets)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for stored runs)."""
        data = asdict(self)
        data["mcp_servers"] = [dict(s, env=dict(s["env"])) for s in data["mcp_servers"]]
        data["http_tool_servers"] = [dict(s, headers=dict(s["headers"]))
                                     for s in data["http_tool_servers"]]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AgentSettings:
        """The inverse of `to_dict`."""
        values = dict(data)
        values["mcp_servers"] = tuple(
            McpServerConfig(**{**s, "args": tuple(s.get("args", ()))})
            for s in values.get("mcp_servers", ()))
        values["http_tool_servers"] = tuple(
            HttpToolServerConfig(**s) for s in values.get("http_tool_servers", ()))
        for name in TUPLE_SETTINGS:
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)


#: AgentSettings fields that are tuples of strings (lists in JSON and YAML).
TUPLE_SETTINGS: tuple[str, ...] = ("languages", "bash_allowlist", "give_up_markers",
                                   "shell_allowlist", "shell_presets")


#: Languages with a code tool profile.
KNOWN_LANGUAGES: tuple[str, ...] = ("python", "javascript", "bash", "typescript", "c", "cpp",
                                    "java", "go", "rust")


@dataclass(frozen=True)
class RunConfig:
    """Options of one step or run; None takes the engine's `AgentSettings` value."""

    model: str | None = None
    max_iterations: int | None = None
    max_total_seconds: float | None = None
    max_total_tokens: int | None = None
    enable_repair: bool | None = None
    use_tools: bool | None = None
    auto_run_code: bool | None = None
    #: Subset of the engine's languages to offer; None offers all.
    languages: tuple[str, ...] | None = None
    #: Names of configured MCP servers whose tools are offered; None offers all (those
    #: that do not answer are skipped), () none. A named server that is not connected
    #: fails the run (McpUnavailableError).
    mcp_servers: tuple[str, ...] | None = None
    #: OpenAI `response_format`, passed through (`{"type": "json_object"}` validates JSON).
    response_format: Mapping[str, Any] | None = None
    #: Passed through to the model.
    reasoning_effort: str | None = None
    #: Sampling seed, passed through.
    seed: int | None = None
    #: Sampling temperature, passed through.
    temperature: float | None = None
    #: Nucleus sampling, passed through.
    top_p: float | None = None
    #: Each model call's max_tokens (the answer's included), passed through.
    max_tokens: int | None = None
    #: Stop sequences (at most 4, none empty), passed through.
    stop: tuple[str, ...] | None = None
    #: Presence and frequency penalties (-2 to 2), passed through.
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    escalation_model: str | None = None
    escalation_iterations: int | None = None
    max_history_messages: int | None = None
    max_history_chars: int | None = None
    #: Replaces the engine's shell prefixes for this run (the sandbox is the isolation).
    shell_allowlist: tuple[str, ...] | None = None
    #: Replaces the engine's shell presets for this run.
    shell_presets: tuple[str, ...] | None = None
    #: Names of configured HTTP tool servers whose tools are offered; None offers all
    #: (those that do not answer are skipped), () none. A named server that cannot be
    #: listed fails the run (HttpToolServerError).
    http_tool_servers: tuple[str, ...] | None = None
    #: Headers added to this run's HTTP tool calls.
    http_tool_headers: Mapping[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for stored runs)."""
        data = asdict(self)
        for name in ("response_format", "http_tool_headers"):
            if getattr(self, name) is not None:
                data[name] = dict(getattr(self, name))
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """The inverse of `to_dict`."""
        values = dict(data)
        for name in ("languages", "mcp_servers", "shell_allowlist", "shell_presets",
                     "http_tool_servers"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(**values)


#: The largest budgets a run may have. A run's budgets are its caller's to choose, but a
#: run asking for 2^31 turns or 1e9 seconds (with an echo model and auto_run_code, a
#: self-printing code block) looped until cancelled, holding the shared sandbox workers.
MAX_ITERATIONS, MAX_TOTAL_SECONDS, MAX_TOTAL_TOKENS = 1_000, 86_400.0, 100_000_000
#: The most stop sequences a model call takes (OpenAI's limit).
MAX_STOPS = 4


def _check_limits(max_iterations: int, max_total_seconds: float, max_total_tokens: int) -> None:
    if not 1 <= max_iterations <= MAX_ITERATIONS:
        raise AgentConfigError(f"max_iterations must be from 1 to {MAX_ITERATIONS:,}",
                               param="max_iterations")
    if not 0 < max_total_seconds <= MAX_TOTAL_SECONDS:  # NaN too
        raise AgentConfigError(f"max_total_seconds must be above 0 and at most "
                               f"{MAX_TOTAL_SECONDS:,.0f} (a day)", param="max_total_seconds")
    if not 1 <= max_total_tokens <= MAX_TOTAL_TOKENS:
        raise AgentConfigError(f"max_total_tokens must be from 1 to {MAX_TOTAL_TOKENS:,}",
                               param="max_total_tokens")


@dataclass(frozen=True)
class Resolved:
    """Settings merged with a RunConfig: what one run actually uses (internal)."""

    model: str
    max_iterations: int
    max_total_seconds: float
    max_total_tokens: int
    enable_repair: bool
    use_tools: bool
    auto_run_code: bool
    languages: tuple[str, ...]
    mcp_servers: tuple[str, ...]
    response_format: Mapping[str, Any] | None
    reasoning_effort: str | None
    seed: int | None
    temperature: float | None
    top_p: float | None
    max_tokens: int | None
    stop: tuple[str, ...] | None
    presence_penalty: float | None
    frequency_penalty: float | None
    escalation_model: str
    escalation_iterations: int
    give_up_markers: tuple[str, ...]
    max_tool_calls_per_turn: int
    max_history_messages: int
    max_history_chars: int
    shell_prefixes: tuple[tuple[str, ...], ...]
    http_tool_servers: tuple[str, ...]
    http_tool_headers: Mapping[str, str]
    #: The run named its MCP servers, or its HTTP tool servers (else it offers every
    #: configured one): a named server that does not answer fails the run; another is
    #: skipped, and the run goes on without its tools.
    mcp_servers_named: bool = False
    http_tool_servers_named: bool = False


def _http_servers(settings: AgentSettings, wanted: tuple[str, ...] | None) -> tuple[str, ...]:
    """Names of the HTTP tool servers a run offers; an entry may be a configured server's
    name or its base URL (the seed's `tool_http_base_url`)."""
    names = tuple(s.name for s in settings.http_tool_servers)
    if wanted is None:
        return names
    by_url = {s.url.rstrip("/"): s.name for s in settings.http_tool_servers}
    out = [entry if entry in names else by_url.get(entry.rstrip("/"), "") for entry in wanted]
    bad = [entry for entry, name in zip(wanted, out, strict=True) if not name]
    if bad:
        # Named, never with their URLs: the operator's internal addresses are not for
        # every caller (a configured server's URL is still accepted for its name).
        raise AgentConfigError(
            f"HTTP tool server(s) {bad} are not configured (configured: "
            f"{', '.join(repr(name) for name in names) or 'none'}); add them under "
            "http_tool_servers in the model configuration", param="http_tool_servers")
    return tuple(dict.fromkeys(out))


#: Headers a run may not set on its HTTP tool calls: how the request is framed and routed
#: is the client's. A caller's `transfer-encoding: chunked` went out beside httpx's own
#: Content-Length (a request a proxy in front of the tool server may split differently, on
#: a pooled connection other runs share), and `host` picked another virtual host.
_FRAMING_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "te",
    "trailer", "upgrade", "expect", "proxy-authorization", "proxy-connection"})


def _tool_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    out = dict(headers or {})
    bad = sorted(name for name in out if name.strip().lower() in _FRAMING_HEADERS)
    if bad:
        raise AgentConfigError(f"http_tool_headers may not set {', '.join(bad)}: the HTTP "
                               "client frames and routes its requests itself",
                               param="http_tool_headers")
    _check_fields(out, "http_tool_headers")
    return out


def _check_fields(headers: Mapping[str, str], param: str) -> None:
    """AgentConfigError naming the first header HTTP/1.1 cannot carry."""
    for name, value in headers.items():
        problem = header_problem(name, value)
        if problem is not None:
            raise AgentConfigError(f"{param}: {problem}", param=param)


def resolve(settings: AgentSettings, config: RunConfig | None) -> Resolved:
    """Merge `config` over `settings`; raise AgentConfigError if it asks for what is not there."""
    c = config or RunConfig()

    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

    configured = tuple(s.name for s in settings.mcp_servers)
    languages = settings.languages if c.languages is None else c.languages
    servers = configured if c.mcp_servers is None else c.mcp_servers
    bad = [lang for lang in languages if lang not in settings.languages]
    if bad:
        raise AgentConfigError(f"language(s) {bad} are not enabled", param="languages")
    bad = [name for name in servers if name not in configured]
    if bad:
        raise AgentConfigError(f"MCP server(s) {bad} are not configured", param="mcp_servers")
    http = _http_servers(settings, c.http_tool_servers)
    resolved = Resolved(
        model=pick(c.model, settings.model),
        max_iterations=pick(c.max_iterations, settings.max_iterations),
        max_total_seconds=pick(c.max_total_seconds, settings.max_total_seconds),
        max_total_tokens=pick(c.max_total_tokens, settings.max_total_tokens),
        enable_repair=pick(c.enable_repair, settings.enable_repair),
        use_tools=pick(c.use_tools, settings.use_tools),
        auto_run_code=pick(c.auto_run_code, settings.auto_run_code),
        languages=tuple(languages), mcp_servers=tuple(servers),
        response_format=c.response_format, reasoning_effort=c.reasoning_effort,
        seed=c.seed, temperature=c.temperature, top_p=c.top_p, max_tokens=c.max_tokens,
        stop=c.stop, presence_penalty=c.presence_penalty,
        frequency_penalty=c.frequency_penalty,
        escalation_model=pick(c.escalation_model, settings.escalation_model),
        escalation_iterations=pick(c.escalation_iterations, settings.escalation_iterations),
        give_up_markers=settings.give_up_markers,
        max_tool_calls_per_turn=settings.max_tool_calls_per_turn,
        max_history_messages=pick(c.max_history_messages, settings.max_history_messages),
        max_history_chars=pick(c.max_history_chars, settings.max_history_chars),
        shell_prefixes=shell_prefixes(pick(c.shell_allowlist, settings.shell_allowlist),
                                      pick(c.shell_presets, settings.shell_presets)),
        http_tool_servers=tuple(http), http_tool_headers=_tool_headers(c.http_tool_headers),
        mcp_servers_named=c.mcp_servers is not None,
        http_tool_servers_named=c.http_tool_servers is not None)
    _check_limits(resolved.max_iterations, resolved.max_total_seconds, resolved.max_total_tokens)
    for name in ("escalation_iterations", "max_history_messages", "max_history_chars"):
        if getattr(resolved, name) < 1:
            raise AgentConfigError(f"{name} must be >= 1", param=name)
    # Checked here, not left to the model call: a NaN (gRPC carries one) failed each turn's
    # call as UNAVAILABLE "the model call failed", though the caller's request was at fault.
    if resolved.temperature is not None and not 0.0 <= resolved.temperature <= 2.0:
        raise AgentConfigError("temperature must be between 0 and 2", param="temperature")
    if resolved.top_p is not None and not 0.0 <= resolved.top_p <= 1.0:
        raise AgentConfigError("top_p must be between 0 and 1", param="top_p")
    if resolved.max_tokens is not None and resolved.max_tokens < 1:
        raise AgentConfigError("max_tokens must be >= 1", param="max_tokens")
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(resolved, name)
        if value is not None and not -2.0 <= value <= 2.0:
            raise AgentConfigError(f"{name} must be between -2 and 2", param=name)
    if resolved.stop is not None and (len(resolved.stop) > MAX_STOPS or not all(resolved.stop)):
        raise AgentConfigError(f"stop takes at most {MAX_STOPS} sequences, none empty",
                               param="stop")
    return resolved
