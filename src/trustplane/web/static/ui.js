// trustplane pages: the live parts, loaded from 'self' (no inline script is allowed).
// - #trend: the executive page's success-rate chart (uPlot), from its data-series attribute;
// - #denials[data-stream]: the on-call stream of denials over server-sent events.
"use strict";

function drawTrend(el) {
  const s = JSON.parse(el.dataset.series);
  if (typeof uPlot === "undefined") { return; }
  const opts = {
    width: Math.max(320, el.clientWidth - 16),
    height: 240,
    series: [
      {},
      { label: "auth success %", stroke: "#1f5fa8", width: 2, spanGaps: false },
      { label: "denied", stroke: "#b3261e", scale: "n" },
    ],
    axes: [{}, { scale: "%", label: "%" }, { scale: "n", side: 1, label: "denied" }],
    scales: { "%": { range: [0, 100] }, n: { auto: true } },
  };
  opts.series[1].scale = "%";
  new uPlot(opts, [s.t, s.success, s.denied], el);
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  return td;
}

function streamDenials(table) {
  const state = document.getElementById("stream-state");
  const body = table.tBodies[0];
  const counts = document.querySelector("#by-service tbody");
  const source = new EventSource(table.dataset.stream);
  source.onopen = () => { state.textContent = "live"; state.className = "state live"; };
  source.onerror = () => { state.textContent = "reconnecting…"; state.className = "state"; };
  source.addEventListener("denial", (event) => {
    const row = JSON.parse(event.data);
    const tr = document.createElement("tr");
    tr.className = "fresh";
    for (const key of ["time", "service", "pep", "kind", "principal", "action", "resource", "why"]) {
      tr.appendChild(cell(row[key]));
    }
    const td = document.createElement("td");
    const a = document.createElement("a");
    a.href = "/ui/debug?id=" + encodeURIComponent(row.decision_id);
    a.textContent = "…" + String(row.decision_id).slice(-8);
    td.appendChild(a);
    tr.appendChild(td);
    body.insertBefore(tr, body.firstChild);
    while (body.rows.length > 200) { body.deleteRow(body.rows.length - 1); }
    let found = null;
    for (const r of counts.rows) { if (r.dataset.service === row.service) { found = r; } }
    if (found) {
      const n = found.cells[1];
      n.textContent = String(Number(n.textContent) + 1);
    } else {
      const r = document.createElement("tr");
      r.dataset.service = row.service;
      r.appendChild(cell(row.service));
      const n = cell(1);
      n.className = "n";
      r.appendChild(n);
      counts.appendChild(r);
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const trend = document.getElementById("trend");
  if (trend) { drawTrend(trend); }
  const denials = document.querySelector("#denials[data-stream]");
  if (denials) { streamDenials(denials); }
});
