"""RawRtpSender.send_rtp_many: a frame's packets, SRTP-protected, reach a real UDP socket on
127.0.0.1 as the same datagrams in the same order, runs of one size in one ``sendmsg``
with UDP segmentation offload (Linux ``UDP_SEGMENT``), and packet by packet where that
is off or the kernel refuses it."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
from types import SimpleNamespace
from typing import Any

import pylibsrtp
import pytest
from aiortc.rtcdtlstransport import State

from sfu import aiortc_private
from sfu.aiortc_private import RawRtpSender, _Route

KEY = bytes(range(30))


def _session(direction: int) -> pylibsrtp.Session:
    return pylibsrtp.Session(pylibsrtp.Policy(
        key=KEY, ssrc_type=direction, srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80))


def _rtp(seq: int, size: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, seq, 1234, 0xABCDEF) + os.urandom(size)


class _Sendmsg:
    """Counts the sendmsg calls made on the route's socket (and can refuse them)."""

    def __init__(self, sendmsg: Any, error: int | None = None) -> None:
        self.sendmsg, self.error, self.calls = sendmsg, error, 0

    def __call__(self, *args: Any) -> int:
        self.calls += 1
        if self.error is not None:
            raise OSError(self.error, os.strerror(self.error))
        return int(self.sendmsg(*args))


async def _send(packets: list[bytes], error: int | None = None) -> tuple[list[bytes], int, int]:
    """``packets`` through send_rtp_many to a UDP socket on 127.0.0.1: (the unprotected
    datagrams received, what send_rtp_many returned, sendmsg calls)."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    receiver.settimeout(5)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    try:
        dtls = SimpleNamespace(_state=State.CONNECTED, _tx_srtp=None)
        sender = RawRtpSender(dtls)  # type: ignore[arg-type]
        route = _Route(_session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND), transport, receiver.getsockname())
        counter = _Sendmsg(route.sock_sendmsg, error)
        route.sock_sendmsg = counter
        sender._route = route
        sent = sender.send_rtp_many(packets)
        inbound = _session(pylibsrtp.Policy.SSRC_ANY_INBOUND)
        received = [inbound.unprotect(receiver.recv(2048)) for _ in range(sent)]
        receiver.setblocking(False)
        with pytest.raises(BlockingIOError):
            receiver.recv(2048)  # nothing more than was counted
        return received, sent, counter.calls
    finally:
        transport.close()
        receiver.close()


def test_a_frames_equal_fragments_go_in_one_system_call_and_arrive_as_they_were() -> None:
    # A key frame's shape: two small single-NAL packets, then FU-A fragments of one size and a shorter last.
    packets = [_rtp(1, 8), _rtp(2, 20)] + [_rtp(3 + i, 1190) for i in range(9)] + [_rtp(12, 700)]
    received, sent, calls = asyncio.run(_send(packets))
    assert received == packets
    assert sent == len(packets)
    if aiortc_private._gso.enabled:
        assert calls == 1  # the ten fragments; the two small ones went with sendto


def test_runs_longer_than_the_kernels_segment_limit_are_split() -> None:
    packets = [_rtp(i, 1190) for i in range(150)]  # 64 segments at most per send
    received, sent, calls = asyncio.run(_send(packets))
    assert received == packets and sent == 150
    if aiortc_private._gso.enabled:
        assert calls == 3


def test_packets_of_different_sizes_are_sent_one_by_one() -> None:
    packets = [_rtp(i, 100 + 10 * i) for i in range(6)]
    received, sent, calls = asyncio.run(_send(packets))
    assert received == packets and sent == 6 and calls == 0


def test_a_kernel_without_segmentation_offload_gets_every_packet_by_sendto(monkeypatch: pytest.MonkeyPatch) -> None:
    gso = aiortc_private._Gso()
    monkeypatch.setattr(aiortc_private, "_gso", gso)
    packets = [_rtp(i, 1190) for i in range(5)] + [_rtp(5, 400)]
    received, sent, calls = asyncio.run(_send(packets, error=errno.EIO))
    assert received == packets and sent == 6
    assert calls == 1 and not gso.enabled  # tried once, then off for the process
    received, sent, calls = asyncio.run(_send(packets, error=errno.EIO))
    assert received == packets and calls == 0


def test_a_network_error_is_counted_and_leaves_segmentation_on(monkeypatch: pytest.MonkeyPatch) -> None:
    gso = aiortc_private._Gso()
    monkeypatch.setattr(aiortc_private, "_gso", gso)
    packets = [_rtp(i, 1190) for i in range(5)]

    async def send() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        try:
            sender = RawRtpSender(SimpleNamespace(_state=State.CONNECTED, _tx_srtp=None))  # type: ignore[arg-type]
            route = _Route(_session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND), transport, ("127.0.0.1", 9))
            route.sock_sendmsg = _Sendmsg(route.sock_sendmsg, errno.ENETUNREACH)
            sender._route = route
            return sender.send_rtp_many(packets), sender.dropped
        finally:
            transport.close()

    assert asyncio.run(send()) == (0, 5)
    assert gso.enabled  # a route that failed says nothing about the kernel


def test_a_sender_with_no_connection_counts_what_it_could_not_send() -> None:
    dtls = SimpleNamespace(_state=State.CLOSED, _tx_srtp=None)
    sender = RawRtpSender(dtls)  # type: ignore[arg-type]
    assert sender.send_rtp_many([_rtp(1, 10), _rtp(2, 10)]) == 0
    assert sender.dropped == 2
