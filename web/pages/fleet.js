// Fleet: every device with status, last seen, battery, quality and open alerts; counts by
// status; filter, sort and search. Usable at thousands of devices: the list is virtual
// (only the rows in view exist in the DOM) and live updates touch the model, not the DOM.

import { all, live } from "../api.js";
import { ago, append, clear, fmt, h } from "../dom.js";

const ROW = 34; // px, as .grid-row in style.css
const OVERSCAN = 10;
const STATUSES = ["online", "stale", "offline"];
const ACTIVE = new Set(["open", "acknowledged"]); // what "Open alerts" counts
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
  // An ARIA table whose rows are virtual: the header row and the rowgroup of rows in
  // view, in one box that scrolls sideways as a whole on a narrow screen (the rows
  // scroll up and down inside the viewport, under the header).
  const head = h("div", { className: "grid-head", attrs: { role: "row", "aria-rowindex": 1 } });
  const spacer = h("div", { attrs: { role: "rowgroup" } });
  const viewport = h("div", { className: "viewport" }, spacer);
  const table = h("div", { className: "table-scroll fleet-table", attrs: { role: "table", "aria-label": "devices" } }, head, viewport);
  main.append(
    h("h1", {}, "Fleet"),
    counts,
    h("div", { className: "toolbar" }, search, statusFilter, typeFilter, h("span", { className: "spacer" }), shown),
    table,
  );

  const headers = COLUMNS.map(([field, label]) => {
    const button = h("button", { type: "button", dataset: { sort: field } }, label);
    button.addEventListener("click", () => {
      state.descending = state.sort === field ? !state.descending : false;
      state.sort = field;
      refresh();
    });
    return h("div", { attrs: { role: "columnheader" }, dataset: { sort: field } }, button);
  });
  head.append(...headers);

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
    for (const header of headers) {
      header.setAttribute("aria-sort", header.dataset.sort === state.sort ? (state.descending ? "descending" : "ascending") : "none");
    }
    table.setAttribute("aria-rowcount", String(rows.length + 1));
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
    if (!state.rows.length) rows.push(h("div", { className: "grid-note", attrs: { role: "row" } }, h("div", { attrs: { role: "cell" } }, emptyMessage())));
    clear(spacer).append(...rows);
  }

  function emptyMessage() {
    if (!state.devices.size) return "No devices yet: they appear here once they send a reading.";
    const asked = [state.q && `“${state.q}”`, state.status && `status ${state.status}`, state.type && `type ${state.type}`];
    return `No device matches ${asked.filter(Boolean).join(", ")}.`;
  }
  viewport.addEventListener("scroll", () => {
    if (painted === null) painted = requestAnimationFrame(paint);
  });

  function row(device, index, now) {
    const link = h("a", { href: `#/device/${encodeURIComponent(device.device_id)}`, title: device.name || device.device_id }, device.device_id);
    const element = h(
      "div",
      { className: "grid-row", attrs: { role: "row", "aria-rowindex": index + 2 }, dataset: { device: device.device_id } },
      cell({}, link),
      cell({ title: device.type || "" }, device.type || "–"),
      cell({}, h("span", { className: `status ${device.status}` }, device.status)),
      cell({ title: device.last_seen || "" }, ago(device.last_seen, now)),
      cell({ className: device.battery_low ? "sev critical" : "" }, device.battery == null ? "–" : `${fmt(device.battery, 0)} %`),
      cell({}, device.quality_score == null ? "–" : fmt(device.quality_score, 0)),
      cell({ className: device.open_alerts ? "sev major" : "", dataset: { field: "open_alerts" } }, String(device.open_alerts || 0)),
      cell({}, String(device.metrics.length)),
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

  // Open or acknowledged alerts, id -> device id: loaded, then kept by the live feed.
  const active = new Map();
  function countAlerts() {
    const byDevice = new Map();
    for (const deviceId of active.values()) byDevice.set(deviceId, (byDevice.get(deviceId) || 0) + 1);
    for (const device of state.devices.values()) device.open_alerts = byDevice.get(device.device_id) || 0;
  }

  async function load() {
    const [devices, alerts] = await Promise.all([all("/devices"), openAlerts()]);
    active.clear();
    for (const alert of alerts) active.set(alert.id, alert.device_id);
    state.devices = new Map(devices.map((d) => [d.device_id, { ...d }]));
    countAlerts();
    const types = [...new Set(devices.map((d) => d.type).filter(Boolean))].sort();
    const chosen = typeFilter.value;
    append(clear(typeFilter), [h("option", { value: "" }, "All types"), types.map((t) => h("option", { value: t }, t))]);
    typeFilter.value = chosen;
    refresh();
  }

  async function openAlerts() {
    const lists = await Promise.all([...ACTIVE].map((status) => all("/alerts", { status })));
    return lists.flat();
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
        for (const { alert } of frame.alerts || []) {
          if (ACTIVE.has(alert.status)) active.set(alert.id, alert.device_id);
          else active.delete(alert.id);
        }
        if ((frame.alerts || []).length) countAlerts();
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
  // The slow parts (quality, health) come from jobs: reload now and then.
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

function cell(props, ...children) {
  return h("div", { ...props, attrs: { role: "cell" } }, ...children);
}
