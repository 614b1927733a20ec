// Strict third-party LL-HLS check: parses many playlists with npm hls-parser
// (strictMode: true, which throws on RFC 8216bis violations such as EXT-X-PART tags on
// more than the last three segments, §4.4.4.9) in one node process.
//
// stdin: a JSON array of {"name": str, "kind": "media" | "multivariant", "text": str}.
// stdout: a JSON array of {"name": str, "error": str | null}, in the same order.
// Exit status 2 when hls-parser is not installed (`npm ci --prefix web`).
"use strict";

const path = require("path");

let HLS;
try {
  HLS = require(path.join(__dirname, "..", "..", "web", "node_modules", "hls-parser"));
} catch (err) {
  process.stderr.write(`hls-parser is not installed (npm ci --prefix web): ${err.message}\n`);
  process.exit(2);
}
HLS.setOptions({ strictMode: true, silent: true });

const chunks = [];
process.stdin.on("data", (chunk) => chunks.push(chunk));
process.stdin.on("end", () => {
  const items = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  const results = items.map(({ name, kind, text }) => {
    try {
      const playlist = HLS.parse(text);
      const multivariant = Boolean(playlist.isMasterPlaylist);
      if (multivariant !== (kind === "multivariant")) {
        return { name, error: `parsed as ${multivariant ? "multivariant" : "media"}, expected ${kind}` };
      }
      return { name, error: null };
    } catch (err) {
      return { name, error: String(err && err.message ? err.message : err) };
    }
  });
  process.stdout.write(JSON.stringify(results));
});
