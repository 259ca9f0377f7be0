"""The runs UI in a real browser (Debian's chromium through Playwright) against a mesh
with real runs in it: what a person sees on each page, clicked through, with screenshots
left in tests/artifacts/ui/."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from scillm.server.manifests import open_run_store

from .conftest import MASTER, TRACE_TEMPLATE, UiMesh, artifacts


@pytest.fixture
def page(browser: Any, ui_mesh: UiMesh) -> Iterator[Any]:
    """A page signed in with the master key through the login form."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{ui_mesh.url}/ui/")
    assert "/ui/login" in page.url  # no key yet: the sign-in form
    page.fill("#key", MASTER)
    page.click("form[action='/ui/login'] button")
    page.wait_for_url(f"{ui_mesh.url}/ui/")
    yield page
    context.close()
    assert errors == [], errors  # no script failed on any page


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(artifacts() / f"{name}.png"), full_page=True)


def _charts_drawn(page: Any, *ids: str) -> None:
    for chart in ids:
        page.wait_for_selector(f"#{chart}[data-rendered='1'] .main-svg")


def _api(ui_mesh: UiMesh, path: str) -> Any:
    reply = httpx.get(f"{ui_mesh.url}{path}", headers={"authorization": f"Bearer {MASTER}"},
                      timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_runs_table_is_newest_first_filtered_paged_and_live(page: Any,
                                                              ui_mesh: UiMesh) -> None:
    listed = [r["manifest"]["run_id"] for r in _api(ui_mesh, "/ui/api/runs")["runs"]]
    assert set(ui_mesh.runs.values()) <= set(listed)
    shown = page.eval_on_selector_all("#rows tr[data-run-id]", "rows => rows.map(r => "
                                      "r.dataset.runId)")
    assert shown == listed  # newest first, as the store lists them
    agent = page.locator(f"tr[data-run-id='{ui_mesh.runs['agent']}']")
    assert agent.locator(".outcome").inner_text() == "answered"
    assert agent.locator(".svc").inner_text() == "agent"
    shot(page, "runs")

    page.select_option("select[name=service]", "prove")
    page.click(".filters button")
    page.wait_for_url("**/ui/?service=prove**")
    services = page.eval_on_selector_all("#rows .svc", "els => els.map(e => e.textContent)")
    assert services and set(services) == {"prove"}

    page.goto(f"{ui_mesh.url}/ui/?limit=2")
    first = page.eval_on_selector_all("#rows tr[data-run-id]", "r => r.map(x => x.dataset.runId)")
    page.click("#older")
    second = page.eval_on_selector_all("#rows tr[data-run-id]", "r => r.map(x => x.dataset.runId)")
    assert first == listed[:2] and second == listed[2:4]
    assert page.locator("#live").count() == 0  # an older page does not poll

    # A run that finishes while the page is open appears at the top, marked new.
    page.goto(f"{ui_mesh.url}/ui/")
    run_id = ui_mesh.run("live", {
        "model": "certainly/smt", "messages": [{"role": "user", "content": "x"}],
        "items": [{"item_id": "fresh", "preamble": "(declare-const y Int)",
                   "statement": "(= y y)"}]})
    page.wait_for_selector(f"#rows tr.fresh[data-run-id='{run_id}']", timeout=30_000)
    assert page.eval_on_selector("#rows tr", "r => r.dataset.runId") == run_id
    page.click(f"#rows tr[data-run-id='{run_id}'] td.outcome")  # a row opens its run
    page.wait_for_url(f"**/ui/runs/{run_id}")


def test_codeworld_page_ranks_strategies_and_highlights_the_winner(page: Any,
                                                                     ui_mesh: UiMesh) -> None:
    result = ui_mesh.results["codeworld"]
    page.goto(f"{ui_mesh.url}/ui/runs/{ui_mesh.runs['codeworld']}")
    _charts_drawn(page, "rank-1", "rank-2", "timings")
    for ranking in result["rankings"]:
        task = page.locator(f"section.task[data-task='{ranking['task_id']}']")
        winner = next(e["strategy"] for e in ranking["entries"] if e.get("rank") == 1)
        rows = task.locator("table.ranking tbody tr")
        assert rows.count() == 3
        marked = task.locator("table.ranking tr.winner")
        assert marked.count() == 1 and marked.get_attribute("data-strategy") == winner
        assert "★ winner" in marked.inner_text()
        assert task.locator("tr[data-strategy='broken']").get_attribute("class") == ""
        # The chart draws the winner's score bar in the winner's colour, first.
        fill = task.locator(".chart .trace.bars").first.locator(".point path").first
        assert "rgb(217, 119, 6)" in (fill.get_attribute("style") or "")
    # Statuses, timings and the failing run's output, folded until asked for.
    broken = page.locator("section.task[data-task='small'] tr.status-error")
    assert broken.locator(".badge").inner_text() == "error"
    error = broken.locator("pre.error")
    assert not error.is_visible()
    broken.locator("summary").click()
    assert "ValueError: no idea" in error.inner_text()
    assert "ms" in broken.locator("td.num").first.inner_text()
    shot(page, "codeworld")


def test_mcts_page_draws_the_search_tree_and_the_reward_line(page: Any,
                                                              ui_mesh: UiMesh) -> None:
    stats = ui_mesh.results["mcts"]["mcts_stats"]
    page.goto(f"{ui_mesh.url}/ui/runs/{ui_mesh.runs['mcts']}")
    _charts_drawn(page, "mcts-tree", "mcts-rewards")
    assert page.inner_text("#best-variant") == stats["best_variant_id"]
    # The search's best and a task's first place are different things, and the page says so.
    assert "highest mean reward" in page.inner_text("#best-explained")
    assert f"search best {stats['best_variant_id']}" in page.inner_text(".run-head .heading")
    tree = page.evaluate("() => document.getElementById('mcts-tree').data.map("
                         "t => ({name: t.name, n: (t.text || t.x).length}))")
    names = {t["name"]: t["n"] for t in tree}
    assert names["variants"] == len(stats["children"])  # every node drawn
    assert max(c["depth"] for c in stats["children"]) >= 2  # the model's variants expanded it
    best = next(c for c in stats["children"] if c["variant_id"] == stats["best_variant_id"])
    assert names["winning path"] == 3 * best["depth"]  # root → best: an edge a level
    rewards = page.evaluate("() => document.getElementById('mcts-rewards').data[0].x")
    assert rewards == list(range(1, stats["rollouts"] + 1))
    best_row = page.locator(".mcts tr.winner")
    assert best_row.count() == 1 and stats["best_variant_id"] in best_row.inner_text()
    assert page.locator(".mcts .trace.scatter").count() >= 3  # edges, path, nodes drawn
    shot(page, "mcts")


def test_prove_page_marks_failing_lines_and_shows_the_counterexample(
        page: Any, ui_mesh: UiMesh) -> None:
    page.goto(f"{ui_mesh.url}/ui/runs/{ui_mesh.runs['coq']}")
    failing = page.locator("section.item[data-item='wrong'] .line.marked.sev-error")
    assert failing.count() == 1
    assert failing.get_attribute("data-line") == "4" and "exact I." in failing.inner_text()
    note = page.locator("section.item[data-item='wrong'] .note-error")
    assert "has type" in note.inner_text() and note.get_attribute("data-line") == "4"
    assert page.locator("section.item[data-item='wrong'] .badge").first.inner_text() == "failed"

    page.goto(f"{ui_mesh.url}/ui/runs/{ui_mesh.runs['prove']}")
    verdicts = {page.locator(f"section.item[data-item='{i}'] .badge").first.inner_text()
                for i in ("inc", "big", "sneaky")}
    assert verdicts == {"proved", "refuted", "failed"}
    assert "define-fun x" in page.inner_text("section.item[data-item='big'] .counterexample")
    sneaky = page.locator("section.item[data-item='sneaky'] .line.marked.sev-error")
    assert "(check-sat)" in sneaky.inner_text()
    assert page.locator("section.item[data-item='inc'] .line.marked").count() == 0
    _charts_drawn(page, "timings")
    shot(page, "prove")


def test_formalize_attempts_show_as_a_diff(page: Any, ui_mesh: UiMesh) -> None:
    page.goto(f"{ui_mesh.url}/ui/runs/{ui_mesh.runs['formalize']}")
    attempts = page.locator(".attempt")
    assert attempts.count() == 2
    assert "failed" in attempts.nth(0).inner_text() and "proved" in attempts.nth(1).inner_text()
    assert "reflexivity" in attempts.nth(0).locator("pre.code-block").inner_text()
    removed = attempts.nth(1).locator(".d-del").all_inner_texts()
    added = attempts.nth(1).locator(".d-add").all_inner_texts()
    assert any("reflexivity" in line for line in removed)
    assert any("induction" in line for line in added)
    assert "Adding zero" in page.inner_text("section.item .requirement")
    shot(page, "formalize")


def test_agent_page_folds_tool_calls_and_shows_the_budget(page: Any,
                                                          ui_mesh: UiMesh) -> None:
    page.goto(f"{ui_mesh.url}/ui/runs/{ui_mesh.runs['agent']}")
    assert page.inner_text(".answer p") == "The answer is 42."
    iterations = page.locator(".budget[data-budget='iterations']")
    assert "2 of 4" in iterations.inner_text()
    assert page.locator(".budget[data-budget='tokens'] .bar").count() == 1
    call = page.locator("details.tool-call[data-tool='run_python']")
    assert call.count() == 1 and call.get_attribute("open") is None
    arguments = call.locator("pre").first
    assert not arguments.is_visible()
    call.locator("summary").click()
    assert "print(6 * 7)" in arguments.inner_text()
    assert "42" in call.locator(".output").nth(1).inner_text()
    roles = page.eval_on_selector_all(".conversation .role", "r => r.map(x => x.textContent)")
    assert roles == ["user", "assistant", "assistant"]  # the tool's reply is folded in
    _charts_drawn(page, "timings")
    shot(page, "agent")


def test_replay_button_says_identical_or_shows_what_differs(page: Any,
                                                            ui_mesh: UiMesh) -> None:
    page.goto(f"{ui_mesh.url}/ui/runs/{ui_mesh.runs['prove']}")
    page.click("#replay")
    page.wait_for_selector("#replay-result.identical")
    replayed = page.get_attribute("#replay-run", "href")
    assert replayed and replayed != f"/ui/runs/{ui_mesh.runs['prove']}"

    # The model now answers otherwise: the agent's replay differs, and says where.
    upstream = ui_mesh.upstreams["scripted"]
    saved = upstream.replies
    upstream.replies = [saved[0], {"content": "The answer is 43."}]
    upstream._index = 0
    try:
        page.goto(f"{ui_mesh.url}/ui/runs/{ui_mesh.runs['agent']}")
        page.click("#replay")
        page.wait_for_selector("#replay-result.differs")
    finally:
        upstream.replies = saved
    rows = page.locator("#replay-result > table tr.difference")
    paths = rows.locator("td.path").all_inner_texts()
    assert "answer" in paths
    answer = rows.nth(paths.index("answer")).inner_text()
    assert "42" in answer and "43" in answer
    shot(page, "replay")


def test_a_traced_run_links_to_its_trace(page: Any, ui_mesh: UiMesh) -> None:
    settings = ui_mesh.running.mesh.settings
    store = open_run_store(settings.store_path)
    try:
        stored = store.get(ui_mesh.runs["coq"])
        assert stored is not None
        manifest = type(stored.manifest)()
        manifest.CopyFrom(stored.manifest)
        manifest.run_id = "traced" + manifest.run_id[6:]
        manifest.trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        store.put_sync(manifest, stored.request, stored.result, [])
    finally:
        store.close()
    page.goto(f"{ui_mesh.url}/ui/runs/{manifest.run_id}")
    link = page.locator("#trace a")
    assert link.get_attribute("href") == TRACE_TEMPLATE.format(trace_id=manifest.trace_id)
    page.goto(f"{ui_mesh.url}/ui/runs/{ui_mesh.runs['coq']}")
    assert page.locator("#trace a").count() == 0
    assert "not traced" in page.inner_text("#trace")


def test_the_json_routes_answer_like_the_cli(ui_mesh: UiMesh) -> None:
    shown = _api(ui_mesh, f"/ui/api/runs/{ui_mesh.runs['prove'][:10]}")
    assert shown["manifest"]["run_id"] == ui_mesh.runs["prove"]
    assert {e["item_id"] for e in shown["events"]} == {"inc", "big", "sneaky"}
    page = _api(ui_mesh, "/ui/api/runs?service=codeworld&limit=1")
    assert len(page["runs"]) == 1 and page["next_page_token"]
    older = _api(ui_mesh, f"/ui/api/runs?service=codeworld&limit=1&page={page['next_page_token']}")
    assert older["runs"][0]["manifest"]["run_id"] != page["runs"][0]["manifest"]["run_id"]
    deep = base64.urlsafe_b64encode(b"[" * 5000).decode().rstrip("=")
    # "²" is a digit to str.isdigit() and no number to int(); a token nested 5,000 deep:
    # both were a plain-text 500.
    for bad in ("service=nope", "limit=0", "page=garbled", "limit=%C2%B2", f"page={deep}"):
        reply = httpx.get(f"{ui_mesh.url}/ui/api/runs?{bad}", timeout=30,
                          headers={"authorization": f"Bearer {MASTER}"})
        assert reply.status_code == 400 and "error" in reply.json(), bad
    missing = httpx.get(f"{ui_mesh.url}/ui/api/runs/zzzz", timeout=30,
                        headers={"authorization": f"Bearer {MASTER}"})
    assert missing.status_code == 404
    assert json.loads(missing.text)["error"]["type"] == "not_found_error"
