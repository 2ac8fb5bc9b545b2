// fedhive status page: polls /api/status and draws runs, their rounds (uPlot charts), nodes and
// refusals. Text is only ever set as text (node names and reasons come from the network).
"use strict";

const params = new URLSearchParams(window.location.search);
const REFRESH_S = Math.min(60, Math.max(0.2, Number(params.get("refresh")) || 2));
const CHART_W = 360;
const CHART_H = 200;
const CHARTS = ["accuracy", "loss", "duration"]; // their order on the page
const ROUND_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000];
const COLORS = ["#0b6bcb", "#e8710a", "#1b7f3b", "#9334e6", "#b3261e"];
const charts = new Map(); // run id + chart name -> {plot, key}
let refreshes = 0;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmt(v, digits) {
  return v === null || v === undefined ? "-" : Number(v).toFixed(digits);
}

function seriesOf(rounds, specs) {
  // specs: [label, section, key]; only series with at least one value are kept
  const kept = specs.filter(([, section, key]) => rounds.some((r) => r[section] && r[section][key] !== undefined && r[section][key] !== null));
  const xs = rounds.map((r) => r.round);
  const data = [xs, ...kept.map(([, section, key]) => rounds.map((r) => (r[section] && r[section][key] !== undefined ? r[section][key] : null)))];
  return { labels: kept.map(([label]) => label), data };
}

function drawChart(section, name, title, series) {
  const id = `${section.getAttribute("data-run-id")}/${name}`;
  const box = section.querySelector(`.chart[data-name="${name}"]`);
  const key = series.labels.join("|");
  let entry = charts.get(id);
  if (entry && entry.key !== key) {
    entry.plot.destroy();
    charts.delete(id);
    entry = undefined;
  }
  if (!entry) {
    box.replaceChildren(el("h3", {}, title));
    box.setAttribute("data-chart", id);
    const opts = {
      width: CHART_W,
      height: CHART_H,
      scales: { x: { time: false } },
      axes: [{ label: "round", incrs: ROUND_STEPS }, {}],
      series: [{ label: "round" }, ...series.labels.map((label, i) => ({ label, stroke: COLORS[i % COLORS.length], width: 2, points: { show: true, size: 5 } }))],
    };
    entry = { plot: new uPlot(opts, series.data, box), key };
    charts.set(id, entry);
  } else {
    entry.plot.setData(series.data);
  }
}

function runSection(run) {
  let section = document.querySelector(`.run[data-run-id="${CSS.escape(run.run_id)}"]`);
  if (!section) {
    section = el("section", { class: "run", "data-run-id": run.run_id });
    section.append(el("h2", {}), el("div", { class: "meta" }), el("div", {}, el("span", { class: "round-counter", "data-committed": "0" }), " ", el("span", { class: "live" })), el("div", { class: "charts" }, ...CHARTS.map((name) => el("div", { class: "chart", "data-name": name }))), el("table", { class: "rounds" }));
    document.getElementById("runs").append(section);
  }
  return section;
}

function renderRun(run) {
  const section = runSection(run);
  section.querySelector("h2").textContent = run.name ? `run ${run.run_id} (${run.name})` : `run ${run.run_id}`;
  if (run.error) {
    section.querySelector(".meta").textContent = `cannot read ${run.run_dir}: ${run.error}`;
    return;
  }
  section.querySelector(".meta").textContent = `${run.task} · ${run.strategy} · ${run.run_dir}`;
  const counter = section.querySelector(".round-counter");
  counter.textContent = `round ${run.committed_round} of ${run.rounds} committed`;
  counter.setAttribute("data-committed", String(run.committed_round));
  const live = run.live;
  let state = run.finished ? "finished" : "not running";
  // a round is stored before the engine reports it closed: a live round already committed is over
  if (live && live.round !== undefined && (live.kind === "evaluate" || live.round > run.committed_round)) {
    state = `round ${live.round} under way (${live.kind}): ${live.received}/${live.selected} updates, ${fmt(live.elapsed_s, 1)} s`;
  } else if (live && !run.finished) {
    state = "waiting for nodes";
  }
  section.querySelector(".live").textContent = state;

  const rounds = run.rounds_shown.filter((r) => r.event === "round" && r.committed);
  const acc = seriesOf(rounds, [["test", "server_evaluate", "accuracy"], ["federated eval", "evaluate", "accuracy"], ["train", "train", "accuracy"]]);
  if (acc.labels.length) drawChart(section, "accuracy", "accuracy per round", acc);
  const loss = seriesOf(rounds, [["test", "server_evaluate", "loss"], ["federated eval", "evaluate", "loss"], ["train", "train", "loss"]]);
  if (loss.labels.length) drawChart(section, "loss", "loss per round", loss);
  const time = { labels: ["seconds"], data: [rounds.map((r) => r.round), rounds.map((r) => r.duration_s)] };
  drawChart(section, "duration", "round duration (s)", time);

  const table = section.querySelector("table.rounds");
  table.replaceChildren(el("tr", {}, ...["round", "state", "nodes", "test acc", "train loss", "seconds", "MB in", "MB out"].map((h) => el("th", {}, h))));
  for (const r of run.rounds_shown.slice(-12).reverse()) {
    const label = r.event === "evaluate" ? "final eval" : `${r.round}${r.attempt > 1 ? ` (try ${r.attempt})` : ""}`;
    const stateCell = r.committed ? el("td", { class: "ok" }, "committed") : el("td", { class: "bad", title: r.reason || "" }, `failed: ${r.reason || ""}`);
    table.append(el("tr", {}, el("td", {}, label), stateCell, el("td", {}, `${r.nodes}/${r.selected}`), el("td", {}, fmt(r.server_evaluate.accuracy, 4)), el("td", {}, fmt(r.train.loss, 4)), el("td", {}, fmt(r.duration_s, 2)), el("td", {}, fmt((r.bytes_in || 0) / 1e6, 2)), el("td", {}, fmt((r.bytes_out || 0) / 1e6, 2))));
  }
}

function render(status) {
  document.getElementById("connected").textContent = String(status.connected_nodes);
  document.getElementById("queue").textContent = String(status.queue_length);
  document.getElementById("updated").textContent = new Date(status.time * 1000).toLocaleTimeString();
  for (const run of status.runs) renderRun(run);

  const nodes = document.querySelector("#nodes tbody");
  nodes.replaceChildren(...status.nodes.map((n) => el("tr", {}, el("td", {}, n.node_id), el("td", {}, n.name), el("td", {}, n.device), el("td", {}, n.examples), el("td", { class: n.connected ? "ok" : "bad" }, n.connected ? "connected" : n.finished ? "finished" : "gone"), el("td", {}, `${fmt(n.last_seen_s, 1)} s ago`))));

  const refusals = document.querySelector("#refusals tbody");
  const rows = [];
  for (const run of status.runs) {
    for (const r of run.rounds_shown || []) {
      for (const [node, reason] of Object.entries(r.refused || {})) rows.push([run.run_id, r.round, node, reason]);
    }
  }
  refusals.replaceChildren(...rows.slice(-50).reverse().map((cells) => el("tr", {}, ...cells.map((c) => el("td", {}, c)))));
  if (!rows.length) refusals.append(el("tr", {}, el("td", { colspan: "4" }, "none")));
}

async function refresh() {
  try {
    const reply = await fetch("/api/status", { credentials: "same-origin", cache: "no-store" });
    if (!reply.ok) throw new Error(`HTTP ${reply.status}`);
    render(await reply.json());
    refreshes += 1;
    document.body.setAttribute("data-refreshes", String(refreshes));
    document.getElementById("error").textContent = "";
  } catch (err) {
    document.getElementById("error").textContent = `cannot reach the coordinator (${err.message})`;
  } finally {
    window.setTimeout(refresh, REFRESH_S * 1000);
  }
}

refresh();
