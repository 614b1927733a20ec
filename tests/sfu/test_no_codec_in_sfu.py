"""The SFU forwards packets: no decoder or encoder ever runs in its process.

``relaycast serve`` runs in a subprocess under tests/sfu/codec_audit.py, which
counts every aiortc/PyAV codec entry point and every thread started.  This test
publishes VP8 + Opus into it and views with a decoding aiortc client (frames
arrive, so forwarding really happened), then stops the service with SIGTERM and
reads the audit report.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import socket
import sys
from pathlib import Path

from loadtest import whip_client
from loadtest.sources import PatternVideoTrack, ToneAudioTrack
from tests.sfu.sfu_helpers import read_frames, receiver_tracks

AUDIT = Path(__file__).with_name("codec_audit.py")
REPO = Path(__file__).resolve().parents[2]
_CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) \d+ typ", re.MULTILINE)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_listening(proc: asyncio.subprocess.Process, timeout: float = 30) -> str:
    assert proc.stdout is not None
    lines: list[str] = []

    async def read() -> str:
        while True:
            raw = await proc.stdout.readline()  # type: ignore[union-attr]
            if not raw:
                raise RuntimeError("relaycast exited early:\n" + "".join(lines))
            line = raw.decode()
            lines.append(line)
            m = re.search(r"relaycast listening on (\S+)", line)
            if m:
                return m.group(1)

    return await asyncio.wait_for(read(), timeout)


async def test_no_decoder_or_encoder_runs_in_the_sfu_process(tmp_path: Path) -> None:
    port = free_port()
    key = "sk_audit_" + secrets.token_hex(16)
    report = tmp_path / "audit.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYCAST_")}
    stderr = open(tmp_path / "stderr.log", "wb")  # noqa: SIM115 - closed in finally
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(AUDIT), "--port", str(port), "--stream-key", key, "--report", str(report),
        cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=stderr,
    )
    pub = viewer = None
    try:
        url = await _wait_listening(proc)
        assert url == f"http://127.0.0.1:{port}"
        pub = await whip_client.publish(
            f"{url}/whip/demo", key, [PatternVideoTrack(640, 360, 30, code="counter"), ToneAudioTrack()]
        )
        await whip_client.wait_connected(pub.pc)
        viewer = await whip_client.view(f"{url}/whep/demo")
        await whip_client.wait_connected(viewer.pc)
        tracks = receiver_tracks(viewer.pc)
        video = await read_frames(tracks["video"], 30, timeout=30)
        audio = [await asyncio.wait_for(tracks["audio"].recv(), 10) for _ in range(10)]
        assert len(video.readable) >= 25, video.codes
        assert len(audio) == 10
        # The answers come from another process, so check their candidates here.
        for answer in (pub.answer, viewer.answer):
            assert set(_CANDIDATE.findall(answer)) == {"127.0.0.1"}, answer
    finally:
        for session in (viewer, pub):
            if session is not None:
                await session.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            rc = await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        finally:
            stderr.close()
    log = (tmp_path / "stderr.log").read_text(errors="replace")
    assert rc == 0, f"relaycast exited with {rc}:\n{log[-3000:]}"
    audit = json.loads(report.read_text())
    print("SFU process audit:", json.dumps(audit))
    counts = audit["counts"]
    for name in ("get_decoder", "get_encoder", "decoder_worker", "CodecContext.create"):
        assert counts.get(name, 0) == 0, f"{name} called in the SFU: {audit}"
    assert audit["codec_contexts"] == []
    decoder_threads = [t for t in audit["threads"] if t.endswith("-decoder")]
    assert decoder_threads == [], audit["threads"]
    # The audit really watched this process: the main thread at least is listed.
    assert "MainThread" in audit["threads"]


def test_codec_audit_counts_what_it_wraps(tmp_path: Path) -> None:
    """The audit hooks themselves work: decoding in a process running them is counted."""
    code = (
        "import sys, threading; sys.path.insert(0, sys.argv[1]);"
        "import codec_audit as a; a.install();"
        "import aiortc.codecs, aiortc.rtcrtpreceiver as r, av;"
        "from aiortc.rtcrtpparameters import RTCRtpCodecParameters as P;"
        "aiortc.codecs.get_decoder(P(mimeType='video/VP8', clockRate=90000, payloadType=96));"
        "av.CodecContext.create('libopus', 'w');"
        "t = threading.Thread(target=lambda: None, name='video-decoder'); t.start(); t.join();"
        "print(dict(a.COUNTS), a.THREADS)"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code, str(AUDIT.parent)], capture_output=True,
                         text=True, timeout=60, cwd=REPO, check=True).stdout
    assert "'get_decoder': 1" in out
    # get_decoder(VP8) builds a libvpx decoder context: counted too.
    assert "'CodecContext.create': 2" in out
    assert "'video-decoder'" in out
