// The dashboard shell: a hash router over five pages, the API key dialog, the error banner
// and the live feed's indicator. Each page module exports `render(main, params, shell)`
// and returns a function that undoes what it started (timers, the live feed).

import { ApiError, api, session } from "./api.js";
import { clear } from "./dom.js";
import * as fleet from "./pages/fleet.js";
import * as device from "./pages/device.js";
import * as alerts from "./pages/alerts.js";
import * as quality from "./pages/quality.js";
import * as deadLetters from "./pages/dead-letters.js";
import { badAddress, notFound } from "./pages/missing.js";

const pages = { fleet, device, alerts, quality, "dead-letters": deadLetters };
// What the router shows where an address leads nowhere (no address of their own).
const fallbacks = { "not-found": notFound, "bad-address": badAddress };
const main = document.getElementById("page");
const banner = document.getElementById("error");
const liveState = document.getElementById("live-state");
const dialog = document.getElementById("key-dialog");
let leave = () => {};
let rendering = 0;

// For tests and benchmarks: the charts drawn, with their data and timings.
window.iotpipe = { charts: new Map(), timings: [], page: null };

const shell = {
  error(error) {
    if (!error) {
      banner.hidden = true;
      banner.textContent = "";
      return;
    }
    banner.textContent = error instanceof Error ? error.message : String(error);
    banner.hidden = false;
    if (error instanceof ApiError && error.status === 401) askForKey(error.message);
  },
  live(state, reason) {
    liveState.className = `live-state ${state}`;
    liveState.textContent = state === "live" ? "live" : state;
    liveState.title = reason || "live feed";
  },
  // Runs an API call, showing its error (the API's own message) if it fails; a success
  // clears the banner, so an error never outlives the action that put it right.
  async attempt(call) {
    try {
      const result = await call();
      shell.error(null);
      return result;
    } catch (error) {
      shell.error(error);
      return undefined;
    }
  },
};

// The page and its parameters from the address. An unknown page, or a device id whose
// percent-encoding is broken (decodeURIComponent throws URIError), gets a page saying so
// rather than Fleet or an uncaught error that leaves the last page on screen.
function route() {
  const [first, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  if (!first) return { name: "fleet", params: [] };
  if (!Object.hasOwn(pages, first)) return { name: "not-found", params: [first, ...rest] };
  try {
    return { name: first, params: rest.map((part) => decodeURIComponent(part)) };
  } catch (error) {
    if (!(error instanceof URIError)) throw error;
    // Only the device page reads its parameters; the others ignore them.
    return first === "device" ? { name: "bad-address", params: [location.hash] } : { name: first, params: [] };
  }
}

async function show() {
  leave();
  leave = () => {};
  shell.error(null);
  shell.live("off");
  window.iotpipe.charts.clear();
  const { name, params } = route();
  for (const link of document.querySelectorAll(".top nav a")) {
    const current = link.dataset.page === name || (name === "device" && link.dataset.page === "fleet");
    link.classList.toggle("current", current);
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  clear(main);
  main.dataset.page = name;
  window.iotpipe.page = name;
  const ticket = ++rendering;
  try {
    const render = Object.hasOwn(pages, name) ? pages[name].render : fallbacks[name];
    const undo = await render(main, params, shell);
    if (ticket !== rendering) {
      if (undo) undo();
      return;
    }
    leave = undo || (() => {});
    main.dataset.ready = "true";
  } catch (error) {
    shell.error(error);
  }
}

function askForKey(why) {
  document.getElementById("key-why").textContent = why || document.getElementById("key-why").textContent;
  document.getElementById("key-input").value = "";
  if (!dialog.open) dialog.showModal();
}

dialog.addEventListener("close", () => {
  if (dialog.returnValue === "save") {
    session.key = document.getElementById("key-input").value.trim();
    show();
  } else if (dialog.returnValue === "forget") {
    session.key = null;
    show();
  }
});
document.getElementById("key-button").addEventListener("click", () => askForKey());
window.addEventListener("hashchange", () => {
  main.dataset.ready = "false";
  show();
});

// An API with keys answers 401 to a browser without one: ask before the first page.
async function start() {
  try {
    await api("/stats");
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      askForKey(error.message);
      return;
    }
  }
  show();
}

start();
