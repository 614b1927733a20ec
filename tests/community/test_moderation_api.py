"""The moderation API (:mod:`community.api.moderation`) on the platform app with a real
:class:`signaling.chat.ChatService` (in-memory log) whose policy is the platform's, on
SQLite and PostgreSQL: settings, moderators, bans and timeouts, deleting and clearing,
blocked terms, the report queue with held messages, the moderation log, ``chat/me`` —
and that nobody acts on a channel they do not moderate."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select

from common.problems import problem_middleware
from community.app import install
from community.config import CommunityConfig
from community.models import AuditEntry, Channel, ChannelViewer, ChatReport, Stream, User, utcnow
from relaycast.service import Service
from signaling.app_keys import CHAT
from signaling.chat import ChatRefused, ChatService, MemoryChatLog, Sender
from tests.chat_page import ChatPage
from tests.community.platform_app import bearer, community_of, make_user
from tests.polling import wait_for
from tests.services import access_token, make_channel


def chat_app(config: CommunityConfig) -> web.Application:
    """The platform app with a chat service, as the signaling app holds one."""
    app = web.Application(middlewares=[problem_middleware])
    chat = ChatService(MemoryChatLog(50))
    app[CHAT] = chat

    async def start(app: web.Application) -> None:
        await chat.start()

    async def close(app: web.Application) -> None:
        await chat.close()

    app.on_startup.append(start)
    app.on_cleanup.append(close)
    install(app, config)
    return app


class Room:
    """The test client, the chat service, the users by name and their headers; ``seen``
    collects every event the chat delivered locally, in order."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.chat: ChatService = client.server.app[CHAT]
        self.users: dict[str, User] = {}
        self.auth: dict[str, dict[str, str]] = {}
        self.seen: list[tuple[str, dict[str, Any]]] = []

        async def sink(room: str, event: dict[str, Any]) -> None:
            self.seen.append((room, event))

        self.chat.sinks.append(sink)

    async def user(self, name: str, role: str = "viewer") -> User:
        user = await make_user(community_of(self.client), name, role=role)
        self.users[name] = user
        self.auth[name] = await bearer(self.client, user)
        return user

    def sender(self, name: str) -> Sender:
        if name.startswith("guest"):
            return Sender(id=name, name="swift-otter-42", via="socketio")
        return Sender(id=f"p-{name}", name=name, user_id=self.users[name].id, via="socketio")

    async def say(self, name: str, text: str, room: str = "caster") -> dict[str, Any]:
        return await self.chat.submit(room, self.sender(name), text)

    async def refused(self, name: str, text: str, room: str = "caster") -> ChatRefused:
        with pytest.raises(ChatRefused) as info:
            await self.say(name, text, room)
        return info.value

    async def wait_seen(self, count: int) -> None:
        """Until the chat delivered ``count`` events locally (delivery is asynchronous)."""
        await wait_for(lambda: len(self.seen) >= count, 5.0, f"{count} chat events delivered")

    async def call(
        self, method: str, path: str, who: str | None = None, status: int = 200, **kwargs: Any
    ) -> Any:
        headers = self.auth[who] if who is not None else {}
        resp = await self.client.request(method, path, headers=headers, **kwargs)
        body = await resp.text()
        assert resp.status == status, f"{method} {path} as {who}: {resp.status} {body}"
        if status >= 400:
            assert resp.content_type == "application/problem+json"
        return await resp.json() if body else None


@pytest.fixture
async def room(db_url: str, tmp_path: Path) -> AsyncIterator[Room]:
    """Channel ``caster`` with moderator ``mod``; ``other`` (another channel, whose
    moderator is ``othermod``), admin ``boss``, viewers ``alice`` and ``bob``."""
    config = CommunityConfig(data_dir=tmp_path, database_url=db_url)
    client = TestClient(TestServer(chat_app(config)))
    await client.start_server()
    try:
        r = Room(client)
        for name in ("caster", "mod", "other", "othermod", "alice", "bob"):
            await r.user(name)
        await r.user("boss", role="admin")
        await r.call("PUT", "/api/channels/caster/moderators/mod", "caster", 204)
        await r.call("PUT", "/api/channels/other/moderators/othermod", "other", 204)
        yield r
    finally:
        await client.close()


DEFAULTS = {
    "slow_mode_s": 0,
    "followers_only_s": None,
    "guests_allowed": True,
    "links_allowed": True,
}


async def test_settings_read_by_anyone_changed_by_moderators(room: Room) -> None:
    assert await room.call("GET", "/api/channels/caster/chat/settings") == DEFAULTS
    changed = await room.call(
        "PATCH",
        "/api/channels/caster/chat/settings",
        "mod",
        json={"slow_mode_s": 30, "links_allowed": False},
    )
    assert changed == {**DEFAULTS, "slow_mode_s": 30, "links_allowed": False}
    assert await room.call("GET", "/api/channels/caster/chat/settings", "alice") == changed
    changed = await room.call(
        "PATCH",
        "/api/channels/caster/chat/settings",
        "caster",
        json={"followers_only_s": 0, "guests_allowed": False},
    )
    assert changed["followers_only_s"] == 0 and not changed["guests_allowed"]
    off = await room.call(
        "PATCH", "/api/channels/caster/chat/settings", "boss", json={"followers_only_s": None}
    )
    assert off["followers_only_s"] is None and off["slow_mode_s"] == 30
    # The rules hold at once on this instance: links are refused, slow mode counts.
    assert (await room.refused("alice", "see https://example.com")).code == "links_off"
    await room.say("alice", "first")
    refusal = await room.refused("alice", "second")
    assert refusal.code == "slow_mode" and 29 < (refusal.retry_after_s or 0) <= 30
    await room.say("mod", "moderators are exempt")
    await room.say("mod", "from slow mode and links: https://example.com")
    assert (await room.refused("guest-1", "hi")).code == "guests_off"
    log = await room.call("GET", "/api/channels/caster/moderation/log", "caster")
    settings = [e for e in log["entries"] if e["action"] == "settings.update"]
    assert [e["actor"]["username"] for e in settings] == ["boss", "caster", "mod"]
    assert settings[-1]["detail"] == {"slow_mode_s": [0, 30], "links_allowed": [True, False]}


SETTINGS_422 = [
    {"slow_mode_s": 86401},
    {"slow_mode_s": -1},
    {"slow_mode_s": None},
    {"followers_only_s": 7776001},
    {"guests_allowed": "yes"},
    {"slow_mode_s": "5"},
    {"colour": "red"},
    [],
]
BAN_422 = [
    {},
    {"user": "alice", "participant": "x"},
    {"user": "alice", "duration_s": 0},
    {"user": "alice", "duration_s": 1209601},
    {"user": "alice", "reason": "x" * 501},
    {"participant": "bad id!"},
    {"user": "alice", "extra": 1},
    {"user": "alice", "reason": "two\nlines"},
]
TERM_422 = [
    {"term": ""},
    {"term": "   "},
    {"term": "x" * 101},
    {"term": "ok", "action": "mute"},
    {"term": 5},
]


async def test_bodies_are_validated(room: Room) -> None:
    for body in SETTINGS_422:
        await room.call("PATCH", "/api/channels/caster/chat/settings", "caster", 422, json=body)
    for body in BAN_422:
        await room.call("POST", "/api/channels/caster/chat/bans", "mod", 422, json=body)
    for body in TERM_422:
        await room.call("POST", "/api/channels/caster/chat/blocked-terms", "mod", 422, json=body)
    await room.call("POST", "/api/channels/caster/chat/bans", "mod", 404, json={"user": "nobody"})
    await room.call(
        "POST", "/api/channels/caster/chat/reports", "alice", 422, json={"message_id": "../x"}
    )
    await room.call(
        "GET", "/api/channels/caster/chat/reports", "mod", 400, params={"status": "all"}
    )
    assert await room.call("GET", "/api/channels/caster/chat/settings") == DEFAULTS
    log = await room.call("GET", "/api/channels/caster/moderation/log", "caster")
    assert [e["action"] for e in log["entries"]] == ["moderator.add"]


async def test_moderators_appointed_by_owner_or_admin(room: Room) -> None:
    listed = await room.call("GET", "/api/channels/caster/moderators", "mod")
    assert [m["username"] for m in listed["moderators"]] == ["mod"]
    await room.call(
        "PUT", "/api/channels/caster/moderators/alice", "mod", 403
    )  # a moderator cannot
    await room.call("PUT", "/api/channels/caster/moderators/Alice", "boss", 204)
    await room.call("PUT", "/api/channels/caster/moderators/alice", "caster", 204)  # idempotent
    listed = await room.call("GET", "/api/channels/caster/moderators", "alice")
    assert [m["username"] for m in listed["moderators"]] == ["mod", "alice"]
    assert (await room.say("alice", "now with a badge"))["from"]["badges"] == ["moderator"]
    await room.call("PUT", "/api/channels/caster/moderators/caster", "caster", 400)
    await room.call("PUT", "/api/channels/caster/moderators/nobody", "caster", 404)
    await room.call("DELETE", "/api/channels/caster/moderators/alice", "caster", 204)
    await room.call("DELETE", "/api/channels/caster/moderators/alice", "caster", 404)
    assert "badges" not in (await room.say("alice", "badge gone"))["from"]
    await room.call("GET", "/api/channels/caster/moderators", "alice", 403)
    log = await room.call("GET", "/api/channels/caster/moderation/log", "caster")
    actions = [(e["action"], e["target_name"], e["actor"]["username"]) for e in log["entries"]]
    assert actions[:2] == [
        ("moderator.remove", "alice", "caster"),
        ("moderator.add", "alice", "boss"),
    ]


async def test_timeout_ban_and_unban(room: Room) -> None:
    timed = await room.call(
        "POST",
        "/api/channels/caster/chat/bans",
        "mod",
        201,
        json={"user": "alice", "duration_s": 600, "reason": "calm down"},
    )
    assert timed["target"] == room.users["alice"].id and timed["target_name"] == "alice"
    assert timed["expires_at"] is not None and timed["reason"] == "calm down"
    refusal = await room.refused("alice", "hello?")
    assert refusal.code == "timed_out" and 590 < (refusal.retry_after_s or 0) <= 600
    me = await room.call("GET", "/api/channels/caster/chat/me", "alice")
    assert me["timed_out_until"] is not None and not me["banned"] and not me["moderator"]
    # Alice is free in another channel.
    await room.say("alice", "hello other", room="other")

    banned = await room.call(
        "POST", "/api/channels/caster/chat/bans", "caster", 201, json={"user": "alice"}
    )
    assert banned["expires_at"] is None
    assert (await room.refused("alice", "hello?")).code == "banned"
    assert (await room.call("GET", "/api/channels/caster/chat/me", "alice"))["banned"] is True

    await room.say("guest-7", "guest words")
    guest = await room.call(
        "POST",
        "/api/channels/caster/chat/bans",
        "mod",
        201,
        json={"participant": "guest-7", "duration_s": 60},
    )
    assert guest["target"] == "guest:guest-7" and guest["target_name"] == "swift-otter-42"
    assert (await room.refused("guest-7", "again")).code == "timed_out"
    await room.say("guest-8", "another guest is fine")

    bans = await room.call("GET", "/api/channels/caster/chat/bans", "mod")
    assert {b["target"] for b in bans["bans"]} == {room.users["alice"].id, "guest:guest-7"}
    await room.call(
        "DELETE",
        f"/api/channels/caster/chat/bans/{room.users['alice'].id}",
        "mod",
        204,
        params={"reason": "served"},
    )
    await room.say("alice", "I am back")
    await room.call(
        "DELETE", f"/api/channels/caster/chat/bans/{room.users['alice'].id}", "mod", 404
    )
    await room.call("DELETE", "/api/channels/caster/chat/bans/guest:guest-7", "mod", 204)
    await room.say("guest-7", "back too")

    log = await room.call("GET", "/api/channels/caster/moderation/log", "mod")
    entries = [
        (e["action"], e["target_name"], e["actor"]["username"], e["reason"]) for e in log["entries"]
    ]
    assert entries[:5] == [
        ("unban", "swift-otter-42", "mod", ""),
        ("unban", "alice", "mod", "served"),
        ("timeout", "swift-otter-42", "mod", ""),
        ("ban", "alice", "caster", ""),
        ("timeout", "alice", "mod", "calm down"),
    ]
    assert log["entries"][4]["detail"] == {"duration_s": 600}


BAN_RANKS = [
    ("mod", "caster", 403),  # a moderator cannot ban the broadcaster
    ("mod", "boss", 403),  # ... nor an admin
    ("mod", "mod", 403),  # ... nor themselves
    ("caster", "boss", 403),  # the broadcaster cannot ban an admin
    ("caster", "mod", 201),  # the broadcaster can ban their moderator
    ("boss", "caster", 201),  # an admin ranks above everybody in a channel
]


async def test_ban_ranks(room: Room) -> None:
    await room.call("PUT", "/api/channels/caster/moderators/bob", "caster", 204)
    await room.call("POST", "/api/channels/caster/chat/bans", "bob", 403, json={"user": "mod"})
    for actor, target, status in BAN_RANKS:
        await room.call(
            "POST", "/api/channels/caster/chat/bans", actor, status, json={"user": target}
        )
    bans = await room.call("GET", "/api/channels/caster/chat/bans", "boss")
    assert {b["target_name"] for b in bans["bans"]} == {"mod", "caster"}


async def test_delete_and_clear_fan_out_and_leave_history(room: Room) -> None:
    first = await room.say("alice", "keep me")
    second = await room.say("bob", "delete me")
    await room.call(
        "DELETE",
        f"/api/channels/caster/chat/messages/{second['id']}",
        "mod",
        204,
        params={"reason": "rude"},
    )
    assert [m["id"] for m in await room.chat.history("caster")] == [first["id"]]
    await room.call("DELETE", f"/api/channels/caster/chat/messages/{second['id']}", "mod", 404)
    await room.call("DELETE", "/api/channels/caster/chat/messages/" + "0" * 32, "mod", 404)
    await room.call("DELETE", f"/api/channels/other/chat/messages/{first['id']}", "othermod", 404)
    await room.call("POST", "/api/channels/caster/chat/clear", "caster", 204)
    assert await room.chat.history("caster") == []
    await room.wait_seen(4)
    events = [e for r, e in room.seen if r == "caster"]
    assert [e["type"] for e in events] == ["chat", "chat", "delete", "clear"]
    assert events[2]["ids"] == [second["id"]]
    log = await room.call("GET", "/api/channels/caster/moderation/log", "mod")
    assert [
        (e["action"], e["target"], e["target_name"], e["reason"]) for e in log["entries"][:2]
    ] == [("chat.clear", "", "", ""), ("message.delete", second["id"], "bob", "rude")]


async def test_blocked_terms_and_the_held_queue(room: Room) -> None:
    term = await room.call(
        "POST",
        "/api/channels/caster/chat/blocked-terms",
        "mod",
        201,
        json={"term": "Spoiler", "action": "hold"},
    )
    assert (term["term"], term["action"]) == ("Spoiler", "hold")
    await room.call(
        "POST",
        "/api/channels/caster/chat/blocked-terms",
        "mod",
        409,
        json={"term": "spoiler", "action": "block"},
    )
    blocked = await room.call(
        "POST", "/api/channels/caster/chat/blocked-terms", "caster", 201, json={"term": "badword"}
    )
    assert blocked["action"] == "block"
    listed = await room.call("GET", "/api/channels/caster/chat/blocked-terms", "mod")
    assert [t["term"] for t in listed["terms"]] == ["Spoiler", "badword"]

    refusal = await room.refused("alice", "what a BADWORD")
    assert refusal.code == "blocked_term" and "badword" not in refusal.detail.lower()
    assert (await room.refused("mod", "what a badword")).code == "blocked_term"
    for disguised in ("b\u0430dw\u043erd", "B4DW0RD", "b.a.d.w.o.r.d", "\uff42\uff41\uff44word"):
        assert (await room.refused("alice", f"so {disguised}!")).code == "blocked_term", disguised
    held = await room.refused("alice", "the SPOILER is here")
    assert held.code == "held"
    await room.say("mod", "moderators are not held: spoiler")  # exempt from hold
    assert [m["text"] for m in await room.chat.history("caster")] == [
        "moderators are not held: spoiler"
    ]

    queue = await room.call("GET", "/api/channels/caster/chat/reports", "mod")
    [item] = queue["reports"]
    assert (item["kind"], item["status"], item["reporter"]) == ("held", "open", None)
    assert item["message"]["text"] == "the SPOILER is here"
    assert item["message"]["from"]["user"] == room.users["alice"].id
    approved = await room.call(
        "POST",
        f"/api/channels/caster/chat/reports/{item['id']}/resolve",
        "mod",
        json={"action": "approve"},
    )
    assert (approved["status"], approved["resolution"]) == ("resolved", "approved")
    history = await room.chat.history("caster")
    assert [m["text"] for m in history] == [
        "moderators are not held: spoiler",
        "the SPOILER is here",
    ]
    assert history[-1]["seq"] == history[0]["seq"] + 1
    await room.call(
        "POST",
        f"/api/channels/caster/chat/reports/{item['id']}/resolve",
        "mod",
        409,
        json={"action": "approve"},
    )
    assert (await room.call("GET", "/api/channels/caster/chat/reports", "mod"))["reports"] == []
    done = await room.call(
        "GET", "/api/channels/caster/chat/reports", "mod", params={"status": "resolved"}
    )
    assert [r["id"] for r in done["reports"]] == [item["id"]]

    # A held message dropped by "delete" is never shown.
    await room.refused("bob", "spoiler again")
    [item] = (await room.call("GET", "/api/channels/caster/chat/reports", "mod"))["reports"]
    await room.call(
        "POST",
        f"/api/channels/caster/chat/reports/{item['id']}/resolve",
        "mod",
        json={"action": "delete"},
    )
    assert "spoiler again" not in [m["text"] for m in await room.chat.history("caster")]

    await room.call("DELETE", f"/api/channels/caster/chat/blocked-terms/{term['id']}", "mod", 204)
    await room.call("DELETE", f"/api/channels/caster/chat/blocked-terms/{term['id']}", "mod", 404)
    await room.call(
        "DELETE", f"/api/channels/other/chat/blocked-terms/{blocked['id']}", "othermod", 404
    )
    await room.say("alice", "spoiler is fine now")
    log = await room.call("GET", "/api/channels/caster/moderation/log", "mod")
    assert [e["action"] for e in log["entries"][:4]] == [
        "term.remove",
        "report.delete",
        "report.approve",
        "term.add",
    ]


async def test_server_terms_are_the_admins(room: Room) -> None:
    await room.call(
        "POST", "/api/admin/chat/blocked-terms", "caster", 403, json={"term": "everywhere"}
    )
    await room.call("GET", "/api/admin/chat/blocked-terms", "mod", 403)
    term = await room.call(
        "POST", "/api/admin/chat/blocked-terms", "boss", 201, json={"term": "everywhere"}
    )
    assert (await room.refused("alice", "everywhere!")).code == "blocked_term"
    assert (await room.refused("alice", "everywhere!", room="other")).code == "blocked_term"
    listed = await room.call("GET", "/api/admin/chat/blocked-terms", "boss")
    assert [t["id"] for t in listed["terms"]] == [term["id"]]
    # A channel's term list never shows (nor deletes) a server term.
    assert (await room.call("GET", "/api/channels/caster/chat/blocked-terms", "caster"))[
        "terms"
    ] == []
    await room.call(
        "DELETE", f"/api/channels/caster/chat/blocked-terms/{term['id']}", "caster", 404
    )
    await room.call("DELETE", f"/api/admin/chat/blocked-terms/{term['id']}", "boss", 204)
    await room.say("alice", "everywhere!")
    async with community_of(room.client).db.session() as session:
        actions = (await session.scalars(select(AuditEntry.action).order_by(AuditEntry.id))).all()
    assert actions == ["chat.term.add", "chat.term.remove"]


async def test_reports_reach_the_queue_and_delete_the_message(room: Room) -> None:
    message = await room.say("bob", "something nasty")
    created = await room.call(
        "POST",
        "/api/channels/caster/chat/reports",
        "alice",
        201,
        json={"message_id": message["id"], "reason": "insult"},
    )
    again = await room.call(
        "POST",
        "/api/channels/caster/chat/reports",
        "alice",
        201,
        json={"message_id": message["id"]},
    )
    assert again["id"] == created["id"]
    await room.call(
        "POST", "/api/channels/caster/chat/reports", "mod", 201, json={"message_id": message["id"]}
    )
    await room.call(
        "POST", "/api/channels/caster/chat/reports", "alice", 404, json={"message_id": "f" * 32}
    )
    await room.call(
        "POST", "/api/channels/other/chat/reports", "alice", 404, json={"message_id": message["id"]}
    )  # not a message of that channel
    await room.call(
        "POST", "/api/channels/caster/chat/reports", None, 401, json={"message_id": message["id"]}
    )

    queue = await room.call(
        "GET", "/api/channels/caster/chat/reports", "caster", params={"limit": 1}
    )
    assert len(queue["reports"]) == 1 and queue["next_cursor"]
    rest = await room.call(
        "GET",
        "/api/channels/caster/chat/reports",
        "caster",
        params={"limit": 1, "cursor": queue["next_cursor"]},
    )
    items = {r["id"]: r for r in queue["reports"] + rest["reports"]}
    mine = items[created["id"]]
    assert (mine["kind"], mine["reason"], mine["reporter"]["username"]) == (
        "report",
        "insult",
        "alice",
    )
    assert mine["message"]["text"] == "something nasty" and mine["message"]["id"] == message["id"]
    await room.call(
        "POST",
        f"/api/channels/caster/chat/reports/{created['id']}/resolve",
        "mod",
        409,
        json={"action": "approve"},
    )  # only held messages are approved
    resolved = await room.call(
        "POST",
        f"/api/channels/caster/chat/reports/{created['id']}/resolve",
        "mod",
        json={"action": "delete", "reason": "insult"},
    )
    assert (resolved["status"], resolved["resolution"]) == ("resolved", "deleted")
    assert resolved["resolved_at"] is not None
    assert await room.chat.history("caster") == []
    # Both reports of the message are resolved with it.
    assert (await room.call("GET", "/api/channels/caster/chat/reports", "mod"))["reports"] == []

    other = await room.say("bob", "meh")
    report = await room.call(
        "POST", "/api/channels/caster/chat/reports", "alice", 201, json={"message_id": other["id"]}
    )
    dismissed = await room.call(
        "POST",
        f"/api/channels/caster/chat/reports/{report['id']}/resolve",
        "caster",
        json={"action": "dismiss"},
    )
    assert (dismissed["status"], dismissed["resolution"]) == ("dismissed", "dismissed")
    assert [m["id"] for m in await room.chat.history("caster")] == [other["id"]]
    await room.call(
        "POST",
        "/api/channels/caster/chat/reports/nosuchreport/resolve",
        "mod",
        404,
        json={"action": "dismiss"},
    )
    await room.call(
        "POST",
        f"/api/channels/other/chat/reports/{report['id']}/resolve",
        "othermod",
        404,
        json={"action": "dismiss"},
    )


async def test_reports_are_rate_limited(room: Room) -> None:
    messages = [await room.say(f"guest-{i}", f"message {i}") for i in range(11)]
    for message in messages[:10]:
        await room.call(
            "POST",
            "/api/channels/caster/chat/reports",
            "alice",
            201,
            json={"message_id": message["id"]},
        )
    await room.call(
        "POST",
        "/api/channels/caster/chat/reports",
        "alice",
        429,
        json={"message_id": messages[10]["id"]},
    )
    await room.call(
        "POST",
        "/api/channels/caster/chat/reports",
        "bob",
        201,
        json={"message_id": messages[10]["id"]},
    )


async def test_log_pages(room: Room) -> None:
    for seconds in range(1, 6):
        await room.call(
            "PATCH", "/api/channels/caster/chat/settings", "mod", json={"slow_mode_s": seconds}
        )
    first = await room.call(
        "GET", "/api/channels/caster/moderation/log", "mod", params={"limit": 2}
    )
    second = await room.call(
        "GET",
        "/api/channels/caster/moderation/log",
        "mod",
        params={"limit": 2, "cursor": first["next_cursor"]},
    )
    values = [e["detail"]["slow_mode_s"][1] for e in first["entries"] + second["entries"]]
    assert values == [5, 4, 3, 2]
    await room.call(
        "GET", "/api/channels/caster/moderation/log", "mod", 400, params={"cursor": "junk"}
    )
    await room.call("GET", "/api/channels/caster/moderation/log", "mod", 400, params={"limit": 101})


async def test_chat_me(room: Room) -> None:
    guest = await room.call("GET", "/api/channels/caster/chat/me")
    assert guest == {
        "moderator": False,
        "broadcaster": False,
        "banned": False,
        "timed_out_until": None,
        "settings": DEFAULTS,
    }
    owner = await room.call("GET", "/api/channels/caster/chat/me", "caster")
    assert owner["moderator"] and owner["broadcaster"]
    mod = await room.call("GET", "/api/channels/caster/chat/me", "mod")
    assert mod["moderator"] and not mod["broadcaster"]
    assert (await room.call("GET", "/api/channels/caster/chat/me", "boss"))["moderator"]
    assert not (await room.call("GET", "/api/channels/other/chat/me", "mod"))["moderator"]
    await room.call("GET", "/api/channels/nosuch/chat/me", None, 404)


# ------------------------------------------------- object-level authorization
MOD_ONLY = [
    ("PATCH", "/chat/settings", {"json": {"slow_mode_s": 5}}),
    ("GET", "/moderators", {}),
    ("POST", "/chat/bans", {"json": {"user": "bob"}}),
    ("GET", "/chat/bans", {}),
    ("DELETE", "/chat/bans/guest:someone", {}),
    ("DELETE", "/chat/messages/" + "a" * 32, {}),
    ("POST", "/chat/clear", {}),
    ("GET", "/chat/blocked-terms", {}),
    ("POST", "/chat/blocked-terms", {"json": {"term": "x"}}),
    ("DELETE", "/chat/blocked-terms/1", {}),
    ("GET", "/chat/reports", {}),
    ("POST", "/chat/reports/abc/resolve", {"json": {"action": "dismiss"}}),
    ("GET", "/moderation/log", {}),
    ("PUT", "/moderators/bob", {}),
    ("DELETE", "/moderators/mod", {}),
]


async def test_non_moderators_get_403(room: Room) -> None:
    """A viewer, and a moderator of another channel, have no power here; nothing changes."""
    for method, path, kwargs in MOD_ONLY:
        await room.call(method, f"/api/channels/caster{path}", "alice", 403, **kwargs)
        await room.call(method, f"/api/channels/caster{path}", "othermod", 403, **kwargs)
        await room.call(method, f"/api/channels/caster{path}", None, 401, **kwargs)
        await room.call(method, f"/api/channels/nosuch{path}", "alice", 404, **kwargs)
    log = await room.call("GET", "/api/channels/caster/moderation/log", "caster")
    assert [e["action"] for e in log["entries"]] == ["moderator.add"]
    assert await room.call("GET", "/api/channels/caster/chat/settings") == DEFAULTS
    assert await room.call("GET", "/api/channels/caster/chat/bans", "caster") == {"bans": []}


async def test_private_channel_is_404_to_outsiders(room: Room) -> None:
    async with community_of(room.client).db.transaction() as session:
        channel = await session.scalar(select(Channel).where(Channel.name == "caster"))
        assert channel is not None
        channel.private = True
        session.add(ChannelViewer(channel_id=channel.id, user_id=room.users["bob"].id))
    message = await room.say("bob", "private words")
    for path in ("/chat/settings", "/chat/me"):
        await room.call("GET", f"/api/channels/caster{path}", "alice", 404)
        await room.call("GET", f"/api/channels/caster{path}", None, 404)
        await room.call("GET", f"/api/channels/caster{path}", "bob")
        await room.call("GET", f"/api/channels/caster{path}", "mod")
    await room.call(
        "POST",
        "/api/channels/caster/chat/reports",
        "alice",
        404,
        json={"message_id": message["id"]},
    )
    await room.call(
        "POST", "/api/channels/caster/chat/reports", "bob", 201, json={"message_id": message["id"]}
    )
    await room.call("GET", "/api/channels/caster/chat/reports", "alice", 404)
    await room.call("GET", "/api/channels/caster/chat/reports", "bob", 403)


async def test_held_message_is_queued_with_its_stream_and_sender(room: Room) -> None:
    async with community_of(room.client).db.transaction() as session:
        channel_id = await session.scalar(select(Channel.id).where(Channel.name == "caster"))
        stream = Stream(channel_id=channel_id, status="live", started_at=utcnow())
        session.add(stream)
    await room.call(
        "POST",
        "/api/channels/caster/chat/blocked-terms",
        "mod",
        201,
        json={"term": "holdme", "action": "hold"},
    )
    await room.refused("guest-3", "please holdme")
    async with community_of(room.client).db.session() as session:
        report = (await session.scalars(select(ChatReport))).one()
    assert (report.kind, report.stream_id, report.channel_id) == ("held", stream.id, channel_id)
    assert report.message["from"] == {"id": "guest-3", "name": "swift-otter-42", "role": "viewer"}
    assert report.message["text"] == "please holdme" and len(report.message_id) == 32


# ------------------------------------------------------- the real service
async def test_moderation_on_the_service_pages(
    service: Service, http: aiohttp.ClientSession
) -> None:
    """Through ``relaycast.service.Service``: a moderator's delete reaches every page, a
    timeout refuses the user's next message and slow mode a guest's second one — on the
    pages' Socket.IO path, the same :class:`ChatService` the data channels feed."""
    app = service.app
    for name in ("caster", "mod", "alice"):
        await make_channel(app, name)
    tokens = {name: await access_token(app, name) for name in ("caster", "mod", "alice")}

    async def rest(method: str, path: str, who: str, status: int, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {tokens[who]}"}
        async with http.request(method, f"{service.url}{path}", headers=headers, **kwargs) as resp:
            body = await resp.text()
            assert resp.status == status, body
            return json.loads(body) if body else None

    await rest("PUT", "/api/channels/caster/moderators/mod", "caster", 204)
    pages = {
        "alice": ChatPage(tokens["alice"]),
        "mod": ChatPage(tokens["mod"]),
        "guest": ChatPage(),
    }
    try:
        for page in pages.values():
            await page.join(service.url, "caster")
        assert (pages["mod"].welcome["moderator"], pages["mod"].welcome["badges"]) == (
            True,
            ["moderator"],
        )
        assert pages["alice"].welcome["moderator"] is False

        sent = (await pages["alice"].send("hello all"))["message"]
        await pages["guest"].until(lambda events: any(e.get("id") == sent["id"] for e in events))
        await rest("DELETE", f"/api/channels/caster/chat/messages/{sent['id']}", "mod", 204)
        for page in pages.values():
            await page.until(lambda events: {"type": "delete", "ids": [sent["id"]]} in events)

        await rest(
            "POST",
            "/api/channels/caster/chat/bans",
            "mod",
            201,
            json={"user": "alice", "duration_s": 60},
        )
        refused = await pages["alice"].send("still here?")
        assert refused["error"] == "timed_out" and 0 < refused["retry_after"] <= 60

        await rest(
            "PATCH", "/api/channels/caster/chat/settings", "mod", 200, json={"slow_mode_s": 30}
        )
        assert "message" in await pages["guest"].send("first")
        slow = await pages["guest"].send("second")
        assert slow["error"] == "slow_mode" and 0 < slow["retry_after"] <= 30
        assert "message" in await pages["mod"].send("moderators are exempt")
        assert "message" in await pages["mod"].send("from slow mode")
    finally:
        for page in pages.values():
            await page.close()
