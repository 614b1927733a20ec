// Shared WebRTC / WHIP / WHEP helpers for the relaycast pages.
//
// WHIP = RFC 9725 (WebRTC-HTTP Ingestion Protocol), WHEP = draft-ietf-wish-whep
// (WebRTC-HTTP Egress Protocol). Both follow the same shape: the client POSTs
// an SDP offer, the server answers "201 Created" with the SDP answer as body
// and the session URL in the Location header; DELETE on that URL ends it, and a
// PATCH with new ICE credentials restarts ICE (RFC 9725 §4.3.3, restartSessionIce).

import { answerWithFragment, parseFragment, restartFragment } from "./sdpfrag.js";

/** Room name = last path segment of /broadcast/{room} or /watch/{room}. */
export function roomFromPath(pathname = location.pathname) {
  const parts = pathname.split("/").filter(Boolean);
  const last = parts.length ? parts[parts.length - 1] : "";
  try {
    return decodeURIComponent(last);
  } catch {
    return last;
  }
}

/** GET /api/ice-servers -> RTCIceServer[] (empty list when unavailable). */
export async function fetchIceServers() {
  try {
    const res = await fetch("/api/ice-servers", { headers: { Accept: "application/json" } });
    if (!res.ok) return [];
    const body = await res.json();
    return Array.isArray(body.iceServers) ? body.iceServers : [];
  } catch {
    return [];
  }
}

/**
 * The RTCConfiguration for a session: ICE servers from GET /api/ice-servers
 * (TURN credentials there are minted per request, so call this per session).
 * ``?relay=1`` in the page URL sets iceTransportPolicy "relay": only TURN relay
 * candidates are used, for testing and debugging a TURN deployment (the
 * connection fails when the server advertises no TURN server).
 */
export async function rtcConfiguration(search = location.search) {
  const config = { iceServers: await fetchIceServers() };
  if (relayOnly(search)) {
    config.iceTransportPolicy = "relay";
    if (!config.iceServers.some((s) => [s.urls].flat().some((u) => /^turns?:/.test(u)))) {
      console.warn("relaycast: ?relay=1 but the server advertises no TURN server; ICE will fail");
    }
  }
  return config;
}

/** ``?relay=1`` (or ``true``/``yes``): TURN relay candidates only. */
export function relayOnly(search = location.search) {
  return ["1", "true", "yes"].includes(new URLSearchParams(search).get("relay") ?? "");
}

/**
 * Resolve once ICE gathering is complete, or after timeoutMs, whichever is first.
 * WHIP/WHEP clients may trickle candidates with PATCH, but we do "non-trickle":
 * the offer POSTed to the server already carries every candidate we gathered.
 */
export function waitForIceGathering(pc, timeoutMs = 2000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === "complete") done();
    };
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

/** An HTTP error carrying the RFC 9457 problem details and Retry-After. */
export class HttpError extends Error {
  constructor(status, problem, retryAfterS) {
    super(problemMessage(problem));
    this.name = "HttpError";
    this.status = status;
    this.problem = problem;
    this.retryAfterS = retryAfterS; // null when the header is absent
  }
}

/** Parse an RFC 9457 application/problem+json body; tolerant of anything else. */
export async function parseProblem(res) {
  const fallback = { type: "about:blank", title: res.statusText || `HTTP ${res.status}`, status: res.status, detail: "" };
  let text = "";
  try {
    text = await res.text();
  } catch {
    return fallback;
  }
  try {
    const body = JSON.parse(text);
    if (body && typeof body === "object") return { ...fallback, ...body };
  } catch {
    /* not JSON: fall through */
  }
  return { ...fallback, detail: text.trim().slice(0, 200) };
}

/** "title: detail" (or just the title when there is no detail). */
export function problemMessage(problem) {
  if (!problem) return "unknown error";
  const title = problem.title || `HTTP ${problem.status ?? "?"}`;
  return problem.detail ? `${title}: ${problem.detail}` : title;
}

/** Retry-After is either delta-seconds or an HTTP-date (RFC 9110 §10.2.3). */
export function parseRetryAfter(value) {
  if (value == null || value === "") return null;
  if (/^\s*\d+\s*$/.test(value)) return parseInt(value, 10);
  const when = Date.parse(value);
  if (Number.isNaN(when)) return null;
  return Math.max(0, Math.round((when - Date.now()) / 1000));
}

/** The pages' readable CSRF cookie rc_csrf ("" when not logged in). */
function csrfCookie() {
  const found = document.cookie.split(";").map((c) => c.trim()).find((c) => c.startsWith("rc_csrf="));
  return found ? decodeURIComponent(found.slice("rc_csrf=".length)) : "";
}

/**
 * POST an SDP offer to a WHIP or WHEP endpoint.
 * Returns {location, answer}. Throws HttpError on non-2xx, TypeError on network errors.
 */
export async function postOffer(endpoint, sdp, token) {
  const headers = { "Content-Type": "application/sdp", Accept: "application/sdp" };
  // RFC 9725 §4.5: bearer-token authentication via the Authorization header.
  if (token) headers.Authorization = `Bearer ${token}`;
  // A logged-in page's session cookie names the viewer (who chats under the username on the
  // data channel); a cookie-authenticated POST counts only with the double-submit CSRF header.
  const csrf = csrfCookie();
  if (csrf) headers["X-CSRF-Token"] = csrf;
  // fetch() follows 307/308 redirects, which the specs allow for load balancing.
  const res = await fetch(endpoint, { method: "POST", headers, body: sdp });
  if (!res.ok) {
    // Anything but 2xx (the specs say 201 Created) is an error; the body is
    // RFC 9457 problem+json, and 409/503 may carry Retry-After.
    const retry = parseRetryAfter(res.headers.get("Retry-After"));
    throw new HttpError(res.status, await parseProblem(res), retry);
  }
  const loc = res.headers.get("Location");
  if (!loc) {
    throw new HttpError(res.status, { title: "Bad response", detail: "no Location header", status: res.status }, null);
  }
  // The session URL may be relative; per HTTP it is resolved against the
  // (final) request URL, which is what res.url is after redirects.
  const location = new URL(loc, res.url || window.location.href).href;
  // The strong entity tag of the ICE session (RFC 9725 §4.3.1); kept for the record, an ICE
  // restart sends If-Match: * (§4.3.3).
  return { location, etag: res.headers.get("ETag"), answer: await res.text() };
}

/**
 * DELETE the session resource (tears the session down on the server). Never
 * throws; gives up after timeoutMs so a hung server cannot block a teardown.
 */
export async function deleteSession(url, token, { keepalive = false, timeoutMs = 5000 } = {}) {
  if (!url) return;
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  try {
    await fetch(url, { method: "DELETE", headers, keepalive, signal: AbortSignal.timeout(timeoutMs) });
  } catch {
    /* best effort */
  }
}

/**
 * Offer, wait for ICE gathering (no trickle), POST to the WHIP/WHEP endpoint
 * (RFC 9725 §4.2) and apply the answer. ``s.location`` is set as soon as the
 * resource exists, so a failure after that can still DELETE it; ``s.etag`` is the
 * 201's ETag (null when absent).
 */
export async function negotiate(s, endpoint, token, signal) {
  const aborted = () => {
    if (signal.aborted) throw new DOMException("stopped", "AbortError");
  };
  await s.pc.setLocalDescription(await s.pc.createOffer());
  await waitForIceGathering(s.pc, 2000);
  aborted();
  const { location: url, etag, answer } = await postOffer(endpoint, s.pc.localDescription.sdp, token);
  s.location = url;
  s.etag = etag;
  aborted();
  await s.pc.setRemoteDescription({ type: "answer", sdp: answer });
}

/**
 * DELETE the session resource, then close the pc. Closing first would send a
 * DTLS close_notify on which the server ends the session itself, and the
 * DELETE would race that (404). On pagehide (keepalive) nothing can be
 * awaited: best effort.
 */
export async function closeSession(s, token, { keepalive = false } = {}) {
  const deleted = deleteSession(s.location, token, { keepalive });
  if (!keepalive) await deleted;
  s.pc.close();
}

/** Exponential backoff in ms: 1 s, 2 s, 4 s, 8 s, then 10 s forever. */
export function backoffDelay(attempt, baseMs = 1000, maxMs = 10000) {
  return Math.min(maxMs, baseMs * 2 ** Math.max(0, attempt));
}

/** setTimeout as a promise, cancellable with an AbortSignal (resolves early on abort). */
export function sleep(ms, signal) {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

/** The state of the session's DTLS transport (bundled: one for every m= section), or null. */
export function dtlsState(pc) {
  const transport = pc.sctp?.transport
    ?? pc.getTransceivers().map((t) => t.sender.transport ?? t.receiver.transport).find(Boolean);
  return transport?.state ?? null;
}

/**
 * Watch a peer connection (and optional data channel) for loss of the session, trying an
 * ICE restart (RFC 9725 §4.3.3) first when ``restart`` is given.
 *
 * Lost at once: connectionState "closed", the DTLS transport "closed"/"failed" (the server
 * closed it: a restart cannot help), or the data channel closing under us (how we notice
 * the server deleting the session: it closes SCTP/DTLS). ICE trouble: iceConnectionState
 * "failed", or "disconnected" for ``restartAfterMs``, calls ``restart()`` (one at a time,
 * ``onRestart(reason)`` first). Chromium reports "disconnected" only after ~5 s without an
 * answer to its checks, so 1 s more is enough; a needless restart costs little, since media
 * keeps the old path until the new one is up. When ``restart()`` resolves, the connection must be back within
 * ``restartTimeoutMs`` or the session is lost. When it throws (an older server answers
 * 405/422, the fetch fails), restarts stop for this session: "failed" is then lost at once
 * and "disconnected" after ``graceMs`` from its start, as without ``restart``.
 *
 * @param {RTCPeerConnection} pc
 * @param {{onConnected?: () => void, onLost: (reason: string) => void, channel?: RTCDataChannel,
 *   graceMs?: number, restart?: () => Promise<void>, restartAfterMs?: number,
 *   restartTimeoutMs?: number, onRestart?: (reason: string) => void}} options times in ms;
 *   ``onConnected`` runs on every transition to connected (also after a restart)
 * @returns {() => void} unsubscribe
 */
export function watchConnection(pc, {
  onConnected, onLost, channel = null, graceMs = 5000, restart = null, restartAfterMs = 1000,
  restartTimeoutMs = 5000, onRestart = null,
}) {
  let fired = false;
  let up = false;
  let restarting = false; // a restart() runs or waits for the connection to come back
  let refused = !restart; // no (more) restarts for this session
  let discTimer = null; // "disconnected" for restartAfterMs: restart
  let graceTimer = null; // "disconnected" for graceMs: lost (when not restarting)
  let graceOver = false;
  let deadline = null; // restart answered: back within restartTimeoutMs or lost
  const clearDisconnected = () => {
    clearTimeout(discTimer);
    clearTimeout(graceTimer);
    discTimer = graceTimer = null;
    graceOver = false;
  };
  const lost = (reason) => {
    if (fired) return;
    fired = true;
    stop();
    onLost(reason);
  };
  const iceState = () => pc.iceConnectionState;
  const startRestart = async (reason) => {
    if (restarting || refused || fired) return;
    restarting = true;
    onRestart?.(reason);
    try {
      await restart();
    } catch (err) {
      restarting = false;
      refused = true;
      if (fired) return;
      const why = `ICE restart refused (${err?.message ?? err})`;
      if (iceState() === "failed" || pc.connectionState === "failed" || graceOver) lost(`${reason}; ${why}`);
      else evaluate();
      return;
    }
    if (fired) return;
    deadline = setTimeout(
      () => lost(`${reason}; not reconnected within ${restartTimeoutMs / 1000} s of the ICE restart`),
      restartTimeoutMs,
    );
    evaluate();
  };
  const evaluate = () => {
    if (fired) return;
    const state = pc.connectionState;
    const ice = iceState();
    if (state === "closed" || pc.signalingState === "closed") return lost("connection closed");
    const dtls = dtlsState(pc);
    if (dtls === "closed" || dtls === "failed") return lost(`DTLS ${dtls}`);
    if (state === "connected" && (ice === "connected" || ice === "completed")) {
      clearDisconnected();
      clearTimeout(deadline);
      deadline = null;
      if (restarting && pc.signalingState === "stable") restarting = false;
      if (!up) {
        up = true;
        onConnected?.();
      }
      return;
    }
    if (state !== "connected") up = false;
    if (restarting) return; // the restart's deadline decides
    if (ice === "failed" || state === "failed") {
      if (refused) lost("connection failed");
      else startRestart("ICE failed");
    } else if (ice === "disconnected" || state === "disconnected") {
      if (graceTimer) return;
      graceTimer = setTimeout(() => {
        graceOver = true;
        if (!restarting) lost("disconnected");
      }, graceMs);
      if (!refused) discTimer = setTimeout(() => startRestart("disconnected"), restartAfterMs);
    } else if (ice === "checking" || ice === "new") {
      // ICE is (re)checking: keep timers running, nothing decided yet.
    }
  };
  const onChannelClose = () => lost("session closed by server");
  pc.addEventListener("connectionstatechange", evaluate);
  pc.addEventListener("iceconnectionstatechange", evaluate);
  channel?.addEventListener("close", onChannelClose);
  function stop() {
    clearDisconnected();
    clearTimeout(deadline);
    pc.removeEventListener("connectionstatechange", evaluate);
    pc.removeEventListener("iceconnectionstatechange", evaluate);
    channel?.removeEventListener("close", onChannelClose);
  }
  evaluate();
  return () => {
    fired = true; // a restart still in flight reports nothing more
    stop();
  };
}

/** Resolves when ICE gathering reaches "complete" after this call, or after ``ms``. */
function nextGatheringComplete(pc, ms) {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function onState() {
      if (pc.iceGatheringState === "complete") done();
    }
    function done() {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", onState);
      resolve();
    }
    pc.addEventListener("icegatheringstatechange", onState);
  });
}

export const SDPFRAG = "application/trickle-ice-sdpfrag";

/**
 * ICE restart of a WHIP/WHEP session without a new session (RFC 9725 §4.3.3; WHEP the
 * same): ``restartIce()`` and ``createOffer({iceRestart: true})`` give new local ICE
 * credentials; after gathering (at most ``gatherMs``) they and the candidates go to the
 * session URL in a ``PATCH`` (``application/trickle-ice-sdpfrag``, ``If-Match: *`` as §4.3.3
 * requires, the Bearer token a WHIP session needs); the ``200``'s fragment — the server's new
 * ``ice-ufrag``/``ice-pwd`` and candidates — replaces the old ones in the current remote
 * description, which is set again as the answer. DTLS, SRTP and every m= section stay.
 * ``s.etag`` takes the 200's ETag.
 *
 * @param {{pc: RTCPeerConnection, location: string|null, etag?: string|null}} s the session
 * @param {string|null} token Bearer token (WHIP: the stream key; WHEP: a playback token or null)
 * @returns {Promise<void>} once the new answer is applied (ICE then reconnects by itself)
 * @throws {HttpError} anything but 200 (405/422 from a server without ICE restarts, 404 the
 *   session is gone, 412/428, 429, 5xx); the restart offer is rolled back
 * @throws {Error} no session or not in a stable state, a network error or ``timeoutMs``
 *   passed, or an unusable answer fragment; rolled back likewise
 */
export async function restartSessionIce(s, token, { gatherMs = 1500, timeoutMs = 4000 } = {}) {
  const pc = s.pc;
  if (!s.location) throw new Error("no session to restart");
  if (pc.signalingState !== "stable" || !pc.currentRemoteDescription) {
    throw new Error(`cannot restart ICE in signaling state ${pc.signalingState}`);
  }
  const remoteSdp = pc.currentRemoteDescription.sdp;
  pc.restartIce?.();
  const gathered = nextGatheringComplete(pc, gatherMs);
  try {
    await pc.setLocalDescription(await pc.createOffer({ iceRestart: true }));
    await gathered;
    const body = restartFragment(pc.localDescription.sdp, pc.iceGatheringState === "complete");
    const headers = { "Content-Type": SDPFRAG, "If-Match": "*" };
    if (token) headers.Authorization = `Bearer ${token}`;
    const res = await fetch(s.location, { method: "PATCH", headers, body, signal: AbortSignal.timeout(timeoutMs) });
    if (res.status !== 200) {
      throw new HttpError(res.status, await parseProblem(res), parseRetryAfter(res.headers.get("Retry-After")));
    }
    const answer = answerWithFragment(remoteSdp, parseFragment(await res.text()));
    s.etag = res.headers.get("ETag") ?? s.etag ?? null;
    await pc.setRemoteDescription({ type: "answer", sdp: answer });
    s.iceRestarts = (s.iceRestarts ?? 0) + 1;
  } catch (err) {
    if (pc.signalingState === "have-local-offer") {
      await pc.setLocalDescription({ type: "rollback" }).catch(() => {});
    }
    throw err;
  }
}

/**
 * Poll pc.getStats() every intervalMs and hand (report, prevReport, dtSeconds)
 * to fn. Returns a stop function.
 */
export function pollStats(pc, fn, intervalMs = 1000) {
  let prev = null;
  let prevTime = 0;
  let stopped = false;
  const tick = async () => {
    if (stopped || pc.connectionState === "closed") return;
    try {
      const report = await pc.getStats();
      const now = performance.now();
      if (!stopped) fn(report, prev, prev ? (now - prevTime) / 1000 : 0);
      prev = report;
      prevTime = now;
    } catch {
      /* pc closed mid-call */
    }
  };
  const timer = setInterval(tick, intervalMs);
  return () => {
    stopped = true;
    clearInterval(timer);
  };
}

/** Set a state line: text for humans, data-state (first word) for CSS and tests. */
export function setState(el, text) {
  el.textContent = text;
  el.dataset.state = text.split(":")[0];
}
