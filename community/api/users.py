"""Accounts: ``/api/users/...`` — register, log in, refresh, log out, the caller's profile
and public profiles; :func:`setup` starts the token service and installs the auth
middleware (:mod:`community.auth`).

Sessions: a login (or registration) issues an access JWT (``config.access_ttl_s``) and a
refresh token starting a new family; ``POST /api/users/refresh`` rotates it (RFC 9700
§4.14.2).  With header ``X-Relaycast-Client: web`` the tokens travel as cookies instead
(``rc_access`` HttpOnly SameSite=Lax path=/, ``rc_refresh`` HttpOnly SameSite=Strict
path=/api/users, ``rc_csrf`` readable SameSite=Lax path=/; ``Secure`` when
``config.cookie_secure``) and the body omits them.  A cross-site page cannot send that
header without a CORS preflight, which this service never grants, so it cannot log a
browser into another account (login CSRF).

No enumeration: unknown user and wrong password answer the same 401 after the same
argon2 work; an email address already in use answers the same 409 as a taken username
(usernames are public channel names anyway).
"""

from __future__ import annotations

import logging
import re
import secrets
from datetime import datetime
from typing import Annotated, Literal

from aiohttp import web
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from common.problems import HttpProblem
from signaling.app_keys import VIEWER_IDENTIFY
from signaling.client_ip import client_of
from signaling.security_headers import is_https

from ..app import COMMUNITY, Community
from ..auth import (
    ACCESS_CLAIMS_KEY,
    ACCESS_COOKIE,
    CSRF_COOKIE,
    REFRESH_COOKIE,
    SuspendedUsers,
    auth_middleware,
)
from ..database import Database
from ..models import Channel, User, new_id
from ..passwords import MAX_LENGTH, MIN_LENGTH, hash_password, needs_rehash, verify_password
from ..throttles import AccountThrottles
from ..tokens import InvalidToken, TokenService, tokens_of
from ..usernames import normalize_username, username_problem
from .base import PRINCIPAL_KEY, ApiRoutes, Call, Principal, json_response

logger = logging.getLogger(__name__)

routes = ApiRoutes("users")

CLIENT_HEADER = "X-Relaycast-Client"
REFRESH_COOKIE_PATH = "/api/users"
INVALID_LOGIN = "invalid username or password"
UNAVAILABLE = "this username or email address cannot be used"
ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What a record id can look like (:func:`community.models.new_id`); others are 404 at once."""


# -- bodies and answers -------------------------------------------------------------------


def _unicode(value: str) -> str:
    """Encodable as UTF-8 (JSON's ``\\ud800`` escapes can make lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text") from None
    return value


def _text(value: str) -> str:
    """Storable text: valid Unicode, no NUL or control characters other than newline
    and tab."""
    value = _unicode(value)
    if any((ord(c) < 0x20 and c not in "\n\t") or ord(c) == 0x7F for c in value):
        raise ValueError("control characters are not allowed")
    return value


def _line(value: str) -> str:
    """:func:`_text` on one line (no newline or tab either)."""
    value = _text(value)
    if "\n" in value or "\t" in value:
        raise ValueError("control characters are not allowed")
    return value


Line = Annotated[str, AfterValidator(_line)]
Text = Annotated[str, AfterValidator(_text)]
Password = Annotated[str, AfterValidator(_unicode)]


def _email(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    if value == "":
        return None
    local, at, domain = value.rpartition("@")
    if not at or not local or "." not in domain or any(c.isspace() for c in value):
        raise ValueError("not an email address")
    return value


class RegisterIn(BaseModel):
    """A new account.  ``username`` is lower-cased; it is also the channel name."""

    model_config = ConfigDict(extra="forbid")
    username: Line = Field(min_length=3, max_length=25)
    password: Password = Field(min_length=MIN_LENGTH, max_length=MAX_LENGTH)
    email: Line | None = Field(default=None, max_length=254)
    display_name: Line | None = Field(default=None, max_length=64)

    @field_validator("username")
    @classmethod
    def _username(cls, value: str) -> str:
        value = normalize_username(value)
        problem = username_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("email")
    @classmethod
    def _email_ok(cls, value: str | None) -> str | None:
        return _email(value)


class LoginIn(BaseModel):
    """``username``: the username or the account's email address (case-insensitive)."""

    model_config = ConfigDict(extra="forbid")
    username: Line = Field(min_length=1, max_length=254)
    password: Password = Field(min_length=1, max_length=MAX_LENGTH)


class RefreshIn(BaseModel):
    """``refresh_token``: omitted when the ``rc_refresh`` cookie carries it."""

    model_config = ConfigDict(extra="forbid")
    refresh_token: Line | None = Field(default=None, max_length=128)


class PatchMeIn(BaseModel):
    """Profile changes; ``new_password`` needs ``current_password``.  ``email`` ``""``
    removes the address."""

    model_config = ConfigDict(extra="forbid")
    display_name: Line | None = Field(default=None, max_length=64)
    bio: Text | None = Field(default=None, max_length=500)
    email: Line | None = Field(default=None, max_length=254)
    new_password: Password | None = Field(
        default=None, min_length=MIN_LENGTH, max_length=MAX_LENGTH
    )
    current_password: Password | None = Field(default=None, max_length=MAX_LENGTH)

    @field_validator("email")
    @classmethod
    def _email_ok(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return _email(value) or ""


class Me(BaseModel):
    """The caller's own account."""

    id: str
    username: str
    display_name: str
    email: str | None
    role: str
    bio: str
    created_at: datetime
    channel: str


class PublicUser(BaseModel):
    """A user's public profile (no email)."""

    id: str
    username: str
    display_name: str
    bio: str
    created_at: datetime
    channel: str
    suspended: bool


class AuthResult(BaseModel):
    """A logged-in session: the account and its tokens (omitted in cookie mode)."""

    user: Me
    access_token: str | None = None
    refresh_token: str | None = None
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int = Field(description="access token lifetime, s")


def me_of(user: User, channel: str) -> Me:
    return Me(
        id=user.id,
        username=user.username,
        display_name=user.display_name,
        email=user.email,
        role=user.role,
        bio=user.bio,
        created_at=user.created_at,
        channel=channel,
    )


def public_of(user: User, channel: str) -> PublicUser:
    return PublicUser(
        id=user.id,
        username=user.username,
        display_name=user.display_name,
        bio=user.bio,
        created_at=user.created_at,
        channel=channel,
        suspended=user.suspended_at is not None,
    )


# -- helpers ------------------------------------------------------------------------------


def _community(call: Call[object, object]) -> Community:
    return call.request.config_dict[COMMUNITY]


def _throttles(community: Community) -> AccountThrottles:
    return community.services["account_throttles"]  # type: ignore[no-any-return]


async def _channel_name(db: Database, user_id: str) -> str:
    async with db.session() as session:
        name = (
            await session.execute(select(Channel.name).where(Channel.owner_id == user_id))
        ).scalar()
    return name or ""


async def _session_answer(
    call: Call[object, object], status: int, user: User, family: str, refresh: str
) -> web.Response:
    """The AuthResult for a new access token of ``user`` in refresh family ``family``:
    tokens in the body, or cookies with header ``X-Relaycast-Client: web``."""
    community = _community(call)
    tokens = tokens_of(call.request.config_dict)
    access, expires_in = await tokens.issue_access(user, session_id=family)
    me = me_of(user, await _channel_name(community.db, user.id))
    if call.request.headers.get(CLIENT_HEADER, "").lower() != "web":
        return json_response(
            status,
            AuthResult(user=me, access_token=access, refresh_token=refresh, expires_in=expires_in),
        )
    result = AuthResult(user=me, expires_in=expires_in)
    response = web.Response(
        status=status,
        content_type="application/json",
        body=result.model_dump_json(exclude={"access_token", "refresh_token"}),
    )
    config = community.config
    secure = config.cookie_secure or is_https(call.request)  # served over TLS: Secure cookies
    response.set_cookie(
        ACCESS_COOKIE,
        access,
        max_age=expires_in,
        path="/",
        httponly=True,
        samesite="Lax",
        secure=secure,
    )
    response.set_cookie(
        REFRESH_COOKIE,
        refresh,
        max_age=int(config.refresh_ttl_s),
        path=REFRESH_COOKIE_PATH,
        httponly=True,
        samesite="Strict",
        secure=secure,
    )
    csrf = call.request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
    response.set_cookie(
        CSRF_COOKIE,
        csrf,
        max_age=int(config.refresh_ttl_s),
        path="/",
        samesite="Lax",
        secure=secure,
    )
    return response


def _clear_cookies(response: web.Response) -> None:
    response.del_cookie(ACCESS_COOKIE, path="/")
    response.del_cookie(REFRESH_COOKIE, path=REFRESH_COOKIE_PATH)
    response.del_cookie(CSRF_COOKIE, path="/")


# -- operations ---------------------------------------------------------------------------


@routes.op(
    "POST",
    "/api/users/register",
    body=RegisterIn,
    auth="none",
    summary="Create an account",
    responses={201: AuthResult, 409: None},
)
async def register(call: Call[RegisterIn, None]) -> web.Response:
    """Creates the account and its channel (named after the username) in one transaction
    and logs in.  409 when the username or the email address cannot be used (one answer
    for both, so an email address in use is not revealed)."""
    community = _community(call)
    _throttles(community).register(client_of(call.request))
    body = call.body
    password_hash = await hash_password(body.password)
    tokens = tokens_of(call.request.config_dict)
    family = new_id()
    try:
        async with community.db.transaction() as session:
            user = User(
                username=body.username,
                display_name=body.display_name or body.username,
                email=body.email,
                password_hash=password_hash,
                role="viewer",
            )
            session.add(user)
            await session.flush()
            session.add(Channel(name=body.username, owner_id=user.id))
            await session.flush()
            refresh = await tokens.issue_refresh(session, user.id, family)
    except IntegrityError:
        raise HttpProblem(409, None, UNAVAILABLE) from None
    logger.info("account registered: %s", user.username)
    return await _session_answer(call, 201, user, family, refresh)


@routes.op(
    "POST",
    "/api/users/login",
    body=LoginIn,
    auth="none",
    summary="Log in",
    responses={200: AuthResult, 401: None, 403: None},
)
async def login(call: Call[LoginIn, None]) -> web.Response:
    """401 "invalid username or password" for an unknown account and a wrong password
    alike (same argon2 work); 429 with ``Retry-After`` per address and per account; 403
    for a suspended account (only after the right password)."""
    community = _community(call)
    name = normalize_username(call.body.username)
    _throttles(community).login(client_of(call.request), name)
    column = User.email if "@" in name else User.username
    async with community.db.session() as session:
        user = (await session.execute(select(User).where(column == name))).scalar_one_or_none()
    if not await verify_password(
        user.password_hash if user is not None else None, call.body.password
    ):
        raise HttpProblem(401, None, INVALID_LOGIN)
    assert user is not None
    if user.suspended_at is not None:
        raise HttpProblem(403, None, "this account is suspended")
    tokens = tokens_of(call.request.config_dict)
    family = new_id()
    rehashed = await hash_password(call.body.password) if needs_rehash(user.password_hash) else None
    async with community.db.transaction() as session:
        if rehashed is not None:
            await session.execute(
                update(User).where(User.id == user.id).values(password_hash=rehashed)
            )
        refresh = await tokens.issue_refresh(session, user.id, family)
    return await _session_answer(call, 200, user, family, refresh)


def _refresh_token(call: Call[RefreshIn, None]) -> str | None:
    return call.body.refresh_token or call.request.cookies.get(REFRESH_COOKIE)


@routes.op(
    "POST",
    "/api/users/refresh",
    body=RefreshIn,
    auth="none",
    summary="Renew the access token",
    responses={200: AuthResult, 401: None, 403: None},
)
async def refresh(call: Call[RefreshIn, None]) -> web.Response:
    """Redeems a refresh token (body, or the ``rc_refresh`` cookie) once for a new access
    token and its successor refresh token.  A used token presented again revokes its whole
    family (RFC 9700 §4.14.2) and answers 401."""
    token = _refresh_token(call)
    if not token:
        raise HttpProblem(401, None, "send refresh_token (or the rc_refresh cookie)")
    community = _community(call)
    try:
        user_id, family, successor = await tokens_of(call.request.config_dict).redeem_refresh(token)
    except InvalidToken as exc:
        raise HttpProblem(401, None, exc.detail) from None
    async with community.db.session() as session:
        user = await session.get(User, user_id)
    if user is None:
        raise HttpProblem(401, None, "invalid or expired refresh token")
    if user.suspended_at is not None:
        raise HttpProblem(403, None, "this account is suspended")
    return await _session_answer(call, 200, user, family, successor)


@routes.op(
    "POST",
    "/api/users/logout",
    body=RefreshIn,
    auth="none",
    summary="Log out",
    responses={204: None},
)
async def logout(call: Call[RefreshIn, None]) -> web.Response:
    """Revokes the refresh token's family (body or ``rc_refresh`` cookie) and clears the
    cookies.  Always 204 (an unknown token is already as good as revoked).  Access tokens
    already issued stay valid until they expire (``config.access_ttl_s``)."""
    token = _refresh_token(call)
    if token:
        await tokens_of(call.request.config_dict).revoke_refresh_family(token)
    response = web.Response(status=204)
    _clear_cookies(response)
    return response


async def _load_me(community: Community, user_id: str) -> User:
    async with community.db.session() as session:
        user = await session.get(User, user_id)
    if user is None:
        raise HttpProblem(404, None, "this account no longer exists")
    return user


@routes.op(
    "GET",
    "/api/users/me",
    auth="user",
    summary="The caller's account",
    responses={200: Me, 404: None},
)
async def get_me(call: Call[None, None]) -> Me:
    """The caller's own account, email included."""
    community = _community(call)
    user = await _load_me(community, call.user.user_id)
    return me_of(user, await _channel_name(community.db, user.id))


@routes.op(
    "PATCH",
    "/api/users/me",
    body=PatchMeIn,
    auth="user",
    summary="Change the caller's account",
    responses={200: Me, 404: None, 409: None},
)
async def patch_me(call: Call[PatchMeIn, None]) -> Me:
    """Changes display name, bio, email or password.  A new password needs
    ``current_password`` (403 when wrong, throttled like logins) and revokes every other
    login session's refresh tokens.  409 when the email address cannot be used."""
    community = _community(call)
    body = call.body
    user = await _load_me(community, call.user.user_id)
    new_hash = None
    if body.new_password is not None:
        if body.current_password is None:
            raise HttpProblem(403, None, "changing the password needs current_password")
        _throttles(community).login(client_of(call.request), user.username)
        if not await verify_password(user.password_hash, body.current_password):
            raise HttpProblem(403, None, "current_password is wrong")
        new_hash = await hash_password(body.new_password)
    claims = call.request.get(ACCESS_CLAIMS_KEY)
    try:
        async with community.db.transaction() as session:
            user = await session.get(User, call.user.user_id)
            if user is None:
                raise HttpProblem(404, None, "this account no longer exists")
            if body.display_name is not None:
                user.display_name = body.display_name
            if body.bio is not None:
                user.bio = body.bio
            if body.email is not None:
                user.email = body.email or None
            if new_hash is not None:
                user.password_hash = new_hash
                await TokenService.revoke_user_refresh(
                    session, user.id, keep_family=getattr(claims, "session_id", None)
                )
            await session.flush()
    except IntegrityError:
        raise HttpProblem(409, None, UNAVAILABLE) from None
    return me_of(user, await _channel_name(community.db, user.id))


@routes.op(
    "GET",
    "/api/users/{userId}",
    auth="none",
    summary="A user's public profile",
    responses={200: PublicUser, 404: None},
)
async def get_user(call: Call[None, None]) -> PublicUser:
    """The public profile (never the email address); 404 for an unknown id."""
    community = _community(call)
    user_id = call.path("userId")
    if not ID_RE.fullmatch(user_id):
        raise HttpProblem(404, None, "no such user")
    async with community.db.session() as session:
        row = (
            await session.execute(
                select(User, Channel.name)
                .outerjoin(Channel, Channel.owner_id == User.id)
                .where(User.id == user_id)
            )
        ).first()
    if row is None:
        raise HttpProblem(404, None, "no such user")
    user, channel = row
    return public_of(user, channel or "")


# -- first-run admin and set-up -----------------------------------------------------------


async def ensure_admin(db: Database, password: str | None) -> str | None:
    """Create the account ``admin`` (role ``admin``, with its channel) when no admin exists.

    :param password: its password; ``None`` for a random one (``token_urlsafe(18)``).
    :returns: the password in clear (to print once), or ``None`` when an admin exists.
    """
    async with db.session() as session:
        exists = (
            await session.execute(select(User.id).where(User.role == "admin").limit(1))
        ).scalar()
    if exists is not None:
        return None
    password = password or secrets.token_urlsafe(18)
    password_hash = await hash_password(password)
    try:
        async with db.transaction() as session:
            taken = (
                await session.execute(select(User).where(User.username == "admin"))
            ).scalar_one_or_none()
            if taken is not None:  # an earlier admin demoted by hand: make it admin again
                taken.role, taken.password_hash = "admin", password_hash
            else:
                user = User(
                    username="admin",
                    display_name="Administrator",
                    password_hash=password_hash,
                    role="admin",
                )
                session.add(user)
                await session.flush()
                session.add(Channel(name="admin", owner_id=user.id))
    except IntegrityError:  # another instance created it at the same moment
        return None
    logger.info("first-run admin account 'admin' created")
    return password


async def viewer_of_request(request: web.Request) -> tuple[str, str] | None:
    """:data:`signaling.app_keys.VIEWER_IDENTIFY` hook: the logged-in user of a WHEP request
    (the auth middleware's principal: access cookie or Bearer access token)."""
    principal = request.get(PRINCIPAL_KEY)
    return (principal.user_id, principal.username) if isinstance(principal, Principal) else None


def setup(app: web.Application) -> None:
    """Install the auth middleware and the WHEP viewer identifier; on start-up (after the database opens) start the
    :class:`~community.tokens.TokenService` (``services["tokens"]``), the suspended-account
    cache (``services["suspended"]``) and the account throttles."""
    app.middlewares.append(auth_middleware)
    app.setdefault(VIEWER_IDENTIFY, []).append(viewer_of_request)

    async def start(app: web.Application) -> None:
        community = app[COMMUNITY]
        tokens = TokenService(community.db, community.config)
        await tokens.start()
        community.services["tokens"] = tokens
        suspended = SuspendedUsers(community.db)
        await suspended.start()
        community.services["suspended"] = suspended
        community.services["account_throttles"] = AccountThrottles()

    async def stop(app: web.Application) -> None:
        community = app[COMMUNITY]
        for name in ("tokens", "suspended"):
            service = community.services.pop(name, None)
            if service is not None:
                await service.close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
