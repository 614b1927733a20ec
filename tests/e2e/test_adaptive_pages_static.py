"""The pages' adaptive-delivery modules without a browser or a server: run in Node.

``web/static/js/simulcast.js`` (which encodings the publishing pages send, and the fix
when the answer refuses simulcast), ``sdpfrag.js`` (the ICE-restart PATCH fragment,
RFC 9725 §4.3.3 / RFC 8840 §4.4, and the answer rebuilt from the server's fragment) and
``video-size.js`` (the size-hint rules) are pure ES modules; each test imports them in a
``node`` child process and checks what they return.  The fragment the page would PATCH is
also read back with the server's own parser (:func:`signaling.whip.parse_sdpfrag`).
Every page module changed for adaptive delivery must at least parse (``node --check``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from signaling.whip import parse_sdpfrag

NODE = shutil.which("node")
JS_DIR = Path(__file__).resolve().parents[2] / "web" / "static" / "js"

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")


def run_js(body: str) -> Any:
    """Run ``body`` as an ES module in Node with ``simulcast``, ``sdpfrag`` and ``videoSize``
    imported; ``body`` must ``print(value)`` once, and that JSON value is returned."""
    imports = "\n".join(
        f"import * as {name} from {json.dumps((JS_DIR / file).as_uri())};"
        for name, file in (("simulcast", "simulcast.js"), ("sdpfrag", "sdpfrag.js"),
                           ("videoSize", "video-size.js"))
    )
    script = f"{imports}\nconst print = (v) => console.log(JSON.stringify(v));\n{body}\n"
    done = subprocess.run(
        [NODE, "--no-warnings", "--input-type=module", "-e", script],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize(
    "name", ["simulcast.js", "sdpfrag.js", "video-size.js", "webrtc.js", "publisher.js",
             "watch.js", "broadcast.js", "studio.js"],
)
def test_page_modules_parse(name: str) -> None:
    done = subprocess.run([NODE, "--check", str(JS_DIR / name)], capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------- simulcast.js


def test_three_layers_from_a_720p_camera() -> None:
    encodings = run_js("print(simulcast.planEncodings(1280, 720));")
    assert [e["rid"] for e in encodings] == ["q", "h", "f"]
    assert [e["scaleResolutionDownBy"] for e in encodings] == [4, 2, 1]
    assert all(e["active"] for e in encodings)
    assert [e["maxBitrate"] for e in encodings] == sorted(e["maxBitrate"] for e in encodings)
    assert encodings[0]["maxBitrate"] <= 200_000 and encodings[2]["maxBitrate"] >= 1_500_000
    assert {e["scalabilityMode"] for e in encodings} == {"L1T3"}


def _active(encodings: list[dict]) -> list[tuple[str, int]]:
    return [(e["rid"], e["scaleResolutionDownBy"]) for e in encodings if e["active"]]


@pytest.mark.parametrize(
    ("size", "active"),
    [((1920, 1080), [("q", 4), ("h", 2), ("f", 1)]), ((960, 540), [("q", 4), ("h", 2), ("f", 1)]),
     # libwebrtc sends 2 layers below 960x540 and drops the top encodings by index: the
     # first two carry half and full size, so the full picture is still sent.
     ((640, 360), [("q", 2), ("h", 1)]), ((640, 480), [("q", 2), ("h", 1)]),
     ((480, 270), [("q", 2), ("h", 1)]), ((None, None), [("q", 4), ("h", 2), ("f", 1)])],
)
def test_layers_follow_what_libwebrtc_sends_for_the_source_size(size, active) -> None:
    encodings = run_js(f"print(simulcast.planEncodings({json.dumps(size[0])}, {json.dumps(size[1])}));")
    assert [e["rid"] for e in encodings] == ["q", "h", "f"]  # always offered: the size may grow
    assert _active(encodings) == active
    caps = {e["scaleResolutionDownBy"]: e["maxBitrate"] for e in encodings if e["active"]}
    assert caps[1] >= 1_500_000  # the full picture gets the full-size cap whatever its rid


def test_a_source_too_small_for_two_layers_goes_out_alone() -> None:
    got = run_js("print([simulcast.planEncodings(320, 180), simulcast.layerCount(479, 270)]);")
    assert got == [[{"scalabilityMode": "L1T3"}], 1]


def test_layers_are_replanned_when_the_source_size_changes() -> None:
    got = run_js("""
      const live = simulcast.planEncodings(1280, 720).map((e) => ({...e, networkPriority: 'low'}));
      const small = simulcast.rescaleEncodings(live, 640, 360);
      print({small, back: simulcast.rescaleEncodings(small, 1280, 720),
             same: simulcast.rescaleEncodings(live, 1920, 1080),
             single: simulcast.rescaleEncodings([{active: true}], 640, 360)});""")
    assert _active(got["small"]) == [("q", 2), ("h", 1)]
    assert [e["active"] for e in got["small"]] == [True, True, False]
    assert all(e["networkPriority"] == "low" and e["scalabilityMode"] == "L1T3" for e in got["small"])
    assert _active(got["back"]) == [("q", 4), ("h", 2), ("f", 1)]
    assert got["same"] is None and got["single"] is None


def test_simulcast_and_temporal_layers_can_be_turned_off() -> None:
    got = run_js("""print([
      simulcast.planEncodings(1280, 720, {simulcast: false}),
      simulcast.planEncodings(1280, 720, {simulcast: false, temporal: false}),
      simulcast.planEncodings(1280, 720, {temporal: false}).map((e) => e.scalabilityMode ?? null),
    ]);""")
    assert got == [[{"scalabilityMode": "L1T3"}], None, [None, None, None]]


def test_vp8_temporal_mode_denied_only_when_the_browser_lists_other_modes() -> None:
    got = run_js("""
      const caps = (modes) => ({codecs: [{mimeType: 'video/VP8', ...(modes ? {scalabilityModes: modes} : {})}]});
      print([
        simulcast.vp8RefusesMode(caps(null)),             // Chromium: nothing listed, try it
        simulcast.vp8RefusesMode(caps([])),
        simulcast.vp8RefusesMode(caps(['L1T1', 'L1T3'])),
        simulcast.vp8RefusesMode(caps(['L1T1', 'L1T2'])),
        simulcast.vp8RefusesMode({codecs: [{mimeType: 'video/H264'}]}),  // no VP8 at all
      ]);""")
    assert got == [False, False, False, True, True]


OFFER_VIDEO = (
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n"
    "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n"
    "a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\na=simulcast:send q;h;~f\r\n"
)


def test_simulcast_rids_are_read_from_the_video_section() -> None:
    answer = OFFER_VIDEO.replace("send", "recv").replace("q;h;~f", "q,h;f")
    got = run_js(f"""print([
      simulcast.simulcastRids({json.dumps(OFFER_VIDEO)}, 'send'),
      simulcast.simulcastRids({json.dumps(answer)}, 'recv'),
      simulcast.simulcastRids({json.dumps(OFFER_VIDEO)}, 'recv'),
      simulcast.simulcastRids('v=0\\r\\nm=audio 9 X 111\\r\\na=simulcast:send a;b\\r\\n', 'send'),
    ]);""")
    assert got == [["q", "h", "f"], ["q", "h", "f"], [], []]


def test_refused_simulcast_leaves_one_full_size_encoding() -> None:
    got = run_js("""
      const q = {rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150000, scalabilityMode: 'L1T3', active: true};
      print([
        simulcast.encodingsAfterAnswer([q], 'video/VP8'),
        simulcast.encodingsAfterAnswer([q, {...q, rid: 'h', scaleResolutionDownBy: 2}], 'video/VP8'),
        simulcast.encodingsAfterAnswer([{active: true, scalabilityMode: 'L1T3'}], 'video/VP8'),
        simulcast.encodingsAfterAnswer([{active: true, scalabilityMode: 'L1T3'}], 'video/H264'),
      ]);""")
    fixed, accepted, single_vp8, single_h264 = got
    assert fixed == [{"rid": "q", "scaleResolutionDownBy": 1, "scalabilityMode": "L1T3", "active": True}]
    assert accepted is None  # simulcast answered: nothing to change
    assert single_vp8 is None
    assert single_h264 == [{"active": True, "scalabilityMode": "L1T1"}]


# ------------------------------------------------------------------------------ sdpfrag.js

RESTART_OFFER = "\r\n".join([
    "v=0", "o=- 4611 3 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1 2",
    "a=extmap-allow-mixed", "a=msid-semantic: WMS",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97", "c=IN IP4 0.0.0.0",
    "a=candidate:1 1 udp 2122260223 127.0.0.1 50001 typ host generation 0 ufrag NEWU network-id 1",
    "a=candidate:2 1 tcp 1518280447 127.0.0.1 9 typ host tcptype active generation 0 ufrag NEWU network-id 1",
    "a=ice-ufrag:NEWU", "a=ice-pwd:newpassword0123456789ab", "a=ice-options:trickle",
    "a=fingerprint:sha-256 AA:BB", "a=setup:actpass", "a=mid:0", "a=recvonly",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 0.0.0.0",
    "a=candidate:1 1 udp 2122260223 127.0.0.1 50001 typ host generation 0 ufrag NEWU network-id 1",
    "a=ice-ufrag:NEWU", "a=ice-pwd:newpassword0123456789ab", "a=mid:1", "a=recvonly",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "a=ice-ufrag:NEWU",
    "a=ice-pwd:newpassword0123456789ab", "a=mid:2", "",
])

ANSWER = "\r\n".join([
    "v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0", "a=group:BUNDLE 0 1 2",
    "m=video 40000 UDP/TLS/RTP/SAVPF 96 97", "c=IN IP4 127.0.0.1", "a=sendonly", "a=mid:0",
    "a=rtpmap:96 VP8/90000",
    "a=candidate:a1 1 udp 2130706431 127.0.0.1 40000 typ host", "a=end-of-candidates",
    "a=ice-ufrag:OLDS", "a=ice-pwd:oldserverpassword", "a=fingerprint:sha-256 CC:DD",
    "a=setup:active",
    "m=audio 40000 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 127.0.0.1", "a=sendonly", "a=mid:1",
    "a=candidate:a1 1 udp 2130706431 127.0.0.1 40000 typ host", "a=end-of-candidates",
    "a=ice-ufrag:OLDS", "a=ice-pwd:oldserverpassword", "a=fingerprint:sha-256 CC:DD",
    "a=setup:active",
    "m=application 0 UDP/DTLS/SCTP webrtc-datachannel", "a=mid:2", "",
])

SERVER_FRAGMENT = (
    "a=ice-lite\r\na=group:BUNDLE 0 1 2\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n"
    "a=ice-ufrag:NEWS\r\na=ice-pwd:newserverpassword123\r\n"
    "a=candidate:b1 1 udp 2130706431 127.0.0.1 41000 typ host\r\n"
    "a=candidate:b2 1 udp 2130706431 192.0.2.7 41000 typ host\r\na=end-of-candidates\r\n"
)


def test_restart_fragment_carries_the_new_credentials_of_the_first_bundled_section() -> None:
    fragment = run_js(f"print(sdpfrag.restartFragment({json.dumps(RESTART_OFFER)}, true));")
    assert fragment.split("\r\n") == [
        "a=group:BUNDLE 0 1 2",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
        "a=mid:0",
        "a=ice-ufrag:NEWU",
        "a=ice-pwd:newpassword0123456789ab",
        "a=candidate:1 1 udp 2122260223 127.0.0.1 50001 typ host generation 0 ufrag NEWU network-id 1",
        "a=candidate:2 1 tcp 1518280447 127.0.0.1 9 typ host tcptype active generation 0 ufrag NEWU network-id 1",
        "a=end-of-candidates",
        "",
    ]
    # What the server reads from it (signaling.whip's own parser).
    parsed = parse_sdpfrag(fragment.encode())
    assert (parsed.ufrag, parsed.pwd) == ("NEWU", "newpassword0123456789ab")
    assert len(parsed.candidates) == 2 and parsed.end_of_candidates


def test_restart_fragment_without_end_of_candidates_while_gathering() -> None:
    fragment = run_js(f"print(sdpfrag.restartFragment({json.dumps(RESTART_OFFER)}, false));")
    assert "a=end-of-candidates" not in fragment
    assert not parse_sdpfrag(fragment.encode()).end_of_candidates


def test_restart_fragment_needs_credentials() -> None:
    got = run_js("""try { sdpfrag.restartFragment('v=0\\r\\nm=video 9 X 96\\r\\na=mid:0\\r\\n'); print('no error'); }
                    catch (e) { print(e.message); }""")
    assert "no ICE credentials" in got


def test_answer_rebuilt_from_the_server_fragment() -> None:
    answer = run_js(f"""
      const frag = sdpfrag.parseFragment({json.dumps(SERVER_FRAGMENT)});
      print({{frag, answer: sdpfrag.answerWithFragment({json.dumps(ANSWER)}, frag)}});""")
    frag, sdp = answer["frag"], answer["answer"]
    assert frag["ufrag"] == "NEWS" and frag["pwd"] == "newserverpassword123" and frag["iceLite"]
    assert len(frag["candidates"]) == 2
    lines = sdp.split("\r\n")
    assert "OLDS" not in sdp and "oldserverpassword" not in sdp and "a=candidate:a1" not in sdp
    assert lines.count("a=ice-ufrag:NEWS") == 2 and lines.count("a=ice-pwd:newserverpassword123") == 2
    # New candidates in both live sections, none in the rejected one (port 0).
    video, audio, app = sdp.split("m=")[1:]
    for section in (video, audio):
        assert section.count("a=candidate:b") == 2 and section.count("a=end-of-candidates") == 1
    assert "a=candidate" not in app and "end-of-candidates" not in app
    # Everything that is not ICE is unchanged: DTLS role and fingerprint, codecs, mids.
    keep = [ln for ln in ANSWER.split("\r\n") if not ln.startswith(("a=candidate", "a=end-of-c", "a=ice-"))]
    assert [ln for ln in lines if not ln.startswith(("a=candidate", "a=end-of-c", "a=ice-"))] == keep


def test_answer_needs_the_server_credentials() -> None:
    got = run_js(f"""try {{ sdpfrag.answerWithFragment({json.dumps(ANSWER)}, sdpfrag.parseFragment('a=candidate:x 1 udp 1 127.0.0.1 1 typ host')); print('no error'); }}
                     catch (e) {{ print(e.message); }}""")
    assert "no ICE credentials" in got


# ---------------------------------------------------------------------------- video-size.js


def test_video_size_rules() -> None:
    got = run_js("""print({
      rendered: videoSize.renderedSize({clientWidth: 640, clientHeight: 360}, 1.5),
      odd: videoSize.renderedSize({clientWidth: 333, clientHeight: 187}, 1.25),
      none: videoSize.renderedSize({clientWidth: 0, clientHeight: 0}, 2),
      huge: videoSize.renderedSize({clientWidth: 20000, clientHeight: 100}, 1),
      first: videoSize.changedEnough(null, {width: 10, height: 10}),
      small: videoSize.changedEnough({width: 1000, height: 500}, {width: 1090, height: 545}),
      wide: videoSize.changedEnough({width: 1000, height: 500}, {width: 1100, height: 500}),
      shrink: videoSize.changedEnough({width: 1000, height: 500}, {width: 1000, height: 450}),
      url: videoSize.videoSizeUrl('http://127.0.0.1:8080/whep/demo/sessions/abc'),
      slash: videoSize.videoSizeUrl('http://127.0.0.1:8080/whep/demo/sessions/abc/'),
      debounce: videoSize.DEBOUNCE_MS, minChange: videoSize.MIN_CHANGE, hidden: videoSize.HIDDEN_SIZE,
    });""")
    assert got["rendered"] == {"width": 960, "height": 540}
    assert got["odd"] == {"width": 416, "height": 234}  # 416.25, 233.75 rounded
    assert got["none"] is None
    assert got["huge"] == {"width": 16384, "height": 100}
    assert got["first"] is True
    assert got["small"] is False  # 9 % both ways
    assert got["wide"] is True and got["shrink"] is True  # 10 % one way
    assert got["url"] == "http://127.0.0.1:8080/whep/demo/sessions/abc/video-size"
    assert got["slash"] == got["url"]
    assert got["debounce"] >= 500 and got["minChange"] == 0.1
    assert 1 <= got["hidden"]["width"] <= 16384 and 1 <= got["hidden"]["height"] <= 16384
