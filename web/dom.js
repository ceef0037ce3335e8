// Building DOM from data that may come from devices: text only, never HTML.
//
// `h(tag, props, ...children)` makes an element. String and number children become text
// nodes; props set properties (className, title, value, ...) or, under `attrs`, plain
// attributes — never an event-handler attribute. Nothing here parses HTML, so a device id
// like `<img src=x onerror=...>` is shown as those characters.

export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === undefined || value === null) continue;
    if (name === "attrs") {
      for (const [attr, text] of Object.entries(value)) {
        if (/^on/i.test(attr)) throw new Error(`refusing event attribute ${attr}`);
        el.setAttribute(attr, String(text));
      }
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else if (name === "on") {
      for (const [event, handler] of Object.entries(value)) el.addEventListener(event, handler);
    } else if (name === "text") {
      el.textContent = String(value);
    } else {
      el[name] = value;
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

// -- formatting ----------------------------------------------------------------------------
const number = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });

export function fmt(value, digits) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (digits !== undefined) return Number(value).toFixed(digits);
  return number.format(value);
}

export function ago(iso, now = Date.now()) {
  if (!iso) return "never";
  const seconds = Math.max(0, (now - Date.parse(iso)) / 1000);
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

// dateStyle "medium" where the year must be plain ("Jan 2, 2015", not "1/2/15").
export function when(iso, dateStyle = "short") {
  if (!iso) return "–";
  return new Date(iso).toLocaleString(undefined, { dateStyle, timeStyle: "medium" });
}

// A glob (`pump-*`, `meter-?`) as a RegExp matching whole ids, as the server reads them.
export function globRegExp(glob) {
  let source = "";
  for (const char of glob) {
    if (char === "*") source += ".*";
    else if (char === "?") source += ".";
    else source += char.replace(/[.+^${}()|[\]\\]/g, "\\$&");
  }
  return new RegExp(`^${source}$`, "s");
}
