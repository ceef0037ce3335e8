// Dead letters: what could not be stored, with the reason and the start of the payload
// (shown as text, whatever bytes it holds). An admin key can replay them through the
// current decoders.

import { all, api } from "../api.js";
import { clear, h, when } from "../dom.js";

const PAYLOAD_START = 160; // characters of a payload shown

export async function render(main, _params, shell) {
  const body = h("tbody");
  const summary = h("span", { className: "muted" });
  const outcome = h("span", { className: "muted", attrs: { role: "status" } });
  const replay = h("button", { type: "button", dataset: { action: "replay" } }, "Replay all (admin)");
  main.append(
    h("h1", {}, "Dead letters"),
    h("div", { className: "toolbar" }, replay, outcome, h("span", { className: "spacer" }), summary),
    h(
      "div",
      { className: "table-scroll" },
      h(
        "table",
        { attrs: { "aria-label": "dead letters" } },
        h("thead", {}, h("tr", {}, ["Received", "Source", "Origin", "Reason", "Attempts", "Payload (start)"].map((t) => h("th", {}, t)))),
        body,
      ),
    ),
  );

  async function load() {
    const letters = await all("/dead-letters");
    summary.textContent = `${letters.length} dead letters`;
    clear(body);
    for (const letter of letters.slice().reverse()) {
      const payload = letter.payload.length > PAYLOAD_START ? `${letter.payload.slice(0, PAYLOAD_START)}…` : letter.payload;
      body.append(
        h(
          "tr",
          { dataset: { deadLetter: String(letter.id) } },
          h("td", {}, when(letter.received_at)),
          h("td", {}, letter.source),
          h("td", { className: "mono" }, letter.origin),
          h("td", {}, letter.reason),
          h("td", { className: "num" }, String(letter.attempts)),
          h("td", {}, h("code", { className: "payload" }, payload)),
        ),
      );
    }
    if (!letters.length) body.append(h("tr", {}, h("td", { colSpan: 6, className: "muted" }, "No dead letters: every message was stored.")));
  }

  replay.addEventListener("click", async () => {
    shell.error(null);
    replay.disabled = true;
    const result = await shell.attempt(() => api("/dead-letters/replay", { method: "POST" }));
    replay.disabled = false;
    if (result) {
      outcome.textContent = `replayed ${result.replayed}: ${result.stored_messages} now stored, ${result.still_dead} still dead`;
      await shell.attempt(load);
    }
  });

  await load();
  return undefined;
}
