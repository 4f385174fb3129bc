// Thygon dashboard: plain JavaScript, no dependencies, nothing fetched from elsewhere.
// Every page is static; data comes from the JSON API at the same origin, with the keys kept
// in this browser's localStorage (set them in the header, or with #key=...&admin=... in the
// URL, which is then removed from the address bar).
"use strict";

(function () {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const STORE = { key: "thygon.orgKey", admin: "thygon.adminKey" };
  const ENDED = ["COMPLETED", "FAILED", "CANCELLED"];
  const STATUSES = ["PENDING", "RUNNING", "WAITING", "COMPLETED", "FAILED", "SKIPPED", "CANCELLED"];

  // ---- keys ---------------------------------------------------------------------------

  function storage() {
    try {
      return window.localStorage;
    } catch (e) {
      return null;
    }
  }

  function getKey(which) {
    const s = storage();
    return (s && s.getItem(STORE[which])) || "";
  }

  function setKey(which, value) {
    const s = storage();
    if (!s) return;
    if (value) s.setItem(STORE[which], value);
    else s.removeItem(STORE[which]);
  }

  // Enough of a key to tell two apart, never the whole secret.
  function shortKey(value) {
    return value.length > 8 ? value.slice(0, 8) + "\u2026" : value;
  }

  // #key=...&admin=... sets the keys, then leaves the address bar. A link never silently
  // replaces a key this browser already keeps (anyone can send a link that would otherwise
  // switch the dashboard to an org of their own): a different key is only offered, and the
  // page goes on with the saved one until the user takes it (see offerKeys). Returns the
  // offered keys, { key: "...", admin: "..." }.
  function keysFromFragment() {
    const offered = {};
    const hash = window.location.hash.replace(/^#/, "");
    if (!hash) return offered;
    const params = new URLSearchParams(hash);
    let used = false;
    for (const which of ["key", "admin"]) {
      const raw = params.get(which);
      if (raw === null) continue;
      used = true;
      const v = raw.trim();
      const saved = getKey(which);
      if (saved && v && saved !== v) offered[which] = v;
      else setKey(which, v);
    }
    if (used && window.history && window.history.replaceState) {
      window.history.replaceState(null, "", window.location.pathname + window.location.search);
    }
    return offered;
  }

  // A notice above the page: the link carried keys other than the saved ones.
  function offerKeys(offered) {
    const names = { key: "org key", admin: "admin key" };
    const which = Object.keys(offered);
    const main = document.querySelector("main");
    if (!which.length || !main) return;
    const take = el("button", { type: "button", id: "key-offer-take", text: "Use the link's keys" });
    const keep = el("button", { type: "button", class: "plain", id: "key-offer-keep", text: "Keep the saved keys" });
    const notice = el("div", { class: "banner shown", id: "key-offer", role: "alert" }, [
      el("span", {
        text: "This link carries a different " +
          which.map((w) => names[w] + " (" + shortKey(offered[w]) + ", saved: " + shortKey(getKey(w)) + ")").join(" and ") +
          ". The page uses the saved keys until you choose. ",
      }),
      take, " ", keep,
    ]);
    take.addEventListener("click", () => {
      for (const w of which) setKey(w, offered[w]);
      window.location.reload();
    });
    keep.addEventListener("click", () => notice.remove());
    main.insertBefore(notice, main.firstChild);
  }

  // ---- DOM helpers ---------------------------------------------------------------------

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function svg(tag, attrs, children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = String(v);
      else node.setAttribute(k, String(v));
    }
  }

  function append(node, children) {
    if (children === null || children === undefined) return;
    for (const c of Array.isArray(children) ? children : [children]) {
      if (c === null || c === undefined || c === false) continue;
      node.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
    }
  }

  function replaceChildren(node, children) {
    while (node.firstChild) node.removeChild(node.firstChild);
    append(node, children);
  }

  function $(id) {
    return document.getElementById(id);
  }

  function badge(status, extra) {
    return el("span", { class: "badge status-" + status + (extra ? " " + extra : ""), text: status });
  }

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  function fmtTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    if (isNaN(d)) return iso;
    return (
      d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds())
    );
  }

  function fmtClock(iso) {
    const d = new Date(iso);
    return isNaN(d) ? "" : pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  function fmtSeconds(secs) {
    if (secs === null || secs === undefined || isNaN(secs)) return "—";
    if (secs === 0) return "0 s";
    if (secs < 1) return Math.round(secs * 1000) + " ms";
    if (secs < 60) return (Math.round(secs * 10) / 10) + " s";
    const m = Math.floor(secs / 60);
    if (m < 60) return m + " min " + Math.round(secs % 60) + " s";
    return Math.floor(m / 60) + " h " + (m % 60) + " min";
  }

  // From `start` to `end` (or to now while it runs).
  function duration(start, end) {
    if (!start) return "—";
    const a = new Date(start).getTime();
    const b = end ? new Date(end).getTime() : Date.now();
    return fmtSeconds(Math.max(0, b - a) / 1000);
  }

  // ---- API -----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path, which) {
    const key = getKey(which);
    const headers = { Accept: "application/json" };
    if (key) headers.Authorization = "Bearer " + key;
    let res;
    try {
      res = await fetch(path, { headers: headers, cache: "no-store" });
    } catch (e) {
      throw new ApiError(0, "NETWORK", "cannot reach the server: " + e.message);
    }
    let body = null;
    try {
      body = await res.json();
    } catch (e) {
      throw new ApiError(res.status, "INTERNAL", "the server answered " + res.status + " without JSON");
    }
    if (!res.ok || !body || body.success !== true) {
      const err = (body && body.error) || {};
      let message = err.message || "request failed (" + res.status + ")";
      if (res.status === 401) {
        message = (which === "admin" ? "Set the admin key" : "Set your org's API key") +
          " in the header above (" + message + ").";
      } else if (res.status === 403) {
        message = (which === "admin" ? "This page needs the operator's ADMIN_API_KEY" : "This key may not see this") +
          " (" + message + ").";
      }
      throw new ApiError(res.status, err.code || "ERROR", message);
    }
    return body;
  }

  function showError(e) {
    const b = $("banner");
    if (!b) return;
    b.className = "banner shown";
    b.textContent = e ? e.message : "";
  }

  function clearError() {
    const b = $("banner");
    if (b) b.className = "banner";
  }

  function setMeta(text) {
    const m = $("meta");
    if (m) m.textContent = text;
  }

  // Call `tick` now and every `ms` until it returns false.
  function poll(ms, tick) {
    let stopped = false;
    async function loop() {
      let again = true;
      try {
        again = (await tick()) !== false;
      } catch (e) {
        showError(e);
      }
      if (again && !stopped) window.setTimeout(loop, ms);
    }
    loop();
    return function () {
      stopped = true;
    };
  }

  // ---- header --------------------------------------------------------------------------

  function header(page) {
    const top = $("top");
    if (!top) return;
    const link = (href, label, name) =>
      el("a", { href: href, class: page === name ? "current" : null, text: label });
    const orgInput = el("input", {
      type: "password", id: "org-key", autocomplete: "off",
      placeholder: getKey("key") ? "saved (enter to replace)" : "thy_…",
    });
    const adminInput = el("input", {
      type: "password", id: "admin-key", autocomplete: "off",
      placeholder: getKey("admin") ? "saved (enter to replace)" : "ADMIN_API_KEY",
    });
    const forget = el("button", { type: "button", class: "plain", text: "Forget keys" });
    const form = el("form", { class: "keys", id: "keys" }, [
      el("label", { for: "org-key", text: "Org key" }), orgInput,
      el("label", { for: "admin-key", text: "Admin key" }), adminInput,
      el("button", { type: "submit", text: "Save" }), forget,
    ]);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      if (orgInput.value.trim()) setKey("key", orgInput.value.trim());
      if (adminInput.value.trim()) setKey("admin", adminInput.value.trim());
      window.location.reload();
    });
    forget.addEventListener("click", () => {
      setKey("key", "");
      setKey("admin", "");
      window.location.reload();
    });
    replaceChildren(top, [
      el("span", { class: "brand", text: "Thygon" }),
      el("nav", null, [link("./", "Runs", "runs"), link("queues.html", "Queues & workers", "queues")]),
      form,
    ]);
  }

  // ---- runs list -----------------------------------------------------------------------

  function runsPage() {
    const params = new URLSearchParams(window.location.search);
    const statusSel = $("filter-status");
    const wfInput = $("filter-workflow");
    statusSel.value = params.get("status") || "";
    wfInput.value = params.get("workflowId") || "";
    $("filters").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const q = new URLSearchParams();
      if (statusSel.value) q.set("status", statusSel.value);
      if (wfInput.value.trim()) q.set("workflowId", wfInput.value.trim());
      const qs = q.toString();
      window.history.replaceState(null, "", window.location.pathname + (qs ? "?" + qs : ""));
      refresh();
    });
    statusSel.addEventListener("change", () => $("filters").requestSubmit());

    async function refresh() {
      const q = new URLSearchParams({ limit: "100" });
      if (statusSel.value) q.set("status", statusSel.value);
      if (wfInput.value.trim()) q.set("workflowId", wfInput.value.trim());
      const body = await api("/workflows/runs?" + q.toString(), "key");
      clearError();
      const rows = body.data.map((r) =>
        el("tr", { "data-run": r.id, "data-status": r.status }, [
          el("td", { class: "id" }, el("a", { href: "run.html?id=" + encodeURIComponent(r.id), text: r.id })),
          el("td", null, [r.workflowId, el("span", { class: "meta", text: " v" + r.workflowVersion })]),
          el("td", null, badge(r.status)),
          el("td", { text: fmtTime(r.createdAt) }),
          el("td", { class: "num", text: duration(r.startedAt, r.completedAt) }),
        ])
      );
      if (!rows.length) {
        rows.push(el("tr", null, el("td", { class: "empty", colspan: "5", text: "No runs match." })));
      }
      replaceChildren($("runs-body"), rows);
      setMeta(
        body.data.length + " run" + (body.data.length === 1 ? "" : "s") +
        (body.pagination && body.pagination.nextCursor ? " (newest 100 shown)" : "") +
        " · updated " + fmtClock(new Date().toISOString()) + " · refreshes every 2 s"
      );
    }
    poll(2000, refresh);
  }

  // ---- run page ------------------------------------------------------------------------

  // Layers by dependency depth: a root is at 0, any other step one past its deepest dependency.
  function layers(steps) {
    const byName = new Map(steps.map((s) => [s.name, s]));
    const depth = new Map();
    function depthOf(name, seen) {
      if (depth.has(name)) return depth.get(name);
      if (seen.has(name)) return 0; // a cycle cannot be stored; stay safe anyway
      seen.add(name);
      const s = byName.get(name);
      const deps = (s && s.dependsOn) || [];
      let d = 0;
      for (const dep of deps) if (byName.has(dep)) d = Math.max(d, depthOf(dep, seen) + 1);
      depth.set(name, d);
      return d;
    }
    const out = [];
    for (const s of steps) {
      const d = depthOf(s.name, new Set());
      (out[d] = out[d] || []).push(s);
    }
    return out.map((l) => l || []);
  }

  function drawGraph(steps) {
    const NODE_W = 168, NODE_H = 50, COL = 228, ROW = 74, PAD = 20;
    const cols = layers(steps);
    const tallest = Math.max(1, ...cols.map((c) => c.length));
    const width = PAD * 2 + (cols.length - 1) * COL + NODE_W;
    const height = PAD * 2 + (tallest - 1) * ROW + NODE_H;
    const pos = new Map();
    cols.forEach((col, ci) => {
      const offset = ((tallest - col.length) * ROW) / 2;
      col.forEach((s, ri) => pos.set(s.name, { x: PAD + ci * COL, y: PAD + offset + ri * ROW }));
    });

    const graph = svg("svg", {
      class: "graph", width: width, height: height, viewBox: "0 0 " + width + " " + height,
      role: "img", "aria-label": "workflow graph",
    });
    graph.appendChild(svg("defs", null, svg("marker", {
      id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "7", markerHeight: "7",
      orient: "auto-start-reverse",
    }, svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrow" }))));

    const edges = svg("g", { class: "edges" });
    for (const s of steps) {
      const to = pos.get(s.name);
      for (const dep of s.dependsOn || []) {
        const from = pos.get(dep);
        if (!from || !to) continue;
        const x1 = from.x + NODE_W, y1 = from.y + NODE_H / 2, x2 = to.x, y2 = to.y + NODE_H / 2;
        const mid = (x1 + x2) / 2;
        edges.appendChild(svg("path", {
          class: "edge", "data-from": dep, "data-to": s.name, "marker-end": "url(#arrow)",
          d: "M " + x1 + " " + y1 + " C " + mid + " " + y1 + ", " + mid + " " + y2 + ", " + x2 + " " + y2,
        }));
      }
    }
    graph.appendChild(edges);

    const nodes = svg("g", { class: "nodes" });
    for (const s of steps) {
      const p = pos.get(s.name);
      const sub = s.type + " · " + s.status.toLowerCase() + (s.attempt > 1 ? " · try " + s.attempt : "");
      nodes.appendChild(svg("g", {
        class: "node status-" + s.status, "data-step": s.name, "data-status": s.status,
        transform: "translate(" + p.x + "," + p.y + ")",
      }, [
        svg("title", { text: s.name + " (" + s.type + "): " + s.status + (s.error ? " — " + s.error : "") }),
        svg("rect", { width: NODE_W, height: NODE_H, rx: 8, ry: 8 }),
        svg("text", { class: "name", x: 12, y: 21, text: clip(s.name, 20) }),
        svg("text", { class: "sub", x: 12, y: 38, text: clip(sub, 26) }),
      ]));
    }
    graph.appendChild(nodes);
    return graph;
  }

  function clip(text, n) {
    return text.length > n ? text.slice(0, n - 1) + "…" : text;
  }

  function runPage() {
    const id = new URLSearchParams(window.location.search).get("id");
    if (!id) {
      showError(new Error("No run id: open this page as run.html?id=run_…"));
      setMeta("");
      return;
    }
    document.title = "Thygon · " + id;
    $("title").textContent = "Run " + id;
    replaceChildren($("legend"), STATUSES.map((s) => badge(s)));

    async function refresh() {
      const body = await api("/workflows/runs/" + encodeURIComponent(id), "key");
      clearError();
      const run = body.data;
      renderSummary(run);
      replaceChildren($("graph"), drawGraph(run.steps));
      renderSteps(run.steps);
      live.follow(run);
      renderTurns(run.steps);
      renderTransitions(run.transitions);
      renderLogs(run.logs);
      const ended = ENDED.includes(run.status);
      setMeta(
        "Updated " + fmtClock(new Date().toISOString()) +
        (ended ? " · the run has ended; no more refreshes" : " · refreshes every second until the run ends") +
        live.status()
      );
      return !ended;
    }
    const live = liveAnswers(id);
    window.addEventListener("pagehide", () => live.close());
    poll(1000, refresh);
  }

  function renderSummary(run) {
    const item = (label, value, cls) =>
      el("div", { class: cls || null }, [el("span", { class: "label", text: label }), value]);
    const parts = [
      item("Status", badge(run.status)),
      item("Workflow", el("a", {
        href: "./?workflowId=" + encodeURIComponent(run.workflowId),
        text: run.workflowId + " v" + run.workflowVersion,
      })),
      item("Org", run.orgId),
      item("Created", fmtTime(run.createdAt)),
      item("Started", fmtTime(run.startedAt)),
      item("Completed", fmtTime(run.completedAt)),
      item("Duration", duration(run.startedAt, run.completedAt)),
      item("Tokens", el("span", { class: "usage-tokens", text: fmtTokens(run.usage) })),
      item("Cost", el("span", { class: "usage-cost", text: fmtCost(run.usage) })),
    ];
    if (run.error) parts.push(item("Error", el("pre", { text: run.error }), "wide"));
    if (run.output !== null && run.output !== undefined) {
      parts.push(item("Output", el("pre", { text: JSON.stringify(run.output, null, 2) }), "wide"));
    }
    parts.push(item("Variables", el("pre", { text: JSON.stringify(run.variables) }), "wide"));
    replaceChildren($("summary"), parts);
  }

  function renderSteps(steps) {
    replaceChildren($("steps-body"), steps.map((s) =>
      el("tr", { "data-step": s.name, "data-status": s.status }, [
        el("td", { class: "mono", text: s.name }),
        el("td", { text: s.type }),
        el("td", { class: "mono", text: (s.dependsOn || []).join(", ") || "—" }),
        el("td", null, badge(s.status)),
        el("td", { class: "num", text: String(s.attempt) }),
        el("td", { text: fmtTime(s.startedAt) }),
        el("td", { class: "num", text: duration(s.startedAt, s.completedAt) }),
        el("td", { class: "message", text: s.error || "" }),
      ])
    ));
  }

  // ---- agent turns: usage, replies, tool calls and results --------------------------------
  // Tenants and models write every one of these strings: all go in as text nodes.

  // The agent steps and turns the reader opened (all start closed), kept across refreshes.
  const opened = new Set();

  function fmtTokens(u) {
    if (!u) return "—";
    return fmtCount(u.inputTokens) + " in · " + fmtCount(u.outputTokens) + " out · " +
      fmtCount(u.cachedTokens) + " cached";
  }

  function fmtCost(u) {
    const usd = u ? u.costUsd : null;
    if (typeof usd !== "number") return "—";
    if (usd === 0) return "$0";
    if (usd >= 1) return "$" + usd.toFixed(2);
    if (usd < 0.000001) return "< $0.000001";
    return "$" + usd.toFixed(6).replace(/0+$/, "");
  }

  // Message content as text: a string as it is, anything else as JSON.
  function textOf(v) {
    if (v === null || v === undefined) return "";
    return typeof v === "string" ? v : JSON.stringify(v, null, 2);
  }

  // A <details> closed unless the reader opened it (`key`) before this refresh.
  function foldable(key, attrs, summary, body) {
    const d = el("details", Object.assign({ open: opened.has(key) }, attrs), [
      el("summary", null, summary),
      el("div", { class: "fold-body" }, body),
    ]);
    d.addEventListener("toggle", () => {
      if (d.open) opened.add(key);
      else opened.delete(key);
    });
    return d;
  }

  function toolCall(call, result) {
    const parts = [
      el("div", null, [
        el("span", { class: "label", text: "Tool call " }),
        el("span", { class: "mono tool-name", text: textOf(call.name) || "?" }),
      ]),
      el("pre", { class: "tool-arguments", text: JSON.stringify(call.arguments === undefined ? null : call.arguments, null, 2) }),
    ];
    if (result) {
      parts.push(el("div", { class: "tool-result" + (result.isError ? " tool-error" : ""), "data-error": result.isError ? "true" : "false" }, [
        el("span", { class: "label", text: "Result " }),
        result.isError ? el("span", { class: "badge level-ERROR", text: "error" }) : null,
        el("pre", { text: textOf(result.content) }),
      ]));
    } else {
      parts.push(el("div", { class: "tool-result none", text: "No result." }));
    }
    return el("div", { class: "tool-call", "data-tool": textOf(call.name) }, parts);
  }

  function turnView(step, t) {
    const reply = t.reply || {};
    const calls = Array.isArray(reply.toolCalls) ? reply.toolCalls : [];
    const results = new Map((Array.isArray(t.toolResults) ? t.toolResults : []).map((r) => [r.toolCallId, r]));
    const summary = [
      el("b", { text: "Turn " + t.turn }),
      " · attempt " + t.attempt + " · ",
      el("span", { class: "mono", text: textOf(t.model) }),
      " · " + fmtTokens(t.usage) + " · " + fmtCost(t.usage),
      calls.length ? " · " + calls.length + (calls.length === 1 ? " tool call" : " tool calls") : null,
      el("span", { class: "when", text: " · " + fmtTime(t.at) }),
    ];
    const body = [
      el("span", { class: "label", text: "Reply" }),
      el("pre", { class: "reply", text: textOf(reply.content) || "(no text)" }),
    ].concat(calls.map((c) => toolCall(c, results.get(c.id))));
    return foldable("turn:" + step + ":" + t.turn, { class: "turn", "data-turn": t.turn }, summary, body);
  }

  // The steps last rendered: a step's first live piece re-renders the section with them.
  let shownSteps = [];

  function renderTurns(steps) {
    shownSteps = steps;
    const parts = [];
    for (const s of steps) {
      if (Array.isArray(s.turns) && s.turns.length) {
        parts.push(foldable("step:" + s.name, { class: "agent-step", "data-step": s.name }, [
          el("span", { class: "mono", text: s.name }), " ", badge(s.status), " ",
          el("span", {
            class: "usage",
            text: s.turns.length + (s.turns.length === 1 ? " turn" : " turns") + " · " +
              fmtTokens(s.usage) + " · " + fmtCost(s.usage),
          }),
        ], s.turns.map((t) => turnView(s.name, t))));
      }
      // The live box is the same element across refreshes: moving it keeps what it shows.
      const box = liveBoxes.get(s.name);
      if (box) parts.push(box.node);
    }
    if (!parts.length) parts.push(el("p", { class: "empty", text: "No agent step has asked a model." }));
    replaceChildren($("turns"), parts);
  }

  // ---- live answers: the pieces of streaming agents' answers, from the run's event stream ----
  // Read with fetch (EventSource cannot send the key) while the run has an agent step that has
  // not ended; only agent steps write pieces. Model text: text nodes only.

  const STEP_ENDED = ["COMPLETED", "FAILED", "SKIPPED", "CANCELLED"];

  // Step name -> { node, body, turn }: the live box under that step.
  const liveBoxes = new Map();

  function liveBox(step) {
    let box = liveBoxes.get(step);
    if (!box) {
      const body = el("div", { class: "live-body" });
      const node = el("div", { class: "live", "data-step": step }, [
        el("div", { class: "label" }, [el("span", { class: "mono", text: step }), " · live answer"]),
        body,
      ]);
      box = { node: node, body: body, turn: null };
      liveBoxes.set(step, box);
      renderTurns(shownSteps);
    }
    return box;
  }

  // One event of an event stream: "event: ...\ndata: ...\nid: ..." (a frame without its
  // blank line).
  function parseFrame(frame) {
    const ev = { id: null, event: "message", data: [] };
    for (const line of frame.split("\n")) {
      if (!line || line[0] === ":") continue;
      const at = line.indexOf(":");
      const field = at < 0 ? line : line.slice(0, at);
      let value = at < 0 ? "" : line.slice(at + 1);
      if (value[0] === " ") value = value.slice(1);
      if (field === "data") ev.data.push(value);
      else if (field === "event") ev.event = value;
      else if (field === "id") ev.id = value;
    }
    ev.data = ev.data.join("\n");
    return ev;
  }

  function parseJson(text) {
    try {
      return JSON.parse(text);
    } catch (e) {
      return null;
    }
  }

  function showPiece(kind, d) {
    if (!d || typeof d.step !== "string") return;
    if (kind === "agent.reset") {
      const shown = liveBoxes.get(d.step);
      if (shown) {
        replaceChildren(shown.body, null);
        shown.turn = null;
      }
      return;
    }
    const box = liveBox(d.step);
    if (box.turn !== null && d.turn !== box.turn) {
      append(box.body, el("div", { class: "live-line", text: "turn " + d.turn }));
    }
    box.turn = d.turn;
    if (typeof d.text === "string") append(box.body, d.text);
    for (const call of Array.isArray(d.toolCalls) ? d.toolCalls : []) {
      append(box.body, el("div", { class: "live-line live-call", text: "\u2192 calls " + textOf(call.name) }));
    }
    const r = d.toolResult;
    if (r) {
      append(box.body, el("div", {
        class: "live-line live-result" + (r.isError ? " tool-error" : ""),
        text: "\u2190 " + textOf(r.name) + (r.isError ? " failed" : " answered"),
      }));
    }
  }

  function liveAnswers(runId) {
    let ctrl = null; // the open stream's AbortController
    let lastId = null; // the last event id read: the next stream resumes after it
    let opened = 0; // streams opened so far
    let state = "closed"; // "open", "closed", or what went wrong
    let ended = false;
    let retryAt = 0;

    function mark(next) {
      state = next;
      const turns = $("turns");
      turns.setAttribute("data-stream", next === "open" || next === "closed" ? next : "error");
      turns.setAttribute("data-streams", String(opened));
    }

    // Read one stream to its end; true if it asked to be reconnected.
    async function read(signal) {
      const headers = { Accept: "text/event-stream" };
      const key = getKey("key");
      if (key) headers.Authorization = "Bearer " + key;
      if (lastId !== null) headers["Last-Event-ID"] = lastId;
      const res = await fetch("/workflows/runs/" + encodeURIComponent(runId) + "/events", {
        headers: headers, cache: "no-store", signal: signal,
      });
      if (!res.ok || !res.body) throw new Error("the event stream answered " + res.status);
      opened += 1;
      mark("open");
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      let reconnect = false;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return reconnect;
        buffer += decoder.decode(value, { stream: true }); // the server ends lines with \n
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const ev = parseFrame(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
          if (ev.id !== null) lastId = ev.id;
          if (ev.event === "reconnect") reconnect = true;
          if (ev.event === "agent.delta" || ev.event === "agent.reset") showPiece(ev.event, parseJson(ev.data));
        }
      }
    }

    function open() {
      const mine = new AbortController();
      ctrl = mine;
      read(mine.signal).then((reconnect) => {
        if (ctrl !== mine) return;
        ctrl = null;
        mark("closed");
        if (reconnect && !ended) open();
      }, (e) => {
        if (ctrl !== mine) return;
        ctrl = null;
        retryAt = Date.now() + 5000;
        mark("live answers unavailable: " + e.message);
      });
    }

    function close() {
      if (ctrl) ctrl.abort();
      ctrl = null;
      mark("closed");
    }

    // After each refresh: keep a stream open while an agent step may still write, and drop
    // the live boxes of steps that have ended (their answer is in their turns).
    function follow(run) {
      ended = ENDED.includes(run.status);
      const wanted = !ended && run.steps.some((s) => s.type === "agent" && !STEP_ENDED.includes(s.status));
      if (!wanted) close();
      else if (!ctrl && Date.now() >= retryAt) open();
      for (const s of run.steps) if (STEP_ENDED.includes(s.status)) liveBoxes.delete(s.name);
    }

    function status() {
      if (state === "open") return " · live answers streaming";
      return state === "closed" ? "" : " · " + state;
    }

    return { follow: follow, close: close, status: status };
  }

  function renderTransitions(transitions) {
    const rows = transitions.map((t) =>
      el("tr", { class: "transition" }, [
        el("td", { text: fmtTime(t.at) }),
        el("td", { class: "mono", text: t.step || "(run)" }),
        el("td", null, t.from ? badge(t.from) : "—"),
        el("td", null, t.to ? badge(t.to) : "—"),
      ])
    );
    if (!rows.length) rows.push(el("tr", null, el("td", { class: "empty", colspan: "4", text: "Nothing has happened yet." })));
    replaceChildren($("transitions-body"), rows);
  }

  function renderLogs(logs) {
    const rows = logs.map((l) =>
      el("tr", { class: "log-line" }, [
        el("td", { text: fmtTime(l.at) }),
        el("td", null, el("span", { class: "badge level-" + (l.level || "INFO"), text: l.level || "" })),
        el("td", { class: "mono", text: l.step || "(run)" }),
        el("td", { class: "message", text: l.message || "" }),
      ])
    );
    if (!rows.length) rows.push(el("tr", null, el("td", { class: "empty", colspan: "4", text: "No log lines yet." })));
    replaceChildren($("logs-body"), rows);
  }

  // ---- queues page ---------------------------------------------------------------------

  function chart(q) {
    const W = 540, H = 160, L = 40, R = 10, T = 12, B = 24;
    const points = q.history.length ? q.history.slice() : [{ at: q.sampledAt, messages: q.messages, consumers: q.consumers }];
    // One sample draws as a flat line, so there is always a line to see.
    if (points.length === 1) points.unshift(points[0]);
    const times = points.map((p) => new Date(p.at).getTime());
    const t0 = Math.min(...times), t1 = Math.max(...times);
    const span = Math.max(1, t1 - t0);
    const top = Math.max(1, ...points.map((p) => Math.max(p.messages, p.consumers)));
    // By time; samples all at one instant spread evenly instead.
    const x = (i) => L + (t1 > t0 ? (times[i] - t0) / span : i / (points.length - 1)) * (W - L - R);
    const y = (v) => T + (1 - v / top) * (H - T - B);
    const line = (field) => points.map((p, i) => x(i).toFixed(1) + "," + y(p[field]).toFixed(1)).join(" ");
    const minutes = Math.round(span / 60000);
    return svg("svg", {
      class: "chart", viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none",
      "data-queue": q.name, role: "img", "aria-label": "messages in " + q.name + " over time",
    }, [
      svg("line", { class: "grid", x1: L, x2: W - R, y1: y(top / 2), y2: y(top / 2) }),
      svg("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }),
      svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }),
      svg("text", { class: "label", x: L - 6, y: T + 4, "text-anchor": "end", text: String(top) }),
      svg("text", { class: "label", x: L - 6, y: H - B + 4, "text-anchor": "end", text: "0" }),
      svg("text", { class: "label", x: L, y: H - 6, text: fmtClock(points[0].at) }),
      svg("text", {
        class: "label", x: W - R, y: H - 6, "text-anchor": "end",
        text: fmtClock(points[points.length - 1].at) + (minutes ? " (" + minutes + " min)" : ""),
      }),
      svg("polyline", { class: "line-consumers", points: line("consumers") }),
      svg("polyline", { class: "line-messages", points: line("messages") }),
    ]);
  }

  // A count the service could not read yet shows as a dash.
  function fmtCount(n) {
    return n === null || n === undefined ? "—" : String(n);
  }

  function queueCard(q) {
    const number = (label, value, cls) =>
      el("div", { class: cls }, [el("span", { text: label }), el("b", { text: value })]);
    return el("article", { class: "queue", "data-queue": q.name, "data-kind": q.kind }, [
      el("h3", { class: "mono", text: q.name }),
      el("div", { class: "kind" }, [
        q.kind === "jobs" ? "job queue" : "dead-letter queue",
        " · sampled " + fmtTime(q.sampledAt) + " ",
        q.reachable ? null : el("span", { class: "badge unreachable", text: "broker unreachable: last known numbers" }),
        q.exists === false ? el("span", { class: "badge stale", text: "not declared yet" }) : null,
      ]),
      el("div", { class: "numbers" }, [
        number("Messages", String(q.messages), "messages"),
        number("Consumers", String(q.consumers), "consumers"),
        q.kind === "jobs"
          ? number("Oldest pending run", fmtSeconds(q.oldestPendingRunAgeSeconds), "oldest")
          : null,
        q.kind === "jobs"
          ? number("Runs queued again", fmtCount(q.pendingRunsRequeued), "requeued")
          : number("Redriven", fmtCount(q.deadLettersRedriven), "redriven"),
      ]),
      chart(q),
      el("div", { class: "chart-legend" }, [
        el("span", { class: "messages", text: "— messages" }), "  ",
        el("span", { class: "consumers", text: "- - consumers" }),
        " · last " + q.history.length + " sample" + (q.history.length === 1 ? "" : "s") + " (up to one hour)",
      ]),
    ]);
  }

  function workerRow(w) {
    const age = (Date.now() - new Date(w.lastHeartbeatAt).getTime()) / 1000;
    return el("tr", { "data-worker": w.id, "data-live": String(w.live) }, [
      el("td", { class: "mono", text: w.id }),
      el("td", null, el("span", { class: "badge " + (w.live ? "live" : "stale"), text: w.live ? "live" : "stale" })),
      el("td", { text: w.hostname }),
      el("td", { class: "num", text: String(w.pid) }),
      el("td", { text: fmtTime(w.startedAt) }),
      el("td", { text: fmtTime(w.lastHeartbeatAt) + " (" + fmtSeconds(Math.max(0, age)) + " ago)" }),
      el("td", { class: "num", text: w.inFlight + " / " + w.concurrency }),
      el("td", { class: "mono" }, w.runs.length
        ? w.runs.flatMap((id, i) => [i ? ", " : null, el("a", { href: "run.html?id=" + encodeURIComponent(id), text: id })])
        : "—"),
    ]);
  }

  function queuesPage() {
    async function refresh() {
      const [queues, workers] = await Promise.allSettled([
        api("/ops/queues", "admin"),
        api("/ops/workers", "admin"),
      ]);
      const failed = [queues, workers].find((r) => r.status === "rejected");
      if (failed) showError(failed.reason);
      else clearError();
      if (queues.status === "fulfilled") {
        replaceChildren($("queues"), queues.value.data.map(queueCard));
      }
      if (workers.status === "fulfilled") {
        const rows = workers.value.data.map(workerRow);
        if (!rows.length) rows.push(el("tr", null, el("td", { class: "empty", colspan: "8", text: "No worker has reported in the last hour." })));
        replaceChildren($("workers-body"), rows);
      }
      setMeta("Updated " + fmtClock(new Date().toISOString()) + " · refreshes every 5 s");
    }
    poll(5000, refresh);
  }

  // ---- start ---------------------------------------------------------------------------

  const offered = keysFromFragment();
  const page = document.body.getAttribute("data-page");
  header(page);
  offerKeys(offered);
  if (page === "runs") runsPage();
  else if (page === "run") runPage();
  else if (page === "queues") queuesPage();
})();
