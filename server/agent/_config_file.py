"""Agent settings from the model configuration file (LiteLLM's proxy YAML).

LiteLLM's config has a top-level `mcp_servers` mapping; SciLLM reads it as is:

    mcp_servers:
      math:                       # tools are offered as math__<tool>
        command: python           # stdio transport: command, args, env
        args: ["server.py"]
      search:
        url: http://127.0.0.1:8000/mcp     # streamable HTTP transport
    agent_settings:               # optional: AgentSettings fields (max_iterations, ...)
      max_iterations: 8
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from ._settings import AgentSettings, McpServerConfig
from .errors import AgentConfigError

__all__ = ["agent_settings_from_file"]


def _server(name: str, entry: Any) -> McpServerConfig:
    if not isinstance(entry, Mapping):
        raise AgentConfigError(f"mcp_servers.{name} must be a mapping",
                               param=f"mcp_servers.{name}")
    args = entry.get("args") or []
    env = entry.get("env") or {}
    if not isinstance(args, list) or not isinstance(env, Mapping):
        raise AgentConfigError(f"mcp_servers.{name}: args must be a list and env a mapping",
                               param=f"mcp_servers.{name}")
    server = McpServerConfig(name=name, command=entry.get("command"),
                             args=tuple(str(a) for a in args),
                             env={str(k): str(v) for k, v in env.items()},
                             url=entry.get("url"))
    server.validate()
    return server


def agent_settings_from_file(path: Path | None, base: AgentSettings | None = None,
                             ) -> AgentSettings:
    """AgentSettings with `mcp_servers` and `agent_settings` taken from the YAML at `path`."""
    settings = base or AgentSettings()
    if path is None:
        return settings
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, Mapping):
        raise AgentConfigError(f"{path}: the configuration must be a mapping")
    servers = data.get("mcp_servers") or {}
    if not isinstance(servers, Mapping):
        raise AgentConfigError("mcp_servers must be a mapping of name to server",
                               param="mcp_servers")
    values: dict[str, Any] = dict(data.get("agent_settings") or {})
    if servers:
        values["mcp_servers"] = tuple(_server(str(n), e) for n, e in servers.items())
    for key in ("languages", "bash_allowlist"):
        if key in values:
            values[key] = tuple(values[key])
    try:
        settings = replace(settings, **values)
    except TypeError as exc:
        raise AgentConfigError(f"agent_settings: {exc}", param="agent_settings") from None
    settings.validate()
    return settings
