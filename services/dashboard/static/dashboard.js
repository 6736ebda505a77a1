"use strict";
// The dashboard page: one script for the user view and the operator view.
// Every value is written with textContent, never as HTML, because call
// payloads and metadata come from users.

const API = "/dashboard/api/v1";
const REFRESH_MS = 30000;
const params = new URLSearchParams(window.location.search);
const state = { me: null, viewUser: "", cursor: "", charts: {}, timer: null, users: [], sortKey: "cost_usd_micros", sortDesc: true };

// ------------------------------------------------------------ formatting

const fmtInt = (n) => Number(n).toLocaleString("en-US");
const fmtPct = (x) => (x * 100).toFixed(1) + "%";
const fmtMs = (us) => (us / 1000).toFixed(1) + " ms";
const fmtUsd = (micros) => micros === null || micros === undefined ? "unknown" : "$" + (micros / 1e6).toFixed(6);
const fmtTime = (us) => new Date(us / 1000).toLocaleString("en-GB");

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message;
  box.hidden = !message;
}

// ------------------------------------------------------------ API

function rangeParams() {
  const choice = document.getElementById("range").value;
  const out = new URLSearchParams();
  if (choice === "custom") {
    const start = new Date(document.getElementById("custom-start").value).getTime();
    const end = new Date(document.getElementById("custom-end").value).getTime();
    if (Number.isFinite(start) && Number.isFinite(end)) {
      out.set("start_ms", String(start));
      out.set("end_ms", String(end));
      return out;
    }
  }
  out.set("range", choice === "custom" ? "24h" : choice);
  return out;
}

async function getJson(path, extra) {
  const query = rangeParams();
  if (state.viewUser) query.set("user_id", state.viewUser);
  for (const [k, v] of Object.entries(extra || {})) if (v !== "") query.set(k, v);
  const response = await fetch(API + path + "?" + query.toString(), { credentials: "same-origin" });
  if (response.status === 401) {
    window.location.assign("/dashboard/login");
    throw new Error("signed out");
  }
  const data = await response.json();
  if (!response.ok) throw new Error(data.error ? data.error.message : "HTTP " + response.status);
  return data;
}

// ------------------------------------------------------------ KPIs

function setKpi(name, text, value) {
  for (const node of document.querySelectorAll('[data-kpi="' + name + '"]')) {
    node.textContent = text;
    node.dataset.value = String(value);
  }
}

function renderKpis(total) {
  setKpi("calls", fmtInt(total.calls), total.calls);
  setKpi("errors", fmtInt(total.errors) + " errors", total.errors);
  setKpi("error_rate", fmtPct(total.error_rate), total.error_rate);
  setKpi("cost", fmtUsd(total.cost_usd_micros), total.cost_usd_micros);
  setKpi("unknown_cost_calls", total.unknown_cost_calls ? fmtInt(total.unknown_cost_calls) + " calls without a price" : "", total.unknown_cost_calls);
  for (const kind of ["input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"]) {
    setKpi(kind, fmtInt(total[kind]), total[kind]);
  }
  setKpi("cache_hit_rate", fmtPct(total.cache_hit_rate), total.cache_hit_rate);
  setKpi("cache_hits", fmtInt(total.cache_hits) + " hits", total.cache_hits);
  setKpi("saved_cost", fmtUsd(total.saved_cost_usd_micros), total.saved_cost_usd_micros);
  const q = (x) => [x.p50_us, x.p95_us, x.p99_us];
  setKpi("latency", q(total.latency).map(fmtMs).join(" / "), q(total.latency).join(","));
  setKpi("ttft", q(total.ttft).map(fmtMs).join(" / "), q(total.ttft).join(","));
}

// ------------------------------------------------------------ tables

function fillTable(table, columns, rows, onClick) {
  const head = table.querySelector("thead");
  if (head && !head.dataset.fixed && columns) {
    head.replaceChildren(el("tr"));
    for (const [title] of columns) head.firstChild.appendChild(el("th", title));
  }
  const body = table.querySelector("tbody");
  body.replaceChildren();
  for (const row of rows) {
    const tr = el("tr");
    for (const [, cell] of columns) tr.appendChild(el("td", cell(row)));
    if (onClick) {
      tr.classList.add("clickable");
      tr.addEventListener("click", () => onClick(row));
    }
    body.appendChild(tr);
  }
  if (!rows.length) {
    const tr = el("tr");
    tr.appendChild(el("td", "No calls in this range", { colspan: String(columns.length), class: "muted" }));
    body.appendChild(tr);
  }
}

const GROUP_COLUMNS = (label) => [
  [label, (r) => r.group || "(none)"],
  ["Calls", (r) => fmtInt(r.calls)],
  ["Error rate", (r) => fmtPct(r.error_rate)],
  ["Tokens", (r) => fmtInt(r.total_tokens)],
  ["Cost", (r) => fmtUsd(r.cost_usd_micros)],
  ["Cache hit rate", (r) => fmtPct(r.cache_hit_rate)],
  ["Latency p50 / p95 / p99", (r) => [r.latency.p50_us, r.latency.p95_us, r.latency.p99_us].map(fmtMs).join(" / ")],
  ["TTFT p50 / p95", (r) => [r.ttft.p50_us, r.ttft.p95_us].map(fmtMs).join(" / ")],
];

function renderUsers() {
  const key = state.sortKey;
  const value = (r) => key === "latency_p95" ? r.latency.p95_us : r[key];
  const rows = [...state.users].sort((a, b) => {
    const va = value(a), vb = value(b);
    const order = typeof va === "string" ? va.localeCompare(vb) : va - vb;
    return state.sortDesc ? -order : order;
  });
  const table = document.getElementById("users-table");
  table.querySelector("thead").dataset.fixed = "1";
  for (const th of table.querySelectorAll("th")) {
    th.classList.toggle("sorted", th.dataset.sort === key);
    th.classList.toggle("desc", th.dataset.sort === key && state.sortDesc);
  }
  fillTable(table, [
    ["User", (r) => r.group],
    ["Spend", (r) => fmtUsd(r.cost_usd_micros)],
    ["Tokens", (r) => fmtInt(r.total_tokens)],
    ["Calls", (r) => fmtInt(r.calls)],
    ["Errors", (r) => fmtInt(r.errors)],
    ["Error rate", (r) => fmtPct(r.error_rate)],
    ["Latency p95", (r) => fmtMs(r.latency.p95_us)],
    ["Cache hits", (r) => fmtPct(r.cache_hit_rate)],
  ], rows, (r) => { window.location.assign("/dashboard/?user=" + encodeURIComponent(r.group)); });
  for (const [i, tr] of [...table.querySelectorAll("tbody tr")].entries()) {
    if (rows[i]) tr.dataset.user = rows[i].group;
  }
}

// ------------------------------------------------------------ charts

function bucketsOf(series) {
  const step = series.bucket_s * 1000;
  const first = Math.floor(series.range.start_ms / step) * step;
  const xs = [];
  for (let t = first; t < series.range.end_ms; t += step) xs.push(t);
  return xs;
}

function drawChart(id, xs, lines) {
  const node = document.getElementById(id);
  if (state.charts[id]) state.charts[id].destroy();
  const palette = ["#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2", "#4b5563"];
  const opts = {
    width: Math.max(300, node.clientWidth || 400),
    height: 220,
    series: [{}].concat(lines.map((line, i) => ({ label: line.label, stroke: palette[i % palette.length], width: 2 }))),
    axes: [{}, { size: 70 }],
    scales: { x: { time: true } },
    legend: { live: false },
  };
  const data = [xs.map((t) => t / 1000)].concat(lines.map((line) => line.values));
  state.charts[id] = new uPlot(opts, data, node);
}

function renderCharts(total, byModel) {
  const xs = bucketsOf(total);
  const index = new Map(xs.map((t, i) => [t, i]));
  const column = (points, pick) => {
    const values = xs.map(() => 0);
    for (const p of points) if (index.has(p.bucket_start_ms)) values[index.get(p.bucket_start_ms)] = pick(p);
    return values;
  };
  drawChart("chart-tokens", xs, [
    { label: "input", values: column(total.points, (p) => p.input_tokens) },
    { label: "output", values: column(total.points, (p) => p.output_tokens) },
    { label: "cache read", values: column(total.points, (p) => p.cache_read_tokens) },
    { label: "cache write", values: column(total.points, (p) => p.cache_write_tokens) },
  ]);
  const models = [...new Set(byModel.points.map((p) => p.group))].sort();
  drawChart("chart-cost", xs, models.map((model) => ({
    label: model || "(none)",
    values: column(byModel.points.filter((p) => p.group === model), (p) => p.cost_usd_micros / 1e6),
  })));
  const gaps = (pick) => xs.map(() => null).map((_, i) => {
    const p = total.points.find((q) => q.bucket_start_ms === xs[i]);
    return p && p.calls ? pick(p) / 1000 : null;
  });
  drawChart("chart-latency", xs, [
    { label: "p50", values: gaps((p) => p.latency.p50_us) },
    { label: "p95", values: gaps((p) => p.latency.p95_us) },
    { label: "p99", values: gaps((p) => p.latency.p99_us) },
    { label: "TTFT p50", values: gaps((p) => p.ttft.p50_us) },
  ]);
}

// ------------------------------------------------------------ limits and rules

function renderLimits(data) {
  const box = document.getElementById("limits");
  box.replaceChildren();
  if (!data.available) { box.appendChild(el("p", "Limits are not configured on this deployment.", { class: "muted" })); return; }
  const all = data.gateways.flatMap((g) => g.limits.map((l) => ({ ...l, gateway: g.account_id + "/" + g.gateway_id })));
  if (!all.length) { box.appendChild(el("p", "No limit applies to this user.", { class: "muted" })); return; }
  for (const limit of all) {
    const row = el("div", null, { class: "limit" });
    row.appendChild(el("span", limit.gateway + " · " + limit.name));
    const bar = el("progress", null, { max: "1", value: String(Math.min(1, limit.used_fraction)) });
    row.appendChild(bar);
    row.appendChild(el("span", fmtInt(limit.used) + " of " + fmtInt(limit.limit) + " " + limit.unit + " (" + fmtPct(limit.used_fraction) + "), resets in " + limit.reset_s + " s"));
    if (limit.used_fraction >= 0.8) row.classList.add("near");
    box.appendChild(row);
  }
}

function renderCacheRules(data) {
  const box = document.getElementById("cache-rules");
  box.replaceChildren();
  if (!data.available) { box.appendChild(el("p", "Caching rules are not configured on this deployment.", { class: "muted" })); return; }
  for (const g of data.gateways) {
    const rule = g.effective;
    const text = !rule ? "no rule" : rule.enabled
      ? "on, TTL " + rule.ttl_s + " s, " + rule.scope + " rule" + (rule.shared ? ", shared across users" : "") + (rule.ignore_fields.length ? ", ignores " + rule.ignore_fields.join(", ") : "")
      : "off (" + rule.scope + " rule)";
    box.appendChild(el("p", g.account_id + "/" + g.gateway_id + ": " + text));
  }
}

// ------------------------------------------------------------ calls

async function loadCalls(append) {
  const extra = {
    q: document.getElementById("call-search").value,
    model: document.getElementById("call-model").value,
    status: document.getElementById("call-status").value,
    page_size: "25",
    cursor: append ? state.cursor : "",
  };
  const data = await getJson("/calls", extra);
  state.cursor = data.next_cursor;
  document.getElementById("calls-more").hidden = !data.next_cursor;
  const table = document.getElementById("calls-table");
  const body = table.querySelector("tbody");
  if (!append) body.replaceChildren();
  if (!data.calls.length && !append) {
    const tr = el("tr");
    tr.appendChild(el("td", "No calls match", { colspan: "9", class: "muted" }));
    body.appendChild(tr);
  }
  for (const call of data.calls) {
    const tr = el("tr", null, { class: "clickable" });
    tr.dataset.eventId = call.event_id;
    for (const text of [fmtTime(call.start_us), call.user_id, call.model, call.status + (call.error_type ? " " + call.error_type : ""),
      fmtInt(call.input_tokens) + " / " + fmtInt(call.output_tokens), fmtMs(call.latency_us), fmtMs(call.ttft_us), call.cache_status, fmtUsd(call.cost_usd_micros)]) {
      tr.appendChild(el("td", text));
    }
    tr.addEventListener("click", () => showCall(call.event_id));
    body.appendChild(tr);
  }
}

function prettyBody(text) {
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch (ignored) { return text; }
}

async function showCall(eventId) {
  try {
    const call = await getJson("/calls/" + encodeURIComponent(eventId));
    document.getElementById("call-detail-id").textContent = call.request_id || call.event_id;
    const timings = document.getElementById("call-timings");
    timings.replaceChildren();
    const t = call.timings;
    for (const [name, value] of [
      ["Started", fmtTime(t.start_us)], ["Latency", fmtMs(call.latency_us)], ["Time to first token", fmtMs(call.ttft_us)],
      ["Gateway overhead", fmtMs(t.gateway_overhead_us)], ["Status", String(call.status) + (call.error_type ? " " + call.error_type : "")],
      ["Stop reason", call.stop_reason || "-"], ["Tokens in / out / cache read / cache write", [call.input_tokens, call.output_tokens, call.cache_read_tokens, call.cache_write_tokens].map(fmtInt).join(" / ")],
      ["Cost", fmtUsd(call.cost_usd_micros)], ["Cache", call.cache_status], ["Model", call.model], ["User", call.user_id],
    ]) {
      timings.appendChild(el("dt", name));
      timings.appendChild(el("dd", value));
    }
    document.getElementById("call-request-body").textContent = prettyBody(call.request_body) || "(not stored)";
    document.getElementById("call-response-body").textContent = prettyBody(call.response_body) || "(not stored)";
    document.getElementById("call-detail").hidden = false;
    document.getElementById("call-detail").scrollIntoView();
  } catch (error) {
    showError(error.message);
  }
}

// ------------------------------------------------------------ loading

async function load() {
  try {
    const [summary, byModel, series, seriesByModel] = await Promise.all([
      getJson("/usage/summary"),
      getJson("/usage/summary", { group_by: "model" }),
      getJson("/usage/timeseries"),
      getJson("/usage/timeseries", { group_by: "model" }),
    ]);
    renderKpis(summary.total);
    fillTable(document.getElementById("models-table"), GROUP_COLUMNS("Model"), byModel.groups);
    renderCharts(series, seriesByModel);
    const operatorView = state.me.role === "operator" && !state.viewUser;
    if (operatorView) {
      const [users, providers, anomalies] = await Promise.all([
        getJson("/usage/summary", { group_by: "user" }),
        getJson("/usage/summary", { group_by: "provider" }),
        getJson("/anomalies"),
      ]);
      state.users = users.groups;
      renderUsers();
      const top = [...users.groups].sort((a, b) => b.cost_usd_micros - a.cost_usd_micros || b.total_tokens - a.total_tokens).slice(0, 5);
      const list = document.getElementById("top-spenders");
      list.replaceChildren(...top.map((r) => el("li", r.group + ": " + fmtUsd(r.cost_usd_micros) + ", " + fmtInt(r.total_tokens) + " tokens")));
      fillTable(document.getElementById("providers-table"), GROUP_COLUMNS("Provider"), providers.groups);
      const flagged = document.getElementById("anomalies");
      flagged.replaceChildren(...anomalies.users.map((u) => el("li", u.user_id + ": " + u.reasons.join(" and ") + " (today " + fmtInt(u.calls_today) + " calls, " + fmtUsd(u.cost_today_usd_micros) + "; usual p95 " + u.calls_p95 + " calls, " + fmtUsd(u.cost_p95_usd_micros) + ")")));
      if (!anomalies.users.length) flagged.appendChild(el("li", "Nobody today.", { class: "muted" }));
    } else {
      const [limits, rules] = await Promise.all([getJson("/limits"), getJson("/cache-rules")]);
      renderLimits(limits);
      renderCacheRules(rules);
    }
    await loadCalls(false);
    showError("");
    document.getElementById("last-updated").textContent = "Updated " + new Date().toLocaleTimeString("en-GB");
  } catch (error) {
    showError(error.message);
  }
}

function scheduleRefresh() {
  if (state.timer) clearInterval(state.timer);
  state.timer = document.getElementById("auto-refresh").checked ? setInterval(load, REFRESH_MS) : null;
}

async function start() {
  const response = await fetch(API + "/me", { credentials: "same-origin" });
  if (!response.ok) { window.location.assign("/dashboard/login"); return; }
  state.me = await response.json();
  // Operators may view the dashboard as one user; for a user session the
  // server rejects any user but their own.
  state.viewUser = params.get("user") || "";
  const operatorView = state.me.role === "operator" && !state.viewUser;
  document.getElementById("operator-view").hidden = !operatorView;
  document.getElementById("user-view").hidden = operatorView;
  document.body.dataset.view = operatorView ? "operator" : "user";
  document.getElementById("view-title").textContent = operatorView ? "Operator view: all users"
    : "Usage of " + (state.viewUser || state.me.user_id) + (state.me.role === "operator" ? " (viewed by an operator)" : "");
  document.getElementById("whoami").textContent = state.me.role === "operator" ? "operator" : state.me.user_id;

  document.getElementById("range").addEventListener("change", (event) => {
    const custom = event.target.value === "custom";
    document.getElementById("custom-range").hidden = !custom;
    if (!custom) load();
  });
  document.getElementById("apply-range").addEventListener("click", load);
  document.getElementById("auto-refresh").addEventListener("change", scheduleRefresh);
  document.getElementById("call-search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    loadCalls(false).catch((error) => showError(error.message));
  });
  document.getElementById("calls-more").addEventListener("click", () => loadCalls(true).catch((error) => showError(error.message)));
  for (const th of document.querySelectorAll("#users-table th[data-sort]")) {
    th.addEventListener("click", () => {
      state.sortDesc = state.sortKey === th.dataset.sort ? !state.sortDesc : true;
      state.sortKey = th.dataset.sort;
      renderUsers();
    });
  }
  document.getElementById("signout").addEventListener("click", async () => {
    await fetch(API + "/session", { method: "DELETE", credentials: "same-origin" });
    window.location.assign("/dashboard/login");
  });
  await load();
  document.body.dataset.loaded = "1";
  scheduleRefresh();
}

document.addEventListener("DOMContentLoaded", start);
