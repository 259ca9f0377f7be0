"""Story 6: keys and limits. A master key, a virtual key for one model at 3 requests a
minute, the 429 past it, the 403 outside its model, and the key deleted.

Run: .venv/bin/python scenarios/keys_and_limits.py
"""

from __future__ import annotations

import contextlib
from typing import Any

import _kit
import httpx
import openai
from _kit import check, figure, show, step

MASTER = "sk-master-scenario"


def story(stack: contextlib.ExitStack[Any]) -> None:
    """Story 6: keys and limits (master key, virtual key, 429, 403, deletion)"""
    tmp = _kit.workdir(stack)
    mesh = _kit.serve(stack, "mesh", "--service", "completion", "--http-port", "0",
                      env=_kit.mesh_env(tmp, SCILLM_MASTER_KEY=MASTER), directory=tmp)
    admin = httpx.Client(base_url=mesh.http, timeout=30,
                         headers={"authorization": f"Bearer {MASTER}"})
    stack.callback(admin.close)
    hello = [{"role": "user", "content": "hello"}]

    def client(key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{mesh.http}/v1", api_key=key, max_retries=0)

    step("without a key, and with the master key")
    try:
        client("sk-nobody").chat.completions.create(model="echo/x", messages=hello)
        check(False, "an unknown key is refused")
    except openai.AuthenticationError as exc:
        check(exc.status_code == 401, "an unknown key is refused: 401")
    reply = client(MASTER).chat.completions.create(model="echo/x", messages=hello)
    check(reply.choices[0].message.content == "hello", "the master key is served")

    step("a virtual key: model echo/allowed only, 3 requests a minute")
    made = admin.post("/key/generate", json={"models": ["echo/allowed"], "rpm_limit": 3,
                                             "key_alias": "scenario", "duration": "1h"})
    check(made.status_code == 200, "POST /key/generate with the master key: 200")
    key = made.json()["key"]
    show(f"key {key[:8]}…  alias {made.json()['key_alias']}  expires {made.json()['expires']}")
    user = client(key)
    answers = [user.chat.completions.create(model="echo/allowed", messages=[
        {"role": "user", "content": f"request {i}"}]).choices[0].message.content
               for i in (1, 2, 3)]
    check(answers == ["request 1", "request 2", "request 3"], "3 requests within the limit")
    try:
        user.chat.completions.create(model="echo/allowed", messages=hello)
        check(False, "the 4th request of the minute is refused")
    except openai.RateLimitError as exc:
        wait = exc.response.headers.get("retry-after")
        show(f"429 {exc.body}  retry-after: {wait}")
        check(exc.status_code == 429 and wait is not None and int(wait) >= 1,
              "the 4th request of the minute: 429 with Retry-After")
    try:
        user.chat.completions.create(model="echo/other", messages=hello)
        check(False, "a model outside the key is refused")
    except openai.PermissionDeniedError as exc:
        show(f"403 {exc.body}")
        check(exc.status_code == 403, "a model outside the key: 403")
    forbidden = httpx.post(f"{mesh.http}/key/generate", json={}, timeout=30,
                           headers={"authorization": f"Bearer {key}"})
    check(forbidden.status_code == 403, "a virtual key cannot make keys: 403")

    step("the key's record, then its deletion")
    info = admin.get("/key/info", params={"key": key}).json()["info"]
    show(f"models {info['models']}  rpm_limit {info['rpm_limit']}  spend {info['spend']}")
    check(key not in str(info), "the secret itself is never shown again")
    deleted = admin.post("/key/delete", json={"keys": [key]})
    check(deleted.status_code == 200, f"POST /key/delete: {deleted.json()}")
    try:
        user.chat.completions.create(model="echo/allowed", messages=hello)
        check(False, "a deleted key is refused")
    except openai.AuthenticationError as exc:
        check(exc.status_code == 401, "the deleted key: 401")
    figure("401 / 200 / 3×200 then 429 / 403 / 401 after deletion")


if __name__ == "__main__":
    _kit.main(story)
