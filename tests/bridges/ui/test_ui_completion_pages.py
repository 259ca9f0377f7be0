"""A stored completion's page for each of Completion's calls: chat, text and embeddings.

The page read every stored completion as a chat one (`choices[].message`): a stored text
completion (unary or streamed) failed the page with a 500 (AttributeError: message), and an
embedding run showed an empty page. Against a real mesh keeping its completions
(`store_completions`), the echo models, and the page as the server renders it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from meshutil import RunningMesh, mesh_settings, start_mesh

MASTER = "sk-master-ui-completions"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    tmp = tmp_path_factory.mktemp("ui-completions")
    config = tmp / "models.yaml"
    config.write_text(json.dumps({"model_list": [
        {"model_name": "talk", "litellm_params": {"model": "echo/talk"}},
        {"model_name": "embed", "litellm_params": {"model": "echo/embed"}}],
        "litellm_settings": {"cache": False}}))
    running = start_mesh(mesh_settings(tmp, config_path=config, master_key=MASTER,
                                       store_completions=True))
    try:
        yield running
    finally:
        running.stop()


def _post(mesh: RunningMesh, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{mesh.http_url}{path}", json=body, timeout=60,
                      headers={"authorization": f"Bearer {MASTER}"})


def _page(mesh: RunningMesh, run_id: str) -> str:
    page = httpx.get(f"{mesh.http_url}/ui/runs/{run_id}", timeout=60,
                     headers={"authorization": f"Bearer {MASTER}"})
    assert page.status_code == 200, page.text[:2000]
    return page.text


def test_a_chat_completion_page_shows_its_messages_and_answer(mesh: RunningMesh) -> None:
    reply = _post(mesh, "/v1/chat/completions", {
        "model": "talk", "messages": [{"role": "user", "content": "spectral lines"}]})
    assert reply.status_code == 200, reply.text
    page = _page(mesh, reply.json()["scillm"]["run_id"])
    assert "spectral lines" in page and "finish: stop" in page.lower()


@pytest.mark.parametrize("stream", [False, True])
def test_a_text_completion_page_shows_its_prompts_and_continuations(
        mesh: RunningMesh, stream: bool) -> None:
    body: dict[str, Any] = {"model": "talk", "prompt": ["quantum dots", "perovskite cells"],
                            "max_tokens": 4}
    if stream:  # the usage chunk carries the run id
        body.update(stream=True, stream_options={"include_usage": True})
    reply = _post(mesh, "/v1/completions", body)
    assert reply.status_code == 200, reply.text
    if stream:
        events = [json.loads(line[6:]) for line in reply.text.splitlines()
                  if line.startswith("data: {")]
        run_id = next(e["scillm"]["run_id"] for e in events if "scillm" in e)
        texts = {}
        for event in events:
            for choice in event.get("choices", []):
                texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
    else:
        run_id = reply.json()["scillm"]["run_id"]
        texts = {c["index"]: c["text"] for c in reply.json()["choices"]}
    page = _page(mesh, run_id)
    assert "quantum dots" in page and "perovskite cells" in page
    for text in texts.values():
        assert text.strip() and text.strip() in page, (text, page)


def test_an_embedding_page_shows_its_inputs_and_vectors(mesh: RunningMesh) -> None:
    reply = _post(mesh, "/v1/embeddings", {"model": "embed", "input": ["a cell", "a gene"],
                                           "encoding_format": "float"})
    assert reply.status_code == 200, reply.text
    size = len(reply.json()["data"][0]["embedding"])
    page = _page(mesh, reply.json()["scillm"]["run_id"])
    assert "a cell" in page and "a gene" in page
    assert page.count(f"{size} numbers") == 2, page
