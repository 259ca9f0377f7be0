"""Per-token prices in the config (`input_cost_per_token`, `output_cost_per_token`, in a
`model_list` entry's `litellm_params` or `model_info`) are refused at load time when they
are not a finite number of at least 0, naming the model and the field, as the config's
other numbers are: a negative price was accepted, and every call to that model paid a key
back (its spend went down, past any budget)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scillm.server.completion import CompletionSettings, InvalidRequest


def _config(section: str, field: str, value: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"model_name": "gpt-4o", "litellm_params": {"model": "echo/x"}}
    entry.setdefault(section, {})[field] = value
    return {"model_list": [{"model_name": "free", "litellm_params": {"model": "echo/f"}},
                           entry]}


@pytest.mark.parametrize("section", ["litellm_params", "model_info"])
@pytest.mark.parametrize("field", ["input_cost_per_token", "output_cost_per_token"])
@pytest.mark.parametrize("value", [-1e-6, "-0.5", float("inf"), float("-inf"), float("nan"),
                                   "1e400", "cheap", True, [1]])
def test_a_price_that_is_not_a_finite_number_of_at_least_0_is_refused(
        section: str, field: str, value: Any) -> None:
    where = f"model_list[1].{section}.{field}"
    with pytest.raises(InvalidRequest) as caught:
        CompletionSettings.from_mapping(_config(section, field, value))
    assert caught.value.param == where
    message = str(caught.value)
    assert message.startswith(f"{where} (model 'gpt-4o') must be a number at least 0"), message


def test_prices_of_0_or_more_are_read_as_they_were() -> None:
    """Zero (free), a YAML `1e-6` (a string to PyYAML), an integer, and a price from the
    environment all load."""
    config = {"model_list": [
        {"model_name": "a", "litellm_params": {"model": "echo/a", "input_cost_per_token": 0,
                                               "output_cost_per_token": "1e-6"}},
        {"model_name": "b", "litellm_params": {"model": "echo/b", "input_cost_per_token": 2},
         "model_info": {"output_cost_per_token": "os.environ/PRICE_OUT"}}]}
    settings = CompletionSettings.from_mapping(config, {"PRICE_OUT": "0.25"})
    assert [d.model_name for d in settings.model_list] == ["a", "b"]
    assert not settings.ignored_keys


@pytest.mark.parametrize("service", ["completion", "agent", "--workers"])
def test_scillm_serve_refuses_a_negative_price_and_says_which(tmp_path: Path,
                                                              service: str) -> None:
    """The real `scillm serve` with such a config stops at once (exit 1), with a message
    naming the model and the field, and no traceback: with Completion in the process, and
    without it (the keys read the prices themselves: an agent-only process charged its
    runs' model calls at a negative price); and with `--workers`, whose master read the
    config first and showed a traceback."""
    config = tmp_path / "models.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: cheap\n"
        "    litellm_params: {model: echo/cheap, input_cost_per_token: 0.000001,\n"
        "                     output_cost_per_token: -0.000002}\n"
        "general_settings: {master_key: sk-master-prices}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCILLM_")}
    env.update({"SCILLM_STORE_PATH": str(tmp_path / "runs.sqlite3"), "SCILLM_GRPC_PORT": "0",
                "SCILLM_HTTP_PORT": "0"})
    done = subprocess.run([sys.executable, "-m", "scillm.server.cli", "serve", "--config",
                           str(config),
                           *(["--workers", "2"] if service == "--workers" else
                             ["--service", service])], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, (done.stdout, done.stderr[-2000:])
    assert ("model_list[0].litellm_params.output_cost_per_token (model 'cheap') must be a "
            "number at least 0, not -2e-06") in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_the_file_form_is_read_the_same(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(json.dumps(_config("litellm_params", "input_cost_per_token", -3)))
    with pytest.raises(InvalidRequest, match=r"input_cost_per_token \(model 'gpt-4o'\)"):
        CompletionSettings.from_yaml(path)
