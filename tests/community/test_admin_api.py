"""``/api/admin/...``: suspending accounts (tokens refused, refresh revoked, event emitted)
and the audit log — admin only, every action recorded."""

from __future__ import annotations

from typing import Any

import jwt
from aiohttp.test_utils import TestClient
from sqlalchemy import update

from community.api.users import ensure_admin
from community.audit import record
from community.auth import suspended_of
from community.models import User, utcnow
from tests.community.platform_app import community_of

PASSWORD = "correct horse battery"


async def _login(client: TestClient, username: str, password: str = PASSWORD) -> dict[str, Any]:
    resp = await client.post("/api/users/login", json={"username": username, "password": password})
    assert resp.status == 200, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def _register(client: TestClient, username: str) -> dict[str, Any]:
    resp = await client.post(
        "/api/users/register", json={"username": username, "password": PASSWORD}
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def _admin(client: TestClient) -> dict[str, str]:
    password = await ensure_admin(community_of(client).db, "admin password 1")
    assert password == "admin password 1"
    return {"Authorization": f"Bearer {(await _login(client, 'admin', password))['access_token']}"}


async def test_admin_operations_need_an_admin(platform_client: TestClient) -> None:
    alice = await _register(platform_client, "alice")
    mallory = {
        "Authorization": f"Bearer {(await _register(platform_client, 'mallory'))['access_token']}"
    }
    target = alice["user"]["id"]
    calls = [
        ("POST", f"/api/admin/users/{target}/suspend", {"reason": "spam"}),
        ("POST", f"/api/admin/users/{target}/unsuspend", None),
        ("GET", "/api/admin/audit", None),
        ("POST", "/api/admin/signing-keys/rotate", {}),
    ]
    for method, path, body in calls:
        resp = await platform_client.request(method, path, json=body)
        assert resp.status == 401, path
        resp = await platform_client.request(method, path, json=body, headers=mallory)
        assert resp.status == 403, path
        assert resp.content_type == "application/problem+json"
    me = await platform_client.get(
        "/api/users/me", headers={"Authorization": f"Bearer {alice['access_token']}"}
    )
    assert me.status == 200


async def test_suspension_locks_the_account_out_and_is_audited(db_client: TestClient) -> None:
    community = community_of(db_client)
    events: list[tuple[str, dict[str, Any]]] = []

    async def listener(event: str, payload: dict[str, Any]) -> None:
        events.append((event, payload))

    community.events.subscribe(listener, "user.suspended")
    admin = await _admin(db_client)
    alice = await _register(db_client, "alice")
    alice_auth = {"Authorization": f"Bearer {alice['access_token']}"}
    user_id = alice["user"]["id"]

    resp = await db_client.post(
        f"/api/admin/users/{user_id}/suspend", headers=admin, json={"reason": "spam links"}
    )
    assert resp.status == 200
    assert (await resp.json())["suspended"] is True
    assert events == [("user.suspended", {"user_id": user_id, "username": "alice"})]
    # her access token is refused at once, her refresh token is revoked, logging in is refused
    resp = await db_client.get("/api/users/me", headers=alice_auth)
    assert resp.status == 403 and (await resp.json())["detail"] == "this account is suspended"
    resp = await db_client.post(
        "/api/users/refresh", json={"refresh_token": alice["refresh_token"]}
    )
    assert resp.status == 401
    resp = await db_client.post(
        "/api/users/login", json={"username": "alice", "password": PASSWORD}
    )
    assert resp.status == 403
    assert (await (await db_client.get(f"/api/users/{user_id}")).json())["suspended"] is True

    resp = await db_client.post(f"/api/admin/users/{user_id}/unsuspend", headers=admin)
    assert resp.status == 200 and (await resp.json())["suspended"] is False
    assert (await db_client.get("/api/users/me", headers=alice_auth)).status == 200
    await _login(db_client, "alice")

    resp = await db_client.get("/api/admin/audit", headers=admin)
    assert resp.status == 200
    entries = (await resp.json())["entries"]
    assert [(e["action"], e["target_type"], e["target_id"], e["reason"]) for e in entries] == [
        ("user.unsuspend", "user", user_id, ""),
        ("user.suspend", "user", user_id, "spam links"),
    ]
    assert all(
        e["actor"]["username"] == "admin" and e["detail"] == {"username": "alice"} for e in entries
    )


async def test_suspend_refuses_admins_and_unknown_users(platform_client: TestClient) -> None:
    admin = await _admin(platform_client)
    me = await (await platform_client.get("/api/users/me", headers=admin)).json()
    resp = await platform_client.post(
        f"/api/admin/users/{me['id']}/suspend", headers=admin, json={"reason": "x"}
    )
    assert resp.status == 409
    resp = await platform_client.post(
        "/api/admin/users/nosuchuser/suspend", headers=admin, json={"reason": "x"}
    )
    assert resp.status == 404
    resp = await platform_client.post(
        f"/api/admin/users/{me['id']}/suspend", headers=admin, json={"reason": ""}
    )
    assert resp.status == 422
    audit = await (await platform_client.get("/api/admin/audit", headers=admin)).json()
    assert audit == {"entries": [], "next_cursor": None}


async def test_a_suspension_made_elsewhere_applies_after_the_reload(
    platform_client: TestClient,
) -> None:
    """Another instance suspends directly in the database; this one's cache picks it up."""
    community = community_of(platform_client)
    alice = await _register(platform_client, "alice")
    auth = {"Authorization": f"Bearer {alice['access_token']}"}
    async with community.db.transaction() as session:
        await session.execute(
            update(User).where(User.id == alice["user"]["id"]).values(suspended_at=utcnow())
        )
    await suspended_of(platform_client.server.app).reload()
    assert (await platform_client.get("/api/users/me", headers=auth)).status == 403


async def test_audit_log_pages_with_a_cursor(db_client: TestClient) -> None:
    community = community_of(db_client)
    admin = await _admin(db_client)
    async with community.db.transaction() as session:
        for n in range(5):
            await record(session, None, "stream.takedown", "stream", f"s{n}", reason=f"r{n}")
    seen: list[str] = []
    cursor = None
    for _ in range(4):
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        resp = await db_client.get(f"/api/admin/audit?{query}", headers=admin)
        assert resp.status == 200
        page = await resp.json()
        assert len(page["entries"]) <= 2
        seen += [e["target_id"] for e in page["entries"]]
        assert all(e["actor"] is None for e in page["entries"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["s4", "s3", "s2", "s1", "s0"]
    assert (await db_client.get("/api/admin/audit?cursor=bogus", headers=admin)).status == 400
    assert (await db_client.get("/api/admin/audit?limit=0", headers=admin)).status == 400


async def test_rotating_the_signing_key_keeps_old_tokens_for_the_overlap(
    platform_client: TestClient,
) -> None:
    admin = await _admin(platform_client)
    alice = await _register(platform_client, "alice")
    old = {"Authorization": f"Bearer {alice['access_token']}"}
    resp = await platform_client.post("/api/admin/signing-keys/rotate", json={"reason": "drill"},
                                      headers=admin)
    assert resp.status == 200, await resp.text()
    kid = (await resp.json())["kid"]
    # A token signed before the rotation still works (overlap window), a new one names the new kid.
    assert (await platform_client.get("/api/users/me", headers=old)).status == 200
    fresh = (await _login(platform_client, "alice"))["access_token"]
    assert jwt.get_unverified_header(fresh)["kid"] == kid
    assert jwt.get_unverified_header(alice["access_token"])["kid"] != kid
    audit = await (await platform_client.get("/api/admin/audit", headers=admin)).json()
    assert [(e["action"], e["target_id"], e["reason"]) for e in audit["entries"]][0] == (
        "signing_key.rotate", kid, "drill")
