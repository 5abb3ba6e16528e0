// The live fleet view: everything below arrives over /ws/dashboard (no request polls the server).
// Gateways push their figures once a second; nodes push on every heartbeat and state change.
(function () {
  "use strict";

  const HISTORY = Number(document.body.dataset.historySeconds || 300);
  const STALE_GATEWAY_S = 5;
  const buckets = new Map(); // second -> {requests, tokens, ttft: []}
  const gateways = new Map(); // gateway id -> {at, stats}
  const nodes = new Map(); // node id -> node
  const $ = (id) => document.getElementById(id);

  // --- small DOM helpers (textContent only: names and messages are never parsed as HTML) ---
  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => {
      if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    });
    (children || []).forEach((c) => node.appendChild(typeof c === "string" ? document.createTextNode(c) : c));
    return node;
  }
  const badge = (state) => el("span", { class: "state state-" + state, text: state });
  const bytes = (n) => (n >= 1e9 ? (n / 1e9).toFixed(1) + " GB" : n >= 1e6 ? (n / 1e6).toFixed(0) + " MB" : n + " B");
  const fmt = (x, digits) => (x === null || x === undefined || Number.isNaN(x) ? "–" : x.toFixed(digits));
  const adminUrl = (app, model, id) => "/admin/" + app + "/" + model + "/" + id + "/change/";

  // --- nodes and deployments ---
  function nodeRow(n) {
    return el("tr", { id: "node-" + n.id, "data-name": n.name }, [
      el("td", {}, [el("a", { href: adminUrl("fleet", "node", n.id), text: n.name })]),
      el("td", {}, [badge(n.state)]),
      el("td", { text: n.inflight + " / " + n.slots }),
      el("td", { text: String(n.queued) }),
      el("td", { text: fmt(n.tokens_per_s, 1) }),
      el("td", { text: fmt(n.ttft_p95_ms, 0) + " ms" }),
      el("td", { text: fmt(n.error_rate, 2) }),
      el("td", { text: bytes(n.free_memory_bytes) }),
      el("td", { text: fmt(n.heartbeat_age_s, 1) + " s ago" }),
      el("td", { text: String(n.loaded_models) }),
    ]);
  }

  function deploymentRow(n, d) {
    return el("tr", { id: "deployment-" + d.id, "data-node": String(n.id) }, [
      el("td", {}, [el("a", { href: adminUrl("models_registry", "deployment", d.id), text: d.model })]),
      el("td", { text: n.name }),
      el("td", {}, [badge(d.state)]),
      el("td", {}, [el("progress", { max: "100", value: String(d.progress) }), " ", el("span", { class: "pct", text: d.progress + "%" })]),
      el("td", { text: d.updated_at }),
      el("td", { class: "error", text: d.error || "", title: d.error || "" }),
    ]);
  }

  function upsert(tbody, row) {
    const old = document.getElementById(row.id);
    if (old) old.replaceWith(row);
    else {
      const empty = tbody.querySelector("tr.empty");
      if (empty) empty.remove();
      tbody.appendChild(row);
    }
  }

  function showNode(n) {
    nodes.set(n.id, n);
    upsert($("nodes").tBodies[0], nodeRow(n));
    const tbody = $("deployments").tBodies[0];
    const keep = new Set(n.deployments.map((d) => "deployment-" + d.id));
    tbody.querySelectorAll('tr[data-node="' + n.id + '"]').forEach((tr) => keep.has(tr.id) || tr.remove());
    n.deployments.forEach((d) => upsert(tbody, deploymentRow(n, d)));
  }

  function removeNode(id) {
    nodes.delete(id);
    const row = $("node-" + id);
    if (row) row.remove();
    document.querySelectorAll('#deployments tr[data-node="' + id + '"]').forEach((tr) => tr.remove());
  }

  // --- gateway figures, charts and tiles ---
  function addStats(s) {
    gateways.set(s.gateway, { seen: Date.now() / 1000, stats: s });
    const second = Math.floor(s.at);
    const b = buckets.get(second) || { requests: 0, tokens: 0, ttft: [] };
    b.requests += s.requests;
    b.tokens += s.completion_tokens;
    b.ttft.push(...s.ttft_ms);
    buckets.set(second, b);
    for (const key of buckets.keys()) if (key < second - HISTORY) buckets.delete(key);
    s.recent_errors.forEach(showError);
  }

  function showError(e) {
    const list = $("errors");
    const empty = list.querySelector(".empty");
    if (empty) empty.remove();
    const when = new Date(e.at * 1000).toLocaleTimeString();
    list.insertBefore(el("li", { text: when + "  " + e.status + " " + e.code + "  " + e.endpoint + " " + e.model + "  " + e.message }), list.firstChild);
    while (list.children.length > 50) list.removeChild(list.lastChild);
  }

  function percentile(values, q) {
    if (!values.length) return null;
    const sorted = values.slice().sort((a, b) => a - b);
    return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  }

  function series() {
    // Up to the current second: a tick is stamped when it is sent and covers the second before it.
    const now = Math.floor(Date.now() / 1000);
    const xs = [], rps = [], tps = [], avg = [], p95 = [];
    for (let t = now - HISTORY + 1; t <= now; t++) {
      const b = buckets.get(t);
      xs.push(t);
      rps.push(b ? b.requests : 0);
      tps.push(b ? b.tokens : 0);
      avg.push(b && b.ttft.length ? b.ttft.reduce((x, y) => x + y, 0) / b.ttft.length : null);
      p95.push(b ? percentile(b.ttft, 0.95) : null);
    }
    return { xs, rps, tps, avg, p95 };
  }

  function render() {
    const now = Date.now() / 1000;
    let queue = 0, inflight = 0, reqs = 0, toks = 0, errs = 0, live = 0;
    for (const { seen, stats } of gateways.values()) {
      reqs += stats.totals.requests || 0;
      toks += (stats.totals.prompt_tokens || 0) + (stats.totals.completion_tokens || 0);
      errs += stats.totals.errors || 0;
      if (now - seen > STALE_GATEWAY_S) continue;
      live += 1;
      inflight += stats.inflight;
      queue += Object.values(stats.queue_depth).reduce((x, y) => x + y, 0);
    }
    const s = series();
    const last = (arr, n) => arr.slice(-n).reduce((x, y) => x + y, 0) / n;
    const minute = [];
    for (const [t, b] of buckets) if (t > now - 60) minute.push(...b.ttft);
    $("rps").textContent = fmt(last(s.rps, 5), 1);
    $("tps").textContent = fmt(last(s.tps, 5), 1);
    $("ttft").textContent = minute.length ? fmt(percentile(minute, 0.95), 0) + " ms" : "–";
    $("queue").textContent = String(queue);
    $("inflight").textContent = String(inflight);
    $("total-requests").textContent = String(reqs);
    $("total-tokens").textContent = String(toks);
    $("total-errors").textContent = String(errs);
    $("gateways").textContent = String(live);
    if (rateChart) {
      rateChart.setData([s.xs, s.rps, s.tps]);
      ttftChart.setData([s.xs, s.avg, s.p95]);
    }
  }

  let rateChart = null, ttftChart = null;
  function charts() {
    if (typeof uPlot === "undefined") return;
    const width = Math.max(($("chart-rate").clientWidth || 500) - 10, 300);
    const empty = series();
    rateChart = new uPlot({
      width, height: 180,
      series: [{}, { label: "requests/s", stroke: "#1f5fbf" }, { label: "tokens/s", stroke: "#17632a", scale: "tok" }],
      axes: [{}, { label: "req/s" }, { side: 1, scale: "tok", label: "tok/s", grid: { show: false } }],
    }, [empty.xs, empty.rps, empty.tps], $("chart-rate"));
    ttftChart = new uPlot({
      width, height: 180,
      series: [{}, { label: "mean", stroke: "#7a5a00", spanGaps: true, points: { show: true } }, { label: "p95", stroke: "#8a1c1c", spanGaps: true, points: { show: true } }],
      axes: [{}, { label: "ms" }],
    }, [empty.xs, empty.avg, empty.p95], $("chart-ttft"));
  }

  // --- the socket ---
  let retry = 500;
  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + location.host + "/ws/dashboard");
    socket.onopen = () => {
      retry = 500;
      $("conn").textContent = "live";
      $("conn").className = "badge badge-on";
    };
    socket.onmessage = (message) => {
      const event = JSON.parse(message.data);
      if (event.type === "snapshot") event.nodes.forEach(showNode);
      else if (event.type === "node") showNode(event.node);
      else if (event.type === "node.removed") removeNode(event.id);
      else if (event.type === "gateway") addStats(event.stats);
      render();
    };
    socket.onclose = () => {
      $("conn").textContent = "reconnecting…";
      $("conn").className = "badge badge-off";
      setTimeout(connect, retry); // reconnect with back-off; not a poll
      retry = Math.min(retry * 2, 10000);
    };
  }

  charts();
  connect();
  // What the charts plot, for the browser test and for anyone poking at the page's console.
  window.axsDashboard = { series };
})();
