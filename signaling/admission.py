"""Pending WHEP sessions per client address: the cap on offers that have not connected.

Viewing needs no credentials, so an offer that never completes ICE (no candidates, or a
client that went away) is free to send, and each one holds an SFU session and a socket
until the node's connect deadline (``RELAYCAST_CONNECT_TIMEOUT_S``).  This signaling
instance therefore lets one client address hold at most ``limit`` WHEP sessions that are
*pending*: being opened, or answered and not yet reported connected by their node.

A session stops being pending when its node reports ``session_connected`` or
``session_closed`` (:mod:`sfu.protocol`), when it is DELETEd here, or — should such an
event be missed (a node link that dropped, a DELETE through another instance) — once
``expiry_s`` have passed, by when the node has closed it anyway.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class PendingLimitReached(Exception):
    """The client address already holds ``limit`` pending sessions (answered 429)."""

    def __init__(self, pending: int) -> None:
        super().__init__(f"{pending} sessions from this address have not connected yet")
        self.pending = pending


class PendingSessions:
    """Pending sessions by client address.

    :param limit: pending sessions one address may hold (``RELAYCAST_PENDING_SESSIONS_PER_ADDRESS``).
    :param expiry_s: how long a session counts at most, s (the connect deadline plus the RPC
        time: a session the node did not report is gone by then).
    """

    def __init__(self, limit: int, expiry_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.expiry_s = expiry_s
        self._clock = clock
        self._by_client: dict[str, dict[str, float]] = {}
        self._client_of: dict[str, str] = {}

    def count(self, client: str) -> int:
        """Pending sessions of ``client`` now (expired ones are dropped)."""
        sessions = self._by_client.get(client)
        if not sessions:
            return 0
        now = self._clock()
        for session_id in [s for s, expires in sessions.items() if expires <= now]:
            del sessions[session_id]
            self._client_of.pop(session_id, None)
        if not sessions:
            del self._by_client[client]
        return len(sessions)

    def add(self, client: str, session_id: str) -> None:
        """Count ``session_id`` as pending for ``client``.

        :raises PendingLimitReached: ``client`` already holds ``limit`` pending sessions.
        """
        if len(self._client_of) > 1000:  # bound what missed events leave behind
            for other in list(self._by_client):
                self.count(other)
        pending = self.count(client)
        if pending >= self.limit:
            raise PendingLimitReached(pending)
        self._by_client.setdefault(client, {})[session_id] = self._clock() + self.expiry_s
        self._client_of[session_id] = client

    def discard(self, session_id: str) -> None:
        """``session_id`` connected, ended or failed to open: it no longer counts."""
        client = self._client_of.pop(session_id, None)
        if client is None:
            return
        sessions = self._by_client.get(client, {})
        sessions.pop(session_id, None)
        if not sessions:
            self._by_client.pop(client, None)

    def __len__(self) -> int:
        return len(self._client_of)
