"""The key before the body, on every route of the OpenAI door: a real mesh with a master
key, every door route that reads a body or a query before it calls the mesh, and callers
with no key, a wrong one, one no header can carry on, the master key and a virtual key.

The mesh checks a key first in every call; the door read and refused a malformed request
before it made any call, so an unauthenticated caller heard about its body (400, 413, 415)
instead of 401. It must learn nothing of the body before its key is taken."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from meshutil import RunningMesh, mesh_settings, start_mesh

MASTER = "sk-master-key-first"

#: Requests each route refuses itself, before any call: (method, path, body or raw bytes,
#: the 400's `param`). Every POST route of the door, and the key routes' query.
REFUSED: list[tuple[str, str, Any, str | None]] = [
    ("POST", "/v1/chat/completions", {"model": "echo/x", "messages": "hi"}, "messages"),
    ("POST", "/chat/completions", b"{not json", None),
    ("POST", "/v1/chat/completions", [1, 2], None),
    ("POST", "/v1/chat/completions", {"model": "echo/x", "messages": [
        {"role": "user", "content": "hi"}], "stream": "yes"}, "stream"),
    ("POST", "/v1/chat/completions", {"model": "codeworld", "messages": []}, "items"),
    ("POST", "/v1/chat/completions", {"model": "agent/echo/x", "messages": 3}, "messages"),
    ("POST", "/v1/chat/completions", {"model": "certainly", "messages": 3}, "items"),
    ("POST", "/v1/completions", {"model": "echo/x", "prompt": 5}, "prompt"),
    ("POST", "/completions", {"model": "echo/x", "prompt": "a", "stream": True,
                              "stream_options": []}, "stream_options"),
    ("POST", "/v1/embeddings", {"model": "echo/x", "input": 5}, "input"),
    ("POST", "/embeddings", b"{not json", None),
    ("POST", "/v1/responses", {"model": "echo/x", "input": 5}, "input"),
    ("POST", "/responses", {"model": "codeworld", "input": "hi"}, "model"),
    ("POST", "/agent/run", {"model": 5}, "model"),
    ("POST", "/bridge/complete", {"model": "gpt-x", "messages": []}, "model"),
    ("POST", "/bridge/complete", {"provider": {"name": "certainly"}, "items": 3}, "items"),
    ("POST", "/key/generate", {"models": 5}, "models"),
    ("POST", "/key/update", {"key": 5}, "key"),
    ("POST", "/key/delete", {"keys": 5}, "keys"),
    ("GET", "/key/list?page=abc", None, "page"),
]
#: What a caller with no good key sends: (headers, the 401's message).
UNKNOWN = [({}, "missing API key"),
           ({"authorization": "Bearer sk-not-a-key"}, "invalid API key"),
           ({"x-api-key": "sk-not-a-key"}, "invalid API key"),
           ({"authorization": "Bearer sk-\tno"}, "invalid API key")]


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    """Every service, a master key, `echo/...` models and a small body limit (4 KiB)."""
    tmp = tmp_path_factory.mktemp("key-first")
    config = tmp / "models.yaml"
    config.write_text(json.dumps({
        "model_list": [{"model_name": "echo/*", "litellm_params": {"model": "echo/*"}}],
        "general_settings": {"master_key": MASTER}}))
    running = start_mesh(mesh_settings(tmp, config_path=config, max_request_bytes=4096))
    yield running
    running.stop()


def _send(mesh: RunningMesh, method: str, path: str, body: Any,
          headers: dict[str, str]) -> httpx.Response:
    raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    return httpx.request(method, f"{mesh.http_url}{path}", content=raw, timeout=60,
                         headers={"content-type": "application/json", **headers})


@pytest.mark.parametrize(("method", "path", "body", "param"), REFUSED,
                         ids=[f"{m} {p} {i}" for i, (m, p, _, _) in enumerate(REFUSED)])
def test_a_caller_without_a_good_key_hears_401_before_anything_of_its_body(
        keyed: RunningMesh, method: str, path: str, body: Any, param: str | None) -> None:
    for headers, message in UNKNOWN:
        reply = _send(keyed, method, path, body, headers)
        assert reply.status_code == 401, (headers, reply.text)
        error = reply.json()["error"]
        assert error["type"] == "authentication_error" and message in error["message"]
        assert error["param"] is None and reply.headers["x-request-id"]
    # With the master key, the body's fault is named, as before.
    reply = _send(keyed, method, path, body, {"authorization": f"Bearer {MASTER}"})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings", "/v1/completions",
                                  "/v1/responses", "/agent/run", "/bridge/complete",
                                  "/key/generate"])
def test_a_body_too_large_or_compressed_is_refused_after_the_key(keyed: RunningMesh,
                                                                 path: str) -> None:
    """413 and 415 are read from the head alone: the key comes first there too, and the
    connection still closes (the body was not read)."""
    for headers, status in (({"content-encoding": "gzip"}, 415), ({}, 413)):
        body = b"{}" if status == 415 else b'{"pad": "' + b"x" * 8192 + b'"}'
        refused = _send(keyed, "POST", path, body, headers)
        assert refused.status_code == 401, refused.text
        assert refused.headers["connection"] == "close"
        answered = _send(keyed, "POST", path, body,
                         {**headers, "authorization": f"Bearer {MASTER}"})
        assert answered.status_code == status, answered.text
        assert answered.headers["connection"] == "close"


def test_a_virtual_key_hears_its_bodys_fault_and_spends_no_request_on_it(
        keyed: RunningMesh) -> None:
    """A key the mesh takes is told what is wrong with its body; asking for its key
    spends none of its requests per minute (rpm_limit 1: the valid call after two refused
    ones is served)."""
    made = httpx.post(f"{keyed.http_url}/key/generate", timeout=30, json={"rpm_limit": 1},
                      headers={"authorization": f"Bearer {MASTER}"})
    assert made.status_code == 200, made.text
    key = {"authorization": f"Bearer {made.json()['key']}"}
    for method, path, body, param in REFUSED[:3] + REFUSED[7:12]:
        reply = _send(keyed, method, path, body, key)
        assert reply.status_code == 400, (path, reply.text)
        assert reply.json()["error"]["param"] == param
    served = _send(keyed, "POST", "/v1/chat/completions", {
        "model": "echo/x", "messages": [{"role": "user", "content": "hi"}]}, key)
    assert served.status_code == 200, served.text
    assert served.json()["choices"][0]["message"]["content"] == "hi"


def test_without_keys_a_malformed_body_is_still_a_400(mesh: RunningMesh) -> None:
    """The embedded defaults have no master key: nothing to check first."""
    for method, path, body, param in REFUSED[:2] + REFUSED[7:10]:
        reply = _send(mesh, method, path, body, {})
        assert reply.status_code == 400, (path, reply.text)
        assert reply.json()["error"]["param"] == param
