"""LiteLLM proxy YAML, environment references and secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from scillm.server.completion import CompletionSettings, InvalidRequest, Secret

YAML = """
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_key: os.environ/OPENAI_API_KEY
      rpm: 600
      weight: 2
      timeout: 30
  - model_name: gpt-4o
    litellm_params: {model: azure/gpt-4o, api_base: os.environ/AZ_BASE, tpm: 10000}
  - model_name: claude
    litellm_params: {model: anthropic/claude-sonnet}
router_settings:
  routing_strategy: usage-based-routing-v2
  num_retries: 4
  timeout: 20
  allowed_fails: 1
  cooldown_time: 9
  fallbacks: [{"gpt-4o": ["claude"]}]
  context_window_fallbacks: [{"claude": ["gpt-4o"]}]
  enable_pre_call_checks: true
litellm_settings:
  cache: true
  cache_params: {type: redis, host: os.environ/REDIS_HOST, port: 6380, ttl: 60,
                 password: os.environ/REDIS_PASSWORD}
  drop_params: true
general_settings: {master_key: sk-1234}
"""


def test_litellm_yaml_loads_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(YAML)
    env = {"OPENAI_API_KEY": "sk-secret", "AZ_BASE": "https://az/", "REDIS_HOST": "127.0.0.1",
           "REDIS_PASSWORD": "hunter2"}
    s = CompletionSettings.from_yaml(path, environ=env)
    first, second, claude = s.model_list
    assert first.api_key == Secret("sk-secret", "OPENAI_API_KEY")
    assert (first.rpm, first.weight, first.timeout_s, first.provider) == (600, 2.0, 30.0,
                                                                        "openai")
    assert second.api_base == "https://az" and second.provider == "azure"
    assert claude.api_key is not None and claude.api_key.env == "ANTHROPIC_API_KEY"
    assert claude.api_key.value is None
    r = s.router
    assert r.routing_strategy == "usage-based-routing" and r.num_retries == 4
    assert r.fallbacks == {"gpt-4o": ("claude",)}
    assert r.context_window_fallbacks == {"claude": ("gpt-4o",)}
    assert (s.cache.backend, s.cache.redis_host, s.cache.redis_port, s.cache.ttl_s) == (
        "redis", "127.0.0.1", 6380, 60.0)
    assert "general_settings" in s.ignored_keys
    assert "router_settings.enable_pre_call_checks" in s.ignored_keys
    text = repr(s)
    assert "sk-secret" not in text and "hunter2" not in text
    assert str(first.api_key) == "Secret('***', env='OPENAI_API_KEY')"


def test_bad_configs() -> None:
    with pytest.raises(InvalidRequest):
        CompletionSettings.from_mapping({"model_list": []})
    with pytest.raises(InvalidRequest, match="routing_strategy"):
        CompletionSettings.from_mapping({"model_list": [{"model_name": "a"}],
                                         "router_settings": {"routing_strategy": "magic"}})
