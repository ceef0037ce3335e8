// Device: its metadata and latest values, one chart per metric over a chosen range (last
// hour to last year, or custom, or dragged), anomalies and alert thresholds on the charts,
// and new readings as they are stored.

import { all, api, live } from "../api.js";
import { Chart } from "../chart.js";
import { ago, fmt, globRegExp, h, when } from "../dom.js";

const HOUR = 3600e3;
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
  const [device, latest, rules] = await Promise.all([api(path), api(`${path}/latest`), all("/alert-rules")]);

  const badge = h("span", { className: `status ${device.status}` }, device.status);
  main.append(h("p", {}, h("a", { href: "#/fleet" }, "← Fleet")), h("h1", {}, device.device_id, " ", badge));

  // -- metadata and latest values --------------------------------------------------------
  const meta = h("dl", { className: "meta" });
  const facts = [
    ["Name", device.name],
    ["Type", device.type],
    ["Firmware", device.firmware],
    ["Location", device.location ? `${device.location.lat}, ${device.location.lon}${device.location.elevation != null ? `, ${device.location.elevation} m` : ""}` : null],
    ["First seen", when(device.first_seen)],
    ["Last seen", `${when(device.last_seen)} (${ago(device.last_seen)})`],
    ["Battery", device.battery == null ? null : `${fmt(device.battery, 1)} %${device.battery_low ? " (low)" : ""}`],
    ["Quality", device.quality_score == null ? null : fmt(device.quality_score, 0)],
    ["Health", device.health_score == null ? null : fmt(device.health_score, 0)],
    ["Usual interval", device.interval_seconds == null ? null : `${fmt(device.interval_seconds)} s`],
    ...Object.entries(device.attributes || {}).map(([name, value]) => [name, typeof value === "string" ? value : JSON.stringify(value)]),
  ];
  for (const [name, value] of facts) {
    if (value === null || value === undefined) continue;
    meta.append(h("dt", {}, name), h("dd", {}, value));
  }
  const latestBox = h("div", { className: "latest" });
  const latestByMetric = new Map();
  for (const reading of latest.readings) {
    const value = h("b", {}, fmt(reading.value));
    const time = h("span", { className: "muted" }, when(reading.time));
    const box = h("div", { className: "reading", dataset: { metric: reading.metric } }, h("div", { className: "muted" }, reading.metric), value, reading.unit ? h("span", {}, reading.unit, " ") : null, time);
    latestByMetric.set(reading.metric, { box, value, time });
    latestBox.append(box);
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
  const status = h("span", { className: "muted" });
  main.append(h("div", { className: "toolbar ranges" }, rangeButtons, h("span", {}, " Custom:"), from, to, apply, h("span", { className: "spacer" }), status));

  // -- charts ------------------------------------------------------------------------------
  const chartsBox = h("div");
  main.append(chartsBox);
  const charts = new Map();
  const width = () => Math.max(320, chartsBox.clientWidth - 32);
  const metrics = device.metrics.map((m) => m.name);
  for (const metric of device.metrics) {
    const holder = h("div", { className: "chart", dataset: { metric: metric.name } });
    chartsBox.append(h("div", { className: "panel" }, h("h3", {}, metric.name, metric.unit ? ` (${metric.unit})` : ""), holder));
    const chart = new Chart(holder, {
      label: metric.name,
      width: width(),
      onZoom: (start, end) => choose({ kind: "absolute", key: "zoom", start, end }),
    });
    chart.setThresholds(thresholdsFor(rules, device, metric.name));
    charts.set(metric.name, chart);
    window.iotpipe.charts.set(metric.name, chart);
  }
  if (!metrics.length) chartsBox.append(h("p", { className: "muted" }, "No readings stored for this device yet."));

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
    const anomalies = api("/anomalies", { query: { device_id: deviceId, ...query, limit: 1000 } });
    const drawn = metrics.map(async (metric) => {
      const series = await api(`${path}/series/${encodeURIComponent(metric)}`, { query: { ...query, bucket: "auto", width: width() } });
      const fetched = performance.now();
      if (ticket !== loading) return null;
      const finished = await charts.get(metric).setData(series, [start, end]);
      return { metric, range: range.key, fetchMs: fetched - began, drawMs: finished - began, points: series.points, bucket: series.bucket };
    });
    const timings = await Promise.all(drawn);
    if (ticket !== loading) return;
    window.iotpipe.timings.push(...timings.filter(Boolean));
    const found = (await anomalies).items;
    for (const [metric, chart] of charts) {
      chart.setAnomalies(found.filter((a) => a.metric === metric).map(marker));
    }
    const slowest = Math.max(0, ...timings.filter(Boolean).map((t) => t.drawMs));
    status.textContent = `${new Date(start).toLocaleString()} – ${new Date(end).toLocaleString()} · drawn in ${Math.round(slowest)} ms`;
    main.dataset.loaded = range.key;
  }

  function choose(next) {
    range = next;
    shell.attempt(load);
  }

  await load();

  // -- live ---------------------------------------------------------------------------------
  const feed = live(
    { devices: [deviceId], events: ["readings", "anomalies", "status", "alerts"] },
    {
      onState: shell.live,
      onFrame(frame) {
        if (frame.type !== "update") return;
        for (const series of frame.readings || []) {
          const last = series.times.length - 1;
          const box = latestByMetric.get(series.metric);
          if (box) {
            box.value.textContent = fmt(series.values[last]);
            box.time.textContent = when(new Date(series.times[last]).toISOString());
            box.box.classList.add("fresh");
            box.box.dataset.live = String(series.values[last]);
          }
          const chart = charts.get(series.metric);
          if (chart && range.kind === "relative") chart.append(series.times, series.values, bounds());
        }
        for (const anomaly of frame.anomalies || []) {
          const chart = charts.get(anomaly.metric);
          if (chart) chart.setAnomalies([...chart.anomalies, marker(anomaly)]);
        }
        for (const change of frame.status || []) {
          badge.className = `status ${change.status}`;
          badge.textContent = change.status;
        }
      },
    },
  );

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
