// Talking to iotpipe: the REST API (errors shown as the API's own message) and the live
// feed's WebSocket. The API key, if one is needed, lives in sessionStorage: kept for the
// browser tab's session, sent as `Authorization: Bearer` and in the live subscription.

const KEY = "iotpipe.key";

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

export const session = {
  get key() {
    return sessionStorage.getItem(KEY);
  },
  set key(value) {
    if (value) sessionStorage.setItem(KEY, value);
    else sessionStorage.removeItem(KEY);
  },
};

export async function api(path, { method = "GET", body, query } = {}) {
  const url = new URL(`/api/v1${path}`, location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const headers = { Accept: "application/json" };
  if (session.key) headers.Authorization = `Bearer ${session.key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (error) {
    throw new ApiError(0, `cannot reach iotpipe (${error.message}); is it running?`);
  }
  const text = await response.text();
  let payload = null;
  try {
    payload = text ? JSON.parse(text) : null;
  } catch {
    payload = null;
  }
  if (!response.ok) {
    const detail = payload && typeof payload.detail === "string" ? payload.detail : `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, detail);
  }
  return payload;
}

// Every page of a list endpoint, `limit` at a time, following `next`.
export async function all(path, query = {}, limit = 1000) {
  const items = [];
  let cursor;
  do {
    const page = await api(path, { query: { ...query, limit, cursor } });
    items.push(...page.items);
    cursor = page.next;
  } while (cursor);
  return items;
}

// The live feed: subscribe, hand each frame to `onFrame`, reconnect after a drop (with a
// growing pause) unless closed for a reason retrying cannot fix. Returns { close() }.
export function live(subscription, { onFrame, onState = () => {} }) {
  let socket = null;
  let stopped = false;
  let pause = 500;
  let timer = null;

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    socket = new WebSocket(`${scheme}//${location.host}/api/v1/live`);
    socket.addEventListener("open", () => {
      const message = { type: "subscribe", ...subscription };
      if (session.key) message.key = session.key;
      socket.send(JSON.stringify(message));
    });
    socket.addEventListener("message", (event) => {
      const frame = JSON.parse(event.data);
      if (frame.type === "subscribed") {
        pause = 500;
        onState("live");
      }
      onFrame(frame);
    });
    socket.addEventListener("close", (event) => {
      socket = null;
      if (stopped) return;
      // 4400 (bad subscription), 4401/4403 (key): trying again changes nothing.
      if ([4400, 4401, 4403].includes(event.code)) {
        onState("refused", event.reason);
        return;
      }
      onState("reconnecting", event.reason);
      timer = setTimeout(connect, pause);
      pause = Math.min(pause * 2, 15000);
    });
  }

  connect();
  return {
    close() {
      stopped = true;
      clearTimeout(timer);
      if (socket) socket.close(1000, "page left");
    },
  };
}
