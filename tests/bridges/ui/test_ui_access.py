"""Who sees the runs UI: the API's keys (master, or a virtual key granted `runs: read`),
a sign-in form for browsers, 401/403 for scripts, and an open UI without a master key."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx
from meshutil import mesh_settings, start_mesh

from .conftest import MASTER, UiMesh, artifacts


def _key(ui_mesh: UiMesh, **metadata: str) -> str:
    body: dict[str, Any] = {"metadata": metadata} if metadata else {}
    key: str = ui_mesh.post("/key/generate", body)["key"]
    return key


def _get(url: str, key: str | None = None, **kwargs: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.get(url, headers=headers, timeout=30, **kwargs)


def test_scripts_need_a_key_that_may_read_runs(ui_mesh: UiMesh) -> None:
    url, run_id = ui_mesh.url, ui_mesh.runs["prove"]
    reader, other = _key(ui_mesh, runs="read"), _key(ui_mesh)
    for path in ("/ui/api/runs", f"/ui/api/runs/{run_id}"):
        missing = _get(url + path)
        assert missing.status_code == 401
        assert missing.json()["error"]["type"] == "authentication_error"
        assert _get(url + path, "sk-not-a-key").status_code == 401
        refused = _get(url + path, other)
        assert refused.status_code == 403 and "may not read runs" in refused.text
        assert _get(url + path, reader).status_code == 200
        assert _get(url + path, MASTER).status_code == 200
    replay = f"{url}/ui/runs/{run_id}/replay"
    assert httpx.post(replay, timeout=30).status_code == 401
    assert httpx.post(replay, timeout=30,
                      headers={"authorization": f"Bearer {other}"}).status_code == 403
    # Pages send a browser without a key to the sign-in form, and back afterwards.
    page = _get(f"{url}/ui/runs/{run_id}", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == f"/ui/login?next=%2Fui%2Fruns%2F{run_id}"
    assert _get(f"{url}/ui/runs/{run_id}", other).status_code == 403


def test_a_signed_in_browser_cookie_cannot_replay_from_another_site(ui_mesh: UiMesh) -> None:
    replay = f"{ui_mesh.url}/ui/runs/{ui_mesh.runs['prove']}/replay"
    cookies = {"scillm_ui_key": MASTER}
    forged = httpx.post(replay, cookies=cookies, timeout=60)  # what a foreign form sends
    assert forged.status_code == 403 and "x-scillm-ui" in forged.text
    ours = httpx.post(replay, cookies=cookies, headers={"x-scillm-ui": "1"}, timeout=60)
    assert ours.status_code == 200 and ours.json()["identical"] is True


def test_another_site_can_neither_sign_a_browser_in_nor_out(ui_mesh: UiMesh) -> None:
    """A form on another site signed the victim out, or in with the attacker's key (the
    victim's replays then ran as, and were charged to, that key). A browser says where a
    form came from (Sec-Fetch-Site, Origin): another site's sign-in and sign-out are 403."""
    reader = _key(ui_mesh, runs="read")
    login, logout = f"{ui_mesh.url}/ui/login", f"{ui_mesh.url}/ui/logout"
    for foreign in ({"sec-fetch-site": "cross-site"}, {"origin": "http://evil.test"},
                    {"sec-fetch-site": "same-site", "origin": "http://localhost:1"}):
        signed_in = httpx.post(login, data={"key": reader, "next": "/ui/"}, headers=foreign,
                               timeout=30, follow_redirects=False)
        assert signed_in.status_code == 403 and "scillm_ui_key" not in signed_in.headers.get(
            "set-cookie", ""), foreign
        signed_out = httpx.post(logout, cookies={"scillm_ui_key": MASTER}, headers=foreign,
                                timeout=30, follow_redirects=False)
        assert signed_out.status_code == 403 and "set-cookie" not in signed_out.headers, foreign
    ours = {"sec-fetch-site": "same-origin", "origin": ui_mesh.url}
    signed_in = httpx.post(login, data={"key": reader, "next": "/ui/"}, headers=ours,
                           timeout=30, follow_redirects=False)
    assert signed_in.status_code == 303 and "scillm_ui_key" in signed_in.headers["set-cookie"]
    plain = httpx.post(login, data={"key": reader}, timeout=30, follow_redirects=False)
    assert plain.status_code == 303  # a script, which says nothing of where it came from


def test_browser_sign_in_refuses_wrong_keys_then_signs_in_and_out(browser: Any,
                                                                  ui_mesh: UiMesh) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    page = context.new_page()
    try:
        target = f"/ui/runs/{ui_mesh.runs['agent']}"
        page.goto(ui_mesh.url + target)
        assert "/ui/login" in page.url
        page.screenshot(path=str(artifacts() / "login.png"))

        def sign_in(key: str) -> int:
            with page.expect_response(lambda r: r.request.method == "POST") as info:
                page.fill("#key", key)
                page.click("form[action='/ui/login'] button")
            status: int = info.value.status
            return status

        assert sign_in("sk-wrong") == 401
        assert "invalid API key" in page.inner_text(".error")
        assert sign_in(_key(ui_mesh)) == 403
        assert "may not read runs" in page.inner_text(".error")
        assert sign_in(_key(ui_mesh, runs="read")) == 303
        page.wait_for_url(ui_mesh.url + target)  # back where the browser was going
        assert page.inner_text(".answer p") == "The answer is 42."
        cookie = next(c for c in context.cookies() if c["name"] == "scillm_ui_key")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
        page.click(".logout button")
        page.wait_for_url("**/ui/login")
        page.goto(ui_mesh.url + "/ui/")
        assert "/ui/login" in page.url  # signed out for real
    finally:
        context.close()


def test_sign_in_never_redirects_off_the_ui(ui_mesh: UiMesh) -> None:
    for target in ("https://evil.test/", "//evil.test/ui/", "/ui//evil.test", "/v1/models"):
        reply = httpx.post(f"{ui_mesh.url}/ui/login", timeout=30,
                           data={"key": MASTER, "next": target})
        assert reply.status_code == 303 and reply.headers["location"] == "/ui/", target


def test_the_sign_in_form_is_read_no_further_than_a_form(ui_mesh: UiMesh) -> None:
    """Open to anyone, so it reads at most 8 KiB: a form past that gets 413 at once, its
    end never awaited (a body as long as the caller likes would take the memory); a real
    one still signs in."""
    host, port = ui_mesh.url.removeprefix("http://").rsplit(":", 1)
    start = b"key=" + MASTER.encode() + b"&next=/ui/&pad=" + b"x" * 16384
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(b"POST /ui/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n\r\n"
                     b"%x\r\n%s\r\n" % (len(start), start))  # more to come, it says
        reply = conn.recv(65536)
    assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]
    ok = httpx.post(f"{ui_mesh.url}/ui/login", timeout=30, data={"key": MASTER, "next": "/ui/"})
    assert ok.status_code == 303 and ok.headers["location"] == "/ui/"


def test_without_a_master_key_the_ui_is_open(tmp_path: Path, browser: Any) -> None:
    running = start_mesh(mesh_settings(tmp_path, services=("completion",)))
    try:
        url = running.http_url
        assert _get(f"{url}/ui/").status_code == 200
        assert _get(f"{url}/ui/api/runs").json() == {"runs": [], "next_page_token": ""}
        signin = _get(f"{url}/ui/login", follow_redirects=False)
        assert signin.status_code == 303 and signin.headers["location"] == "/ui/"
        page = browser.new_page()
        try:
            page.goto(f"{url}/ui/")
            assert page.inner_text("#rows") == "No runs match."
            assert page.locator(".logout").count() == 0
        finally:
            page.close()
    finally:
        running.stop()


def test_a_bad_filter_is_echoed_escaped_never_as_markup(ui_mesh: UiMesh) -> None:
    payload = "<img src=x onerror=alert(document.domain)>"
    for path in ("/ui/rows", "/ui/"):
        reply = _get(f"{ui_mesh.url}{path}", MASTER, params={"service": payload})
        assert reply.status_code == 400, reply.text[:200]
        assert "<img" not in reply.text and "&lt;img" in reply.text
        assert "content-security-policy" in reply.headers
