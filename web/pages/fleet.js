// Fleet: every device with status, last seen, battery, quality and open alerts; counts by
// status; filter, sort and search. Usable at thousands of devices: the list is virtual
// (only the rows in view exist in the DOM) and live updates touch the model, not the DOM.

import { all, live } from "../api.js";
import { ago, append, clear, fmt, h } from "../dom.js";

const ROW = 34; // px, as .grid-row in style.css
const OVERSCAN = 10;
const STATUSES = ["online", "stale", "offline"];
const COLUMNS = [
  ["device_id", "Device"],
  ["type", "Type"],
  ["status", "Status"],
  ["last_seen", "Last seen"],
  ["battery", "Battery"],
  ["quality_score", "Quality"],
  ["open_alerts", "Open alerts"],
  ["metrics", "Metrics"],
];

export async function render(main, _params, shell) {
  const state = { devices: new Map(), rows: [], sort: "device_id", descending: false, status: "", type: "", q: "" };
  const counts = h("div", { className: "counts" });
  const search = h("input", { type: "search", placeholder: "Search id or name", attrs: { "aria-label": "search devices" } });
  const statusFilter = h("select", { attrs: { "aria-label": "status" } }, h("option", { value: "" }, "All statuses"), STATUSES.map((s) => h("option", { value: s }, s)));
  const typeFilter = h("select", { attrs: { "aria-label": "type" } }, h("option", { value: "" }, "All types"));
  const shown = h("span", { className: "muted" });
  const head = h("div", { className: "grid-head", attrs: { role: "row" } });
  const spacer = h("div");
  const viewport = h("div", { className: "viewport", attrs: { role: "table", "aria-label": "devices" } }, spacer);
  main.append(
    h("h1", {}, "Fleet"),
    counts,
    h("div", { className: "toolbar" }, search, statusFilter, typeFilter, h("span", { className: "spacer" }), shown),
    head,
    viewport,
  );

  for (const [field, label] of COLUMNS) {
    const button = h("button", { type: "button", dataset: { sort: field } }, label);
    button.addEventListener("click", () => {
      state.descending = state.sort === field ? !state.descending : false;
      state.sort = field;
      refresh();
    });
    head.append(h("div", { attrs: { role: "columnheader" } }, button));
  }

  function value(device, field) {
    if (field === "status") return STATUSES.indexOf(device.status);
    if (field === "metrics") return device.metrics.length;
    if (field === "last_seen") return device.last_seen ? Date.parse(device.last_seen) : null;
    return device[field];
  }

  function refresh() {
    const needle = state.q.toLocaleLowerCase();
    const rows = [];
    for (const device of state.devices.values()) {
      if (state.status && device.status !== state.status) continue;
      if (state.type && device.type !== state.type) continue;
      if (needle && !device.device_id.toLocaleLowerCase().includes(needle) && !(device.name || "").toLocaleLowerCase().includes(needle)) continue;
      rows.push(device);
    }
    const sign = state.descending ? -1 : 1;
    rows.sort((a, b) => {
      const x = value(a, state.sort);
      const y = value(b, state.sort);
      if (x === y || (x == null && y == null)) return a.device_id < b.device_id ? -1 : 1;
      if (x == null) return 1;
      if (y == null) return -1;
      return (x < y ? -1 : 1) * sign;
    });
    state.rows = rows;
    for (const button of head.querySelectorAll("button")) {
      button.setAttribute("aria-sort", button.dataset.sort === state.sort ? (state.descending ? "descending" : "ascending") : "none");
    }
    shown.textContent = `${rows.length} of ${state.devices.size} devices`;
    spacer.style.height = `${rows.length * ROW}px`;
    drawCounts();
    paint();
  }

  function drawCounts() {
    const byStatus = Object.fromEntries(STATUSES.map((s) => [s, 0]));
    for (const device of state.devices.values()) byStatus[device.status] = (byStatus[device.status] || 0) + 1;
    append(clear(counts), [
      h("div", { className: "count" }, h("b", {}, fmt(state.devices.size)), "devices"),
      STATUSES.map((s) => h("div", { className: `count ${s}`, dataset: { status: s } }, h("b", {}, fmt(byStatus[s])), s)),
    ]);
  }

  // Only the rows in view (and a few around) are in the DOM.
  let painted = null;
  function paint() {
    painted = null;
    const first = Math.max(0, Math.floor(viewport.scrollTop / ROW) - OVERSCAN);
    const last = Math.min(state.rows.length, Math.ceil((viewport.scrollTop + viewport.clientHeight) / ROW) + OVERSCAN);
    const now = Date.now();
    const rows = [];
    for (let index = first; index < last; index++) rows.push(row(state.rows[index], index, now));
    clear(spacer).append(...rows);
  }
  viewport.addEventListener("scroll", () => {
    if (painted === null) painted = requestAnimationFrame(paint);
  });

  function row(device, index, now) {
    const link = h("a", { href: `#/device/${encodeURIComponent(device.device_id)}`, title: device.name || device.device_id }, device.device_id);
    const element = h(
      "div",
      { className: "grid-row", attrs: { role: "row" }, dataset: { device: device.device_id } },
      h("div", {}, link),
      h("div", { title: device.type || "" }, device.type || "–"),
      h("div", {}, h("span", { className: `status ${device.status}` }, device.status)),
      h("div", { title: device.last_seen || "" }, ago(device.last_seen, now)),
      h("div", { className: device.battery_low ? "sev critical" : "" }, device.battery == null ? "–" : `${fmt(device.battery, 0)} %`),
      h("div", {}, device.quality_score == null ? "–" : fmt(device.quality_score, 0)),
      h("div", { className: device.open_alerts ? "sev major" : "" }, String(device.open_alerts || 0)),
      h("div", {}, String(device.metrics.length)),
    );
    element.style.top = `${index * ROW}px`; // through CSSOM: the policy forbids style attributes
    return element;
  }

  let timer = null;
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      state.q = search.value;
      refresh();
    }, 120);
  });
  statusFilter.addEventListener("change", () => {
    state.status = statusFilter.value;
    refresh();
  });
  typeFilter.addEventListener("change", () => {
    state.type = typeFilter.value;
    refresh();
  });

  async function load() {
    const [devices, alerts] = await Promise.all([all("/devices"), openAlerts()]);
    const open = new Map();
    for (const alert of alerts) open.set(alert.device_id, (open.get(alert.device_id) || 0) + 1);
    state.devices = new Map(devices.map((d) => [d.device_id, { ...d, open_alerts: open.get(d.device_id) || 0 }]));
    const types = [...new Set(devices.map((d) => d.type).filter(Boolean))].sort();
    const chosen = typeFilter.value;
    append(clear(typeFilter), [h("option", { value: "" }, "All types"), types.map((t) => h("option", { value: t }, t))]);
    typeFilter.value = chosen;
    refresh();
  }

  async function openAlerts() {
    const [open, acknowledged] = await Promise.all([all("/alerts", { status: "open" }), all("/alerts", { status: "acknowledged" })]);
    return [...open, ...acknowledged];
  }

  await load();

  // Live: statuses and alerts as they change, last seen and battery from readings.
  let dirty = false;
  const feed = live(
    { devices: ["*"], events: ["readings", "status", "alerts"] },
    {
      onState: shell.live,
      onFrame(frame) {
        if (frame.type !== "update") return;
        for (const series of frame.readings || []) {
          const device = state.devices.get(series.device_id);
          if (!device) {
            dirty = true; // a new device: the next reload brings it
            continue;
          }
          const newest = new Date(series.times[series.times.length - 1]).toISOString();
          if (!device.last_seen || newest > device.last_seen) device.last_seen = newest;
          if (series.metric === "battery") device.battery = series.values[series.values.length - 1];
        }
        for (const change of frame.status || []) {
          const device = state.devices.get(change.device_id);
          if (device) device.status = change.status;
          else dirty = true;
        }
        if ((frame.alerts || []).length) dirty = true;
        repaintSoon();
      },
    },
  );
  let repaint = null;
  function repaintSoon() {
    if (repaint === null) {
      repaint = setTimeout(() => {
        repaint = null;
        refresh();
      }, 500);
    }
  }
  // The slow parts (quality, health, alert counts) come from jobs: reload now and then.
  const reload = setInterval(() => {
    if (dirty || document.visibilityState === "visible") {
      dirty = false;
      shell.attempt(load);
    }
  }, 30000);
  const tick = setInterval(paint, 5000); // "12 s ago" moves on

  return () => {
    feed.close();
    clearInterval(reload);
    clearInterval(tick);
    clearTimeout(repaint);
  };
}
