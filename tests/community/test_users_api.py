"""``/api/users/...``: registration, login (throttled, no enumeration), refresh rotation
with reuse detection, logout, cookie mode with CSRF, profiles and the first-run admin —
through the platform app on a real SQLite database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy import select, update

import community.passwords as passwords
from common.ratelimit import TokenBuckets
from community.api.users import RegisterIn, ensure_admin
from community.config import CommunityConfig
from community.models import Channel, RefreshToken, User
from community.throttles import AccountThrottles
from community.usernames import RESERVED, USERNAME_RE
from tests.community.platform_app import community_of, make_user, platform_app

PASSWORD = "correct horse battery"
WEB = {"X-Relaycast-Client": "web"}


async def register(
    client: TestClient, username: str, password: str = PASSWORD, **extra: Any
) -> dict[str, Any]:
    resp = await client.post(
        "/api/users/register", json={"username": username, "password": password, **extra}
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_register_creates_the_user_and_channel_and_logs_in(
    platform_client: TestClient,
) -> None:
    body = await register(
        platform_client, "Alice_1", email="Alice@Example.org", display_name="Alice"
    )
    me = body["user"]
    assert me["username"] == "alice_1" and me["channel"] == "alice_1" and me["role"] == "viewer"
    assert me["email"] == "alice@example.org" and me["display_name"] == "Alice"
    assert body["token_type"] == "Bearer" and body["expires_in"] == 600
    assert body["refresh_token"].startswith("rt_")
    async with community_of(platform_client).db.session() as session:
        channel = (
            await session.execute(select(Channel).where(Channel.name == "alice_1"))
        ).scalar_one()
        user = await session.get(User, me["id"])
    assert channel.owner_id == me["id"]
    assert user is not None and user.password_hash.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    resp = await platform_client.get("/api/users/me", headers=bearer(body["access_token"]))
    assert resp.status == 200 and (await resp.json()) == me


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("ab", PASSWORD),
        ("_alice", PASSWORD),
        ("al-ice", PASSWORD),
        ("a" * 26, PASSWORD),
        ("admin", PASSWORD),
        ("demo", PASSWORD),
        ("whip", PASSWORD),
        ("alice", "short"),
        ("alice", "x" * 257),
    ],
)
async def test_register_refuses_bad_names_and_passwords(
    platform_client: TestClient, username: str, password: str
) -> None:
    resp = await platform_client.post(
        "/api/users/register", json={"username": username, "password": password}
    )
    assert resp.status == 422
    assert resp.content_type == "application/problem+json"


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/api/users/register", '{"username": "alice", "password": "pass\\ud800word12"}'),
        (
            "/api/users/register",
            '{"username": "alice", "password": "correct horse battery", "display_name": "a\\nb"}',
        ),
        (
            "/api/users/register",
            '{"username": "alice", "password": "correct horse battery", "email": "a\\u0000@b.co"}',
        ),
        (
            "/api/users/register",
            '{"username": "alice", "password": "correct horse battery", "extra": 1}',
        ),
        ("/api/users/login", '{"username": "ali\\u0000ce", "password": "whatever1234"}'),
        ("/api/users/login", '{"username": "alice", "password": "\\udfff"}'),
        ("/api/users/refresh", '{"refresh_token": "rt_\\u0000"}'),
        ("/api/users/login", '{"username": "alice"}'),
    ],
)
async def test_bad_input_is_422_never_5xx(platform_client: TestClient, path: str, raw: str) -> None:
    resp = await platform_client.post(path, data=raw, headers={"Content-Type": "application/json"})
    assert resp.status == 422, await resp.text()
    assert resp.content_type == "application/problem+json"


async def test_odd_user_ids_are_404(platform_client: TestClient) -> None:
    for user_id in ("%00", "a" * 65, "x%20y", "..%2F..%2Fetc"):
        assert (await platform_client.get(f"/api/users/{user_id}")).status == 404


async def test_taken_username_and_taken_email_answer_alike(db_client: TestClient) -> None:
    await register(db_client, "alice", email="alice@example.org")
    name_taken = await db_client.post(
        "/api/users/register", json={"username": "ALICE", "password": PASSWORD}
    )
    email_taken = await db_client.post(
        "/api/users/register",
        json={"username": "alice2", "password": PASSWORD, "email": "ALICE@example.org"},
    )
    assert name_taken.status == email_taken.status == 409
    assert (await name_taken.json()) == (await email_taken.json())
    async with community_of(db_client).db.session() as session:
        assert (
            await session.execute(select(Channel.name).where(Channel.name == "alice2"))
        ).first() is None


async def test_registration_is_rate_limited_per_address(platform_client: TestClient) -> None:
    community_of(platform_client).services["account_throttles"] = AccountThrottles(
        register_address=TokenBuckets(1 / 3600, 2)
    )
    await register(platform_client, "alice")
    await register(platform_client, "bobby")
    resp = await platform_client.post(
        "/api/users/register", json={"username": "carol", "password": PASSWORD}
    )
    assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0


async def test_login_by_username_or_email_case_insensitive(platform_client: TestClient) -> None:
    await register(platform_client, "alice", email="alice@example.org")
    for name in ("alice", "ALICE", "Alice@Example.org"):
        resp = await platform_client.post(
            "/api/users/login", json={"username": name, "password": PASSWORD}
        )
        assert resp.status == 200, name
        body = await resp.json()
        assert (
            body["user"]["username"] == "alice" and body["access_token"] and body["refresh_token"]
        )


async def test_unknown_user_and_wrong_password_look_the_same(
    platform_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await register(platform_client, "alice")
    verified: list[str] = []
    real = passwords._verify

    def spy(stored: str, password: str) -> bool:
        verified.append(stored[:30])
        return real(stored, password)

    monkeypatch.setattr(passwords, "_verify", spy)
    answers = []
    for name in ("alice", "nobody", "nobody@example.org"):
        resp = await platform_client.post(
            "/api/users/login", json={"username": name, "password": "wrong password"}
        )
        answers.append((resp.status, await resp.json(), sorted(resp.headers.keys())))
    assert answers[0] == answers[1] == answers[2]
    assert answers[0][0] == 401 and answers[0][1]["detail"] == "invalid username or password"
    # one argon2id verify each, with the same parameters (the dummy hash for unknown users)
    assert len(verified) == 3 and len({v[:28] for v in verified}) == 1


async def test_login_is_throttled_per_account_and_per_address(platform_client: TestClient) -> None:
    community = community_of(platform_client)
    community.services["account_throttles"] = AccountThrottles(
        login_address=TokenBuckets(1 / 3600, 6), login_account=TokenBuckets(1 / 3600, 3)
    )
    await register(platform_client, "alice")
    for _ in range(3):
        resp = await platform_client.post(
            "/api/users/login", json={"username": "alice", "password": "guess guess"}
        )
        assert resp.status == 401
    resp = await platform_client.post(
        "/api/users/login", json={"username": "Alice", "password": PASSWORD}
    )
    assert (
        resp.status == 429 and int(resp.headers["Retry-After"]) > 0
    )  # even the right password now
    # another account from the same address still gets answers until the address's
    # bucket (6 attempts, the refused one included) is empty
    for status in (401, 401):
        resp = await platform_client.post(
            "/api/users/login", json={"username": "bob", "password": "guess guess"}
        )
        assert resp.status == status
    resp = await platform_client.post(
        "/api/users/login", json={"username": "carol", "password": "guess guess"}
    )
    assert resp.status == 429 and resp.content_type == "application/problem+json"


async def test_refresh_rotates_and_reuse_revokes_the_family(db_client: TestClient) -> None:
    first = (await register(db_client, "alice"))["refresh_token"]
    other = (
        await (
            await db_client.post(
                "/api/users/login", json={"username": "alice", "password": PASSWORD}
            )
        ).json()
    )["refresh_token"]
    resp = await db_client.post("/api/users/refresh", json={"refresh_token": first})
    assert resp.status == 200
    rotated = await resp.json()
    second = rotated["refresh_token"]
    assert second != first
    assert (
        await db_client.get("/api/users/me", headers=bearer(rotated["access_token"]))
    ).status == 200
    reuse = await db_client.post("/api/users/refresh", json={"refresh_token": first})
    assert reuse.status == 401
    assert (
        await db_client.post("/api/users/refresh", json={"refresh_token": second})
    ).status == 401
    # the other login (another family) is untouched
    assert (await db_client.post("/api/users/refresh", json={"refresh_token": other})).status == 200
    assert (await db_client.post("/api/users/refresh", json={})).status == 401


async def test_logout_revokes_the_refresh_token(platform_client: TestClient) -> None:
    body = await register(platform_client, "alice")
    resp = await platform_client.post(
        "/api/users/logout", json={"refresh_token": body["refresh_token"]}
    )
    assert resp.status == 204
    assert (
        await platform_client.post(
            "/api/users/refresh", json={"refresh_token": body["refresh_token"]}
        )
    ).status == 401
    assert (
        await platform_client.post("/api/users/logout", json={"refresh_token": "rt_unknown"})
    ).status == 204


def _set_cookies(resp: Any) -> dict[str, str]:
    return {h.split("=", 1)[0]: h for h in resp.headers.getall("Set-Cookie")}


async def test_cookie_mode_sets_cookies_and_enforces_csrf(platform_client: TestClient) -> None:
    resp = await platform_client.post(
        "/api/users/register", headers=WEB, json={"username": "alice", "password": PASSWORD}
    )
    assert resp.status == 201
    body = await resp.json()
    assert (
        "access_token" not in body
        and "refresh_token" not in body
        and body["user"]["username"] == "alice"
    )
    cookies = _set_cookies(resp)
    assert "HttpOnly" in cookies["rc_access"] and "SameSite=Lax" in cookies["rc_access"]
    assert "Path=/;" in cookies["rc_access"] + ";" and "Secure" not in cookies["rc_access"]
    assert "HttpOnly" in cookies["rc_refresh"] and "SameSite=Strict" in cookies["rc_refresh"]
    assert "Path=/api/users" in cookies["rc_refresh"]
    assert "HttpOnly" not in cookies["rc_csrf"] and "SameSite=Lax" in cookies["rc_csrf"]
    jar = {c.key: c.value for c in platform_client.session.cookie_jar}
    # reading with the cookie needs no CSRF header
    assert (await platform_client.get("/api/users/me")).status == 200
    # changing state with the cookie does
    no_csrf = await platform_client.patch("/api/users/me", json={"bio": "hi"})
    assert no_csrf.status == 403 and "X-CSRF-Token" in (await no_csrf.json())["detail"]
    wrong = await platform_client.patch(
        "/api/users/me", json={"bio": "hi"}, headers={"X-CSRF-Token": "nope"}
    )
    assert wrong.status == 403
    ok = await platform_client.patch(
        "/api/users/me", json={"bio": "hi"}, headers={"X-CSRF-Token": jar["rc_csrf"]}
    )
    assert ok.status == 200 and (await ok.json())["bio"] == "hi"
    # refresh from the cookie rotates the cookies
    resp = await platform_client.post("/api/users/refresh", headers=WEB, json={})
    assert resp.status == 200 and "access_token" not in await resp.json()
    assert _set_cookies(resp)["rc_refresh"] != cookies["rc_refresh"]
    # an expired access cookie never blocks logging in again
    platform_client.session.cookie_jar.update_cookies({"rc_access": "expired.or.garbage"})
    resp = await platform_client.post(
        "/api/users/login", headers=WEB, json={"username": "alice", "password": PASSWORD}
    )
    assert resp.status == 200
    resp = await platform_client.post("/api/users/logout", json={})
    assert resp.status == 204
    cleared = _set_cookies(resp)
    assert all(
        "Max-Age=0" in cleared[name] or "expires=" in cleared[name].lower()
        for name in ("rc_access", "rc_refresh", "rc_csrf")
    )


async def test_secure_cookies_when_configured(tmp_path: Path) -> None:
    client = TestClient(
        TestServer(platform_app(CommunityConfig(data_dir=tmp_path, cookie_secure=True)))
    )
    await client.start_server()
    try:
        resp = await client.post(
            "/api/users/register", headers=WEB, json={"username": "alice", "password": PASSWORD}
        )
        assert resp.status == 201
        assert all("Secure" in header for header in _set_cookies(resp).values())
    finally:
        await client.close()


async def test_patch_me_and_password_change(platform_client: TestClient) -> None:
    session_a = await register(platform_client, "alice")
    login_b = await (
        await platform_client.post(
            "/api/users/login", json={"username": "alice", "password": PASSWORD}
        )
    ).json()
    auth = bearer(session_a["access_token"])
    resp = await platform_client.patch(
        "/api/users/me", headers=auth, json={"display_name": "Al", "bio": "b"}
    )
    assert resp.status == 200 and (await resp.json())["display_name"] == "Al"
    resp = await platform_client.patch(
        "/api/users/me", headers=auth, json={"new_password": "another password"}
    )
    assert resp.status == 403
    resp = await platform_client.patch(
        "/api/users/me",
        headers=auth,
        json={"new_password": "another password", "current_password": "wrong password"},
    )
    assert resp.status == 403
    resp = await platform_client.patch("/api/users/me", headers=auth, json={"role": "admin"})
    assert resp.status == 422
    resp = await platform_client.patch(
        "/api/users/me",
        headers=auth,
        json={"new_password": "another password", "current_password": PASSWORD},
    )
    assert resp.status == 200
    login = await platform_client.post(
        "/api/users/login", json={"username": "alice", "password": PASSWORD}
    )
    assert login.status == 401
    login = await platform_client.post(
        "/api/users/login", json={"username": "alice", "password": "another password"}
    )
    assert login.status == 200
    # the other login's refresh tokens are revoked, this session's are not
    assert (
        await platform_client.post(
            "/api/users/refresh", json={"refresh_token": login_b["refresh_token"]}
        )
    ).status == 401
    assert (
        await platform_client.post(
            "/api/users/refresh", json={"refresh_token": session_a["refresh_token"]}
        )
    ).status == 200


async def test_email_change_to_a_taken_address_is_409(db_client: TestClient) -> None:
    await register(db_client, "alice", email="alice@example.org")
    bob = await register(db_client, "bobby")
    resp = await db_client.patch(
        "/api/users/me", headers=bearer(bob["access_token"]), json={"email": "alice@example.org"}
    )
    assert resp.status == 409
    resp = await db_client.patch(
        "/api/users/me", headers=bearer(bob["access_token"]), json={"email": "bob@example.org"}
    )
    assert resp.status == 200 and (await resp.json())["email"] == "bob@example.org"


async def test_public_profile_has_no_email_and_others_cannot_be_changed(
    platform_client: TestClient,
) -> None:
    alice = await register(platform_client, "alice", email="alice@example.org")
    bob = await register(platform_client, "bobby")
    resp = await platform_client.get(
        f"/api/users/{alice['user']['id']}", headers=bearer(bob["access_token"])
    )
    assert resp.status == 200
    profile = await resp.json()
    assert "email" not in profile and "alice@example.org" not in await resp.text()
    assert profile == {
        k: alice["user"][k]
        for k in ("id", "username", "display_name", "bio", "created_at", "channel")
    } | {"suspended": False}
    resp = await platform_client.patch(
        f"/api/users/{alice['user']['id']}",
        headers=bearer(bob["access_token"]),
        json={"bio": "pwned"},
    )
    assert resp.status == 405
    assert (await platform_client.get("/api/users/nosuchuser")).status == 404
    assert (await platform_client.get("/api/users/me")).status == 401


async def test_login_upgrades_an_old_hash(platform_client: TestClient) -> None:
    community = community_of(platform_client)
    user = await make_user(community, "alice")
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
    async with community.db.transaction() as session:
        await session.execute(update(User).where(User.id == user.id).values(password_hash=weak))
    resp = await platform_client.post(
        "/api/users/login", json={"username": "alice", "password": PASSWORD}
    )
    assert resp.status == 200
    async with community.db.session() as session:
        stored = (await session.get(User, user.id)).password_hash  # type: ignore[union-attr]
    assert stored != weak and not passwords.needs_rehash(stored)


async def test_ensure_admin_creates_one_admin_once(platform_client: TestClient) -> None:
    db = community_of(platform_client).db
    password = await ensure_admin(db, None)
    assert password is not None and len(password) >= 20
    assert await ensure_admin(db, None) is None
    resp = await platform_client.post(
        "/api/users/login", json={"username": "admin", "password": password}
    )
    assert resp.status == 200
    assert (await resp.json())["user"]["role"] == "admin"
    async with db.session() as session:
        assert (await session.execute(select(RefreshToken))).scalars().first() is not None


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=30))
def test_registered_usernames_always_follow_the_rule(name: str) -> None:
    try:
        accepted = RegisterIn(username=name, password=PASSWORD).username
    except ValidationError:
        return
    assert (
        USERNAME_RE.fullmatch(accepted)
        and accepted not in RESERVED
        and accepted == name.strip().lower()
    )


@settings(max_examples=100, deadline=None)
@given(st.from_regex(USERNAME_RE, fullmatch=True))
def test_every_name_the_rule_allows_is_accepted_in_any_case(name: str) -> None:
    if name in RESERVED:
        return
    assert RegisterIn(username=name.upper(), password=PASSWORD).username == name
