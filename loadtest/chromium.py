"""Debian's headless Chromium as the benchmarks and the browser tests launch it."""

from __future__ import annotations

CHROMIUM = "/usr/lib/chromium/chromium-headless-shell"
"""The binary of Debian's ``chromium-headless-shell`` package."""

WEBRTC_ARGS = (
    "--no-sandbox",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
)
"""Launch flags for WebRTC on loopback: fake camera and microphone without a prompt, host
candidates on 127.0.0.1 (no mDNS names), no background traffic."""
