// Device: its metadata and latest values, one chart per metric over a chosen range (last
// hour to last year, or custom, or dragged), anomalies and alert thresholds on the charts,
// and new readings as they are stored (a metric new to the device gets its chart then).

import { ApiError, all, api, live } from "../api.js";
import { Chart } from "../chart.js";
import { ago, fmt, globRegExp, h, when } from "../dom.js";
import { unknownDevice } from "./missing.js";

const HOUR = 3600e3;
const MIN_WIDTH = 200; // px: a chart narrower than this shows nothing useful
const RANGES = [
  ["1h", "Last hour", HOUR],
  ["24h", "Day", 24 * HOUR],
  ["7d", "Week", 7 * 24 * HOUR],
  ["30d", "Month", 30 * 24 * HOUR],
  ["1y", "Year", 365 * 24 * HOUR],
];

export async function render(main, params, shell) {
  const deviceId = params[0];
  if (!deviceId) {
    location.hash = "#/fleet";
    return undefined;
  }
  const path = `/devices/${encodeURIComponent(deviceId)}`;
  let device, latest, rules;
  try {
    [device, latest, rules] = await Promise.all([api(path), api(`${path}/latest`), all("/alert-rules")]);
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 404)) throw error;
    unknownDevice(main, error.message);
    return undefined;
  }

  const badge = h("span", { className: `status ${device.status}` }, device.status);
  main.append(h("p", {}, h("a", { href: "#/fleet" }, "← Fleet")), h("h1", {}, device.device_id, " ", badge));

  // -- metadata and latest values --------------------------------------------------------
  const meta = h("dl", { className: "meta" });
  const lastSeen = h("dd");
  const facts = [
    ["Name", device.name],
    ["Type", device.type],
    ["Firmware", device.firmware],
    ["Location", device.location ? `${device.location.lat}, ${device.location.lon}${device.location.elevation != null ? `, ${device.location.elevation} m` : ""}` : null],
    ["First seen", when(device.first_seen)],
    ["Last seen", lastSeen],
    ["Battery", device.battery == null ? null : `${fmt(device.battery, 1)} %${device.battery_low ? " (low)" : ""}`],
    ["Quality", device.quality_score == null ? null : fmt(device.quality_score, 0)],
    ["Health", device.health_score == null ? null : fmt(device.health_score, 0)],
    ["Usual interval", device.interval_seconds == null ? null : `${fmt(device.interval_seconds)} s`],
    ...Object.entries(device.attributes || {}).map(([name, value]) => [name, typeof value === "string" ? value : JSON.stringify(value)]),
  ];
  for (const [name, value] of facts) {
    if (value === null || value === undefined) continue;
    meta.append(h("dt", {}, name), value instanceof Node ? value : h("dd", {}, value));
  }
  // Follows the live feed (newer readings, status changes) and ticks, so "(1 s ago)"
  // does not stay "1 s" while the page is open.
  function showLastSeen(iso) {
    if (iso && (!device.last_seen || Date.parse(iso) > Date.parse(device.last_seen))) device.last_seen = iso;
    lastSeen.textContent = `${when(device.last_seen)} (${ago(device.last_seen)})`;
  }
  showLastSeen();

  const latestBox = h("div", { className: "latest" });
  const latestByMetric = new Map();
  function latestFor(metric, unit) {
    if (!latestByMetric.has(metric)) {
      const value = h("b", {}, "–");
      const time = h("span", { className: "muted" });
      const box = h("div", { className: "reading", dataset: { metric } }, h("div", { className: "muted" }, metric), value, unit ? h("span", {}, unit, " ") : null, time);
      latestByMetric.set(metric, { box, value, time });
      latestBox.append(box);
    }
    return latestByMetric.get(metric);
  }
  function showLatest(metric, value, iso) {
    const entry = latestFor(metric);
    entry.value.textContent = fmt(value);
    entry.time.textContent = when(iso);
    const chart = charts.get(metric);
    if (chart) chart.setLatest(Date.parse(iso)); // an empty chart says when the last reading was
    return entry;
  }
  main.append(h("div", { className: "panel device-head" }, meta, h("div", {}, h("h2", {}, "Latest"), latestBox)));

  // -- the range picker -----------------------------------------------------------------
  let range = { kind: "relative", key: "24h", span: 24 * HOUR };
  const rangeButtons = RANGES.map(([key, label, span]) =>
    h("button", { type: "button", dataset: { range: key }, on: { click: () => choose({ kind: "relative", key, span }) } }, label),
  );
  const from = h("input", { type: "datetime-local", attrs: { "aria-label": "from" } });
  const to = h("input", { type: "datetime-local", attrs: { "aria-label": "to" } });
  const apply = h("button", { type: "button", dataset: { range: "custom" } }, "Apply");
  apply.addEventListener("click", () => {
    const start = Date.parse(from.value);
    const end = Date.parse(to.value);
    if (!(start < end)) {
      shell.error("choose a start before the end of the custom range");
      return;
    }
    choose({ kind: "absolute", key: "custom", start, end });
  });
  const status = h("span", { className: "muted", attrs: { role: "status" } });
  main.append(h("div", { className: "toolbar ranges" }, rangeButtons, h("span", {}, " Custom:"), from, to, apply, h("span", { className: "spacer" }), status));

  // -- charts ------------------------------------------------------------------------------
  const chartsBox = h("div");
  main.append(chartsBox);
  const charts = new Map();
  // Every chart is as wide as its box (the first one's: they are all alike).
  const width = () => Math.max(MIN_WIDTH, (chartsBox.querySelector(".chart") || chartsBox).clientWidth);
  const noneYet = h("p", { className: "muted" }, "No readings stored for this device yet.");

  function addChart(metric, unit) {
    const holder = h("div", { className: "chart", dataset: { metric } });
    chartsBox.append(h("div", { className: "panel" }, h("h3", {}, metric, unit ? ` (${unit})` : ""), holder));
    noneYet.remove();
    const chart = new Chart(holder, {
      label: metric,
      width: width(),
      onZoom: (start, end) => choose({ kind: "absolute", key: "zoom", start, end }),
    });
    chart.setThresholds(thresholdsFor(rules, device, metric));
    charts.set(metric, chart);
    window.iotpipe.charts.set(metric, chart);
    return chart;
  }

  for (const metric of device.metrics) addChart(metric.name, metric.unit);
  for (const reading of latest.readings) {
    latestFor(reading.metric, reading.unit);
    showLatest(reading.metric, reading.value, reading.time);
  }
  if (!charts.size) chartsBox.append(noneYet);

  function bounds() {
    if (range.kind === "relative") {
      const end = Date.now();
      return [end - range.span, end];
    }
    return [range.start, range.end];
  }

  let loading = 0;
  async function load() {
    const ticket = ++loading;
    for (const button of rangeButtons) button.setAttribute("aria-pressed", String(button.dataset.range === range.key));
    const [start, end] = bounds();
    const query = { start: new Date(start).toISOString(), end: new Date(end).toISOString() };
    status.textContent = "loading…";
    const began = performance.now();
    const drawn = [...charts].map(async ([metric, chart]) => {
      const series = await api(`${path}/series/${encodeURIComponent(metric)}`, { query: { ...query, bucket: "auto", width: width() } });
      const fetched = performance.now();
      if (ticket !== loading) return null;
      const finished = await chart.setData(series, [start, end]);
      return { metric, range: range.key, fetchMs: fetched - began, drawMs: finished - began, points: series.points, bucket: series.bucket };
    });
    // Awaited together: when one request fails, the others' failures are handled too
    // (none is left as an uncaught rejection) and the status does not stay "loading…".
    let timings, found;
    try {
      [timings, found] = await Promise.all([Promise.all(drawn), api("/anomalies", { query: { device_id: deviceId, ...query, limit: 1000 } })]);
    } catch (error) {
      if (ticket !== loading) return; // a newer range is on its way: this one no longer matters
      status.textContent = "";
      throw error;
    }
    if (ticket !== loading) return;
    window.iotpipe.timings.push(...timings.filter(Boolean));
    for (const [metric, chart] of charts) {
      chart.setAnomalies(found.items.filter((a) => a.metric === metric).map(marker));
    }
    const slowest = Math.max(0, ...timings.filter(Boolean).map((t) => t.drawMs));
    status.textContent = `${new Date(start).toLocaleString()} – ${new Date(end).toLocaleString()} · drawn in ${Math.round(slowest)} ms`;
    main.dataset.loaded = range.key;
  }

  function choose(next) {
    range = next;
    shell.attempt(load);
  }

  // A failed first load leaves a working page (ranges, the live feed) and the error shown.
  await shell.attempt(load);

  // -- live ---------------------------------------------------------------------------------
  const feed = live(
    { devices: [deviceId], events: ["readings", "anomalies", "status", "alerts"] },
    {
      onState: shell.live,
      onFrame(frame) {
        if (frame.type !== "update") return;
        for (const series of frame.readings || []) {
          const last = series.times.length - 1;
          const at = new Date(series.times[last]).toISOString();
          // A metric the device had not sent before gets its box and chart now.
          const chart = charts.get(series.metric) || addChart(series.metric);
          if (!chart.data) chart.setData({ times: [], values: [] }, bounds());
          const { box } = showLatest(series.metric, series.values[last], at);
          box.classList.add("fresh");
          box.dataset.live = String(series.values[last]);
          if (range.kind === "relative") chart.append(series.times, series.values, bounds());
          showLastSeen(at);
        }
        for (const anomaly of frame.anomalies || []) {
          const chart = charts.get(anomaly.metric);
          if (chart) chart.setAnomalies([...chart.anomalies, marker(anomaly)]);
        }
        for (const change of frame.status || []) {
          badge.className = `status ${change.status}`;
          badge.textContent = change.status;
          showLastSeen(change.last_seen);
        }
      },
    },
  );
  const tick = setInterval(() => showLastSeen(), 1000);

  let resizing = null;
  const onResize = () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => {
      for (const chart of charts.values()) chart.resize(width());
    }, 150);
  };
  window.addEventListener("resize", onResize);

  return () => {
    feed.close();
    clearInterval(tick);
    window.removeEventListener("resize", onResize);
    for (const chart of charts.values()) chart.destroy();
  };
}

function marker(anomaly) {
  return {
    t: Date.parse(anomaly.time) / 1000,
    end: anomaly.end_time ? Date.parse(anomaly.end_time) / 1000 : null,
    value: anomaly.value,
    score: anomaly.score,
    reason: anomaly.reason,
    method: anomaly.method,
  };
}

// The enabled threshold rules that apply to this device's metric, as lines to draw.
function thresholdsFor(rules, device, metric) {
  const lines = [];
  for (const rule of rules) {
    if (rule.kind !== "threshold" || !rule.enabled || rule.metric !== metric) continue;
    if (!globRegExp(rule.device).test(device.device_id)) continue;
    if (rule.device_type && rule.device_type !== device.type) continue;
    if (rule.min != null) lines.push({ value: rule.min, label: `min ${rule.min} (${rule.name})` });
    if (rule.max != null) lines.push({ value: rule.max, label: `max ${rule.max} (${rule.name})` });
  }
  return lines;
}
