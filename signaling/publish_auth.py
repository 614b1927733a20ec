"""Who may publish to (and watch) a room: the interface the WHIP/WHEP edge asks.

Signaling does not know where rooms and their credentials come from.  It asks a
:class:`PublishAuthority`:

* :class:`signaling.static_keys.StaticKeys` — rooms with one in-memory stream key each
  (a bare :func:`signaling.app.create_app`, unit tests);
* ``community.publish.ChannelPublishAuthority`` — the platform: every channel is a room,
  published to with one of its stream keys or an access JWT carrying a publish grant, and a
  private channel is watched with a playback token.

Bearer credentials follow RFC 6750: a refusal carries the ``WWW-Authenticate`` challenge of
RFC 6750 §3 (``invalid_token`` → 401, ``insufficient_scope`` → 403, none when no credential
was sent).
"""

from __future__ import annotations

import hashlib
import hmac
from abc import ABC, abstractmethod
from dataclasses import dataclass

REALM = 'Bearer realm="relaycast"'


@dataclass(frozen=True)
class PublishGrant:
    """A publisher admitted to ``room``.

    :ivar owner: the credential a later PATCH/DELETE of the WHIP session must present, as
        :meth:`PublishAuthority.owns` compares it: the hex SHA-256 of a stream key, or
        ``"user:<id>"`` for an access token.  Never the secret itself.
    :ivar key_id: the stream key's id (``None`` for a token or an anonymous static key).
    :ivar user_id: the publishing user (``None`` for a static key).
    """

    room: str
    owner: str
    key_id: str | None = None
    user_id: str | None = None


class AccessRefused(Exception):
    """A credential the authority refuses.

    :ivar status: 401 (no or invalid credential) or 403 (valid, but not for this room).
    :ivar error: the RFC 6750 §3.1 error code (``invalid_token``, ``insufficient_scope``) or
        ``None`` when no credential was sent.
    """

    def __init__(self, status: int, detail: str, error: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.error = status, detail, error

    @property
    def challenge(self) -> str:
        """The ``WWW-Authenticate`` value (RFC 6750 §3)."""
        return f'{REALM}, error="{self.error}"' if self.error else REALM

    @classmethod
    def invalid(cls, detail: str) -> AccessRefused:
        return cls(401, detail, "invalid_token")

    @classmethod
    def scope(cls, detail: str) -> AccessRefused:
        return cls(403, detail, "insufficient_scope")


def key_digest(key: str) -> str:
    """Hex SHA-256 of a stream key: what is stored and compared, never the key."""
    return hashlib.sha256(key.encode()).hexdigest()


def same_digest(digest_hex: str, key: str) -> bool:
    """Whether ``key`` hashes to ``digest_hex``, in constant time (:func:`hmac.compare_digest`)."""
    return hmac.compare_digest(digest_hex.encode(), key_digest(key).encode())


class PublishAuthority(ABC):
    """The rooms that exist and the credentials that publish to or watch them."""

    @abstractmethod
    async def room_exists(self, room: str) -> bool:
        """Whether ``room`` exists (WHIP/WHEP to another name is 404)."""

    @abstractmethod
    async def authorize(self, room: str, bearer: str) -> PublishGrant:
        """Admit a publisher presenting ``bearer`` (RFC 6750 §2.1) to ``room``.

        :raises AccessRefused: 401 ``invalid_token`` (unknown, revoked or expired
            credential) or 403 ``insufficient_scope`` (a valid credential of another room).
        """

    async def room_for_key(self, key: str) -> str | None:
        """The room stream key ``key`` publishes to, for clients that present only a key
        (``POST /whip``, RTMP's ``rtmp://HOST/live`` + key); None when the key is unknown
        (then :meth:`authorize` refuses it with the reason).  The default knows none."""
        return None

    async def owns(self, grant_owner: str, room: str, bearer: str) -> bool:
        """Whether ``bearer`` is the credential that created a WHIP session whose grant had
        ``grant_owner`` (RFC 9725 §4.2: only the publisher ends its session).  The default
        compares the stream key's digest in constant time."""
        return bool(grant_owner) and same_digest(grant_owner, bearer)

    async def authorize_view(self, room: str, token: str | None) -> bool:
        """Admit a viewer (WHEP, LL-HLS, VOD) of ``room`` with an optional playback token.

        :returns: whether ``room`` is private — its answers then carry the viewer's token and
            must not be stored by shared caches (RFC 9111 §5.2.2.7 ``private``).  The
            default: every room is public.
        :raises AccessRefused: 401 for a private room without a valid token for it.
        """
        return False
