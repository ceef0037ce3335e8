// Data quality: per device, per UTC day, the score and its parts — received against
// expected, missing, invalid, out of range, anomalous (as the quality job computed them).

import { all, api } from "../api.js";
import { clear, fmt, h } from "../dom.js";

const PARTS = [
  ["readings", "Readings"],
  ["expected", "Expected"],
  ["missing", "Missing"],
  ["invalid", "Invalid"],
  ["out_of_range", "Out of range"],
  ["anomalous", "Anomalous"],
];

export async function render(main, _params, shell) {
  const days = h("select", { attrs: { "aria-label": "days" } }, [1, 7, 30, 90].map((d) => h("option", { value: String(d), selected: d === 7 }, `last ${d} day${d > 1 ? "s" : ""}`)));
  const span = h("span", { className: "muted" });
  const body = h("tbody");
  main.append(
    h("h1", {}, "Data quality"),
    h("p", { className: "muted" }, "Score = 100 − 30·missing% − 40·out-of-range% − 30·anomalous%, per device and UTC day."),
    h("div", { className: "toolbar" }, days, h("span", { className: "spacer" }), span),
    h(
      "div",
      { className: "table-scroll" },
      h(
        "table",
        { attrs: { "aria-label": "data quality" } },
        h("thead", {}, h("tr", {}, h("th", {}, "Device"), h("th", {}, "Day"), h("th", { className: "num" }, "Score"), PARTS.map(([, label]) => h("th", { className: "num" }, label)))),
        body,
      ),
    ),
  );

  function cells(entry) {
    return PARTS.map(([field]) => h("td", { className: "num" }, fmt(entry[field])));
  }

  async function load() {
    const first = await api("/quality", { query: { days: days.value, limit: 1 } });
    const devices = await all("/quality", { days: days.value });
    span.textContent = `${first.first_day} to ${first.last_day}`;
    clear(body);
    for (const device of devices) {
      // Days on demand: a fleet of thousands is thousands of rows already.
      const toggle = h("button", { type: "button", className: "quiet", dataset: { days: device.device_id } }, `${device.days.length} days ▸`);
      const total = h(
        "tr",
        { className: "device-total", dataset: { device: device.device_id } },
        h("td", {}, h("a", { href: `#/device/${encodeURIComponent(device.device_id)}` }, device.device_id)),
        h("td", {}, toggle),
        h("td", { className: "num" }, fmt(device.score, 1)),
        cells(device),
      );
      let shown = [];
      toggle.addEventListener("click", () => {
        if (shown.length) {
          for (const row of shown) row.remove();
          shown = [];
          toggle.textContent = `${device.days.length} days ▸`;
          return;
        }
        shown = [...device.days].reverse().map((day) =>
          h("tr", { dataset: { device: device.device_id, day: day.day } }, h("td", {}), h("td", {}, day.day), h("td", { className: "num" }, fmt(day.score, 1)), cells(day)),
        );
        total.after(...shown);
        toggle.textContent = `${device.days.length} days ▾`;
      });
      body.append(total);
      if (devices.length <= 20) toggle.click(); // a small fleet: show its days at once
    }
    if (!devices.length) body.append(h("tr", {}, h("td", { colSpan: 9, className: "muted" }, "No quality figures yet: the quality job computes them (iotpipe jobs quality).")));
  }

  days.addEventListener("change", () => shell.attempt(load));
  await load();
  return undefined;
}
