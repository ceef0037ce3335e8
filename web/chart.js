// One chart per metric, on uPlot: the line from the API's `auto` buckets with their
// min/max band, anomalies as red markers (reason and score on hover), alert thresholds
// as dashed lines, drag to zoom; a break where readings stop for a while, and a message
// when the range holds none. Everything a device said is drawn on the canvas or set as
// textContent.

import { when } from "./dom.js";
import uPlot from "./vendor/uPlot.esm.js";

const LINE = "#2f6fdf";
const BAND = "rgba(47, 111, 223, 0.16)";
const MARKER = "#d64545";
const THRESHOLD = "#d97706";
const HOVER_PX = 10;
// Points further apart than this many usual spacings have a gap between them: the line
// and band break there (uPlot breaks at a null; spanGaps is off) instead of drawing a
// straight line across hours without a reading.
const GAP_FACTOR = 5;

export class Chart {
  constructor(container, { label, width, height = 220, onZoom }) {
    this.container = container;
    this.anomalies = [];
    this.thresholds = [];
    this.markers = []; // where each anomaly was drawn (CSS px in the plot area), for hover and tests
    this.range = null; // [start, end] in s
    this.drawn = null; // resolved at the next draw
    this.tip = document.createElement("div");
    this.tip.className = "tip";
    this.tip.hidden = true;
    this.latest = null; // time (ms) of the metric's newest reading, for the empty message
    this.spacing = null; // the usual spacing of the points (s), to tell a gap
    this.empty = document.createElement("p");
    this.empty.className = "empty";
    this.empty.hidden = true;
    this.label = label;
    // The canvas says nothing to a screen reader: the box is an image with a description.
    container.setAttribute("role", "img");
    const chart = this;
    const options = {
      width,
      height,
      scales: {
        x: { time: true, range: (u, min, max) => chart.range || [min, max] },
        y: { range: (u, min, max) => chart.yRange(min, max) },
      },
      series: [
        {},
        { label, stroke: LINE, width: 1.5 },
        { label: "min", stroke: "transparent", width: 0, points: { show: false } },
        { label: "max", stroke: "transparent", width: 0, points: { show: false } },
      ],
      bands: [{ series: [3, 2], fill: BAND }],
      axes: [{}, { size: 60 }],
      cursor: { drag: { x: true, y: false, setScale: false } },
      legend: { show: true },
      hooks: {
        setSelect: [
          (u) => {
            if (u.select.width > 4 && onZoom) {
              onZoom(u.posToVal(u.select.left, "x") * 1000, u.posToVal(u.select.left + u.select.width, "x") * 1000);
            }
            u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
          },
        ],
        draw: [(u) => chart.decorate(u)],
        setCursor: [(u) => chart.hover(u)],
      },
    };
    this.plot = new uPlot(options, [[], [], [], []], container);
    this.plot.over.append(this.tip, this.empty);
  }

  // Columns from /series: times (ms), values, and min/max per bucket (null for raw readings).
  setData(series, range) {
    const times = series.times.map((t) => t / 1000);
    const low = series.min || series.values;
    const high = series.max || series.values;
    this.range = range ? [range[0] / 1000, range[1] / 1000] : null;
    this.spacing = usualSpacing(times);
    this.data = breakGaps([times, series.values, low, high], this.spacing);
    return this.redraw();
  }

  // Readings arriving live: appended in time order (a late one is left to the next load).
  append(times, values, range) {
    if (!this.data) return;
    const [xs, ys, lows, highs] = this.data;
    for (let i = 0; i < times.length; i++) {
      const t = times[i] / 1000;
      if (xs.length && t <= xs[xs.length - 1]) continue;
      if (this.spacing === null) this.spacing = usualSpacing(xs);
      if (xs.length && t - xs[xs.length - 1] > gapLimit(this.spacing)) {
        xs.push((xs[xs.length - 1] + t) / 2); // a break inside the gap
        ys.push(null);
        lows.push(null);
        highs.push(null);
      }
      xs.push(t);
      ys.push(values[i]);
      lows.push(values[i]);
      highs.push(values[i]);
    }
    if (range) this.range = [range[0] / 1000, range[1] / 1000];
    return this.redraw();
  }

  setAnomalies(anomalies) {
    this.anomalies = anomalies;
    this.redraw();
  }

  setLatest(ms) {
    this.latest = ms;
    this.explain();
  }

  setThresholds(thresholds) {
    this.thresholds = thresholds;
    this.redraw();
  }

  // Resolves with performance.now() once the chart is drawn (one promise per pending draw).
  redraw() {
    if (!this.resolveDrawn) {
      this.drawn = new Promise((resolve) => {
        this.resolveDrawn = resolve;
      });
    }
    this.plot.setData(this.data || [[], [], [], []]);
    return this.drawn;
  }

  yRange(min, max) {
    let low = min;
    let high = max;
    for (const { value } of this.thresholds) {
      low = low == null ? value : Math.min(low, value);
      high = high == null ? value : Math.max(high, value);
    }
    if (low == null || high == null) return [0, 1];
    const pad = (high - low) * 0.08 || Math.abs(high) * 0.1 || 1;
    return [low - pad, high + pad];
  }

  decorate(u) {
    const ctx = u.ctx;
    const ratio = uPlot.pxRatio;
    const { left, top, width, height } = u.bbox;
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top, width, height);
    ctx.clip();
    for (const threshold of this.thresholds) {
      const y = u.valToPos(threshold.value, "y", true);
      ctx.setLineDash([6 * ratio, 4 * ratio]);
      ctx.strokeStyle = THRESHOLD;
      ctx.lineWidth = 1.5 * ratio;
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(left + width, y);
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillStyle = THRESHOLD;
      ctx.font = `${11 * ratio}px system-ui, sans-serif`;
      // Above the line, or below it when the line runs along the top of the plot.
      const above = y - 14 * ratio > top;
      ctx.textAlign = "left";
      ctx.textBaseline = above ? "bottom" : "top";
      ctx.fillText(threshold.label, left + 6 * ratio, above ? y - 3 * ratio : y + 3 * ratio);
    }
    this.markers = [];
    const [x0, x1] = [u.scales.x.min, u.scales.x.max];
    for (const anomaly of this.anomalies) {
      if (anomaly.t < x0 || anomaly.t > x1) continue;
      const x = u.valToPos(anomaly.t, "x", true);
      const y = u.valToPos(anomaly.value, "y", true);
      ctx.fillStyle = MARKER;
      ctx.strokeStyle = "#fff";
      ctx.lineWidth = 1.5 * ratio;
      ctx.beginPath();
      ctx.arc(x, y, 5 * ratio, 0, 2 * Math.PI);
      ctx.fill();
      ctx.stroke();
      this.markers.push({ x: u.valToPos(anomaly.t, "x"), y: u.valToPos(anomaly.value, "y"), anomaly });
    }
    ctx.restore();
    this.explain();
    this.container.dataset.points = String(this.data ? this.data[0].length : 0);
    this.container.dataset.markers = String(this.markers.length);
    this.container.dataset.thresholds = String(this.thresholds.length);
    if (this.resolveDrawn) {
      this.resolveDrawn(performance.now());
      this.resolveDrawn = null;
    }
  }

  // Readings drawn in the range shown (a null is a break, not a reading).
  shown() {
    if (!this.data) return 0;
    const [xs, ys] = this.data;
    const [start, end] = this.range || [-Infinity, Infinity];
    let count = 0;
    for (let i = 0; i < xs.length; i++) if (ys[i] !== null && xs[i] >= start && xs[i] <= end) count++;
    return count;
  }

  // The message over an empty plot and the box's description for screen readers.
  explain() {
    const count = this.shown();
    let message = "No readings in this range";
    if (this.latest !== null && this.range && this.latest / 1000 < this.range[0]) {
      message += ` (last reading ${when(new Date(this.latest).toISOString(), "medium")})`;
    }
    this.empty.textContent = message;
    this.empty.hidden = !this.data || count > 0;
    const span = this.range ? ` from ${when(new Date(this.range[0] * 1000).toISOString())} to ${when(new Date(this.range[1] * 1000).toISOString())}` : "";
    this.container.setAttribute("aria-label", `${this.label}${span}: ${count ? `chart of ${count} points` : message.toLowerCase()}`);
  }

  hover(u) {
    const { left, top } = u.cursor;
    const near = left == null || left < 0 ? null : this.markers.find((m) => Math.abs(m.x - left) <= HOVER_PX && Math.abs(m.y - top) <= HOVER_PX);
    if (!near) {
      this.tip.hidden = true;
      return;
    }
    const a = near.anomaly;
    const lines = [
      `${a.reason || "anomaly"} · score ${Number(a.score).toFixed(1)}`,
      `${a.value} at ${new Date(a.t * 1000).toLocaleString()}`,
      `${a.method}${a.end ? ` · until ${new Date(a.end * 1000).toLocaleString()}` : ""}`,
    ];
    this.tip.textContent = lines.join("\n");
    this.tip.style.left = `${Math.min(near.x + 12, u.over.clientWidth - 200)}px`;
    this.tip.style.top = `${Math.max(near.y - 40, 0)}px`;
    this.tip.hidden = false;
  }

  resize(width) {
    this.plot.setSize({ width, height: this.plot.height });
  }

  destroy() {
    this.plot.destroy();
  }
}

// The median distance between consecutive times (s), or null with fewer than two.
function usualSpacing(times) {
  const steps = [];
  for (let i = 1; i < times.length; i++) steps.push(times[i] - times[i - 1]);
  if (!steps.length) return null;
  steps.sort((a, b) => a - b);
  return steps[Math.floor(steps.length / 2)];
}

function gapLimit(spacing) {
  return spacing ? GAP_FACTOR * spacing : Infinity;
}

// Copies of the columns with a row of nulls inside each gap (see GAP_FACTOR).
function breakGaps(columns, spacing) {
  const [times] = columns;
  const limit = gapLimit(spacing);
  const out = columns.map(() => []);
  for (let i = 0; i < times.length; i++) {
    if (i > 0 && times[i] - times[i - 1] > limit) {
      out[0].push((times[i - 1] + times[i]) / 2);
      for (let c = 1; c < out.length; c++) out[c].push(null);
    }
    columns.forEach((column, c) => out[c].push(column[i]));
  }
  return out;
}
