// chordctl web view: the ring, the catalog and one service's instances, live.
//
// The page holds no data: everything comes from this agent's API. Every call goes through
// api(), which sends the token when one was given (fetch, not EventSource, so that the change
// streams can carry the Authorization header too). Text from the API is only ever set with
// textContent or setAttribute, never parsed as HTML.
"use strict";

const TOKEN_KEY = "chordctl-token";
const RING_EVERY_MS = 1000;
const RETRY_MS = 1000;
const SVG = "http://www.w3.org/2000/svg";
const RADIUS = 160;
const RING_BITS = 160n;
const RING_SIZE = 1n << RING_BITS;
const PALETTE = ["#3b6fd1", "#2e9d4f", "#c98a00", "#b14fc4", "#d33a3a", "#1a9aa8", "#7a6b3a", "#5a5fd6"];

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  running: false,
  generation: 0, // bumped on every (re)start: loops of an older one stop
  nodes: [], // [{id, addr, http, predecessor, successor}] in ring order
  catalog: new Map(), // service -> summary
  selected: "", // the service whose instances are shown
  instances: new Map(), // id -> INSTANCE of the selected service
  serviceStream: null, // AbortController of the selected service's stream
  clockOffset: 0, // agent clock minus browser clock (ms), from the Date header
  keyIds: new Map(), // service -> SHA-1 hex of its name
  panicTimer: 0,
};

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------- API

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.token) headers.set("Authorization", "Bearer " + state.token);
  const response = await fetch(path, { ...options, headers, cache: "no-store" });
  if (response.status === 401) {
    let message = "the agent refused the token";
    try {
      message = (await response.json()).error.message;
    } catch (_) { /* not JSON: keep the generic message */ }
    throw new Unauthorized(message);
  }
  const date = Date.parse(response.headers.get("Date") || "");
  if (!Number.isNaN(date)) {
    const offset = date - Date.now();
    // The header has one-second resolution: only a real skew is worth correcting.
    state.clockOffset = Math.abs(offset) > 2000 ? offset : 0;
  }
  return response;
}

function setConn(kind, text) {
  const conn = $("conn");
  conn.dataset.state = kind;
  conn.textContent = text;
}

function failed(error, what) {
  if (error instanceof Unauthorized) {
    askToken(error.message);
    return true;
  }
  if (error && error.name === "AbortError") return true;
  setConn("error", what + ": " + (error && error.message ? error.message : String(error)));
  return false;
}

// --------------------------------------------------------------------------------- token

function askToken(message) {
  // Every loop of this start meets the 401: the first one says why (the others may have been
  // cut off reading the reason by the stop).
  if (!state.running) return;
  stop();
  setConn("token", "token required");
  document.body.dataset.needsToken = "true";
  $("token-form").hidden = false;
  $("main").hidden = true;
  $("token-error").textContent = state.token ? message : "";
  $("token-input").focus();
}

function tokenGiven(event) {
  event.preventDefault();
  state.token = $("token-input").value.trim();
  try {
    sessionStorage.setItem(TOKEN_KEY, state.token);
  } catch (_) { /* storage refused: the token lasts as long as the page */ }
  $("token-input").value = "";
  start();
}

// ------------------------------------------------------------------------- SSE over fetch

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Read the SSE stream at `path` until `signal` aborts, reconnecting after a failure and
// resuming from the last id when `resume` is set. Calls onEvent(name, data) per event.
async function watch(path, signal, resume, onEvent) {
  let lastId = "";
  while (!signal.aborted) {
    try {
      const headers = { Accept: "text/event-stream" };
      if (resume && lastId) headers["Last-Event-ID"] = lastId;
      const response = await api(path, { headers, signal });
      if (!response.ok || !response.body) throw new Error(path + " answered " + response.status);
      setConn("live", "live");
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer = (buffer + decoder.decode(value, { stream: true })).replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let name = "message";
          const data = [];
          for (const line of frame.split("\n")) {
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (field === "event") name = text;
            else if (field === "data") data.push(text);
            else if (field === "id") lastId = text;
          }
          if (data.length === 0) continue;
          try {
            onEvent(name, JSON.parse(data.join("\n")));
          } catch (e) {
            console.warn("chordctl: bad event from " + path, e);
          }
        }
      }
      if (!signal.aborted) setConn("error", "stream ended; reconnecting");
    } catch (error) {
      if (failed(error, "stream " + path)) return;
    }
    await sleep(RETRY_MS);
  }
}

// ------------------------------------------------------------------------------- helpers

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

const short = (id) => (id || "").slice(0, 8);
const big = (hex) => BigInt("0x" + hex);

// The fraction of the ring (0..1) at identifier `hex`.
function fraction(hex) {
  return Number(big(hex) >> (RING_BITS - 53n)) / 2 ** 53;
}

function point(frac, r) {
  const angle = frac * 2 * Math.PI - Math.PI / 2; // 0 at the top, clockwise
  return [r * Math.cos(angle), r * Math.sin(angle)];
}

function ago(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 120) return s + "s ago";
  if (s < 7200) return Math.round(s / 60) + "m ago";
  return Math.round(s / 3600) + "h ago";
}

const now = () => Date.now() + state.clockOffset;

// SHA-1 of a string's UTF-8 bytes, as 40 hex digits (a key's identifier on the ring).
// By hand: crypto.subtle is missing from pages not served over https or localhost.
function sha1(text) {
  const bytes = new TextEncoder().encode(text);
  const words = new Uint32Array((((bytes.length + 8) >> 6) + 1) * 16);
  for (let i = 0; i < bytes.length; i++) words[i >> 2] |= bytes[i] << (24 - (i % 4) * 8);
  words[bytes.length >> 2] |= 0x80 << (24 - (bytes.length % 4) * 8);
  words[words.length - 1] = bytes.length * 8;
  const h = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476, 0xc3d2e1f0];
  const w = new Uint32Array(80);
  for (let block = 0; block < words.length; block += 16) {
    for (let t = 0; t < 80; t++) {
      if (t < 16) w[t] = words[block + t];
      else {
        const x = w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16];
        w[t] = (x << 1) | (x >>> 31);
      }
    }
    let [a, b, c, d, e] = h;
    for (let t = 0; t < 80; t++) {
      let f, k;
      if (t < 20) { f = (b & c) | (~b & d); k = 0x5a827999; }
      else if (t < 40) { f = b ^ c ^ d; k = 0x6ed9eba1; }
      else if (t < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8f1bbcdc; }
      else { f = b ^ c ^ d; k = 0xca62c1d6; }
      const tmp = (((a << 5) | (a >>> 27)) + f + e + k + w[t]) >>> 0;
      e = d; d = c; c = (b << 30) | (b >>> 2); b = a; a = tmp;
    }
    h[0] = (h[0] + a) >>> 0; h[1] = (h[1] + b) >>> 0; h[2] = (h[2] + c) >>> 0;
    h[3] = (h[3] + d) >>> 0; h[4] = (h[4] + e) >>> 0;
  }
  return h.map((x) => x.toString(16).padStart(8, "0")).join("");
}

function keyId(service) {
  let id = state.keyIds.get(service);
  if (!id) {
    id = sha1(service);
    state.keyIds.set(service, id);
  }
  return id;
}

// --------------------------------------------------------------------------------- ring

async function pollRing(generation) {
  while (state.running && state.generation === generation) {
    try {
      const response = await api("/v1/ring/nodes");
      if (!response.ok) throw new Error("/v1/ring/nodes answered " + response.status);
      const nodes = await response.json();
      if (state.generation !== generation) return;
      state.nodes = Array.isArray(nodes) ? nodes : [];
      renderRing();
      const self = await api("/v1/ring");
      if (self.ok) $("self-preservation").hidden = (await self.json()).self_preservation !== true;
    } catch (error) {
      if (failed(error, "ring")) return;
    }
    await sleep(RING_EVERY_MS);
  }
}

// Each node's owned records: the services whose key's identifier it is the successor of.
function recordsByNode(sortedIds) {
  const counts = new Map(sortedIds.map((id) => [id, 0]));
  if (sortedIds.length === 0) return counts;
  for (const service of state.catalog.keys()) {
    const key = keyId(service); // equal-length lowercase hex: string order is numeric order
    const owner = sortedIds.find((id) => id >= key) || sortedIds[0];
    counts.set(owner, counts.get(owner) + 1);
  }
  return counts;
}

function renderRing() {
  const nodes = state.nodes.filter((n) => typeof n.id === "string" && /^[0-9a-f]{40}$/.test(n.id));
  const ids = nodes.map((n) => n.id).sort();
  const records = recordsByNode(ids);
  const share = new Map();
  ids.forEach((id, i) => {
    const pred = ids[(i + ids.length - 1) % ids.length];
    const span = ids.length === 1 ? RING_SIZE : (big(id) - big(pred) + RING_SIZE) % RING_SIZE;
    share.set(id, Number((span * 1000000n) / RING_SIZE) / 10000);
  });

  const dots = $("ring-nodes");
  const arrows = $("ring-arrows");
  dots.replaceChildren();
  arrows.replaceChildren();
  const color = new Map(ids.map((id, i) => [id, PALETTE[i % PALETTE.length]]));
  for (const n of nodes) {
    const f = fraction(n.id);
    const [x, y] = point(f, RADIUS);
    const g = svg("g", {
      "data-node-id": n.id,
      "data-addr": n.addr || "",
      "data-share": share.get(n.id),
      "data-records": records.get(n.id),
      "data-successor": n.successor || "",
      class: "node",
    });
    // Its share: the arc from its predecessor (exclusive) to itself.
    const i = ids.indexOf(n.id);
    const pred = ids[(i + ids.length - 1) % ids.length];
    if (ids.length > 1) {
      const [px, py] = point(fraction(pred), RADIUS);
      const large = share.get(n.id) > 50 ? 1 : 0;
      g.append(svg("path", {
        d: `M ${px} ${py} A ${RADIUS} ${RADIUS} 0 ${large} 1 ${x} ${y}`,
        class: "share-arc",
        stroke: color.get(n.id),
      }));
    } else {
      g.append(svg("circle", { cx: 0, cy: 0, r: RADIUS, class: "share-arc", stroke: color.get(n.id) }));
    }
    g.append(svg("circle", { cx: x, cy: y, r: 7, class: "node-dot", fill: color.get(n.id) }));
    const [lx, ly] = point(f, RADIUS + 22);
    const anchor = lx > 20 ? "start" : lx < -20 ? "end" : "middle";
    const label = svg("text", { x: lx, y: ly, "text-anchor": anchor, class: "node-label" });
    label.append(svg("tspan", { x: lx, dy: "-0.2em" }, short(n.id)));
    label.append(svg("tspan", { x: lx, dy: "1.2em", class: "muted" },
      `${share.get(n.id).toFixed(1)}% · ${records.get(n.id)} rec`));
    g.append(svg("title", {}, `${n.id}\n${n.addr || ""}`));
    g.append(label);
    dots.append(g);

    if (n.successor && n.successor !== n.id && ids.includes(n.successor)) {
      const [sx, sy] = point(fraction(n.successor), RADIUS - 12);
      const [ax, ay] = point(f, RADIUS - 12);
      arrows.append(svg("path", {
        d: `M ${ax} ${ay} Q 0 0 ${sx} ${sy}`,
        class: "succ-arrow",
        "marker-end": "url(#arrow)",
        "data-from": n.id,
        "data-to": n.successor,
      }));
    }
  }
  $("ring-count").textContent = `${nodes.length} node${nodes.length === 1 ? "" : "s"}`;

  const rows = nodes.map((n) => {
    const tr = el("tr", { "data-node-row": n.id });
    tr.append(el("td", { class: "mono", title: n.id }, short(n.id)));
    tr.append(el("td", { class: "mono" }, n.addr || ""));
    tr.append(el("td", { class: "num" }, share.get(n.id).toFixed(2) + "%"));
    tr.append(el("td", { class: "num" }, String(records.get(n.id))));
    tr.append(el("td", { class: "mono", title: n.successor || "" }, short(n.successor)));
    return tr;
  });
  $("nodes-body").replaceChildren(...rows);
}

// ------------------------------------------------------------------------------ catalog

function onCatalog(name, data) {
  if (name === "snapshot") {
    state.catalog = new Map();
    for (const s of data.services || []) state.catalog.set(s.service, s);
  } else if (name === "change") {
    if (data.op === "deregister") state.catalog.delete(data.service);
    else if (data.summary) state.catalog.set(data.service, data.summary);
  } else {
    return;
  }
  renderServices();
  renderRing();
}

const STATES = ["passing", "warning", "critical", "maintenance"];

function renderServices() {
  const names = [...state.catalog.keys()].sort();
  const rows = names.map((name) => {
    const s = state.catalog.get(name);
    const tr = el("tr", { "data-service": name, "aria-selected": String(name === state.selected) });
    tr.dataset.instances = String(s.instances ?? 0);
    tr.append(el("td", { class: "mono" }, name));
    tr.append(el("td", { class: "num" }, String(s.instances ?? 0)));
    for (const st of STATES) {
      tr.dataset[st] = String(s[st] ?? 0);
      tr.append(el("td", { class: "num" + (s[st] ? " state-" + st : "") }, String(s[st] ?? 0)));
    }
    tr.addEventListener("click", () => {
      location.hash = "service=" + encodeURIComponent(name);
    });
    return tr;
  });
  $("services-body").replaceChildren(...rows);
  $("services-count").textContent = `${names.length}`;
  $("services-empty").hidden = names.length > 0;
}

// ---------------------------------------------------------------------------- instances

function selectFromHash() {
  const match = /^#service=(.*)$/.exec(location.hash);
  let name = "";
  if (match) {
    try {
      name = decodeURIComponent(match[1]);
    } catch (_) { /* a malformed hash selects nothing */ }
  }
  select(name);
}

function select(name) {
  if (state.serviceStream) state.serviceStream.abort();
  state.serviceStream = null;
  state.selected = name;
  state.instances = new Map();
  $("instances-section").hidden = !name;
  $("instances-service").textContent = name;
  $("panic-mark").hidden = true;
  renderServices();
  renderInstances();
  if (!name || !state.running) return;
  const controller = new AbortController();
  state.serviceStream = controller;
  watch("/v1/watch/services/" + encodeURIComponent(name), controller.signal, true, (event, data) => {
    if (state.selected !== name) return;
    if (event === "snapshot") {
      state.instances = new Map((data.instances || []).map((i) => [i.id, i]));
    } else if (event === "change" && data.instance) {
      if (data.op === "deregister" || data.op === "expire") state.instances.delete(data.instance.id);
      else state.instances.set(data.instance.id, data.instance);
    } else {
      return;
    }
    renderInstances();
    checkPanic(name);
  });
}

// Whether a healthy-only discover is in panic (the agent says so in a header).
function checkPanic(name) {
  clearTimeout(state.panicTimer);
  state.panicTimer = setTimeout(async () => {
    try {
      const r = await api("/v1/services/" + encodeURIComponent(name) + "?healthy=true");
      if (state.selected === name) $("panic-mark").hidden = r.headers.get("X-Chordctl-Panic") !== "true";
    } catch (error) {
      failed(error, "panic check");
    }
  }, 250);
}

function ttlLeft(inst) {
  const ttl = Number(inst.ttl_secs || 0);
  if (!ttl) return { text: "no TTL", secs: "" };
  const last = Date.parse((inst.status && inst.status.updated_at) || inst.registered_at || "");
  if (Number.isNaN(last)) return { text: "?", secs: "" };
  const left = Math.max(0, Math.ceil((last + ttl * 1000 - now()) / 1000));
  return { text: left > 0 ? left + "s" : "lapsed", secs: String(left) };
}

function lastReport(inst) {
  const st = inst.status || {};
  const parts = [];
  const at = Date.parse(st.updated_at || "");
  if (!Number.isNaN(at)) parts.push(ago(now() - at));
  if (typeof st.load === "number") parts.push("load " + st.load);
  if (typeof st.success_rate === "number") parts.push("success " + Math.round(st.success_rate * 1000) / 10 + "%");
  if (typeof st.latency_ms === "number") parts.push(st.latency_ms + " ms");
  if (st.note) parts.push(String(st.note));
  return parts.join(" · ");
}

function renderInstances() {
  const ids = [...state.instances.keys()].sort();
  const rows = ids.map((id) => {
    const inst = state.instances.get(id);
    const st = (inst.status && inst.status.state) || "";
    const ttl = ttlLeft(inst);
    const tr = el("tr", { "data-instance": id, "data-state": st, "data-ttl-left": ttl.secs });
    tr.append(el("td", { class: "mono" }, id));
    tr.append(el("td", { class: "mono" }, `${inst.address ?? ""}:${inst.port ?? ""}`));
    tr.append(el("td", { class: "state-" + st, "data-cell": "state" }, st));
    tr.append(el("td", { class: "num", "data-cell": "ttl" }, ttl.text));
    tr.append(el("td", { "data-cell": "report" }, lastReport(inst)));
    const marks = el("td", { "data-cell": "marks" });
    if (inst.flapping) marks.append(el("span", { class: "mark warn", "data-mark": "flapping" }, "flapping"));
    tr.append(marks);
    return tr;
  });
  $("instances-body").replaceChildren(...rows);
  $("instances-empty").hidden = !state.selected || ids.length > 0;
}

// The TTL left and "ago" move with the clock, not only with events.
function tick() {
  for (const tr of $("instances-body").children) {
    const inst = state.instances.get(tr.dataset.instance);
    if (!inst) continue;
    const ttl = ttlLeft(inst);
    tr.dataset.ttlLeft = ttl.secs;
    tr.querySelector('[data-cell="ttl"]').textContent = ttl.text;
    tr.querySelector('[data-cell="report"]').textContent = lastReport(inst);
  }
}

// ------------------------------------------------------------------------------- start

let catalogStream = null;

function stop() {
  state.running = false;
  state.generation += 1;
  if (catalogStream) catalogStream.abort();
  catalogStream = null;
  if (state.serviceStream) state.serviceStream.abort();
  state.serviceStream = null;
}

function start() {
  stop();
  state.running = true;
  delete document.body.dataset.needsToken;
  $("token-form").hidden = true;
  $("main").hidden = false;
  setConn("connecting", "connecting");
  const generation = state.generation;
  pollRing(generation);
  catalogStream = new AbortController();
  watch("/v1/watch/services", catalogStream.signal, false, onCatalog);
  selectFromHash();
}

document.addEventListener("DOMContentLoaded", () => {
  $("token-form").addEventListener("submit", tokenGiven);
  window.addEventListener("hashchange", selectFromHash);
  setInterval(tick, 1000);
  start();
});
