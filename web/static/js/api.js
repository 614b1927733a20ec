// The platform's REST API (/api/...) from the pages.
//
// The pages hold the session in cookies the API sets when a request carries
// "X-Relaycast-Client: web" (register, login, refresh): rc_access (the JWT access
// token, HttpOnly), rc_refresh (HttpOnly, path /api/users) and rc_csrf (readable).
// Every POST/PATCH/PUT/DELETE sends "X-CSRF-Token: <rc_csrf>" (double-submit
// cookie). On 401 the client asks POST /api/users/refresh once for a new access
// cookie and repeats the request; when that fails too it goes to /login (unless
// the caller says it can do without a login). Errors are RFC 9457 problem+json.

import { parseProblem, problemMessage } from "./webrtc.js";

const UNSAFE = new Set(["POST", "PATCH", "PUT", "DELETE"]);
const WEB_CLIENT = { "X-Relaycast-Client": "web" };

/** A non-2xx answer: ``status`` and the RFC 9457 ``problem`` object. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problemMessage(problem));
    this.name = "ApiError";
    this.status = status;
    this.problem = problem;
  }
}

/** The value of cookie ``name`` ("" when absent). */
export function cookie(name) {
  for (const part of document.cookie.split(";")) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return "";
}

/** Whether this browser holds a page session (the readable rc_csrf cookie is set at login). */
export function hasSession() {
  return cookie("rc_csrf") !== "";
}

/** An absolute URL on the page's own origin, with query parameters (empty ones left out). */
export function apiUrl(path, query = {}) {
  const url = new URL(path, location.origin);
  for (const [key, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, String(value));
  }
  return url;
}

/** The path to come back to after logging in: a same-origin path only. */
export function safeNext(raw) {
  return typeof raw === "string" && raw.startsWith("/") && !raw.startsWith("//") && !raw.startsWith("/\\")
    ? raw
    : "/";
}

/** Go to the login page, asking it to come back here afterwards. */
export function goToLogin() {
  const next = location.pathname + location.search;
  location.assign(apiUrl("/login", { next }).href);
}

let refreshing = null; // one refresh at a time, shared by concurrent 401s

/** POST /api/users/refresh with the rc_refresh cookie: true when a new session cookie came. */
export function refreshSession() {
  refreshing ??= send("POST", "/api/users/refresh", {}, WEB_CLIENT)
    .then((res) => res.ok)
    .catch(() => false)
    .finally(() => { refreshing = null; });
  return refreshing;
}

function send(method, path, body, extraHeaders = {}, query = {}) {
  const headers = { Accept: "application/json", ...extraHeaders };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const csrf = cookie("rc_csrf");
  if (UNSAFE.has(method) && csrf) headers["X-CSRF-Token"] = csrf;
  return fetch(apiUrl(path, query), {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
}

/**
 * Call the API: ``await api("/api/channels/x")`` → the parsed JSON body (null for 204).
 *
 * Options: ``method`` (GET), ``body`` (JSON), ``query`` (object), ``login``: "required"
 * (default: a 401 that a refresh cannot fix goes to /login) or "optional" (it throws
 * ApiError(401) instead), ``web`` (send X-Relaycast-Client: web).
 * @throws {ApiError} for any non-2xx answer.
 */
export async function api(path, { method = "GET", body, query = {}, login = "required", web = false } = {}) {
  const extra = web ? WEB_CLIENT : {};
  let res = await send(method, path, body, extra, query);
  if (res.status === 401 && hasSession() && !path.startsWith("/api/users/login")) {
    if (await refreshSession()) res = await send(method, path, body, extra, query);
  }
  if (res.status === 401 && login === "required") {
    goToLogin();
  }
  if (!res.ok) throw new ApiError(res.status, await parseProblem(res));
  if (res.status === 204) return null;
  const type = res.headers.get("Content-Type") || "";
  return type.includes("json") ? res.json() : null;
}

/** The logged-in user (Me) or null, without ever leaving the page. */
export async function currentUser() {
  if (!hasSession()) return null;
  try {
    return await api("/api/users/me", { login: "optional" });
  } catch (err) {
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) return null;
    throw err;
  }
}

/** Format helpers shared by the pages. */
export function formatCount(n) {
  const value = Number(n) || 0;
  return value >= 10000 ? `${(value / 1000).toFixed(value >= 100000 ? 0 : 1)}k` : String(value);
}

export function formatDate(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? "" : d.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
}

export function formatDuration(seconds) {
  const s = Math.max(0, Math.round(Number(seconds) || 0));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const pad = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
}

/** document.createElement with properties, attributes (data-*, aria-*, role, for) and children. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("data-") || key.startsWith("aria-") || key === "role" || key === "for") {
      node.setAttribute(key, value === true ? "" : String(value));
    } else {
      node[key] = value;
    }
  }
  node.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

/** Show a problem in a status element (role="alert" in the markup). */
export function showError(target, err) {
  target.textContent = err instanceof ApiError ? problemMessage(err.problem) : `${err.message || err}`;
  target.hidden = false;
}
