// SDP fragments for an ICE restart over WHIP/WHEP (RFC 9725 §4.3.3): the body of the
// PATCH built from the browser's ICE-restart offer, the server's answer fragment read, and
// the current remote description rewritten with the server's new ICE credentials and
// candidates so the browser can take it as the answer to its restart offer. Pure string
// functions (no DOM, no RTCPeerConnection), so the tests run them in Node too.
//
// Fragment format (``application/trickle-ice-sdpfrag``, RFC 8840 §4.4 / §9, as RFC 9725
// §4.3.1 uses it): the session-level ``a=group:BUNDLE``, then only the first ("offerer-
// tagged") m= line of the BUNDLE group with its ``a=mid``, the new ``a=ice-ufrag`` and
// ``a=ice-pwd``, the candidates and ``a=end-of-candidates`` once gathering completed.

const CRLF = "\r\n";

function lines(sdp) {
  return sdp.split(/\r?\n/).filter((l) => l !== "");
}

/** The SDP's sections: ``[session lines, ...media sections' lines]`` (each from its m= line). */
export function sections(sdp) {
  const out = [[]];
  for (const line of lines(sdp)) {
    if (line.startsWith("m=")) out.push([]);
    out[out.length - 1].push(line);
  }
  return out;
}

function value(block, prefix) {
  const line = block.find((l) => l.startsWith(prefix));
  return line === undefined ? null : line.slice(prefix.length).trim();
}

/** ``{ufrag, pwd}`` of an SDP or fragment: the first ``a=ice-ufrag``/``a=ice-pwd`` (RFC 8839
 * §5.4), media or session level; null members when absent. */
export function iceCredentials(sdp) {
  const all = lines(sdp);
  return { ufrag: value(all, "a=ice-ufrag:"), pwd: value(all, "a=ice-pwd:") };
}

/**
 * The PATCH body for an ICE restart (RFC 9725 §4.3.3) from the local description set from
 * ``createOffer({iceRestart: true})``: BUNDLE group, the first bundled m= line and its mid,
 * the new credentials and that section's candidates (deduplicated), ``a=end-of-candidates``
 * when ``complete``.
 *
 * @param {string} localSdp ``pc.localDescription.sdp``
 * @param {boolean} complete ICE gathering finished (``iceGatheringState === "complete"``)
 * @returns {string} the fragment, CRLF line ends
 * @throws {Error} the description has no m= section or no ICE credentials
 */
export function restartFragment(localSdp, complete = true) {
  const [session, ...media] = sections(localSdp);
  if (!media.length) throw new Error("the local description has no m= section");
  const group = session.find((l) => l.startsWith("a=group:BUNDLE "));
  const firstMid = group ? group.split(" ")[1] : null;
  const section = media.find((m) => firstMid !== null && value(m, "a=mid:") === firstMid)
    ?? media.find((m) => !/^m=\S+ 0 /.test(m[0])) ?? media[0];
  const ufrag = value(section, "a=ice-ufrag:") ?? value(session, "a=ice-ufrag:");
  const pwd = value(section, "a=ice-pwd:") ?? value(session, "a=ice-pwd:");
  if (!ufrag || !pwd) throw new Error("the local description has no ICE credentials");
  const out = [];
  if (group) out.push(group);
  out.push(section[0]);
  const mid = value(section, "a=mid:");
  if (mid !== null) out.push(`a=mid:${mid}`);
  out.push(`a=ice-ufrag:${ufrag}`, `a=ice-pwd:${pwd}`);
  const candidates = [...new Set(section.filter((l) => l.startsWith("a=candidate:")))];
  out.push(...candidates);
  if (complete) out.push("a=end-of-candidates");
  return out.join(CRLF) + CRLF;
}

/**
 * The server's answer fragment (the 200's body, RFC 9725 §4.3.3): ``{ufrag, pwd, candidates,
 * iceLite}``; ``candidates`` are whole ``a=candidate:`` lines (RFC 8839 §5.1), in order.
 */
export function parseFragment(text) {
  const all = lines(text).map((l) => l.trim());
  return {
    ...iceCredentials(text),
    candidates: all.filter((l) => l.startsWith("a=candidate:")),
    iceLite: all.includes("a=ice-lite"),
  };
}

/**
 * ``answerSdp`` (the session's current remote description) with the ICE credentials of
 * ``fragment`` (from :func:`parseFragment`) in place of the old ones, the old candidates and
 * ``a=end-of-candidates`` removed and the fragment's candidates (plus end-of-candidates) at
 * the end of every m= section that is not rejected (port 0). Everything else — codecs, DTLS
 * fingerprint and role, mids — stays: WHIP/WHEP never renegotiate media (RFC 9725 §4.3.3).
 *
 * @throws {Error} the fragment has no ``ice-ufrag``/``ice-pwd``
 */
export function answerWithFragment(answerSdp, fragment) {
  if (!fragment.ufrag || !fragment.pwd) throw new Error("the server's fragment has no ICE credentials");
  const [session, ...media] = sections(answerSdp);
  const rewrite = (block) => block
    .filter((l) => !l.startsWith("a=candidate:") && l !== "a=end-of-candidates")
    .map((l) => {
      if (l.startsWith("a=ice-ufrag:")) return `a=ice-ufrag:${fragment.ufrag}`;
      if (l.startsWith("a=ice-pwd:")) return `a=ice-pwd:${fragment.pwd}`;
      return l;
    });
  const out = rewrite(session);
  for (const block of media) {
    out.push(...rewrite(block));
    if (!/^m=\S+ 0 /.test(block[0])) out.push(...fragment.candidates, "a=end-of-candidates");
  }
  return out.join(CRLF) + CRLF;
}
