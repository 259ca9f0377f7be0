// The runs UI's only script: draws the charts (plotly.js, served beside it), keeps the
// runs table live, makes rows clickable, and runs a replay. No inline script anywhere
// (the pages' Content-Security-Policy allows scripts from this site only).
"use strict";

function drawCharts() {
  if (typeof Plotly === "undefined") return;
  for (const el of document.querySelectorAll(".chart[data-figure]")) {
    const source = document.getElementById(el.dataset.figure);
    if (!source || el.dataset.rendered) continue;
    const figure = JSON.parse(source.textContent);
    Plotly.newPlot(el, figure.data, figure.layout,
                   {displaylogo: false, responsive: true}).then(() => {
      el.dataset.rendered = "1";
    });
  }
}

function clickableRows(root) {
  for (const tr of root.querySelectorAll("tr[data-href]")) {
    tr.addEventListener("click", (event) => {
      if (event.target.closest("a")) return;
      window.location.href = tr.dataset.href;
    });
  }
}

function liveRows() {
  const body = document.getElementById("rows");
  const badge = document.getElementById("live");
  if (!body || !body.dataset.live) return;
  let last = body.innerHTML.trim();
  const poll = async () => {
    try {
      const response = await fetch(body.dataset.live, {credentials: "same-origin",
                                                        headers: {"accept": "text/html"}});
      if (response.redirected || !response.ok) {  // signed out, or the mesh is gone
        if (badge) { badge.dataset.state = "off"; badge.textContent = "○ paused"; }
        return;
      }
      const html = (await response.text()).trim();
      if (badge) { badge.dataset.state = "on"; badge.textContent = "● live"; }
      if (html !== last) {
        const seen = new Set([...body.querySelectorAll("tr[data-run-id]")]
                             .map((tr) => tr.dataset.runId));
        body.innerHTML = html;
        for (const tr of body.querySelectorAll("tr[data-run-id]")) {
          if (!seen.has(tr.dataset.runId)) tr.classList.add("fresh");
        }
        clickableRows(body);
        last = html;
      }
    } catch (err) {
      if (badge) { badge.dataset.state = "off"; badge.textContent = "○ paused"; }
    }
    setTimeout(poll, Number(body.dataset.pollMs) || 2000);
  };
  setTimeout(poll, Number(body.dataset.pollMs) || 2000);
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) node.append(child);
  return node;
}

function differenceTable(lines) {
  const rows = lines.map((line) => {
    const at = line.indexOf(": ");
    const path = at < 0 ? "" : line.slice(0, at);
    const change = at < 0 ? line : line.slice(at + 2);
    return el("tr", {class: "difference"}, el("td", {class: "path"}, path),
              el("td", {}, el("code", {}, change)));
  });
  return el("table", {class: "table compact"},
            el("thead", {}, el("tr", {}, el("th", {}, "where"),
                               el("th", {}, "stored → replayed"))),
            el("tbody", {}, ...rows));
}

function volatileNote(body) {
  const lines = body.volatile || [];
  if (!lines.length) return "";
  const table = differenceTable(lines);
  table.classList.add("volatile");
  return el("details", {class: "volatile"},
            el("summary", {}, `${lines.length} timing-dependent differences (not counted)`),
            table);
}

function showReplay(box, body) {
  box.replaceChildren();
  box.hidden = false;
  const link = body.replay_run_id
    ? el("a", {href: "/ui/runs/" + body.replay_run_id, id: "replay-run"},
         body.replay_run_id.slice(0, 12))
    : "";
  if (body.identical) {
    box.className = "replay-result identical";
    box.append(el("strong", {}, "Identical: "), "the replay gave the same result. ",
               body.replay_run_id ? "Replay run " : "", link, volatileNote(body));
    return;
  }
  box.className = "replay-result differs";
  box.append(el("strong", {}, `${body.differences.length} differences`),
             " between the stored run and its replay. ",
             body.replay_run_id ? "Replay run " : "", link,
             differenceTable(body.differences), volatileNote(body));
}

function replayButton() {
  const button = document.getElementById("replay");
  const box = document.getElementById("replay-result");
  if (!button || !box) return;
  button.addEventListener("click", async () => {
    button.disabled = true;
    button.textContent = "Replaying…";
    box.hidden = false;
    box.className = "replay-result";
    box.textContent = "Running the stored request again…";
    try {
      const response = await fetch(button.dataset.url, {
        method: "POST", credentials: "same-origin", headers: {"x-scillm-ui": "1"}});
      const body = await response.json();
      if (!response.ok) {
        box.className = "replay-result error";
        box.textContent = "Replay failed: " + ((body.error && body.error.message) || response.status);
      } else {
        showReplay(box, body);
      }
    } catch (err) {
      box.className = "replay-result error";
      box.textContent = "Replay failed: " + err;
    } finally {
      button.disabled = false;
      button.textContent = "Replay";
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  drawCharts();
  clickableRows(document);
  liveRows();
  replayButton();
});
