// Pages for addresses that lead nowhere: an unknown page, a device address whose
// percent-encoding is broken, a device the API does not know. Each says what was asked
// for and links back, so a mistyped or stale link is never a blank page or a banner.
// The first two are rendered by the shell (app.js) as pages of their own.

import { h } from "../dom.js";

const PLACES = [
  ["#/fleet", "Fleet"],
  ["#/alerts", "Alerts"],
  ["#/quality", "Data quality"],
  ["#/dead-letters", "Dead letters"],
];

// `#/anything-else`; params are the address's parts as written.
export function notFound(main, params) {
  main.append(
    h("h1", {}, "Page not found"),
    h("p", {}, "Nothing is at ", h("code", {}, `#/${params.join("/")}`), ". The dashboard's pages:"),
    h("ul", { className: "places" }, PLACES.map(([href, label]) => h("li", {}, h("a", { href }, label)))),
  );
}

// `#/device/%E0%A4%A`: the id cannot be decoded, so there is nothing to ask the API.
export function badAddress(main, [raw]) {
  main.append(
    h("p", {}, h("a", { href: "#/fleet" }, "← Fleet")),
    h("h1", {}, "Not a valid device address"),
    h("p", {}, h("code", {}, raw), " is not a percent-encoded device id. Open the device from the fleet's list."),
  );
}

// The API's 404 says which id it looked for ("no device 'x' in the store; ...").
export function unknownDevice(main, detail) {
  main.append(h("p", {}, h("a", { href: "#/fleet" }, "← Fleet")), h("h1", {}, "Unknown device"), h("p", {}, detail));
}
