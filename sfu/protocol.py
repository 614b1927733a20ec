"""The signaling ↔ SFU node wire: one typed definition, imported by both sides.

SFU nodes connect to signaling as Socket.IO clients on :data:`NAMESPACE`.  Signaling sends
RPCs (:class:`Rpc`, acknowledged: the ack is the result), nodes emit events
(:class:`NodeEvent`, not acknowledged).  Every payload is a JSON object built and read
only by the dataclasses here; a malformed payload raises :class:`ProtocolError`, which the
node answers as a 400 :class:`RpcError`.

The RPCs, their payloads and acks are listed in :mod:`sfu.node`'s docstring.

Events: ``load`` (every second: the node's heartbeat, its load and ``room_states``),
``room_state`` (a room's ``{room, live, viewers, pipes[, pipe]}``), ``session_closed``
(:class:`SessionClosed`: the node ended a session on its own), ``session_connected``
(:class:`SessionConnected`: a session's ICE and DTLS are up for the first time).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

NAMESPACE = "/sfu"
"""The Socket.IO namespace SFU nodes connect to (authenticated with the node secret)."""
SOCKETIO_PATH = "sfu-link"
"""The Socket.IO endpoint path of :data:`NAMESPACE` (``/sfu-link/``), apart from the
pages' ``/socket.io/``: signaling accepts nodes only on it, and a public edge denies it
(nginx sees the path, not the namespace inside the Engine.IO payload)."""

MAX_ID_CHARS = 64
MAX_NAME_CHARS = 64


class Rpc(StrEnum):
    """Signaling → node requests (Socket.IO events with an ack)."""

    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"
    TRICKLE = "trickle"
    CLOSE = "close"
    PIPE_OFFER = "pipe_offer"
    PIPE_ANSWER = "pipe_answer"
    STATS = "stats"
    ICE_RESTART = "ice_restart"
    VIDEO_SIZE = "video_size"
    INGEST_ADVICE = "ingest_advice"


class NodeCall(StrEnum):
    """Node → signaling requests (Socket.IO events with an ack): the data channels' chat.

    * ``chat_send`` ``{room, participant: Identity, text, deadline?: epoch ms}`` →
      ``{"message": <numbered message>}`` or ``{"error": code, "detail": str,
      "retry_after"?: s}`` (signaling's chat authority decides, numbers and fans out;
      docs/chat.md); a request signaling gets to after ``deadline`` is answered
      ``unavailable`` without being numbered, so the node never reports "not sent" for a
      message that was sent;
    * ``chat_history`` ``{room}`` → ``{"messages": [...]}`` (oldest first) or ``{"error", "detail"}``.
    """

    CHAT_SEND = "chat_send"
    CHAT_HISTORY = "chat_history"


CHAT_EVENT = "chat_event"
"""Signaling → node event (no ack): ``{room, event}``, one chat event (``chat``, ``delete``,
``clear``) for the node's participants in ``room``, in the room's order."""


class NodeEvent(StrEnum):
    """Node → signaling events; ``NODE_LOST`` is raised by signaling itself when a node's
    connection or heartbeats stop."""

    LOAD = "load"
    ROOM_STATE = "room_state"
    SESSION_CLOSED = "session_closed"
    SESSION_CONNECTED = "session_connected"
    NODE_LOST = "node_lost"


class SessionKind(StrEnum):
    """What a session is: a WHIP publisher, a WHEP viewer, or a node-to-node pipe (the edge
    side publishes the origin's media into its room; the origin side feeds it)."""

    PUBLISHER = "publisher"
    VIEWER = "viewer"
    PIPE = "pipe"


class ProtocolError(ValueError):
    """A payload does not have the shape this module defines (answered as 400)."""


def _text(data: dict[str, Any], key: str, *, max_chars: int | None = None, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or (value == "" and default is None):
        raise ProtocolError(f"{key} must be a non-empty string")
    if max_chars is not None and len(value) > max_chars:
        raise ProtocolError(f"{key} is longer than {max_chars} characters")
    return value


def _object(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return data


@dataclass(frozen=True)
class Identity:
    """Who a session is, decided by signaling from its credentials; the SFU trusts it
    (chat sender names, roles).

    :ivar id: participant id (unique in the room; at most 64 characters).
    :ivar name: display name (at most 64 characters).
    :ivar role: the session's :class:`SessionKind`.
    :ivar user: the platform user behind the session (at most 64 characters), ``None`` for
        a guest or a stream key without an account.
    """

    id: str
    name: str
    role: SessionKind = SessionKind.VIEWER
    user: str | None = None

    def to_dict(self) -> dict[str, str]:
        out = {"id": self.id, "name": self.name, "role": str(self.role)}
        if self.user:
            out["user"] = self.user
        return out

    @classmethod
    def from_dict(cls, data: Any, default_id: str = "", default_name: str = "anonymous") -> Identity:
        """Read an identity; a missing id or name takes the default, a name is cut to 64 characters.

        :raises ProtocolError: not an object, an id that is not a 1–64 character string,
            a name that is not a string, an unknown role, a user that is not a 1–64
            character string.
        """
        data = _object(data if data is not None else {}, "identity")
        try:
            role = SessionKind(data.get("role", SessionKind.VIEWER))
        except ValueError:
            raise ProtocolError(f"identity role must be one of {[k.value for k in SessionKind]}") from None
        name = data.get("name") or default_name
        if not isinstance(name, str):
            raise ProtocolError("identity name must be a string")
        user = data.get("user")
        if user is not None:
            user = _text({"user": user}, "user", max_chars=MAX_ID_CHARS)
        return cls(_text({"id": data.get("id") or default_id}, "id", max_chars=MAX_ID_CHARS),
                   name[:MAX_NAME_CHARS], role, user)


@dataclass(frozen=True)
class OpenSession:
    """``publish`` / ``subscribe``: open a session with an SDP offer (RFC 9725 §4.2).

    :ivar session_id: signaling's id of the session resource (the node keys it by this).
    :ivar sdp: the client's SDP offer (RFC 8866), at most 64 KiB.
    """

    room: str
    session_id: str
    sdp: str
    identity: Identity

    def to_wire(self) -> dict[str, Any]:
        return {"room": self.room, "session_id": self.session_id, "sdp": self.sdp,
                "identity": self.identity.to_dict()}

    @classmethod
    def from_wire(cls, data: Any) -> OpenSession:
        data = _object(data, "the request")
        session_id = _text(data, "session_id")
        return cls(_text(data, "room"), session_id, _text(data, "sdp"),
                   Identity.from_dict(data.get("identity"), default_id=session_id[:12]))


@dataclass(frozen=True)
class Trickle:
    """``trickle``: remote ICE candidates for a session (RFC 9725 §4.3.2, RFC 8840 §4.4).

    :ivar candidates: ``candidate:...`` attribute values (without ``a=``).
    :ivar end_of_candidates: the client sent ``a=end-of-candidates``.
    """

    session_id: str
    candidates: tuple[str, ...] = ()
    end_of_candidates: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "candidates": list(self.candidates),
                "end_of_candidates": self.end_of_candidates}

    @classmethod
    def from_wire(cls, data: Any) -> Trickle:
        data = _object(data, "the request")
        candidates = data.get("candidates") or []
        if not isinstance(candidates, list) or not all(isinstance(c, str) for c in candidates):
            raise ProtocolError("candidates must be a list of strings")
        return cls(_text(data, "session_id"), tuple(candidates), bool(data.get("end_of_candidates")))


_ICE_CHAR = re.compile(r"^[A-Za-z0-9+/]+$")


def ice_credentials_problem(ufrag: Any, pwd: Any) -> str | None:
    """Why ``ufrag`` / ``pwd`` are not an ``ice-ufrag`` (4–256 ice-chars) and ``ice-pwd``
    (22–256 ice-chars) of RFC 8839 §5.4; ``None`` when they are."""
    if not isinstance(ufrag, str) or not 4 <= len(ufrag) <= 256 or not _ICE_CHAR.match(ufrag):
        return "ice-ufrag must be 4 to 256 ice-chars (RFC 8839 §5.4)"
    if not isinstance(pwd, str) or not 22 <= len(pwd) <= 256 or not _ICE_CHAR.match(pwd):
        return "ice-pwd must be 22 to 256 ice-chars (RFC 8839 §5.4)"
    return None


def _candidates(data: dict[str, Any]) -> tuple[str, ...]:
    candidates = data.get("candidates") or []
    if not isinstance(candidates, list) or not all(isinstance(c, str) for c in candidates):
        raise ProtocolError("candidates must be a list of strings")
    return tuple(candidates)


@dataclass(frozen=True)
class IceRestart:
    """``ice_restart``: restart ICE for a session with the client's new credentials
    (RFC 9725 §4.3.3, RFC 8445 §9); the session, its DTLS and SRTP stay.

    :ivar ice_ufrag: the client's new ``ice-ufrag`` (RFC 8839 §5.4).
    :ivar ice_pwd: the client's new ``ice-pwd``.
    :ivar candidates: the fragment's ``candidate:...`` values (without ``a=``).
    :ivar end_of_candidates: the fragment had ``a=end-of-candidates``.
    """

    session_id: str
    ice_ufrag: str
    ice_pwd: str
    candidates: tuple[str, ...] = ()
    end_of_candidates: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "ice_ufrag": self.ice_ufrag, "ice_pwd": self.ice_pwd,
                "candidates": list(self.candidates), "end_of_candidates": self.end_of_candidates}

    @classmethod
    def from_wire(cls, data: Any) -> IceRestart:
        """:raises ProtocolError: a field of the wrong shape, credentials that break RFC 8839 §5.4."""
        data = _object(data, "the request")
        problem = ice_credentials_problem(data.get("ice_ufrag"), data.get("ice_pwd"))
        if problem:
            raise ProtocolError(problem)
        return cls(_text(data, "session_id"), data["ice_ufrag"], data["ice_pwd"], _candidates(data),
                   bool(data.get("end_of_candidates")))


@dataclass(frozen=True)
class IceRestarted:
    """The ack of ``ice_restart``: the server's new ICE credentials and candidates, and what
    the 200 fragment needs to name the bundle's ``m=`` section (RFC 8840 §4.4, RFC 9725 §4.3.3).

    :ivar candidates: ``candidate:...`` values (without ``a=``), addresses as announced.
    :ivar mids: the ``a=group:BUNDLE`` mids of the session's answer.
    :ivar media: the answer's first ``m=`` line (the bundle tag's), e.g.
        ``m=video 9 UDP/TLS/RTP/SAVPF 96``.
    """

    ice_ufrag: str
    ice_pwd: str
    candidates: tuple[str, ...]
    mids: tuple[str, ...] = ()
    media: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {"ice_ufrag": self.ice_ufrag, "ice_pwd": self.ice_pwd,
                "candidates": list(self.candidates), "mids": list(self.mids), "media": self.media}

    @classmethod
    def from_wire(cls, data: Any) -> IceRestarted:
        data = _object(data, "the reply")
        problem = ice_credentials_problem(data.get("ice_ufrag"), data.get("ice_pwd"))
        if problem:
            raise ProtocolError(problem)
        mids = data.get("mids") or []
        if not isinstance(mids, list) or not all(isinstance(m, str) for m in mids):
            raise ProtocolError("mids must be a list of strings")
        media = data.get("media") or ""
        if not isinstance(media, str):
            raise ProtocolError("media must be a string")
        return cls(data["ice_ufrag"], data["ice_pwd"], _candidates(data), tuple(mids), media)


MAX_VIDEO_SIDE = 16384
"""The largest width or height, device pixels, a viewer size hint may give."""


@dataclass(frozen=True)
class VideoSize:
    """``video_size``: the viewer's rendered video size in device pixels, or ``None`` for both
    (no hint); the session's video Consumer never sends a layer much larger
    (:meth:`sfu.consumer.Consumer.set_max_size`, docs/whip-whep.md)."""

    session_id: str
    width: int | None
    height: int | None

    def to_wire(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "width": self.width, "height": self.height}

    @classmethod
    def from_wire(cls, data: Any) -> VideoSize:
        """:raises ProtocolError: one of width/height ``None`` and not the other, or a value
        that is not an integer in 1..:data:`MAX_VIDEO_SIDE`."""
        data = _object(data, "the request")
        width, height = size_hint(data.get("width"), data.get("height"))
        return cls(_text(data, "session_id"), width, height)


def size_hint(width: Any, height: Any) -> tuple[int | None, int | None]:
    """A viewer size hint's ``(width, height)``: both ``None`` (no hint) or both integers in
    1..:data:`MAX_VIDEO_SIDE`.  :raises ProtocolError: anything else (booleans too)."""
    if width is None and height is None:
        return None, None
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_VIDEO_SIDE:
            raise ProtocolError(f"{name} must be an integer from 1 to {MAX_VIDEO_SIDE} "
                                "(or width and height both null)")
    return width, height


MAX_ADVICE_CHARS = 200
"""The longest ingest advice, characters (code points)."""
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def ingest_advice(advice: Any) -> str | None:
    """An ingest advice as given: ``None`` (no advice) or one line of 1–:data:`MAX_ADVICE_CHARS`
    characters without control characters.  :raises ProtocolError: anything else."""
    if advice is None:
        return None
    if (not isinstance(advice, str) or not 1 <= len(advice) <= MAX_ADVICE_CHARS
            or _CONTROL_CHARS.search(advice)):
        raise ProtocolError(f"advice must be a string of 1 to {MAX_ADVICE_CHARS} characters "
                            "without control characters, or null")
    return advice


MAX_DROPPED_FRAMES = 2**53 - 1
"""The largest dropped-frame count (JSON's largest exact integer, JavaScript's
``Number.MAX_SAFE_INTEGER``)."""


def dropped_frames(count: Any) -> int | None:
    """A dropped-frame count as given: ``None`` (not counted) or an integer from 0 to
    :data:`MAX_DROPPED_FRAMES`.  :raises ProtocolError: anything else (booleans and floats
    such as ``3.0`` too)."""
    if count is None:
        return None
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_DROPPED_FRAMES:
        raise ProtocolError(f"dropped_frames must be an integer from 0 to {MAX_DROPPED_FRAMES}, or null")
    return count


INGEST_ADVICE_MEMBERS = ("advice", "dropped_frames")
"""What an :class:`IngestAdvice` may set, in the order they are checked."""


@dataclass(frozen=True)
class IngestAdvice:
    """``ingest_advice``: what whoever republishes the publisher's encoder (the RTMP/SRT
    ingest process) tells about it that the SFU cannot see — ``advice``, what the encoder
    should change, in words (``"set bframes=0 / profile baseline for lower latency and no
    transcoding"`` when it transcodes B-frames), and ``dropped_frames``, the session's
    running total of video frames it had to drop (lost in transit, a full queue, an
    undecodable frame).  Only the members named in ``given`` change (at least one; on the
    wire: the members present); ``None`` clears one.  The node keeps them with the publisher
    session — a new session starts without them — and reports them as the ``advice`` and
    ``dropped_frames`` of the room's ``ingest`` (``stats``)."""

    session_id: str
    advice: str | None
    dropped_frames: int | None
    given: frozenset[str]

    def __post_init__(self) -> None:
        if not self.given or not self.given <= set(INGEST_ADVICE_MEMBERS):
            raise ProtocolError(f"an ingest advice sets one or more of {', '.join(INGEST_ADVICE_MEMBERS)}")

    @classmethod
    def of(cls, session_id: str, members: Mapping[str, Any]) -> IngestAdvice:
        """The change that sets the :data:`INGEST_ADVICE_MEMBERS` present in ``members`` (others
        are ignored).  :raises ProtocolError: none of them, or a value :func:`ingest_advice` or
        :func:`dropped_frames` refuses (checked in that order)."""
        given = frozenset(name for name in INGEST_ADVICE_MEMBERS if name in members)
        advice = ingest_advice(members["advice"]) if "advice" in given else None
        count = dropped_frames(members["dropped_frames"]) if "dropped_frames" in given else None
        return cls(session_id, advice, count, given)

    def to_wire(self) -> dict[str, Any]:
        values = {"advice": self.advice, "dropped_frames": self.dropped_frames}
        return {"session_id": self.session_id,
                **{name: values[name] for name in INGEST_ADVICE_MEMBERS if name in self.given}}

    @classmethod
    def from_wire(cls, data: Any) -> IngestAdvice:
        """:raises ProtocolError: no session id, neither ``advice`` nor ``dropped_frames``,
        or a value :meth:`of` refuses."""
        data = _object(data, "the request")
        return cls.of(_text(data, "session_id"), data)


@dataclass(frozen=True)
class CloseSession:
    """``close``: end a session and free everything it holds."""

    session_id: str

    def to_wire(self) -> dict[str, Any]:
        return {"session_id": self.session_id}

    @classmethod
    def from_wire(cls, data: Any) -> CloseSession:
        return cls(_text(_object(data, "the request"), "session_id"))


@dataclass(frozen=True)
class PipeOffer:
    """``pipe_offer`` (to the origin node): offer the room's producers to another node,
    which answers through its own ``publish`` with a :attr:`SessionKind.PIPE` identity."""

    room: str
    session_id: str
    identity: Identity

    def to_wire(self) -> dict[str, Any]:
        return {"room": self.room, "session_id": self.session_id, "identity": self.identity.to_dict()}

    @classmethod
    def from_wire(cls, data: Any) -> PipeOffer:
        data = _object(data, "the request")
        session_id = _text(data, "session_id")
        identity = Identity.from_dict(
            {**_object(data.get("identity") or {}, "identity"), "role": SessionKind.PIPE},
            default_id=f"pipe-{session_id[:8]}", default_name="node pipe",
        )
        return cls(_text(data, "room"), session_id, identity)


@dataclass(frozen=True)
class PipeAnswer:
    """``pipe_answer`` (to the origin node): the edge's SDP answer; forwarding starts."""

    session_id: str
    sdp: str

    def to_wire(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "sdp": self.sdp}

    @classmethod
    def from_wire(cls, data: Any) -> PipeAnswer:
        data = _object(data, "the request")
        return cls(_text(data, "session_id"), _text(data, "sdp"))


@dataclass(frozen=True)
class Answer:
    """An RPC's SDP result: the answer to an offer, or a pipe's offer."""

    sdp: str

    def to_wire(self) -> dict[str, Any]:
        return {"sdp": self.sdp}


OK: dict[str, Any] = {"ok": True}
"""The ack of an RPC that has no result."""


@dataclass(frozen=True)
class RpcError:
    """A failed RPC: ``{"error": {status, title, detail[, type]}}``.

    :ivar status: the HTTP status signaling answers with (400, 404, 409, 422, 503, 504...).
    :ivar title: a short, stable summary of the kind of error.
    :ivar detail: this occurrence, safe to show to the client (no exception text).
    :ivar type: a problem type URI (RFC 9457 §3.1.1) when the error has one.
    """

    status: int
    title: str
    detail: str = ""
    type: str | None = None

    def to_wire(self) -> dict[str, Any]:
        error: dict[str, Any] = {"status": self.status, "title": self.title, "detail": self.detail}
        if self.type:
            error["type"] = self.type
        return {"error": error}

    @classmethod
    def from_wire(cls, result: Any) -> RpcError | None:
        """The error in an ack, ``None`` when the ack is not an error.  A malformed error
        object becomes a 502 (the node misbehaved), never an exception."""
        if not isinstance(result, dict) or "error" not in result:
            return None
        error = result["error"] if isinstance(result["error"], dict) else {}
        try:
            status = int(error.get("status", 502))
        except (TypeError, ValueError):
            status = 502
        if not 400 <= status < 600:
            status = 502
        kind = error.get("type")
        return cls(status, str(error.get("title") or ""), str(error.get("detail") or ""),
                   kind if isinstance(kind, str) else None)


@dataclass(frozen=True)
class SessionClosed:
    """Event ``session_closed``: the node ended a session on its own (ICE/DTLS failure,
    replaced publisher, codec change, connect deadline) or after ``close``."""

    room: str
    session_id: str
    reason: str = ""
    kind: SessionKind = SessionKind.VIEWER

    def to_wire(self) -> dict[str, Any]:
        return {"room": self.room, "session_id": self.session_id, "reason": self.reason,
                "kind": str(self.kind)}

    @classmethod
    def from_wire(cls, data: Any) -> SessionClosed:
        data = _object(data, "the event")
        try:
            kind = SessionKind(data.get("kind", SessionKind.VIEWER))
        except ValueError:
            raise ProtocolError("unknown session kind") from None
        reason = data.get("reason")
        return cls(_text(data, "room"), _text(data, "session_id"),
                   reason if isinstance(reason, str) else "", kind)


@dataclass(frozen=True)
class SessionConnected:
    """Event ``session_connected``: a session reached ``connected`` (ICE, RFC 8445, and DTLS,
    RFC 6347, both up) for the first time; until then it is *pending*, and a pending session
    is closed (``session_closed``) when it misses the node's connect deadline."""

    room: str
    session_id: str

    def to_wire(self) -> dict[str, Any]:
        return {"room": self.room, "session_id": self.session_id}

    @classmethod
    def from_wire(cls, data: Any) -> SessionConnected:
        data = _object(data, "the event")
        return cls(_text(data, "room"), _text(data, "session_id"))


@dataclass(frozen=True)
class RoomState:
    """Event ``room_state`` (and each entry of a load report's ``room_states``).

    :ivar viewers: connected WebRTC viewers of the room on the node.
    :ivar pipes: edges this node feeds the room to.
    :ivar pipe: the node is an edge for the room (fed by a pipe, not the origin).
    """

    room: str
    live: bool = False
    viewers: int = 0
    pipes: int = 0
    pipe: bool = False

    def to_wire(self) -> dict[str, Any]:
        state: dict[str, Any] = {"room": self.room, "live": self.live, "viewers": self.viewers,
                                 "pipes": self.pipes}
        if self.pipe:
            state["pipe"] = True
        return state

    @classmethod
    def from_wire(cls, data: Any) -> RoomState:
        data = _object(data, "the event")
        return cls(_text(data, "room"), bool(data.get("live")), _count(data.get("viewers")),
                   _count(data.get("pipes")), bool(data.get("pipe")))


def _count(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError, OverflowError):
        return 0


__all__ = [
    "INGEST_ADVICE_MEMBERS", "MAX_ADVICE_CHARS", "MAX_DROPPED_FRAMES", "MAX_VIDEO_SIDE", "NAMESPACE",
    "OK", "Answer", "CloseSession", "IceRestart", "IceRestarted", "Identity", "IngestAdvice",
    "NodeEvent", "OpenSession", "PipeAnswer", "PipeOffer", "ProtocolError", "RoomState", "Rpc",
    "RpcError", "SessionClosed", "SessionConnected", "SessionKind", "Trickle", "VideoSize",
    "dropped_frames", "ice_credentials_problem", "ingest_advice", "size_hint",
]
