"""Access, playback and refresh tokens (community.tokens) and the auth middleware
(community.auth), on a real SQLite database through the platform app."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select, update

from community.api.base import PRINCIPAL_KEY
from community.config import CommunityConfig
from community.models import RefreshToken, SigningKey, utcnow
from community.tokens import InvalidToken, TokenService, tokens_of
from tests.community.platform_app import community_of, make_user, platform_app
from tests.polling import wait_for


async def _client(config: CommunityConfig) -> TestClient:
    app = platform_app(config)

    async def whoami(request: web.Request) -> web.Response:
        principal = request.get(PRINCIPAL_KEY)
        return web.json_response({"user": principal.username if principal else None})

    app.router.add_route("*", "/whip-probe", whoami)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:
    client = await _client(CommunityConfig(data_dir=tmp_path, key_overlap_s=60))
    try:
        yield client
    finally:
        await client.close()


def _tokens(client: TestClient) -> TokenService:
    return tokens_of(client.server.app)


async def _current_key(client: TestClient) -> SigningKey:
    async with community_of(client).db.session() as session:
        keys = (
            (await session.execute(select(SigningKey).where(SigningKey.retired_at.is_(None))))
            .scalars()
            .all()
        )
    assert len(keys) == 1
    return keys[0]


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "relaycast",
        "aud": "relaycast",
        "sub": "u1",
        "name": "alice",
        "role": "viewer",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": "j",
        "grants": {"publish": ["alice"]},
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


async def _forge(
    client: TestClient, *, alg: str = "HS256", kid: str | None = "", **claims: Any
) -> str:
    key = await _current_key(client)
    headers = {} if kid is None else {"kid": kid or key.kid}
    return jwt.encode(_claims(**claims), key.secret.encode(), algorithm=alg, headers=headers)


async def test_access_token_carries_the_contract_claims(client: TestClient) -> None:
    user = await make_user(community_of(client), "alice")
    token, expires_in = await _tokens(client).issue_access(user)
    header = jwt.get_unverified_header(token)
    key = await _current_key(client)
    assert header["alg"] == "HS256" and header["kid"] == key.kid
    raw = jwt.decode(token, key.secret.encode(), algorithms=["HS256"], audience="relaycast")
    assert raw["iss"] == "relaycast" and raw["sub"] == user.id and raw["name"] == "alice"
    assert raw["role"] == "viewer" and raw["grants"] == {"publish": ["alice"]}
    assert raw["exp"] - raw["iat"] == expires_in == 600 and raw["nbf"] == raw["iat"] and raw["jti"]
    claims = _tokens(client).verify_access(token)
    assert (claims.user_id, claims.username, claims.role, claims.publish) == (
        user.id,
        "alice",
        "viewer",
        ("alice",),
    )
    assert abs((claims.expires_at - utcnow()).total_seconds() - 600) < 5


@pytest.mark.parametrize(
    ("claims", "detail"),
    [
        ({"exp": -60}, "expired"),  # times: seconds from when the test runs
        ({"nbf": 120}, "not valid yet"),
        ({"aud": "someone-else"}, "aud"),
        ({"aud": "relaycast:playback"}, "aud"),
        ({"iss": "evil"}, "issuer"),
        ({"exp": None}, "'exp'"),
        ({"nbf": None}, "'nbf'"),
        ({"iat": None}, "'iat'"),
        ({"iss": None}, "'iss'"),
        ({"grants": {"publish": "alice"}}, "malformed"),
    ],
)
async def test_bad_claims_are_refused(
    client: TestClient, claims: dict[str, Any], detail: str
) -> None:
    now = int(time.time())  # not at collection: a long suite would age the times
    claims = {k: now + v if k in ("exp", "nbf") and isinstance(v, int) else v for k, v in claims.items()}
    token = await _forge(client, **claims)
    with pytest.raises(InvalidToken, match=detail):
        _tokens(client).verify_access(token)


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_algorithm_is_pinned(client: TestClient) -> None:
    """RFC 8725 §3.1: the header's ``alg`` never picks the algorithm."""
    tokens = _tokens(client)
    key = await _current_key(client)
    unsigned = jwt.encode(_claims(), None, algorithm="none", headers={"kid": key.kid})
    hs512 = await _forge(client, alg="HS512")
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rs256 = jwt.encode(_claims(), private, algorithm="RS256", headers={"kid": key.kid})
    # alg=HS256 header but a signature made with another secret
    other = jwt.encode(_claims(), b"x" * 43, algorithm="HS256", headers={"kid": key.kid})
    for token in (unsigned, hs512, rs256, other, unsigned.rstrip("."), "not.a.jwt", ""):
        with pytest.raises(InvalidToken):
            tokens.verify_access(token)


async def test_unknown_or_missing_kid_is_refused(client: TestClient) -> None:
    with pytest.raises(InvalidToken, match="unknown or retired"):
        _tokens(client).verify_access(await _forge(client, kid="nosuchkid"))
    with pytest.raises(InvalidToken, match="no kid"):
        _tokens(client).verify_access(await _forge(client, kid=None))


async def test_rotated_key_verifies_within_the_overlap_only(client: TestClient) -> None:
    tokens = _tokens(client)
    user = await make_user(community_of(client), "alice")
    old_token, _ = await tokens.issue_access(user)
    old_kid = jwt.get_unverified_header(old_token)["kid"]
    new_kid = await tokens.rotate_signing_key()
    assert new_kid != old_kid
    new_token, _ = await tokens.issue_access(user)
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid
    assert tokens.verify_access(old_token).user_id == user.id  # within key_overlap_s (60 s)
    # the overlap window passes: retired 61 s ago
    async with community_of(client).db.transaction() as session:
        await session.execute(
            update(SigningKey)
            .where(SigningKey.kid == old_kid)
            .values(retired_at=utcnow() - timedelta(seconds=61))
        )
    await tokens.reload_keys()
    with pytest.raises(InvalidToken, match="unknown or retired"):
        tokens.verify_access(old_token)
    assert tokens.verify_access(new_token).user_id == user.id


async def test_signing_key_survives_a_restart(tmp_path: Path) -> None:
    config = CommunityConfig(data_dir=tmp_path)
    first = await _client(config)
    try:
        user = await make_user(community_of(first), "alice")
        token, _ = await tokens_of(first.server.app).issue_access(user)
    finally:
        await first.close()
    second = await _client(config)
    try:
        assert tokens_of(second.server.app).verify_access(token).username == "alice"
        async with community_of(second).db.session() as session:
            assert len((await session.execute(select(SigningKey))).scalars().all()) == 1
    finally:
        await second.close()


async def test_playback_token_is_bound_to_its_channel_and_audience(client: TestClient) -> None:
    tokens = _tokens(client)
    user = await make_user(community_of(client), "alice")
    token, expires_at = await tokens.issue_playback("alice", user.id, ttl_s=120)
    assert 100 < (expires_at - utcnow()).total_seconds() <= 121
    tokens.verify_playback(token, "alice")
    with pytest.raises(InvalidToken, match="another channel"):
        tokens.verify_playback(token, "bob")
    with pytest.raises(InvalidToken, match="aud"):
        tokens.verify_access(token)
    access, _ = await tokens.issue_access(user)
    with pytest.raises(InvalidToken, match="aud"):
        tokens.verify_playback(access, "alice")


async def test_refresh_tokens_are_stored_hashed_and_single_use(db_client: TestClient) -> None:
    tokens = _tokens(db_client)
    db = community_of(db_client).db
    user = await make_user(community_of(db_client), "alice")
    async with db.transaction() as session:
        first = await tokens.issue_refresh(session, user.id)
    assert first.startswith("rt_") and len(first) == 46
    async with db.session() as session:
        stored = (await session.execute(select(RefreshToken.token_hash))).scalars().all()
    assert first not in stored and len(stored[0]) == 64
    user_id, family, second = await tokens.redeem_refresh(first)
    assert user_id == user.id and second != first
    user_id, same_family, third = await tokens.redeem_refresh(second)
    assert same_family == family
    with pytest.raises(InvalidToken, match="already used"):
        await tokens.redeem_refresh(first)  # reuse: the whole family is revoked ...
    with pytest.raises(InvalidToken, match="invalid or expired"):
        await tokens.redeem_refresh(third)  # ... including the newest token
    with pytest.raises(InvalidToken):
        await tokens.redeem_refresh("rt_" + "A" * 43)


async def test_expired_refresh_token_is_refused(client: TestClient) -> None:
    tokens = _tokens(client)
    db = community_of(client).db
    user = await make_user(community_of(client), "alice")
    async with db.transaction() as session:
        token = await tokens.issue_refresh(session, user.id)
    async with db.transaction() as session:
        await session.execute(
            update(RefreshToken).values(expires_at=utcnow() - timedelta(seconds=1))
        )
    with pytest.raises(InvalidToken, match="expired"):
        await tokens.redeem_refresh(token)


async def test_middleware_answers_401_invalid_token_under_api(client: TestClient) -> None:
    expired = await _forge(client, exp=int(time.time()) - 60)
    resp = await client.get("/api/users/me", headers={"Authorization": f"Bearer {expired}"})
    assert resp.status == 401
    assert resp.content_type == "application/problem+json"
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert (await resp.json())["detail"] == "the token has expired"
    resp = await client.get("/api/users/me", cookies={"rc_access": "garbage"})
    assert resp.status == 401


async def test_middleware_leaves_other_bearer_values_alone_outside_api(client: TestClient) -> None:
    user = await make_user(community_of(client), "alice")
    resp = await client.post("/whip-probe", headers={"Authorization": "Bearer sk_not_a_jwt"})
    assert resp.status == 200 and (await resp.json()) == {"user": None}
    token, _ = await _tokens(client).issue_access(user)
    resp = await client.post("/whip-probe", headers={"Authorization": f"Bearer {token}"})
    assert (await resp.json()) == {"user": "alice"}
    # a cookie without the CSRF header on an unsafe request: no principal (and no error) here
    resp = await client.post("/whip-probe", cookies={"rc_access": token})
    assert resp.status == 200 and (await resp.json()) == {"user": None}


async def test_concurrent_redemptions_of_one_token_let_one_win(db_client: TestClient) -> None:
    tokens = _tokens(db_client)
    user = await make_user(community_of(db_client), "alice")
    async with community_of(db_client).db.transaction() as session:
        token = await tokens.issue_refresh(session, user.id)
    results = await asyncio.gather(
        *(tokens.redeem_refresh(token) for _ in range(4)), return_exceptions=True
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, InvalidToken) for r in results if r not in winners)


async def test_a_key_rotated_by_another_instance_is_picked_up(client: TestClient) -> None:
    """Two token services on one database: B learns A's new key soon after seeing its kid."""
    community = community_of(client)
    user = await make_user(community, "alice")
    other = TokenService(community.db, community.config)
    await other.start()
    try:
        await _tokens(client).rotate_signing_key()
        token, _ = await _tokens(client).issue_access(user)
        with pytest.raises(InvalidToken, match="unknown"):
            other.verify_access(token)

        def verifies() -> bool:
            try:
                return other.verify_access(token).user_id == user.id
            except InvalidToken:
                return False

        await wait_for(verifies, 5.0, "the other instance to load the new signing key")
    finally:
        await other.close()
