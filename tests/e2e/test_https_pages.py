"""The pages over HTTPS from a name that is not loopback (Chromium; issue 15).

``relaycast.test`` is mapped to 127.0.0.1 with Chromium's ``--host-resolver-rules``:
127.0.0.0/8 and ``localhost`` count as secure contexts by themselves, so only a real name
shows what a broadcaster on another machine gets.  The service serves a certificate for
that name from a test CA (:mod:`relaycast.dev_certificate`); Chromium trusts exactly that
certificate's key (``--ignore-certificate-errors-spki-list``: its SHA-256 SPKI pin), since
a CA cannot be installed into the headless shell without NSS tools.

* Over ``https://relaycast.test``: the broadcast page captures (fake devices) and goes live
  over WHIP; the watch page plays over WHEP, then over LL-HLS (hls.js); Socket.IO connects
  over ``wss://``.
* Over ``http://relaycast.test`` (a service without a certificate): the broadcast page
  says "HTTPS needed" and links to the page over HTTPS, and does not try to go live.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from loadtest.clips import make_counter_y4m, make_tone_wav
from relaycast.dev_certificate import ensure_dev_certificate
from relaycast.service import Service
from tests.e2e.browser import (
    BROWSER_MARKS,
    chromium,
    chromium_args,
    enter_stream_key,
    open_page,
    tid,
    wait_for_js,
)
from tests.polling import wait_for
from tests.services import STREAM_KEY, make_config

pytest.importorskip("playwright.async_api")
from playwright.async_api import expect  # noqa: E402

pytestmark = [*BROWSER_MARKS, pytest.mark.timeout(180)]
NAME = "relaycast.test"


def _spki_pin(cert_path: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of the leaf certificate: Chromium's pin format."""
    cert = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


async def test_the_studio_goes_live_and_the_watch_page_plays_over_https_on_a_real_name(tmp_path: Path) -> None:
    made = ensure_dev_certificate(tmp_path / "tls", "127.0.0.1", extra_names=(NAME,))
    video = make_counter_y4m(tmp_path / "counter.y4m", 320, 240, fps=30, frames=60)
    audio = make_tone_wav(tmp_path / "tone.wav", seconds=2, frequency=440)
    async with Service(make_config(tls_cert=str(made.cert), tls_key=str(made.key))) as service:
        port = int(service.url.rsplit(":", 1)[1])
        base = f"https://{NAME}:{port}"
        args = [*chromium_args(video, audio), f"--host-resolver-rules=MAP {NAME} 127.0.0.1",
                f"--ignore-certificate-errors-spki-list={_spki_pin(made.cert)}"]
        async with chromium(args) as browser:
            page, errors = await open_page(browser, f"{base}/broadcast/demo")
            assert await page.evaluate("window.isSecureContext && location.protocol") == "https:"
            await expect(tid(page, "https-needed")).to_have_count(0)
            await enter_stream_key(page, STREAM_KEY)
            await tid(page, "go-live").click()
            await expect(tid(page, "state")).to_have_text("live", timeout=20_000)
            assert service.worker is not None and service.worker.routers["demo"].publisher is not None

            sockets: list[str] = []
            watcher, watch_errors = await open_page(browser, f"{base}/watch/demo")
            watcher.on("websocket", lambda ws: sockets.append(ws.url))
            await expect(tid(watcher, "state")).to_have_text("playing", timeout=20_000)
            await watcher.reload()  # the listener now sees the page's own Socket.IO connection
            await expect(tid(watcher, "state")).to_have_text("playing", timeout=20_000)
            await wait_for(lambda: any("/socket.io/" in u for u in sockets), 15, lambda: f"Socket.IO: {sockets}")
            assert all(u.startswith(f"wss://{NAME}:{port}/") for u in sockets), sockets
            # LL-HLS over HTTPS: the page's switch, hls.js fetching /hls/ from its own origin.
            hls: list[str] = []
            watcher.on("request", lambda r: hls.append(r.url) if "/hls/" in r.url else None)
            await tid(watcher, "path-hls").click()
            await expect(tid(watcher, "path")).to_have_attribute("data-path", "hls", timeout=30_000)
            await expect(tid(watcher, "state")).to_have_text("playing", timeout=45_000)
            await wait_for_js(watcher, "document.querySelector('[data-testid=video]').currentTime > 1",
                              timeout=30_000)
            assert hls and all(u.startswith(f"https://{NAME}:{port}/hls/demo/") for u in hls), hls[:3]
            assert errors.errors == [] and watch_errors.errors == []


async def test_the_studio_over_plain_http_on_a_real_name_says_https_is_needed(tmp_path: Path) -> None:
    async with Service(make_config()) as service:
        port = int(service.url.rsplit(":", 1)[1])
        args = [*chromium_args(), f"--host-resolver-rules=MAP {NAME} 127.0.0.1"]
        async with chromium(args) as browser:
            page, _ = await open_page(browser, f"http://{NAME}:{port}/broadcast/demo")
            assert await page.evaluate("window.isSecureContext") is False
            notice = tid(page, "https-needed")
            await expect(notice).to_be_visible()
            await expect(notice).to_contain_text("HTTPS needed")
            assert await notice.locator("a").get_attribute("href") == f"https://{NAME}:{port}/broadcast/demo"
            await expect(tid(page, "state")).to_contain_text("HTTPS needed")
            await enter_stream_key(page, STREAM_KEY)
            await tid(page, "go-live").click()
            await expect(tid(page, "state")).to_contain_text("HTTPS needed")
            assert service.worker is not None and "demo" not in service.worker.routers  # nothing published
