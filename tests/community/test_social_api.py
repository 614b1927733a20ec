"""``/api/channels/{name}/follow``, ``/api/users/me/following``, ``/api/notifications``: through
the platform app on a real SQLite and a real PostgreSQL database, including that nobody
reads or changes another user's follows or notifications."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from aiohttp.test_utils import TestClient
from sqlalchemy import select

from community.models import Channel, ChannelViewer, Follow, Notification, Stream, User, utcnow
from tests.community.platform_app import bearer, community_of, make_user


async def json_of(
    client: TestClient,
    method: str,
    path: str,
    headers: dict[str, str],
    status: int = 200,
    **kwargs: Any,
) -> Any:
    resp = await client.request(method, path, headers=headers, **kwargs)
    assert resp.status == status, await resp.text()
    if status >= 400:
        assert resp.content_type == "application/problem+json"
    return await resp.json()


async def channel_id(client: TestClient, name: str) -> str:
    async with community_of(client).db.session() as session:
        return str(await session.scalar(select(Channel.id).where(Channel.name == name)))


async def test_follow_and_unfollow_are_idempotent_and_count_followers(
    db_client: TestClient,
) -> None:
    community = community_of(db_client)
    await make_user(community, "caster")
    fans = [await make_user(community, f"fan{i}") for i in range(3)]
    first, second = await bearer(db_client, fans[0]), await bearer(db_client, fans[1])

    assert await json_of(db_client, "POST", "/api/channels/caster/follow", first) == {
        "following": True,
        "followers": 1,
    }
    assert await json_of(db_client, "POST", "/api/channels/caster/follow", first) == {
        "following": True,
        "followers": 1,
    }
    assert await json_of(db_client, "POST", "/api/channels/caster/follow", second) == {
        "following": True,
        "followers": 2,
    }
    assert await json_of(db_client, "DELETE", "/api/channels/caster/follow", first) == {
        "following": False,
        "followers": 1,
    }
    assert await json_of(db_client, "DELETE", "/api/channels/caster/follow", first) == {
        "following": False,
        "followers": 1,
    }
    # Unfollowing a channel never followed: no change, not an error.
    third = await bearer(db_client, fans[2])
    assert await json_of(db_client, "DELETE", "/api/channels/caster/follow", third) == {
        "following": False,
        "followers": 1,
    }


async def test_follow_refusals(db_client: TestClient) -> None:
    community = community_of(db_client)
    caster = await make_user(community, "caster")
    own = await bearer(db_client, caster)
    problem = await json_of(db_client, "POST", "/api/channels/caster/follow", own, 400)
    assert "own channel" in problem["detail"]
    await json_of(db_client, "POST", "/api/channels/nobody_here/follow", own, 404)
    await json_of(db_client, "DELETE", "/api/channels/nobody_here/follow", own, 404)
    await json_of(db_client, "POST", "/api/channels/" + "x" * 300 + "/follow", own, 404)
    resp = await db_client.post("/api/channels/caster/follow")
    assert resp.status == 401 and resp.content_type == "application/problem+json"


async def test_private_channel_is_followed_only_by_allowed_viewers(db_client: TestClient) -> None:
    community = community_of(db_client)
    owner = await make_user(community, "secret")
    allowed, stranger = await make_user(community, "friend"), await make_user(community, "stranger")
    admin = await make_user(community, "boss", role="admin")
    async with community.db.transaction() as session:
        channel = await session.get(Channel, await channel_id(db_client, "secret"))
        assert channel is not None and channel.owner_id == owner.id
        channel.private = True
        session.add(ChannelViewer(channel_id=channel.id, user_id=allowed.id))
    await json_of(
        db_client, "POST", "/api/channels/secret/follow", await bearer(db_client, stranger), 403
    )
    assert (
        await json_of(
            db_client, "POST", "/api/channels/secret/follow", await bearer(db_client, allowed)
        )
    )["following"] is True
    assert (
        await json_of(
            db_client, "POST", "/api/channels/secret/follow", await bearer(db_client, admin)
        )
    )["followers"] == 2


async def test_following_lists_own_follows_newest_first_with_live_state(
    db_client: TestClient,
) -> None:
    community = community_of(db_client)
    fan, other = await make_user(community, "fan"), await make_user(community, "other")
    names = [f"caster{i}" for i in range(5)]
    for name in names:
        await make_user(community, name)
    base = utcnow() - timedelta(hours=1)
    async with community.db.transaction() as session:
        for i, name in enumerate(names):  # followed one minute apart, caster4 last
            session.add(
                Follow(
                    user_id=fan.id,
                    channel_id=await channel_id(db_client, name),
                    created_at=base + timedelta(minutes=i),
                )
            )
        session.add(Follow(user_id=other.id, channel_id=await channel_id(db_client, "caster0")))
        live = Stream(
            channel_id=await channel_id(db_client, "caster3"), status="live", started_at=utcnow()
        )
        session.add(live)
        session.add(Stream(channel_id=await channel_id(db_client, "caster2"), status="ended"))
    headers = await bearer(db_client, fan)

    seen: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        query = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = await json_of(db_client, "GET", "/api/users/me/following", headers, params=query)
        seen += page["channels"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert [c["name"] for c in seen] == list(reversed(names))
    assert {c["name"]: (c["live"], c["stream_id"]) for c in seen}["caster3"] == (True, live.id)
    assert all(not c["live"] and c["stream_id"] is None for c in seen if c["name"] != "caster3")
    assert seen[0]["display_name"] == "Caster4"
    # The other user sees only their own follow.
    theirs = await json_of(
        db_client, "GET", "/api/users/me/following", await bearer(db_client, other)
    )
    assert [c["name"] for c in theirs["channels"]] == ["caster0"]


async def make_notifications(client: TestClient, user: User, count: int) -> list[str]:
    """``count`` notifications of ``user``, one second apart (the last one newest)."""
    base = utcnow() - timedelta(hours=1)
    rows = [
        Notification(
            user_id=user.id,
            kind="stream.live",
            payload={"channel": f"c{i}"},
            created_at=base + timedelta(seconds=i),
        )
        for i in range(count)
    ]
    async with community_of(client).db.transaction() as session:
        session.add_all(rows)
    return [row.id for row in rows]


async def test_notifications_are_listed_and_marked_read_only_by_their_owner(
    db_client: TestClient,
) -> None:
    community = community_of(db_client)
    alice, mallory = await make_user(community, "alice"), await make_user(community, "mallory")
    alices = await make_notifications(db_client, alice, 5)
    mallorys = await make_notifications(db_client, mallory, 1)
    as_alice, as_mallory = await bearer(db_client, alice), await bearer(db_client, mallory)

    page = await json_of(db_client, "GET", "/api/notifications", as_alice, params={"limit": "3"})
    assert [n["id"] for n in page["notifications"]] == alices[::-1][:3]
    assert page["unread"] == 5 and page["next_cursor"]
    rest = await json_of(
        db_client,
        "GET",
        "/api/notifications",
        as_alice,
        params={"limit": "3", "cursor": page["next_cursor"]},
    )
    assert [n["id"] for n in rest["notifications"]] == alices[::-1][3:] and rest[
        "next_cursor"
    ] is None
    first = page["notifications"][0]
    assert first["kind"] == "stream.live" and first["payload"] == {"channel": "c4"}
    assert first["read_at"] is None and first["created_at"].endswith("Z")

    # Mallory sees only hers, and marking Alice's ids read changes nothing of Alice's.
    theirs = await json_of(db_client, "GET", "/api/notifications", as_mallory)
    assert [n["id"] for n in theirs["notifications"]] == mallorys
    assert await json_of(
        db_client, "POST", "/api/notifications/read", as_mallory, json={"ids": alices}
    ) == {"unread": 1}
    assert (await json_of(db_client, "GET", "/api/notifications", as_alice))["unread"] == 5

    assert await json_of(
        db_client, "POST", "/api/notifications/read", as_alice, json={"ids": alices[:2] + mallorys}
    ) == {"unread": 3}
    assert (await json_of(db_client, "GET", "/api/notifications", as_mallory))["unread"] == 1
    unread = await json_of(
        db_client, "GET", "/api/notifications", as_alice, params={"unread": "true"}
    )
    assert [n["id"] for n in unread["notifications"]] == alices[:1:-1]
    read = await json_of(
        db_client, "GET", "/api/notifications", as_alice, params={"unread": "false"}
    )
    assert [n["id"] for n in read["notifications"]] == alices[1::-1]
    assert all(n["read_at"] for n in read["notifications"])
    assert await json_of(
        db_client, "POST", "/api/notifications/read", as_alice, json={"all": True}
    ) == {"unread": 0}
    assert (await json_of(db_client, "GET", "/api/notifications", as_mallory))["unread"] == 1


async def test_bad_input_is_a_4xx_problem(platform_client: TestClient) -> None:
    user = await make_user(community_of(platform_client), "tester")
    headers = await bearer(platform_client, user)
    for params in (
        {"cursor": "not-a-cursor"},
        {"cursor": "W10"},
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "x"},
        {"unread": "maybe"},
        {"cursor": "x" * 500},
    ):
        await json_of(platform_client, "GET", "/api/notifications", headers, 400, params=params)
    await json_of(
        platform_client, "GET", "/api/users/me/following", headers, 400, params={"cursor": "%%%"}
    )
    for body in (
        {},
        {"ids": []},
        {"all": False},
        {"ids": ["x"] * 101},
        {"ids": ["x" * 41]},
        {"ids": "abc"},
        {"ids": [1]},
    ):
        await json_of(platform_client, "POST", "/api/notifications/read", headers, 422, json=body)
    await json_of(platform_client, "POST", "/api/notifications/read", headers, 415, data="all")
    for path in ("/api/notifications", "/api/users/me/following"):
        resp = await platform_client.get(path)
        assert resp.status == 401


async def test_concurrent_follows_of_one_user_count_once(db_client: TestClient) -> None:
    community = community_of(db_client)
    await make_user(community, "caster")
    headers = await bearer(db_client, await make_user(community, "eager"))
    answers = await asyncio.gather(*(
        json_of(db_client, "POST", "/api/channels/caster/follow", headers) for _ in range(6)))
    assert all(a == {"following": True, "followers": 1} for a in answers)
    answers = await asyncio.gather(*(
        json_of(db_client, "DELETE", "/api/channels/caster/follow", headers) for _ in range(6)))
    assert all(a == {"following": False, "followers": 0} for a in answers)


async def test_channel_says_whether_the_caller_follows_it(db_client: TestClient) -> None:
    community = community_of(db_client)
    await make_user(community, "caster")
    fan, other = await make_user(community, "fan"), await make_user(community, "other")
    fan_auth, other_auth = await bearer(db_client, fan), await bearer(db_client, other)
    assert (await json_of(db_client, "GET", "/api/channels/caster", {}))["following"] is None
    assert (await json_of(db_client, "GET", "/api/channels/caster", fan_auth))["following"] is False
    await json_of(db_client, "POST", "/api/channels/caster/follow", fan_auth)
    assert (await json_of(db_client, "GET", "/api/channels/caster", fan_auth))["following"] is True
    assert (await json_of(db_client, "GET", "/api/channels/caster", other_auth))["following"] is False
