"""Schemathesis against the live shim, fuzzing it from its own OpenAPI document.

Every generated request (schema-conforming and schema-violating) must get: no 5xx, a
status and body the document declares, OpenAI's error body on every error, and an
`x-request-id`. Derandomized and bounded (about 50 examples per operation and mode).
Keys are off in the shared mesh, so /key/* must answer the documented 400.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from meshutil import RunningMesh
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from scillm.bridges.openai.openapi import OPENAPI

SCHEMA = schemathesis.openapi.from_dict(OPENAPI)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
OPERATIONS = [("/v1/chat/completions", "POST"), ("/v1/embeddings", "POST"),
              ("/v1/completions", "POST"), ("/v1/models", "GET"),
              ("/key/generate", "POST"), ("/key/info", "GET"), ("/key/update", "POST"),
              ("/key/list", "GET"), ("/key/delete", "POST")]
#: Model names that start runs of other services (sandboxes, provers): not fuzzed here.
_ROUTED = ("codeworld", "agent/", "certainly", "lean4")
FUZZ = settings(max_examples=50, deadline=None, derandomize=True, database=None,
                phases=[Phase.explicit, Phase.generate, Phase.shrink],
                suppress_health_check=list(HealthCheck))


def _aim(case: schemathesis.Case, use_echo: bool) -> None:
    """Non-streaming chat calls only (a text completion may stream: see `_checks`); half of
    the chat, embedding and text completion bodies go to the echo model."""
    body = case.body
    if case.path == "/v1/embeddings" and isinstance(body, dict) and use_echo:
        body["model"] = "echo/embed"
    if case.path == "/v1/completions" and isinstance(body, dict) and use_echo:
        body["model"] = "echo/base"
    if case.path != "/v1/chat/completions" or not isinstance(body, dict):
        return
    body["stream"] = False
    model = body.get("model")
    if use_echo or (isinstance(model, str) and model.startswith(_ROUTED)):
        body["model"] = "echo/x"


def _checks(response: Any) -> list[Any]:
    """The checks for a response: all, but for a stream (a text completion's `"stream":
    true`) the schema's, which describes its events in prose (a string), not each event."""
    kind = response.headers.get("content-type") or ""
    if "text/event-stream" in (" ".join(kind) if isinstance(kind, list) else kind):
        return [c for c in CHECKS if c is not response_schema_conformance]
    return CHECKS


def assert_openai_shaped(response: Any, request: str = "") -> None:
    """What every answer of the shim must carry, whatever the request."""
    assert response.status_code < 500, f"{request}\n-> {response.text}"
    assert response.headers.get("x-request-id"), response.headers
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}, body
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"]
        assert isinstance(error["type"], str) and error["type"]
        assert error["param"] is None or isinstance(error["param"], str)
        assert error["code"] is None or isinstance(error["code"], str)


@pytest.fixture(scope="module")
def http() -> Any:
    with requests.Session() as session:
        yield session


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("path", "method", "mode"), [
    pytest.param(path, method, mode, id=f"{method} {path} {mode.value}")
    for path, method in OPERATIONS for mode in GenerationMode
    # GET /v1/models takes no input, so nothing in it can violate the schema.
    if not (path == "/v1/models" and mode is GenerationMode.NEGATIVE)])
def test_shim_survives_fuzzing(mesh: RunningMesh, http: requests.Session, path: str,
                               method: str, mode: GenerationMode) -> None:
    operation = SCHEMA[path][method]

    @FUZZ
    @given(case=operation.as_strategy(generation_mode=mode), use_echo=st.booleans())
    def run(case: schemathesis.Case, use_echo: bool) -> None:
        _aim(case, use_echo)
        response = case.call(base_url=mesh.http_url, session=http, timeout=20)
        assert_openai_shaped(response, case.as_curl_command())
        case.validate_response(response, checks=_checks(response))

    run()


def test_key_management_is_a_documented_precondition_error(mesh: RunningMesh) -> None:
    for method, path, body in (("POST", "/key/generate", {}), ("GET", "/key/info", None),
                               ("POST", "/key/update", {"key": "sk-x", "rpm_limit": 1}),
                               ("GET", "/key/list", None),
                               ("POST", "/key/delete", {"keys": ["sk-x"]})):
        response = requests.request(method, mesh.http_url + path, json=body, timeout=20)
        assert response.status_code == 400, response.text
        assert_openai_shaped(response)
        assert response.json()["error"]["code"] == "KeysDisabled"
        assert "400" in OPENAPI["paths"][path][method.lower()]["responses"]


def test_document_is_a_valid_openapi_31_schema() -> None:
    assert OPENAPI["openapi"] == "3.1.0"
    SCHEMA.validate()
    documented = {(p, m.upper()) for p, ops in OPENAPI["paths"].items() for m in ops}
    assert set(OPERATIONS) <= documented


@pytest.mark.parametrize("body", [{"rpm_limit": 2**63}, {"tpm_limit": 10**30},
                                  {"duration": 1e300}, {"duration": "99999999999999d"}],
                         ids=["rpm_limit", "tpm_limit", "duration_s", "duration_str"])
def test_key_generate_refuses_out_of_range_numbers(mesh: RunningMesh,
                                                   body: dict[str, Any]) -> None:
    response = requests.post(mesh.http_url + "/key/generate", json=body, timeout=20)
    assert response.status_code == 400, response.text
    assert_openai_shaped(response)
    assert response.json()["error"]["param"] in body


def test_the_shim_serves_its_openapi_document(mesh: RunningMesh) -> None:
    response = requests.get(mesh.http_url + "/openapi.json", timeout=20)
    assert response.status_code == 200 and response.json() == OPENAPI


@pytest.mark.parametrize("raw", [
    b'{"model": "echo/x\\ud800", "messages": [{"role": "user", "content": "x"}]}',
    b'{"model": "echo/x", "messages": [{"role": "user", "content": "x"}], "n": 1e400}',
    b'{"model": "echo/x", "messages": [{"role": "user", "content": "x"}], '
    b'"seed": 99999999999999999999}',
    b'{"model": "echo/x", "messages": [{"role": ["user"], "content": "x"}]}',
    b'{"model": "echo/x", "messages": [{"role": "user", "content": "x"}], "top_k": NaN}',
    b'{"model": "echo/x", "messages": [{"role": "user", "content": "x"}], '
    b'"tool_choice": {"function": 1}}',
], ids=["lone_surrogate", "inf", "int64_overflow", "unhashable_role", "nan_extra", "tool_choice"])
def test_regression_bodies_that_were_500s_are_400s(mesh: RunningMesh, raw: bytes) -> None:
    response = requests.post(mesh.http_url + "/v1/chat/completions", data=raw, timeout=20,
                             headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert_openai_shaped(response)
