"""LiteLLM proxy YAML, environment references and secrets."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
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
    assert "general_settings" not in s.ignored_keys  # the keys read its master_key
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


_ONE = [{"model_name": "a", "litellm_params": {"model": "echo/a"}}]


@pytest.mark.parametrize(("config", "where"), [
    ({"router_settings": {"num_retries": "abc"}}, "router_settings.num_retries"),
    ({"router_settings": {"num_retries": -3}}, "router_settings.num_retries"),
    ({"router_settings": {"num_retries": 1.5}}, "router_settings.num_retries"),
    ({"router_settings": {"num_retries": True}}, "router_settings.num_retries"),
    ({"router_settings": {"timeout": -1}}, "router_settings.timeout"),
    ({"router_settings": {"timeout": 0}}, "router_settings.timeout"),
    ({"router_settings": {"timeout": [1]}}, "router_settings.timeout"),
    ({"router_settings": {"cooldown_time": float("inf")}}, "router_settings.cooldown_time"),
    ({"router_settings": {"retry_after": float("nan")}}, "router_settings.retry_after"),
    ({"router_settings": {"backoff_max_s": -1}}, "router_settings.backoff_max_s"),
    ({"router_settings": 5}, "router_settings"),
    ({"litellm_settings": ["cache"]}, "litellm_settings"),
    ({"litellm_settings": {"cache_params": {"ttl": 0}}}, "litellm_settings.cache_params.ttl"),
    ({"litellm_settings": {"cache_params": {"port": 70000}}},
     "litellm_settings.cache_params.port"),
    ({"litellm_settings": {"cache_params": "redis"}}, "litellm_settings.cache_params"),
    ({"model_list": {"model_name": "a"}}, "model_list"),
    ({"model_list": [{"model_name": "a", "litellm_params": "echo/a"}]},
     "model_list[0].litellm_params"),
    ({"model_list": [{"model_name": "a", "litellm_params": {"model": "echo/a", "weight": 0}}]},
     "model_list[0].litellm_params.weight"),
    ({"model_list": [{"model_name": "a", "litellm_params": {"model": "echo/a",
                                                            "timeout": "soon"}}]},
     "model_list[0].litellm_params.timeout"),
    ({"model_list": [{"model_name": "a", "litellm_params": {"model": "echo/a", "rpm": -1}}]},
     "model_list[0].litellm_params.rpm"),
    ({"model_list": [{"model_name": "a", "litellm_params": {"model": "echo/a",
                                                            "max_tokens": 0}}]},
     "model_list[0].litellm_params.max_tokens"),
    ({"model_list": [{"model_name": "a", "litellm_params": {"model": "echo/a",
                                                            "extra_headers": "x: 1"}}]},
     "model_list[0].litellm_params.extra_headers"),
    # Headers HTTP cannot carry failed every call: a protocol error, or UnicodeEncodeError.
    *(({"model_list": [{"model_name": "a", "litellm_params": {
        "model": "echo/a", "extra_headers": headers}}]},
       "model_list[0].litellm_params.extra_headers")
      for headers in ({"x-a": "v\r\nx-b: w"}, {"x-a": "caf\u00e9"}, {"bad name": "v"},
                      {"x-n": 5})),
])
def test_a_number_or_section_of_the_wrong_kind_is_refused_by_its_key(
        config: dict[str, object], where: str) -> None:
    """Read with bare int()/float(), `timeout: -1` timed every call out, `cooldown_time:
    .inf` benched a deployment for good, and `num_retries: abc` stopped the start with a
    message naming no key."""
    with pytest.raises(InvalidRequest) as caught:
        CompletionSettings.from_mapping({"model_list": _ONE, **config})
    assert caught.value.param == where and str(caught.value).startswith(where)


def test_numbers_from_the_environment_and_in_range_are_read() -> None:
    s = CompletionSettings.from_mapping({
        "model_list": [{"model_name": "a", "litellm_params": {
            "model": "echo/a", "rpm": "os.environ/RPM", "timeout": "2.5", "weight": 3,
            "max_tokens": 64.0}}],
        "router_settings": {"num_retries": 0, "cooldown_time": 0, "timeout": "30"},
        "litellm_settings": {"cache_params": {"ttl": "os.environ/TTL", "max_entries": 0}}},
        {"RPM": "60", "TTL": "600"})
    dep = s.model_list[0]
    assert (dep.rpm, dep.timeout_s, dep.weight, dep.max_tokens_default) == (60, 2.5, 3.0, 64)
    assert (s.router.num_retries, s.router.cooldown_time_s, s.router.timeout_s) == (0, 0.0, 30.0)
    assert (s.cache.ttl_s, s.cache.max_entries) == (600.0, 0)


def test_keys_nothing_reads_are_named_at_start(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """A typo in the config (`cahce: true`, `api_bse`, `router_setting`) was silently
    nothing: the cache stayed off, the deployment went to its provider's default base.
    The mesh's start names every key nothing reads; the sections and keys other parts
    read (general_settings, agent_settings, mcp_servers, http_tool_servers, per-token
    prices) are not named."""
    from meshutil import mesh_settings, start_mesh

    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({
        "model_list": [{"model_name": "a", "litellm_params": {
            "model": "echo/a", "api_bse": "http://x", "input_cost_per_token": 1e-6}}],
        "router_setting": {"num_retries": 3}, "litellm_settings": {"cahce": True},
        "general_settings": {"master_kye": "sk-typo"}, "agent_settings": {},
        "mcp_servers": {}, "http_tool_servers": {}}))
    settings = CompletionSettings.from_yaml(config)
    assert sorted(settings.ignored_keys) == [
        "general_settings.master_kye",  # the mesh ran open, and said nothing
        "litellm_settings.cahce", "model_list[0].litellm_params.api_bse", "router_setting"]
    caplog.set_level(logging.WARNING, logger="scillm.server")
    running = start_mesh(mesh_settings(tmp_path, config_path=config, services=("completion",)))
    running.stop()
    said = [r.getMessage() for r in caplog.records if "not read" in r.getMessage()]
    assert len(said) == 1 and str(config) in said[0]
    for key in settings.ignored_keys:
        assert key in said[0]


@pytest.mark.parametrize("value", ["os.environ/SCILLM_TEST_UNSET_MASTER", ""])
def test_a_master_key_from_an_unset_variable_stops_the_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """`master_key: os.environ/MK` with MK unset (or empty) was read as no master key: the
    mesh served every caller without a key, and said nothing. `scillm serve` now refuses
    to start, naming the variable; a master key given some other way is used."""
    monkeypatch.setenv("SCILLM_TEST_EMPTY_MASTER", "")
    monkeypatch.delenv("SCILLM_TEST_UNSET_MASTER", raising=False)
    name = value.removeprefix("os.environ/") or "SCILLM_TEST_EMPTY_MASTER"
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({
        "model_list": _ONE, "general_settings": {"master_key": f"os.environ/{name}"}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCILLM_")}
    env.update({"SCILLM_STORE_PATH": str(tmp_path / "runs.sqlite3"),
                "SCILLM_TEST_EMPTY_MASTER": "", "SCILLM_GRPC_PORT": "0",
                "SCILLM_HTTP_PORT": "0"})
    done = subprocess.run([sys.executable, "-m", "scillm.server.cli", "serve", "--config",
                           str(config), "--service", "completion"], env=env,
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1, (done.stdout, done.stderr[-2000:])
    assert f"general_settings.master_key names the environment variable {name}" in \
        done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
