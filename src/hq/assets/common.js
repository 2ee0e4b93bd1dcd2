// posgw HQ dashboard: what every part of the page shares. DOM builders (record text only ever
// goes in as text nodes, never as HTML), number and time formats, the yardstick colouring, and
// the HTTP calls to this receiver (a bearer token when one was given, else the session cookie).

// ---- DOM ----
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  return fill(node, attrs, children);
}

const SVG_NS = "http://www.w3.org/2000/svg";

// An SVG element (sparklines, trend charts).
export function svg(tag, attrs, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

function fill(node, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    node.setAttribute(name, String(value));
  }
  // Children may nest arrays (a bilingual label inside a list of parts).
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const $ = (id) => document.getElementById(id);

// Chinese label with its English beside it.
export function bi(zh, en) {
  return [zh + " ", el("span", { class: "en" }, en)];
}

// ---- formats ----
export function text(value, fallback = "—") {
  return value === null || value === undefined || value === "" ? fallback : String(value);
}
export function percent(ratio) {
  return Math.round(ratio * 1000) / 10 + "%";
}
// A ratio as a percentage with one decimal for data attributes ("66.7"), "" when null.
export function percentValue(ratio) {
  return typeof ratio === "number" ? String(Math.round(ratio * 1000) / 10) : "";
}
// Store-local time as the record wrote it ("2026-11-27T16:01:02.345+08:00" -> "11-27 16:01:02").
export function shortTime(ts) {
  if (typeof ts !== "string") return "—";
  const m = /^\d{4}-(\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})/.exec(ts);
  return m ? m[1] + " " + m[2] : ts;
}
// An HQ clock instant ("…Z") in the browser's time zone, to the second.
export function instant(ts) {
  if (typeof ts !== "string" || ts === "") return "—";
  const date = new Date(ts);
  if (Number.isNaN(date.getTime())) return ts;
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}
export function seconds(ms) {
  return ms === null || ms === undefined ? "—" : (ms / 1000).toFixed(1) + " s";
}
export function money(amount, currency) {
  if (typeof amount !== "number") return "—";
  const sign = currency === "CNY" || !currency ? "¥" : currency + " ";
  return sign + amount.toFixed(2);
}

// ---- the three yardsticks ----
// The chain's goals and the industry baselines; /v1/yardsticks sends its own, which win.
export const YARDSTICKS = [
  { key: "completeness", zh: "过程数据完整率", en: "Process data completeness", goal: 0.85, baseline: 0.513 },
  { key: "alert_response", zh: "预警响应及时率", en: "Alert response in time", goal: 0.9, baseline: 0.387 },
  { key: "traceability", zh: "销售行为可追溯率", en: "Sales traceability", goal: 1.0, baseline: 0.621 },
];

// How a figure stands: "meets" its goal, "beats" the industry baseline only, "below" both, or
// "none" (no value: nothing to measure yet).
export function standing(value, goal, baseline) {
  if (typeof value !== "number") return "none";
  if (value >= goal - 1e-9) return "meets";
  if (value > baseline + 1e-9) return "beats";
  return "below";
}

export const STANDING_LABELS = {
  meets: ["达标", "meets the goal"],
  beats: ["高于行业", "above the industry baseline"],
  below: ["低于行业", "at or below the industry baseline"],
  none: ["无数据", "no data"],
};

// ---- HTTP ----
export class Unauthorized extends Error {}

// Who the page calls HQ as: a bearer token when one was given, else the session cookie
// (HttpOnly, sent by the browser).
export const auth = { token: "" };

function headers(extra) {
  const all = Object.assign({}, extra);
  if (auth.token) all.Authorization = "Bearer " + auth.token;
  return all;
}

// GET `path`; throws Unauthorized on 401 and an Error with `status` on any other failure.
export async function api(path) {
  const response = await fetch(path, { headers: headers(), cache: "no-store", credentials: "same-origin" });
  if (response.status === 401) throw new Unauthorized("401");
  if (!response.ok) {
    const error = new Error(await errorMessage(response));
    error.status = response.status;
    throw error;
  }
  return response;
}

// GET `path` as text: null when it is `last` (nothing to redraw), {body}, or {error} for any
// failure but a 401, which is thrown.
export async function fetchText(path, last) {
  try {
    const body = await (await api(path)).text();
    return body === last ? null : { body };
  } catch (error) {
    if (error instanceof Unauthorized) throw error;
    return { error: (error.status ? error.status + " · " : "") + error.message };
  }
}

// `round` run one at a time: a call during a run gets that run's promise, and the run goes
// round once more when it is over (so what was asked for meanwhile is read too).
export function oneAtATime(round) {
  let running = null;
  let again = false;
  return function run() {
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      try {
        do {
          again = false;
          await round();
        } while (again);
      } finally {
        running = null;
      }
    })();
    return running;
  };
}

// POSTs `body` as JSON; answers {ok, status, body, message} so the caller can show a refusal
// (403, 409, 422) as the server worded it. Throws Unauthorized on 401.
export function postJson(path, body) {
  return send("POST", path, body);
}

// `method` (PUT, DELETE, POST) to `path`, with `body` as JSON when given; answers {ok, status,
// body, message}: `body` the parsed JSON answer (a refusal's too, e.g. a 422's `errors`),
// `message` a refusal's `error`. Throws Unauthorized on 401.
export async function send(method, path, body) {
  const init = { method, headers: headers(), cache: "no-store", credentials: "same-origin" };
  if (body !== undefined) {
    init.headers = headers({ "Content-Type": "application/json" });
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) throw new Unauthorized("401");
  let answer = null;
  try {
    answer = await response.json();
  } catch (_) {
    // an empty body (a 204) or not JSON
  }
  let message = "";
  if (!response.ok) {
    message = answer && typeof answer.error === "string" ? answer.error : response.status + " " + response.statusText;
  }
  return { ok: response.ok, status: response.status, body: answer, message };
}

// The `error` of a JSON error body, else the status line.
async function errorMessage(response) {
  let message = response.status + " " + response.statusText;
  try {
    const body = await response.json();
    if (body && body.error) message = body.error;
  } catch (_) {
    // not JSON: keep the status line
  }
  return message;
}

// Where to sign in so that the login page comes back to the view shown now.
export function loginUrl() {
  const hash = window.location.hash;
  return "/login" + (hash && hash.length > 1 ? hash : "");
}
