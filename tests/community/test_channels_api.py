"""``/api/channels/{name}``: settings and stream keys, with object-level authorization —
another user can neither read nor change what is not theirs."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from community.keys import MAX_KEYS_PER_CHANNEL
from tests.community.platform_app import bearer, community_of, make_user


async def test_get_channel(platform_client: TestClient) -> None:
    alice = await make_user(community_of(platform_client), "alice")
    resp = await platform_client.get("/api/channels/alice")
    assert resp.status == 200
    body = await resp.json()
    assert body["owner"] == {"id": alice.id, "username": "alice", "display_name": "Alice"}
    assert (
        body["name"],
        body["private"],
        body["followers"],
        body["live"],
        body["stream_id"],
        body["viewers"],
    ) == ("alice", False, 0, False, None, 0)
    assert set(body) == {
        "name",
        "owner",
        "title",
        "category",
        "description",
        "language",
        "tags",
        "private",
        "followers",
        "live",
        "stream_id",
        "viewers",
        "created_at",
        "following",
    }
    assert body["following"] is None  # not logged in
    missing = await platform_client.get("/api/channels/nobody")
    assert missing.status == 404
    assert missing.content_type == "application/problem+json"


async def test_patch_channel_by_owner_admin_and_others(platform_client: TestClient) -> None:
    community = community_of(platform_client)
    alice = await make_user(community, "alice")
    bob = await make_user(community, "bob")
    root = await make_user(community, "root", role="admin")
    change = {
        "title": "Speedrun",
        "category": "gaming",
        "tags": ["Retro", "retro", "any%"],
        "language": "de",
        "private": True,
        "description": "nightly",
    }
    resp = await platform_client.patch(
        "/api/channels/alice", json=change, headers=await bearer(platform_client, alice)
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert (body["title"], body["category"], body["tags"], body["language"], body["private"]) == (
        "Speedrun",
        "gaming",
        ["retro", "any%"],
        "de",
        True,
    )
    other = await platform_client.patch(
        "/api/channels/alice",
        json={"title": "mine now"},
        headers=await bearer(platform_client, bob),
    )
    assert other.status == 403
    by_admin = await platform_client.patch(
        "/api/channels/alice", json={"category": None}, headers=await bearer(platform_client, root)
    )
    assert by_admin.status == 200
    body = await by_admin.json()
    assert (body["title"], body["category"]) == ("Speedrun", None)
    unauthenticated = await platform_client.patch("/api/channels/alice", json={"title": "x"})
    assert unauthenticated.status == 401


async def test_patch_validation(platform_client: TestClient) -> None:
    alice = await make_user(community_of(platform_client), "alice")
    headers = await bearer(platform_client, alice)
    for body in (
        {"category": "no-such-category"},
        {"tags": [f"t{i}" for i in range(11)]},
        {"tags": ["x" * 33]},
        {"title": "x" * 141},
        {"owner_id": "someone"},
        {"language": "not a language"},
    ):
        resp = await platform_client.patch("/api/channels/alice", json=body, headers=headers)
        assert resp.status == 422, (body, await resp.text())
        assert resp.content_type == "application/problem+json"
    missing = await platform_client.patch(
        "/api/channels/nobody", json={"title": "x"}, headers=headers
    )
    assert missing.status == 404


async def test_keys_are_shown_once_and_listed_by_hint(platform_client: TestClient) -> None:
    alice = await make_user(community_of(platform_client), "alice")
    headers = await bearer(platform_client, alice)
    created = await platform_client.post(
        "/api/channels/alice/keys", json={"label": "OBS"}, headers=headers
    )
    assert created.status == 201
    new = await created.json()
    assert new["key"].startswith("sk_") and len(new["key"]) == 35
    assert new["hint"] == new["key"][:7] + "…" and new["label"] == "OBS"
    listed = await platform_client.get("/api/channels/alice/keys", headers=headers)
    assert listed.status == 200
    [info] = (await listed.json())["keys"]
    assert info == {k: v for k, v in new.items() if k != "key"}
    assert new["key"] not in await listed.text()

    rotated = await platform_client.post(
        f"/api/channels/alice/keys/{new['id']}/rotate", headers=headers
    )
    assert rotated.status == 201
    replacement = await rotated.json()
    assert replacement["key"] != new["key"] and replacement["label"] == "OBS"
    keys = {
        k["id"]: k
        for k in (
            await (await platform_client.get("/api/channels/alice/keys", headers=headers)).json()
        )["keys"]
    }
    assert (
        keys[new["id"]]["revoked_at"] is not None and keys[replacement["id"]]["revoked_at"] is None
    )
    again = await platform_client.post(
        f"/api/channels/alice/keys/{new['id']}/rotate", headers=headers
    )
    assert again.status == 409
    revoked = await platform_client.delete(
        f"/api/channels/alice/keys/{replacement['id']}", headers=headers
    )
    assert revoked.status == 204
    assert (
        await platform_client.delete(
            f"/api/channels/alice/keys/{replacement['id']}", headers=headers
        )
    ).status == 204  # idempotent
    assert (
        await platform_client.delete("/api/channels/alice/keys/nokey", headers=headers)
    ).status == 404


async def test_revoking_emits_key_revoked(platform_client: TestClient) -> None:
    community = community_of(platform_client)
    alice = await make_user(community, "alice")
    headers = await bearer(platform_client, alice)
    seen: list[dict[str, object]] = []

    async def listener(event: str, payload: dict[str, object]) -> None:
        seen.append(payload)

    community.events.subscribe(listener, "key.revoked")
    new = await (
        await platform_client.post("/api/channels/alice/keys", json={}, headers=headers)
    ).json()
    await platform_client.delete(f"/api/channels/alice/keys/{new['id']}", headers=headers)
    [payload] = seen
    assert payload["channel"] == "alice" and payload["key_id"] == new["id"]
    assert payload["key_hash"] != new["key"] and len(str(payload["key_hash"])) == 64


async def test_another_user_cannot_touch_the_keys(platform_client: TestClient) -> None:
    community = community_of(platform_client)
    alice = await make_user(community, "alice")
    bob = await make_user(community, "bob")
    root = await make_user(community, "root", role="admin")
    mine = await (
        await platform_client.post(
            "/api/channels/alice/keys", json={}, headers=await bearer(platform_client, alice)
        )
    ).json()
    for intruder in (bob, root):
        headers = await bearer(platform_client, intruder)
        for method, path in (
            ("GET", "/api/channels/alice/keys"),
            ("POST", "/api/channels/alice/keys"),
            ("DELETE", f"/api/channels/alice/keys/{mine['id']}"),
            ("POST", f"/api/channels/alice/keys/{mine['id']}/rotate"),
        ):
            kwargs = {"json": {}} if (method, path) == ("POST", "/api/channels/alice/keys") else {}
            resp = await platform_client.request(method, path, headers=headers, **kwargs)
            assert resp.status == 403, (intruder.username, method, path)
            assert mine["key"] not in await resp.text()
    # bob's own channel cannot reach alice's key either
    resp = await platform_client.delete(
        f"/api/channels/bob/keys/{mine['id']}", headers=await bearer(platform_client, bob)
    )
    assert resp.status == 404
    listed = await platform_client.get(
        "/api/channels/alice/keys", headers=await bearer(platform_client, alice)
    )
    [info] = (await listed.json())["keys"]
    assert info["revoked_at"] is None
    for method, path in (("GET", "/api/channels/alice/keys"), ("POST", "/api/channels/alice/keys")):
        assert (await platform_client.request(method, path, json={})).status == 401


async def test_a_channel_holds_a_bounded_number_of_active_keys(platform_client: TestClient) -> None:
    alice = await make_user(community_of(platform_client), "alice")
    headers = await bearer(platform_client, alice)
    ids = []
    for _ in range(MAX_KEYS_PER_CHANNEL):
        resp = await platform_client.post("/api/channels/alice/keys", json={}, headers=headers)
        assert resp.status == 201
        ids.append((await resp.json())["id"])
    assert (
        await platform_client.post("/api/channels/alice/keys", json={}, headers=headers)
    ).status == 409
    assert (
        await platform_client.delete(f"/api/channels/alice/keys/{ids[0]}", headers=headers)
    ).status == 204
    assert (
        await platform_client.post("/api/channels/alice/keys", json={}, headers=headers)
    ).status == 201
    too_long = await platform_client.post(
        "/api/channels/alice/keys", json={"label": "x" * 65}, headers=headers
    )
    assert too_long.status == 422
