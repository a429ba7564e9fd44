// The suite-agent dashboard: one table of services kept current by the event stream.
// Plain browser JavaScript, no build step; everything comes from this agent's own API.
"use strict";

(() => {
  const TOKEN_KEY = "suite-agent.token";
  const THEME_KEY = "suite-agent.theme";
  const AGENT_EVENTS = ["service_started", "service_stopped", "service_error", "health_check",
    "config_reloaded", "config_error", "command", "plugin_error", "scheduled_run"];
  const STATE_ORDER = ["fatal", "backoff", "starting", "stopping", "running", "exited", "stopped"];
  const MAX_EVENTS = 300;
  const MAX_LOG_LINES = 2000;
  const SPARK_POINTS = 60;
  const SIGNALS = {1: "HUP", 2: "INT", 3: "QUIT", 4: "ILL", 6: "ABRT", 7: "BUS", 8: "FPE", 9: "KILL", 10: "USR1",
    11: "SEGV", 12: "USR2", 13: "PIPE", 14: "ALRM", 15: "TERM", 24: "XCPU", 25: "XFSZ"};

  const needsToken = document.querySelector('meta[name="suite-auth"]').content === "token";
  // Read by the browser tests and the screenshot script: timings measured in this page.
  const stats = window.dashboardStats = {loadMark: Math.random(), firstRender: null, applied: [], lastApplied: null};

  const $ = (id) => document.getElementById(id);
  const rowsEl = $("rows");
  const rows = new Map(); // name -> row record
  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  let sortKey = "name";
  let sortDir = 1;
  let source = null;
  let retryTimer = null;
  let retryDelay = 500;
  // The newest agent event shown: a new stream resumes after it (the first starts with the last
  // hour the agent still holds); ids shown, so an event sent again is not listed twice.
  let lastEventId = null;
  const shownIds = new Set();
  let session = 0; // bumped when the token is dropped: late answers of the old one are ignored
  let config = null;
  let layoutQueued = false;
  let agentInfo = null; // {version, startedAt (performance.now() time base)}

  class AuthError extends Error {}

  // -- the API ------------------------------------------------------------------------------
  async function api(method, path, body) {
    const headers = {};
    if (token) headers.Authorization = "Bearer " + token;
    const init = {method, headers, cache: "no-store", credentials: "omit"};
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (resp.status === 401) throw new AuthError((data && data.error) || "token refused");
    return {status: resp.status, ok: resp.ok, data};
  }

  // -- formatting ---------------------------------------------------------------------------
  const pad = (n) => String(n).padStart(2, "0");
  function duration(seconds) {
    if (!(seconds > 0)) return "—";
    const s = Math.floor(seconds);
    const d = Math.floor(s / 86400);
    const clock = `${pad(Math.floor(s % 86400 / 3600))}:${pad(Math.floor(s % 3600 / 60))}:${pad(s % 60)}`;
    return d ? `${d}d ${clock}` : clock;
  }
  function bytes(n) {
    if (n === null || n === undefined) return "—";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
  }
  const percent = (p) => (p === null || p === undefined ? "—" : p.toFixed(1));
  const signame = (n) => "SIG" + (SIGNALS[n] || n);
  function lastExit(s) {
    if (s.last_signal !== null && s.last_signal !== undefined) return signame(s.last_signal);
    if (s.last_exit_code !== null && s.last_exit_code !== undefined) return `code ${s.last_exit_code}`;
    return "—";
  }
  const clockTime = (d) => `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  // -- the table ----------------------------------------------------------------------------
  function sparkline(kind) {
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("class", `spark ${kind}`);
    svg.setAttribute("viewBox", "0 0 64 18");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("aria-hidden", "true");
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    svg.appendChild(line);
    return svg;
  }

  function drawSpark(svg, values, floor) {
    const shown = values.filter((v) => v !== null && v !== undefined);
    const line = svg.firstChild;
    if (shown.length < 2) { line.setAttribute("points", ""); return; }
    const lo = Math.min(...shown);
    const hi = Math.max(floor, ...shown);
    const span = hi - lo || 1;
    const step = 64 / (SPARK_POINTS - 1);
    const start = SPARK_POINTS - values.length;
    const points = [];
    values.forEach((v, i) => {
      if (v === null || v === undefined) return;
      points.push(`${((start + i) * step).toFixed(1)},${(17 - (v - lo) / span * 16).toFixed(1)}`);
    });
    line.setAttribute("points", points.join(" "));
  }

  function makeRow(name) {
    const tr = el("tr");
    tr.dataset.service = name;
    const cells = {
      name: el("td", "name"), state: el("td", "state"), ready: el("td", "ready"), replicas: el("td", "num"),
      pids: el("td", "pids"), restarts: el("td", "num"), uptime: el("td", "num"), exit: el("td", "exit"),
      cpu: el("td", "usage num"), rss: el("td", "usage num"), actions: el("td", "actions"),
    };
    cells.nameText = el("span", "", name);
    cells.file = el("small");
    cells.name.append(cells.nameText, cells.file);
    cells.badge = el("span", "badge");
    cells.detail = el("span", "detail");
    cells.state.append(cells.badge, cells.detail);
    cells.cpuText = el("span", "", "—");
    cells.cpuSpark = sparkline("cpu");
    cells.cpu.append(cells.cpuText, cells.cpuSpark);
    cells.rssText = el("span", "", "—");
    cells.rssSpark = sparkline("rss");
    cells.rss.append(cells.rssText, cells.rssSpark);
    const buttons = el("div", "buttons");
    for (const [action, label] of [["start", "Start"], ["stop", "Stop"], ["restart", "Restart"], ["logs", "Logs"]]) {
      const button = el("button", "", label);
      button.type = "button";
      button.dataset.action = action;
      button.title = `${label} ${name}`;
      buttons.appendChild(button);
    }
    cells.actions.appendChild(buttons);
    for (const key of ["name", "state", "ready", "replicas", "pids", "restarts", "uptime", "exit", "cpu", "rss", "actions"]) {
      tr.appendChild(cells[key]);
    }
    return {name, tr, cells, status: null, cpu: [], rss: [], usageTime: null, receivedAt: 0};
  }

  function backoffLeft(row) {
    const m = /restarting in ([0-9.]+)s/.exec(row.status.detail || "");
    if (!m) return null;
    return Math.max(0, parseFloat(m[1]) - (performance.now() - row.receivedAt) / 1000);
  }

  function detailText(row) {
    const s = row.status;
    if (s.state === "backoff") {
      const left = backoffLeft(row);
      if (left !== null) return s.detail.replace(/restarting in [0-9.]+s/, `restarting in ${left.toFixed(1)}s`);
    }
    // A scheduled service: when it runs next (its last exit is in its own column).
    const next = typeof s.next_run === "number" ? `next run ${new Date(s.next_run * 1000).toLocaleTimeString()}` : "";
    return [s.detail || "", next].filter(Boolean).join(" · ");
  }

  function uptimeOf(row) {
    const s = row.status;
    if (!s.pids.length) return 0;
    return s.uptime + (performance.now() - row.receivedAt) / 1000;
  }

  function paint(row) {
    const s = row.status;
    const c = row.cells;
    if (row.tr.dataset.state !== s.state) row.tr.dataset.state = s.state;
    const failed = s.state === "exited" && (s.last_signal !== null || (s.last_exit_code !== null && s.last_exit_code !== 0));
    row.tr.toggleAttribute("data-failed", failed);
    setText(c.file, s.file ? s.file.split("/").pop() : "");
    c.name.title = s.file || "";
    setText(c.badge, s.state);
    setText(c.detail, detailText(row));
    const readyText = s.ready ? "ready" : "not ready";
    const readyKey = `${readyText} ${s.health} ${s.pids.length > 0}`;
    if (c.ready.dataset.v !== readyKey) {
      c.ready.dataset.v = readyKey;
      c.ready.replaceChildren(el("span", s.ready ? "" : (s.pids.length ? "notready" : "muted"), readyText), document.createTextNode(" · "),
        el("span", `health-${s.health}`, s.health));
    }
    setText(c.replicas, String(s.replicas));
    setText(c.pids, s.pids.length ? s.pids.join(" ") : "—");
    c.pids.title = s.pids.join(" ");
    setText(c.restarts, String(s.restarts));
    setText(c.uptime, duration(uptimeOf(row)));
    setText(c.exit, lastExit(s));
    c.exit.classList.toggle("exit-bad", failed || (s.state !== "exited" && s.last_signal !== null && s.state !== "stopped")
      || (s.last_exit_code !== null && s.last_exit_code !== 0));
    c.actions.querySelector('[data-action="start"]').disabled = s.pids.length > 0 && s.state === "running";
    c.actions.querySelector('[data-action="stop"]').disabled = s.state === "stopped" || s.state === "exited" || s.state === "fatal";
  }

  function paintUsage(row) {
    const cpu = row.cpu.length ? row.cpu[row.cpu.length - 1] : null;
    const rss = row.rss.length ? row.rss[row.rss.length - 1] : null;
    const live = row.status && row.status.pids.length > 0;
    setText(row.cells.cpuText, live ? percent(cpu) : "—");
    setText(row.cells.rssText, live ? bytes(rss) : "—");
    drawSpark(row.cells.cpuSpark, live ? row.cpu : [], 1);
    drawSpark(row.cells.rssSpark, live ? row.rss : [], 0);
  }

  function upsert(status) {
    let row = rows.get(status.name);
    if (!row) {
      row = makeRow(status.name);
      rows.set(status.name, row);
      rowsEl.appendChild(row.tr);
    }
    const before = row.status;
    row.status = status;
    row.receivedAt = performance.now();
    paint(row);
    if (before && before.pids.join() !== status.pids.join() && !status.pids.length) paintUsage(row);
    filterRow(row);
    return row;
  }

  function remove(name) {
    const row = rows.get(name);
    if (!row) return;
    row.tr.remove();
    rows.delete(name);
  }

  function applyAll(services) {
    for (const name of [...rows.keys()]) if (!(name in services)) remove(name);
    for (const name of Object.keys(services)) upsert(services[name]);
    sortRows();
    updateCounts();
  }

  function applyOne(status) {
    const t0 = performance.now();
    upsert(status);
    queueLayout();
    const took = performance.now() - t0;
    stats.applied.push(took);
    if (stats.applied.length > 1000) stats.applied.shift();
    stats.lastApplied = {name: status.name, pids: status.pids, state: status.state, at: performance.now(), took};
  }

  function applyUsage(data) {
    const services = data.services || {};
    for (const [name, u] of Object.entries(services)) {
      const row = rows.get(name);
      if (!row) continue;
      if (row.usageTime === data.time) continue;
      row.usageTime = data.time;
      row.cpu.push(u.cpu_percent);
      row.rss.push(u.rss_bytes);
      if (row.cpu.length > SPARK_POINTS) { row.cpu.shift(); row.rss.shift(); }
      paintUsage(row);
    }
    for (const row of rows.values()) {
      if (!(row.name in services) && row.cpu.length) { row.cpu = []; row.rss = []; paintUsage(row); }
    }
    if (sortKey === "cpu" || sortKey === "rss") queueLayout();
  }

  function loadUsage(data) {
    for (const [name, u] of Object.entries(data.services || {})) {
      const row = rows.get(name);
      if (!row) continue;
      const history = u.history.slice(-SPARK_POINTS);
      row.cpu = history.map((p) => p[1]);
      row.rss = history.map((p) => p[2]);
      row.usageTime = history.length ? history[history.length - 1][0] : null;
      paintUsage(row);
    }
  }

  // Sorting, filtering and counts run once per frame however many events arrived in it.
  function queueLayout() {
    if (layoutQueued) return;
    layoutQueued = true;
    requestAnimationFrame(() => {
      layoutQueued = false;
      if (sortKey !== "name") sortRows();
      updateCounts();
    });
  }

  function sortValue(row) {
    const s = row.status;
    switch (sortKey) {
      case "state": return STATE_ORDER.indexOf(s.state);
      case "ready": return (s.ready ? 2 : 0) + (s.health === "healthy" ? 1 : 0);
      case "replicas": return s.replicas;
      case "pids": return s.pids.length ? s.pids[0] : -1;
      case "restarts": return s.restarts;
      case "uptime": return uptimeOf(row);
      case "exit": return s.last_signal !== null ? 1000 + s.last_signal : (s.last_exit_code ?? -1);
      case "cpu": return row.cpu.length ? (row.cpu[row.cpu.length - 1] ?? -1) : -1;
      case "rss": return row.rss.length ? row.rss[row.rss.length - 1] : -1;
      default: return 0;
    }
  }

  function sortRows() {
    const list = [...rows.values()];
    const byName = (a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
    if (sortKey === "name") {
      list.sort((a, b) => sortDir * byName(a, b));
    } else {
      const values = new Map(list.map((r) => [r, sortValue(r)]));
      list.sort((a, b) => sortDir * (values.get(a) - values.get(b)) || byName(a, b));
    }
    let current = rowsEl.firstElementChild;
    const fragment = document.createDocumentFragment();
    let inOrder = true;
    for (const row of list) {
      if (inOrder && row.tr === current) { current = current.nextElementSibling; continue; }
      inOrder = false;
      fragment.appendChild(row.tr);
    }
    if (!inOrder) rowsEl.appendChild(fragment);
  }

  function filterRow(row) {
    const text = $("filter").value.trim().toLowerCase();
    const state = $("state-filter").value;
    const s = row.status;
    let show = !text || row.name.toLowerCase().includes(text);
    if (show && state === "problem") {
      show = ["fatal", "backoff"].includes(s.state) || (s.state === "running" && (!s.ready || s.health === "unhealthy"))
        || (s.state === "exited" && row.tr.hasAttribute("data-failed"));
    } else if (show && state) {
      show = s.state === state;
    }
    row.tr.hidden = !show;
  }

  function filterAll() {
    for (const row of rows.values()) filterRow(row);
    updateCounts();
  }

  function updateCounts() {
    const counts = {};
    let shown = 0;
    for (const row of rows.values()) {
      counts[row.status.state] = (counts[row.status.state] || 0) + 1;
      if (!row.tr.hidden) shown++;
    }
    const box = $("counts");
    const parts = [];
    for (const state of STATE_ORDER) {
      if (counts[state]) parts.push(`${counts[state]} ${state}`);
    }
    setText(box, `${parts.join(" · ")}${parts.length ? " — " : ""}${shown} of ${rows.size} shown`);
    $("empty").hidden = shown > 0 || rows.size === 0;
  }

  // Uptime and backoff countdowns move on their own between events.
  function tick() {
    if (agentInfo) setText($("agent"), `v${agentInfo.version} · up ${duration((performance.now() - agentInfo.startedAt) / 1000)}`);
    for (const row of rows.values()) {
      if (row.tr.hidden || !row.status) continue;
      if (row.status.pids.length) setText(row.cells.uptime, duration(uptimeOf(row)));
      if (row.status.state === "backoff") setText(row.cells.detail, detailText(row));
    }
  }

  // -- actions ------------------------------------------------------------------------------
  function answer(text, kind) {
    const box = $("answers");
    const note = el("div", `answer ${kind}`, text);
    box.prepend(note);
    while (box.children.length > 4) box.lastElementChild.remove();
    setTimeout(() => note.remove(), kind === "error" ? 20000 : 8000);
    return note;
  }

  function confirmStop(name) {
    const dialog = $("confirm");
    setText($("confirm-text"), `Stop ${name}? It stays stopped until started again.`);
    return new Promise((resolve) => {
      const done = (value) => {
        dialog.removeEventListener("close", onClose);
        resolve(value === "confirm");
      };
      const onClose = () => done(dialog.returnValue);
      dialog.returnValue = "cancel";
      dialog.addEventListener("close", onClose);
      dialog.showModal();
      dialog.querySelector('[value="cancel"]').focus();
    });
  }

  function describe(r, name, action) {
    if (!r.data) return `${action} ${name}: HTTP ${r.status}`;
    if (r.data.error) return `${action} ${name}: ${r.data.error} (HTTP ${r.status})`;
    const result = (r.data.results || {})[name];
    const state = result ? result.state : "?";
    if (r.status === 202) return `${action} ${name}: accepted, still settling (now ${state})`;
    return `${action} ${name}: ${r.data.ok ? "ok" : "failed"}, now ${state}${result && result.detail ? ` (${result.detail})` : ""}`;
  }

  async function act(name, action, button) {
    if (action === "logs") { openLogs(name); return; }
    if (action === "stop" && !(await confirmStop(name))) return;
    button.disabled = true;
    const pending = answer(`${action} ${name}…`, "pending");
    try {
      const r = await api("POST", `/api/services/${encodeURIComponent(name)}/${action}?wait=30s`);
      answer(describe(r, name, action), r.ok && r.data && r.data.ok ? "ok" : "error");
    } catch (e) {
      if (e instanceof AuthError) { authLost(e.message); return; }
      answer(`${action} ${name}: ${e.message}`, "error");
    } finally {
      pending.remove();
      const row = rows.get(name);
      if (row && row.status) paint(row); else button.disabled = false;
    }
  }

  // -- logs ---------------------------------------------------------------------------------
  const logs = {name: null, after: 0, paused: false, run: 0, controller: null};

  function openLogs(name) {
    stopLogs();
    logs.name = name;
    logs.after = 0;
    logs.paused = false;
    $("logs").hidden = false;
    setText($("logs-name"), name);
    $("logs-body").replaceChildren();
    setText($("logs-pause"), "Pause");
    $("logs-pause").setAttribute("aria-pressed", "false");
    followLogs(true);
  }

  function stopLogs() {
    logs.run++;
    if (logs.controller) logs.controller.abort();
    logs.controller = null;
  }

  function appendLines(lines) {
    const body = $("logs-body");
    const atBottom = body.scrollTop + body.clientHeight >= body.scrollHeight - 4;
    const many = (rows.get(logs.name) || {status: {replicas: 1}}).status.replicas > 1;
    const fragment = document.createDocumentFragment();
    for (const line of lines) {
      const span = el("span", line.stream);
      if (many) span.appendChild(el("span", "inst", `${line.instance} `));
      span.appendChild(document.createTextNode(line.text + "\n"));
      fragment.appendChild(span);
    }
    body.appendChild(fragment);
    while (body.childElementCount > MAX_LOG_LINES) body.firstElementChild.remove();
    if (atBottom) body.scrollTop = body.scrollHeight;
  }

  async function followLogs(first) {
    const run = ++logs.run;
    const name = logs.name;
    const stream = $("logs-stream").value;
    while (run === logs.run && !logs.paused) {
      logs.controller = new AbortController();
      const q = new URLSearchParams({lines: first ? "200" : "500"});
      if (stream) q.set("stream", stream);
      if (!first) { q.set("after", String(logs.after)); q.set("wait", "25s"); }
      try {
        const resp = await fetch(`/api/services/${encodeURIComponent(name)}/logs?${q}`, {
          headers: token ? {Authorization: "Bearer " + token} : {}, cache: "no-store", signal: logs.controller.signal});
        if (run !== logs.run) return;
        if (resp.status === 401) { authLost("token refused"); return; }
        const data = await resp.json();
        if (!resp.ok) {
          appendLines([{stream: "stderr", instance: "", text: `[${data.error || resp.status}]`}]);
          await new Promise((r) => setTimeout(r, 3000));
        } else {
          if (data.lines.length) {
            logs.after = Math.max(logs.after, data.lines[data.lines.length - 1].seq);
            appendLines(data.lines);
          } else if (first) {
            logs.after = data.last_seq;
          }
        }
      } catch (e) {
        if (run !== logs.run || e.name === "AbortError") return;
        await new Promise((r) => setTimeout(r, 2000));
      }
      first = false;
    }
  }

  // -- events -------------------------------------------------------------------------------
  function eventText(type, d) {
    switch (type) {
      case "service_started": return [`pid ${d.pid}`, "good"];
      case "service_stopped": {
        const how = d.signal !== null && d.signal !== undefined ? signame(d.signal) : `code ${d.exit_code}`;
        return [`pid ${d.pid} ended (${how})${d.expected ? ", as asked" : ""}`, d.expected ? "" : "bad"];
      }
      case "service_error": return [d.error || "error", "bad"];
      case "health_check":
        return [`${d.ready ? "ready" : "not ready"}, ${d.health}${d.message ? ": " + d.message : ""}`,
          d.health === "unhealthy" ? "bad" : "info"];
      case "config_reloaded": {
        const parts = [];
        for (const k of ["added", "changed", "removed"]) if (d[k] && d[k].length) parts.push(`${k} ${d[k].join(", ")}`);
        const bad = Object.keys(d.errors || {}).length;
        if (bad) parts.push(`${bad} file(s) rejected`);
        return [`${d.source ? d.source + ": " : ""}${parts.join("; ") || "no change"}`, bad ? "bad" : "info"];
      }
      case "config_error":
        return [`${d.file || d.source || d.section || ""} ${(d.errors || []).join("; ")}`.trim(), "bad"];
      case "command": return [`${d.verb} ${(d.services || []).join(", ")}${d.source ? " from " + d.source : ""}`, "info"];
      case "plugin_error": return [`${d.plugin}.${d.hook}: ${d.error}`, "bad"];
      default: return [JSON.stringify(d), ""];
    }
  }

  function onAgentEvent(ce) {
    if (shownIds.has(ce.id)) return;
    shownIds.add(ce.id);
    const type = ce.type.replace(/^suite\./, "");
    const [text, kind] = eventText(type, ce.data || {});
    const li = el("li", kind);
    li.dataset.id = ce.id;
    const when = new Date(ce.time);
    const time = el("time", "", clockTime(when));
    time.dateTime = ce.time;
    const what = el("span", "what", `${type.replace(/_/g, " ")}${ce.subject ? " · " + ce.subject : ""}`);
    li.append(time, what, el("span", "text", text));
    const list = $("timeline");
    list.prepend(li);
    while (list.children.length > MAX_EVENTS) {
      shownIds.delete(list.lastElementChild.dataset.id);
      list.lastElementChild.remove();
    }
    setText($("events-count"), `${list.children.length}`);
    if (type === "config_reloaded" || type === "config_error") loadConfig();
  }

  // -- configuration ------------------------------------------------------------------------
  async function loadConfig() {
    const mine = session;
    let r;
    try { r = await api("GET", "/api/config"); } catch (e) {
      if (e instanceof AuthError) authLost(e.message);
      return;
    }
    if (mine !== session || !r.ok) return;
    config = r.data;
    const banner = $("rejected");
    const rejected = Object.entries(config.rejected || {});
    if (!rejected.length) { banner.hidden = true; banner.replaceChildren(); return; }
    const list = el("ul");
    for (const [, problems] of rejected) {
      for (const p of problems) list.appendChild(el("li")).appendChild(el("code", "", p));
    }
    banner.replaceChildren(el("strong", "", `${rejected.length} configuration file${rejected.length > 1 ? "s" : ""} `
      + "rejected by the last reload; the rest of conf.d is in force:"), list);
    banner.hidden = false;
  }

  // -- fleet: the agents this one heard on the queue (their heartbeats); text only ----------
  const FLEET_EVERY = 10000;
  let fleetTimer = null;

  async function loadFleet() {
    const mine = session;
    let r;
    try { r = await api("GET", "/api/fleet"); } catch (e) { return; }
    if (mine !== session || !r.ok) return;
    const panel = $("fleet");
    panel.hidden = !r.data.queue;
    const body = $("fleet-body");
    const agents = Object.entries(r.data.agents || {});
    body.replaceChildren(...agents.map(([id, a]) => {
      const s = a.services || {};
      const labels = Object.entries(a.labels || {}).map(([k, v]) => `${k}=${v}`).join(",");
      const tr = el("tr");
      tr.dataset.agent = id;
      for (const [text, cls] of [[id, ""], [a.hostname || "", ""], [labels, "muted"],
        [`${s.running ?? "?"}/${s.total ?? "?"}`, "num"], [`${s.unhealthy ?? 0}`, "num"],
        [`${s.fatal ?? 0}`, "num"], [`${Math.round(a.last_heard ?? 0)}s ago`, "num"]]) {
        tr.appendChild(el("td", cls, String(text)));
      }
      return tr;
    }));
    setText($("fleet-count"), `${agents.length}`);
    clearTimeout(fleetTimer);
    fleetTimer = setTimeout(loadFleet, FLEET_EVERY);
  }

  function showConfig() {
    const shown = config ? {...config} : {};
    setText($("config-files"), `Files: ${(shown.files || []).join(", ") || "none"}`);
    setText($("config-body"), JSON.stringify(shown, null, 2));
    $("config").showModal();
  }

  // -- the event stream ---------------------------------------------------------------------
  function setConn(state, text) {
    const c = $("conn");
    c.dataset.state = state;
    setText(c, text || state);
  }

  function closeStream() {
    clearTimeout(retryTimer);
    if (source) { source.close(); source = null; }
  }

  function retry() {
    clearTimeout(retryTimer);
    retryTimer = setTimeout(connect, retryDelay);
    retryDelay = Math.min(retryDelay * 2, 10000);
  }

  // A fresh single-use ticket each time: the long-lived token never goes into a URL.
  async function connect() {
    closeStream();
    const mine = session;
    setConn("connecting");
    let ticket;
    try {
      const r = await api("POST", "/api/tickets");
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      ticket = r.data.ticket;
    } catch (e) {
      if (e instanceof AuthError) { authLost(e.message); return; }
      setConn("reconnecting", "agent unreachable");
      retry();
      return;
    }
    if (mine !== session) return;
    const resume = lastEventId ? `after=${encodeURIComponent(lastEventId)}` : "since=1h";
    const es = new EventSource(`/api/events?status=1&heartbeat=10s&${resume}&ticket=${encodeURIComponent(ticket)}`);
    source = es;
    es.onopen = () => { retryDelay = 500; setConn("live"); };
    // The browser would retry with the spent ticket: close, and come back with a new one.
    es.onerror = () => {
      if (source !== es) return;
      es.close();
      source = null;
      setConn("reconnecting");
      retry();
    };
    es.addEventListener("services", (m) => applyAll(JSON.parse(m.data).data.services));
    es.addEventListener("service_status", (m) => applyOne(JSON.parse(m.data).data));
    es.addEventListener("service_removed", (m) => { remove(JSON.parse(m.data).subject); queueLayout(); });
    es.addEventListener("service_usage", (m) => applyUsage(JSON.parse(m.data).data));
    for (const type of AGENT_EVENTS) {
      es.addEventListener(type, (m) => {
        if (m.lastEventId) lastEventId = m.lastEventId;
        onAgentEvent(JSON.parse(m.data));
      });
    }
  }

  // -- token and start ----------------------------------------------------------------------
  function showLogin(message) {
    $("main").hidden = true;
    $("login").hidden = false;
    $("show-config").hidden = true;
    $("signout").hidden = true;
    setText($("login-error"), message || "");
    const input = document.querySelector('input[name="token"]');
    input.value = "";
    input.focus();
  }

  function authLost(message) {
    session++;
    token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    closeStream();
    stopLogs();
    setConn("off", "offline");
    for (const name of [...rows.keys()]) remove(name);
    $("timeline").replaceChildren();
    shownIds.clear();
    lastEventId = null;
    clearTimeout(fleetTimer);
    $("fleet").hidden = true;
    $("fleet-body").replaceChildren();
    $("rejected").hidden = true;
    config = null;
    showLogin(message ? `Token refused: ${message}` : "");
  }

  async function start() {
    const mine = session;
    let r;
    try {
      r = await api("GET", "/api/services");
    } catch (e) {
      if (e instanceof AuthError) { authLost(e.message); return; }
      setConn("reconnecting", "agent unreachable");
      setTimeout(start, 2000);
      return;
    }
    if (mine !== session) return;
    if (!r.ok) {
      setConn("off", `HTTP ${r.status}`);
      $("main").hidden = false;
      answer(`The API refused the page: ${(r.data && r.data.error) || "HTTP " + r.status}`, "error");
      return;
    }
    $("login").hidden = true;
    $("main").hidden = false;
    $("show-config").hidden = false;
    $("signout").hidden = !needsToken;
    applyAll(r.data.services);
    if (stats.firstRender === null) stats.firstRender = performance.now();
    connect();
    loadConfig();
    loadFleet();
    api("GET", "/api/usage").then((u) => { if (mine === session && u.ok) loadUsage(u.data); }).catch(() => {});
    api("GET", "/api/health").then((h) => {
      if (!h.ok) return;
      agentInfo = {version: h.data.version, startedAt: performance.now() - h.data.uptime * 1000};
      tick();
    }).catch(() => {});
  }

  // -- theme --------------------------------------------------------------------------------
  function applyTheme(theme) {
    document.documentElement.dataset.theme = theme;
    setText($("theme"), theme === "dark" ? "Light" : "Dark");
  }

  // -- wiring -------------------------------------------------------------------------------
  function init() {
    const saved = localStorage.getItem(THEME_KEY);
    applyTheme(saved || (matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light"));
    $("theme").addEventListener("click", () => {
      const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
      localStorage.setItem(THEME_KEY, next);
      applyTheme(next);
    });
    $("login-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const value = document.querySelector('input[name="token"]').value.trim();
      if (!value) { setText($("login-error"), "Enter the API token."); return; }
      token = value;
      sessionStorage.setItem(TOKEN_KEY, value);
      setText($("login-error"), "");
      session++;
      start();
    });
    $("signout").addEventListener("click", () => authLost(""));
    rowsEl.addEventListener("click", (e) => {
      const button = e.target.closest("button[data-action]");
      if (!button || button.disabled) return;
      act(button.closest("tr").dataset.service, button.dataset.action, button);
    });
    document.querySelectorAll("th[data-sort]").forEach((th) => {
      th.tabIndex = 0;
      const sortBy = () => {
        const key = th.dataset.sort;
        sortDir = key === sortKey ? -sortDir : 1;
        sortKey = key;
        document.querySelectorAll("th[data-sort]").forEach((h) => h.removeAttribute("aria-sort"));
        th.setAttribute("aria-sort", sortDir > 0 ? "ascending" : "descending");
        sortRows();
      };
      th.addEventListener("click", sortBy);
      th.addEventListener("keydown", (e) => { if (e.key === "Enter") sortBy(); });
    });
    $("filter").addEventListener("input", filterAll);
    $("state-filter").addEventListener("change", filterAll);
    $("logs-close").addEventListener("click", () => { stopLogs(); logs.name = null; $("logs").hidden = true; });
    $("logs-pause").addEventListener("click", () => {
      logs.paused = !logs.paused;
      setText($("logs-pause"), logs.paused ? "Resume" : "Pause");
      $("logs-pause").setAttribute("aria-pressed", String(logs.paused));
      if (logs.paused) stopLogs(); else followLogs(false);
    });
    $("logs-stream").addEventListener("change", () => { if (logs.name) openLogs(logs.name); });
    $("show-config").addEventListener("click", showConfig);
    for (const id of ["confirm", "config"]) {
      const dialog = $(id);
      dialog.addEventListener("click", (e) => {
        const button = e.target.closest("button[value]");
        if (button) dialog.close(button.value);
      });
    }
    setInterval(tick, 1000);
    if (needsToken && !token) showLogin(""); else start();
  }

  init();
})();
