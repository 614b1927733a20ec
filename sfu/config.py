"""SFU configuration: one frozen dataclass, read from ``RELAYCAST_*`` environment variables."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from common.config import ConfigError, env_number


def _addresses(name: str, raw: str) -> tuple[str, ...]:
    out = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            ipaddress.ip_address(part)
        except ValueError as exc:
            raise ConfigError(f"{name}: {part!r} is not an IP address") from exc
        out.append(part)
    return tuple(out)


NODE_ROLES = ("media", "hls")
"""``media``: an SFU node signaling places publishers and viewers on; ``hls``: the node of an
LL-HLS bridge, which placement never picks (rooms reach it only through node pipes)."""


@dataclass(frozen=True)
class SfuConfig:
    """Media-plane settings.

    :ivar ice_gather: local IPs to gather ICE host candidates on (empty = every
        non-loopback interface, aioice's default).  ``RELAYCAST_ICE_GATHER``.
    :ivar ice_announce: address written into the SDP candidates instead of the
        gathered one (1:1 NAT, like mediasoup ``announcedAddress``).
        ``RELAYCAST_ICE_ANNOUNCE``.
    :ivar chat_max_chars: longest chat message accepted, characters.
    :ivar chat_rate: chat token-bucket refill, messages per second.
    :ivar chat_burst: chat token-bucket size, messages.
    :ivar chat_history: messages a newcomer receives.
    :ivar max_sessions: sessions this node accepts before answering 503
        (``RELAYCAST_MAX_SESSIONS``).
    :ivar publisher_reserve: sessions kept free for publishers
        (``RELAYCAST_PUBLISHER_RESERVE``; ``None``: :attr:`reserved_for_publishers` picks
        2 % of ``max_sessions``, at least 1).  A WHEP viewer is admitted only while that many
        sessions stay free after it; a publisher (a WHIP session with a valid stream key) or
        a node-to-node pipe may take any free session, so viewers cannot fill a node to the
        point where its publishers are refused.  0 ≤ value < ``max_sessions``.
    :ivar connect_timeout_s: seconds a session may take, from its SDP answer, to connect
        (ICE and DTLS, RFC 8445 / RFC 6347) before the SFU closes it and reports
        ``session_closed`` (``RELAYCAST_CONNECT_TIMEOUT_S``, default 15 s).  Offers whose
        client never completes ICE would otherwise hold a session slot and a socket.
    :ivar adaptive: viewers' video consumers pick their simulcast/temporal layer from the
        bandwidth estimate and the viewer's size hint (``RELAYCAST_ADAPTIVE``, default on;
        ``0`` forwards the top layer, every frame, to everyone).
    :ivar initial_estimate_bps: a viewer's bandwidth estimate before its first feedback,
        bits/s (``RELAYCAST_INITIAL_ESTIMATE_BPS``, default 2,500,000 — libwebrtc's
        ``x-google-start-bitrate`` the SFU gives publishers); a viewer starts on the largest
        layer that fits it.
    :ivar estimator_process: viewers' bandwidth estimation runs in a process of its own
        beside each forwarding process (:mod:`sfu.estimator_link`;
        ``RELAYCAST_ESTIMATOR_PROCESS``, default on; ``0`` estimates in the forwarding
        process).
    """

    ice_gather: tuple[str, ...] = ()
    ice_announce: str | None = None
    chat_max_chars: int = 500
    chat_rate: float = 3.0
    chat_burst: int = 10
    chat_history: int = 50
    max_sessions: int = 500
    publisher_reserve: int | None = None
    connect_timeout_s: float = 15.0
    node_id: str = field(default="sfu-1")
    pipe_linger_s: float = 10.0
    """An edge node closes its pipe of a room after this many seconds without a viewer
    there (``RELAYCAST_PIPE_LINGER_S``)."""

    role: str = "media"
    adaptive: bool = True
    initial_estimate_bps: int = 2_500_000
    estimator_process: bool = True

    def __post_init__(self) -> None:
        if self.role not in NODE_ROLES:
            raise ConfigError(f"RELAYCAST_NODE_ROLE: {self.role!r} must be one of {', '.join(NODE_ROLES)}")
        if self.publisher_reserve is not None and not 0 <= self.publisher_reserve < self.max_sessions:
            raise ConfigError(
                f"RELAYCAST_PUBLISHER_RESERVE: {self.publisher_reserve} must be at least 0 and "
                f"below RELAYCAST_MAX_SESSIONS ({self.max_sessions})"
            )

    @property
    def reserved_for_publishers(self) -> int:
        """Sessions WHEP viewers leave free: ``publisher_reserve``, or by default 2 % of
        ``max_sessions`` rounded up, at least 1 and below ``max_sessions``."""
        if self.publisher_reserve is not None:
            return self.publisher_reserve
        return min(max(1, -(-self.max_sessions // 50)), self.max_sessions - 1)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SfuConfig:
        env = os.environ if env is None else env
        announce = env.get("RELAYCAST_ICE_ANNOUNCE") or None
        if announce is not None:
            _addresses("RELAYCAST_ICE_ANNOUNCE", announce)
        reserve = None
        if env.get("RELAYCAST_PUBLISHER_RESERVE"):
            reserve = int(env_number(env, "RELAYCAST_PUBLISHER_RESERVE", 0, 0, 100000, integer=True))
        return cls(
            ice_gather=_addresses("RELAYCAST_ICE_GATHER", env.get("RELAYCAST_ICE_GATHER", "")),
            ice_announce=announce,
            chat_max_chars=int(env_number(env, "RELAYCAST_CHAT_MAX_CHARS", 500, 1, 15000)),
            chat_rate=env_number(env, "RELAYCAST_CHAT_RATE", 3.0, 0.01, 1000),
            chat_burst=int(env_number(env, "RELAYCAST_CHAT_BURST", 10, 1, 1000)),
            chat_history=int(env_number(env, "RELAYCAST_CHAT_HISTORY", 50, 0, 1000)),
            max_sessions=int(env_number(env, "RELAYCAST_MAX_SESSIONS", 500, 1, 100000)),
            publisher_reserve=reserve,
            connect_timeout_s=env_number(env, "RELAYCAST_CONNECT_TIMEOUT_S", 15.0, 0.1, 600),
            node_id=env.get("RELAYCAST_NODE_ID", "sfu-1"),
            pipe_linger_s=env_number(env, "RELAYCAST_PIPE_LINGER_S", 10.0, 0, 3600),
            role=env.get("RELAYCAST_NODE_ROLE", "media").strip().lower() or "media",
            adaptive=env.get("RELAYCAST_ADAPTIVE", "1").strip().lower() not in ("0", "false", "no", "off"),
            estimator_process=env.get("RELAYCAST_ESTIMATOR_PROCESS", "1").strip().lower()
            not in ("0", "false", "no", "off"),
            initial_estimate_bps=int(env_number(env, "RELAYCAST_INITIAL_ESTIMATE_BPS", 2_500_000,
                                                50_000, 100_000_000, integer=True)),
        )

    def to_env(self) -> dict[str, str]:
        """The ``RELAYCAST_*`` variables `from_env` reads back into this configuration (the
        node id included): how a parent process hands its settings to an SFU node child."""
        env = {
            "RELAYCAST_ICE_GATHER": ",".join(self.ice_gather),
            "RELAYCAST_ICE_ANNOUNCE": self.ice_announce or "",
            "RELAYCAST_CHAT_MAX_CHARS": str(self.chat_max_chars),
            "RELAYCAST_CHAT_RATE": repr(self.chat_rate),
            "RELAYCAST_CHAT_BURST": str(self.chat_burst),
            "RELAYCAST_CHAT_HISTORY": str(self.chat_history),
            "RELAYCAST_MAX_SESSIONS": str(self.max_sessions),
            "RELAYCAST_PUBLISHER_RESERVE": "" if self.publisher_reserve is None else str(self.publisher_reserve),
            "RELAYCAST_CONNECT_TIMEOUT_S": repr(self.connect_timeout_s),
            "RELAYCAST_NODE_ID": self.node_id,
            "RELAYCAST_PIPE_LINGER_S": repr(self.pipe_linger_s),
            "RELAYCAST_NODE_ROLE": self.role,
            "RELAYCAST_ADAPTIVE": "1" if self.adaptive else "0",
            "RELAYCAST_INITIAL_ESTIMATE_BPS": str(self.initial_estimate_bps),
            "RELAYCAST_ESTIMATOR_PROCESS": "1" if self.estimator_process else "0",
        }
        return env
