"""Agent settings from the model configuration file (LiteLLM's proxy YAML).

LiteLLM's config has a top-level `mcp_servers` mapping; SciLLM reads it as is:

    mcp_servers:
      math:                       # tools are offered as math__<tool>
        command: python           # stdio transport: command, args, env
        args: ["server.py"]
      search:
        url: http://127.0.0.1:8000/mcp     # streamable HTTP transport
    http_tool_servers:            # the seed's HTTP tool protocol (GET /tools, POST /invoke)
      lab:                        # tools are offered as lab__<tool>
        url: http://127.0.0.1:8791
        headers: {authorization: os.environ/LAB_TOKEN}   # os.environ/NAME: read at start-up
    agent_settings:               # optional: AgentSettings fields (max_iterations, ...)
      max_iterations: 8
      escalation_model: gpt-4o
      shell_presets: [python]
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from ._settings import TUPLE_SETTINGS, AgentSettings, HttpToolServerConfig, McpServerConfig
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


def _http_server(name: str, entry: Any) -> HttpToolServerConfig:
    param = f"http_tool_servers.{name}"
    if not isinstance(entry, Mapping) or not isinstance(entry.get("url"), str):
        raise AgentConfigError(f"{param} must be a mapping with a url", param=param)
    headers = entry.get("headers") or {}
    if not isinstance(headers, Mapping):
        raise AgentConfigError(f"{param}.headers must be a mapping", param=param)
    resolved: dict[str, str] = {}
    for key, value in headers.items():
        text = str(value)
        if text.startswith("os.environ/"):
            text = os.environ.get(text.removeprefix("os.environ/"), "")
        resolved[str(key)] = text
    server = HttpToolServerConfig(name=name, url=entry["url"], headers=resolved)
    server.validate()
    return server


def agent_settings_from_file(path: Path | None, base: AgentSettings | None = None,
                             ) -> AgentSettings:
    """AgentSettings with `mcp_servers`, `http_tool_servers` and `agent_settings` taken
    from the YAML at `path`."""
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
    http = data.get("http_tool_servers") or {}
    if not isinstance(http, Mapping):
        raise AgentConfigError("http_tool_servers must be a mapping of name to server",
                               param="http_tool_servers")
    values: dict[str, Any] = dict(data.get("agent_settings") or {})
    if servers:
        values["mcp_servers"] = tuple(_server(str(n), e) for n, e in servers.items())
    if http:
        values["http_tool_servers"] = tuple(_http_server(str(n), e) for n, e in http.items())
    for key in TUPLE_SETTINGS:
        if key in values:
            values[key] = tuple(values[key])
    try:
        settings = replace(settings, **values)
    except TypeError as exc:
        raise AgentConfigError(f"agent_settings: {exc}", param="agent_settings") from None
    settings.validate()
    return settings
