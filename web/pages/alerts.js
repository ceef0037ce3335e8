// Alerts: open, acknowledged and resolved, newest first; acknowledging needs an operator
// key (the API says so otherwise, and its message is shown). Updates live.

import { all, api, live } from "../api.js";
import { clear, h, when } from "../dom.js";

const STATUSES = ["open", "acknowledged", "resolved"];

export async function render(main, _params, shell) {
  let status = "open";
  const alerts = new Map(); // id -> alert
  const tabs = STATUSES.map((s) => h("button", { type: "button", dataset: { status: s }, on: { click: () => pick(s) } }, s));
  const counts = h("span", { className: "muted" });
  const body = h("tbody");
  main.append(
    h("h1", {}, "Alerts"),
    h("div", { className: "toolbar ranges" }, tabs, h("span", { className: "spacer" }), counts),
    h(
      "div",
      { className: "table-scroll" },
      h(
        "table",
        { attrs: { "aria-label": "alerts" } },
        h("thead", {}, h("tr", {}, ["Opened", "Severity", "Device", "Metric", "Message", "Status", "Action"].map((t) => h("th", {}, t)))),
        body,
      ),
    ),
  );

  function pick(next) {
    status = next;
    draw();
  }

  function draw() {
    for (const tab of tabs) tab.setAttribute("aria-pressed", String(tab.dataset.status === status));
    const shown = [...alerts.values()].filter((a) => a.status === status).sort((a, b) => b.id - a.id);
    const byStatus = Object.fromEntries(STATUSES.map((s) => [s, 0]));
    for (const alert of alerts.values()) byStatus[alert.status] += 1;
    counts.textContent = STATUSES.map((s) => `${byStatus[s]} ${s}`).join(" · ");
    clear(body).append(...shown.map(row));
    if (!shown.length) body.append(h("tr", {}, h("td", { colSpan: 7, className: "muted" }, `No ${status} alerts.`)));
  }

  function row(alert) {
    const action =
      alert.status === "open"
        ? h("button", { type: "button", className: "quiet", dataset: { ack: String(alert.id) }, on: { click: () => acknowledge(alert.id) } }, "Acknowledge")
        : null;
    const since = alert.status === "resolved" ? alert.resolved_at : alert.status === "acknowledged" ? alert.acknowledged_at : null;
    return h(
      "tr",
      { dataset: { alert: String(alert.id), status: alert.status } },
      h("td", {}, when(alert.opened_at)),
      h("td", {}, h("span", { className: `sev ${alert.severity}` }, alert.severity)),
      h("td", {}, h("a", { href: `#/device/${encodeURIComponent(alert.device_id)}` }, alert.device_id)),
      h("td", {}, alert.metric || "–"),
      h("td", {}, alert.message),
      h("td", {}, alert.status, since ? h("div", { className: "muted" }, when(since)) : null),
      h("td", {}, action),
    );
  }

  async function acknowledge(id) {
    shell.error(null);
    const updated = await shell.attempt(() => api(`/alerts/${id}/ack`, { method: "POST" }));
    if (updated) {
      alerts.set(updated.id, updated);
      draw();
    }
  }

  async function load() {
    const found = await all("/alerts");
    alerts.clear();
    for (const alert of found) alerts.set(alert.id, alert);
    draw();
  }

  await load();
  const feed = live(
    { devices: ["*"], events: ["alerts"] },
    {
      onState: shell.live,
      onFrame(frame) {
        if (frame.type !== "update") return;
        for (const change of frame.alerts || []) alerts.set(change.alert.id, change.alert);
        if ((frame.alerts || []).length) draw();
      },
    },
  );
  return () => feed.close();
}
