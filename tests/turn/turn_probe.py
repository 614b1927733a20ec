"""A small TURN-over-UDP client for the tests (RFC 8656, RFC 8489 long-term credentials).

Enough of TURN to check what coturn allows: Allocate (with the 401 → realm/nonce
round, RFC 8489 §9.2), CreatePermission, Send/Data indications and Refresh.
Errors come back as :class:`TurnRefused` carrying the STUN error code, so a test
can assert 401, 438 or 403 exactly.  Wire-level code only; no retransmission
beyond a bounded resend, since everything runs on loopback.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import hmac
import ipaddress
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

COOKIE = 0x2112A442

# Methods (RFC 8656 §17) and classes (RFC 8489 §5).
ALLOCATE, REFRESH, SEND, DATA, CREATE_PERMISSION = 0x003, 0x004, 0x006, 0x007, 0x008
REQUEST, INDICATION, SUCCESS, ERROR = 0x000, 0x010, 0x100, 0x110

# Attributes.
USERNAME, MESSAGE_INTEGRITY, ERROR_CODE, LIFETIME = 0x0006, 0x0008, 0x0009, 0x000D
XOR_PEER_ADDRESS, DATA_ATTR, REALM, NONCE = 0x0012, 0x0013, 0x0014, 0x0015
XOR_RELAYED_ADDRESS, REQUESTED_ADDRESS_FAMILY, REQUESTED_TRANSPORT = 0x0016, 0x0017, 0x0019
XOR_MAPPED_ADDRESS, FINGERPRINT = 0x0020, 0x8028

UDP = 17
FAMILY = {4: 0x01, 6: 0x02}


class TurnRefused(Exception):
    """A STUN error response: ``code`` (401, 403, 438, ...) and ``reason``."""

    def __init__(self, method: int, code: int, reason: str) -> None:
        super().__init__(f"TURN method {method:#x} refused: {code} {reason}")
        self.code, self.reason = code, reason


@dataclass
class Message:
    method: int
    klass: int
    transaction_id: bytes = field(default_factory=lambda: os.urandom(12))
    attributes: list[tuple[int, bytes]] = field(default_factory=list)

    def get(self, kind: int) -> bytes | None:
        return next((v for k, v in self.attributes if k == kind), None)

    def encode(self, integrity_key: bytes | None = None) -> bytes:
        body = b"".join(_attr(k, v) for k, v in self.attributes)
        # RFC 8489 §5: method bits M0-M11 interleaved with class bits C0 (bit 4) and C1 (bit 8).
        mtype = self.method & 0xF | (self.method & 0x70) << 1 | (self.method & 0xF80) << 2
        mtype |= self.klass & 0x110
        header = lambda length: struct.pack("!HHI12s", mtype, length, COOKIE, self.transaction_id)  # noqa: E731
        if integrity_key is not None:
            # RFC 8489 §14.5: HMAC over the message with the length already counting MESSAGE-INTEGRITY.
            mac = hmac.new(integrity_key, header(len(body) + 24) + body, hashlib.sha1).digest()
            body += _attr(MESSAGE_INTEGRITY, mac)
        # RFC 8489 §14.7: CRC-32 XOR 0x5354554e over the message up to FINGERPRINT.
        crc = (binascii.crc32(header(len(body) + 8) + body) ^ 0x5354554E) & 0xFFFFFFFF
        body += _attr(FINGERPRINT, struct.pack("!I", crc))
        return header(len(body)) + body

    @classmethod
    def decode(cls, data: bytes) -> Message | None:
        if len(data) < 20:
            return None
        mtype, length, cookie, tid = struct.unpack("!HHI12s", data[:20])
        if cookie != COOKIE or mtype & 0xC000 or len(data) < 20 + length:
            return None
        method = mtype & 0xF | (mtype >> 1) & 0x70 | (mtype >> 2) & 0xF80
        klass = mtype & 0x110
        attributes, pos = [], 20
        while pos + 4 <= 20 + length:
            kind, size = struct.unpack("!HH", data[pos:pos + 4])
            attributes.append((kind, data[pos + 4:pos + 4 + size]))
            pos += 4 + size + (-size % 4)
        return cls(method, klass, tid, attributes)


def _attr(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + bytes(-len(value) % 4)


def xor_address(address: tuple[str, int], transaction_id: bytes) -> bytes:
    """XOR-PEER-ADDRESS / XOR-MAPPED-ADDRESS encoding (RFC 8489 §14.2)."""
    ip = ipaddress.ip_address(address[0])
    mask = struct.pack("!I", COOKIE) + transaction_id
    raw = bytes(a ^ b for a, b in zip(ip.packed, mask, strict=False))
    return struct.pack("!BBH", 0, FAMILY[ip.version], address[1] ^ (COOKIE >> 16)) + raw


def parse_xor_address(value: bytes, transaction_id: bytes) -> tuple[str, int]:
    family, port = value[1], struct.unpack("!H", value[2:4])[0] ^ (COOKIE >> 16)
    mask = struct.pack("!I", COOKIE) + transaction_id
    raw = bytes(a ^ b for a, b in zip(value[4:], mask, strict=False))
    return str(ipaddress.ip_address(raw[: 4 if family == 1 else 16])), port


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.pending: dict[bytes, asyncio.Future[Message]] = {}
        self.indications: asyncio.Queue[Message] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        message = Message.decode(data)
        if message is None:
            return
        if message.klass == INDICATION:
            self.indications.put_nowait(message)
            return
        waiter = self.pending.pop(message.transaction_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(message)


class TurnProbe:
    """``async with TurnProbe(("127.0.0.1", port)) as probe``: one client 5-tuple."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.username: str | None = None
        self.key: bytes | None = None
        self.realm: bytes | None = None
        self.nonce: bytes | None = None
        self.relayed: tuple[str, int] | None = None
        self.mapped: tuple[str, int] | None = None
        self.lifetime: int | None = None

    async def __aenter__(self) -> TurnProbe:
        loop = asyncio.get_running_loop()
        self.transport, self.protocol = await loop.create_datagram_endpoint(
            _Protocol, remote_addr=self.server
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.transport.close()

    async def _transact(self, message: Message, key: bytes | None, timeout: float = 3.0) -> Message:
        data = message.encode(key)
        waiter = asyncio.get_running_loop().create_future()
        self.protocol.pending[message.transaction_id] = waiter
        for _ in range(3):  # UDP: resend a lost request, bounded (RFC 8489 §6.2.1)
            self.transport.sendto(data)
            try:
                return await asyncio.wait_for(asyncio.shield(waiter), timeout / 3)
            except TimeoutError:
                continue
        self.protocol.pending.pop(message.transaction_id, None)
        raise TimeoutError(f"no answer from TURN server {self.server} to method {message.method:#x}")

    def _authenticated(self, message: Message) -> Message:
        assert self.username and self.realm is not None and self.nonce is not None
        message.attributes += [
            (USERNAME, self.username.encode()), (REALM, self.realm), (NONCE, self.nonce)
        ]
        return message

    async def request(self, method: int, attributes: Callable[[bytes], list[tuple[int, bytes]]]) -> Message:
        """An authenticated request; one retry on 438 Stale Nonce. :raises TurnRefused:

        ``attributes(transaction_id)`` builds the attributes (XOR-encoded ones depend on it).
        """
        for attempt in range(2):
            message = Message(method, REQUEST)
            message.attributes = attributes(message.transaction_id)
            response = await self._transact(self._authenticated(message), self.key)
            if response.klass == SUCCESS:
                return response
            code, reason = _error(response)
            if code == 438 and attempt == 0 and response.get(NONCE):
                self.nonce = response.get(NONCE)
                continue
            raise TurnRefused(method, code, reason)
        raise AssertionError("unreachable")

    async def allocate(self, username: str, password: str, *, family: int = 4, lifetime: int = 600) -> tuple[str, int]:
        """Allocate a UDP relay (RFC 8656 §7); returns the relayed transport address."""
        attributes = [(REQUESTED_TRANSPORT, bytes([UDP, 0, 0, 0])), (LIFETIME, struct.pack("!I", lifetime))]
        if family == 6:
            attributes.append((REQUESTED_ADDRESS_FAMILY, bytes([FAMILY[6], 0, 0, 0])))
        first = await self._transact(Message(ALLOCATE, REQUEST, attributes=list(attributes)), None)
        if first.klass == SUCCESS:
            raise AssertionError("the TURN server allocated without authentication")
        code, reason = _error(first)
        if code != 401 or first.get(REALM) is None or first.get(NONCE) is None:
            raise TurnRefused(ALLOCATE, code, reason)
        self.realm, self.nonce, self.username = first.get(REALM), first.get(NONCE), username
        # RFC 8489 §9.2.2: key = MD5(username ":" realm ":" password).
        self.key = hashlib.md5(f"{username}:{self.realm.decode()}:{password}".encode()).digest()  # noqa: S324
        response = await self.request(ALLOCATE, lambda _: list(attributes))
        tid = response.transaction_id
        self.relayed = parse_xor_address(response.get(XOR_RELAYED_ADDRESS) or b"", tid)
        self.mapped = parse_xor_address(response.get(XOR_MAPPED_ADDRESS) or b"", tid)
        self.lifetime = struct.unpack("!I", response.get(LIFETIME) or bytes(4))[0]
        return self.relayed

    async def create_permission(self, peer_ip: str) -> None:
        """CreatePermission for ``peer_ip`` (RFC 8656 §9). :raises TurnRefused: e.g. 403 Forbidden."""
        await self.request(CREATE_PERMISSION, lambda tid: [(XOR_PEER_ADDRESS, xor_address((peer_ip, 9), tid))])

    async def refresh(self, lifetime: int = 0) -> None:
        """Refresh the allocation; ``lifetime=0`` deletes it (RFC 8656 §8)."""
        await self.request(REFRESH, lambda _: [(LIFETIME, struct.pack("!I", lifetime))])

    def send(self, peer: tuple[str, int], payload: bytes) -> None:
        """A Send indication: ``payload`` to ``peer`` through the relay (RFC 8656 §10)."""
        message = Message(SEND, INDICATION)
        message.attributes = [(XOR_PEER_ADDRESS, xor_address(peer, message.transaction_id)), (DATA_ATTR, payload)]
        self.transport.sendto(message.encode())

    async def receive(self, timeout: float = 3.0) -> tuple[tuple[str, int], bytes]:
        """The next Data indication: ``(peer, payload)``."""
        while True:
            message = await asyncio.wait_for(self.protocol.indications.get(), timeout)
            if message.method == DATA and message.get(DATA_ATTR) is not None:
                peer = parse_xor_address(message.get(XOR_PEER_ADDRESS) or b"", message.transaction_id)
                return peer, message.get(DATA_ATTR) or b""


def _error(message: Message) -> tuple[int, str]:
    value = message.get(ERROR_CODE)
    if value is None or len(value) < 4:
        return 0, "no ERROR-CODE"
    return value[2] * 100 + value[3], value[4:].decode("utf-8", "replace")
