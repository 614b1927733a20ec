"""The channels' chat policy (:class:`community.chat_moderation.ChannelChatPolicy`) on a real
database: every rule's verdict and code, the order the rules are checked in, who is exempt,
held messages in the queue, and the cache (no database round trip while fresh, reloaded
when stale, dropped at once on :meth:`invalidate`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import create_async_engine

from community.chat_moderation import RULES_TTL_S, ChannelChatPolicy
from community.database import Database
from community.models import (
    BlockedTerm,
    Channel,
    ChannelModerator,
    ChatBan,
    ChatReport,
    ChatSettings,
    Follow,
    User,
)
from signaling.chat import Sender, Verdict

ROOM = "caster"


class Clock:
    """A hand-driven monotonic and wall clock (s)."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.epoch = datetime.now(UTC).timestamp()

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.epoch += seconds

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.epoch, UTC)


class Rig:
    """A database with channel ``caster`` (owner ``caster``), moderator ``mod``, admin
    ``boss``, viewers ``alice`` and ``bob``, and a policy on a hand-driven clock."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock
        self.policy = ChannelChatPolicy(db, clock=lambda: clock.mono, wall=lambda: clock.epoch)
        self.users: dict[str, str] = {}
        self.channel_id = ""

    async def setup(self) -> None:
        async with self.db.transaction() as session:
            for name, role in (
                ("caster", "viewer"),
                ("mod", "viewer"),
                ("boss", "admin"),
                ("alice", "viewer"),
                ("bob", "viewer"),
            ):
                user = User(username=name, password_hash="!", role=role)
                session.add(user)
                await session.flush()
                self.users[name] = user.id
            channel = Channel(name=ROOM, owner_id=self.users["caster"])
            session.add(channel)
            await session.flush()
            self.channel_id = channel.id
            session.add(ChannelModerator(channel_id=channel.id, user_id=self.users["mod"]))

    def sender(self, name: str, participant: str = "") -> Sender:
        """A logged-in sender (``guest``: a guest, ``participant`` its id)."""
        if name == "guest":
            return Sender(id=participant or "g1", name="swift-otter-42")
        return Sender(id=participant or f"p-{name}", name=name, user_id=self.users[name])

    async def settings(self, **values: Any) -> None:
        async with self.db.transaction() as session:
            row = await session.get(ChatSettings, self.channel_id)
            if row is None:
                row = ChatSettings(channel_id=self.channel_id)
                session.add(row)
            for key, value in values.items():
                setattr(row, key, value)
        self.policy.invalidate(ROOM)

    async def add(self, *rows: Any) -> None:
        async with self.db.transaction() as session:
            session.add_all(rows)
        self.policy.invalidate(ROOM)

    async def check(self, name: str, text: str = "hello there", participant: str = "") -> Verdict:
        return await self.policy.check(ROOM, self.sender(name, participant), text)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'policy.db'}")
    try:
        rig = Rig(db, Clock())
        await rig.setup()
        yield rig
    finally:
        await db.close()


def refused(verdict: Verdict, code: str) -> bool:
    return verdict.action == "refuse" and verdict.code == code


async def test_badges_and_describe(rig: Rig) -> None:
    assert (await rig.check("caster")).badges == ("broadcaster",)
    assert (await rig.check("mod")).badges == ("moderator",)
    assert (await rig.check("boss")).badges == ("admin",)
    assert (await rig.check("alice")) == Verdict()
    assert (await rig.check("guest")) == Verdict()
    assert await rig.policy.describe(ROOM, rig.sender("mod")) == {
        "badges": ["moderator"],
        "moderator": True,
    }
    assert await rig.policy.describe(ROOM, rig.sender("guest")) == {
        "badges": [],
        "moderator": False,
    }


async def test_ban_and_timeout(rig: Rig) -> None:
    now = rig.clock.now()
    await rig.add(
        ChatBan(channel_id=rig.channel_id, target=rig.users["alice"]),
        ChatBan(
            channel_id=rig.channel_id,
            target=rig.users["bob"],
            expires_at=now + timedelta(seconds=60),
        ),
        ChatBan(channel_id=rig.channel_id, target="guest:g7"),
    )
    assert refused(await rig.check("alice"), "banned")
    bob = await rig.check("bob")
    assert refused(bob, "timed_out") and bob.retry_after_s == pytest.approx(60, abs=1)
    assert refused(await rig.check("guest", participant="g7"), "banned")
    assert (await rig.check("guest", participant="g8")).action == "allow"  # another guest
    # The ban holds on every participant of the user (keyed by the user, not the session).
    assert refused(await rig.check("alice", participant="another-session"), "banned")
    rig.clock.advance(61)  # the timeout is over (and the cache stale)
    assert (await rig.check("bob")).action == "allow"


async def test_checks_come_in_the_contract_order(rig: Rig) -> None:
    """A banned guest in a channel with every rule on is told ``banned``; lifting one rule
    at a time shows the next one."""
    await rig.settings(
        guests_allowed=False, followers_only_s=0, slow_mode_s=30, links_allowed=False
    )
    await rig.add(
        BlockedTerm(channel_id=rig.channel_id, term="spamword", action="block"),
        ChatBan(channel_id=rig.channel_id, target="guest:g1"),
    )
    text = "spamword at https://example.com"
    assert refused(await rig.check("guest", text), "banned")
    assert refused(await rig.check("guest", text, participant="g2"), "guests_off")
    assert refused(await rig.check("alice", text), "followers_only")
    await rig.add(Follow(user_id=rig.users["alice"], channel_id=rig.channel_id))
    rig.policy.invalidate()
    assert refused(await rig.check("alice", text), "links_off")
    assert refused(await rig.check("alice", "spamword"), "blocked_term")
    # Slow mode counts only messages let through: alice's first one passes now.
    assert (await rig.check("alice", "fine words")).action == "allow"
    assert refused(await rig.check("alice", "more words"), "slow_mode")


async def test_guests_off(rig: Rig) -> None:
    await rig.settings(guests_allowed=False)
    verdict = await rig.check("guest")
    assert refused(verdict, "guests_off") and "log in" in verdict.detail
    assert (await rig.check("alice")).action == "allow"


async def test_followers_only_uses_the_follow_age(rig: Rig) -> None:
    await rig.settings(followers_only_s=600)
    assert refused(await rig.check("alice"), "followers_only")
    assert refused(await rig.check("guest"), "followers_only")
    await rig.add(
        Follow(
            user_id=rig.users["alice"],
            channel_id=rig.channel_id,
            created_at=rig.clock.now() - timedelta(seconds=100),
        ),
        Follow(
            user_id=rig.users["bob"],
            channel_id=rig.channel_id,
            created_at=rig.clock.now() - timedelta(seconds=700),
        ),
    )
    rig.policy.invalidate()
    young = await rig.check("alice")
    assert refused(young, "followers_only") and "10 minutes" in young.detail
    assert young.retry_after_s == pytest.approx(500, abs=1)
    assert (await rig.check("bob")).action == "allow"
    for exempt in ("caster", "mod", "boss"):
        assert (await rig.check(exempt)).action == "allow", exempt


async def test_slow_mode_per_sender_target(rig: Rig) -> None:
    await rig.settings(slow_mode_s=10)
    assert (await rig.check("alice")).action == "allow"
    second = await rig.check("alice", participant="alice-on-another-tab")  # same user
    assert refused(second, "slow_mode") and second.retry_after_s == pytest.approx(10)
    assert (await rig.check("bob")).action == "allow"  # another user
    assert (await rig.check("guest", participant="g1")).action == "allow"
    assert refused(await rig.check("guest", participant="g1"), "slow_mode")
    assert (await rig.check("guest", participant="g2")).action == "allow"
    for exempt in ("caster", "mod", "boss"):
        for _ in range(3):
            assert (await rig.check(exempt)).action == "allow", exempt
    rig.clock.advance(4)
    assert refused(await rig.check("alice"), "slow_mode")
    rig.clock.advance(6)
    assert (await rig.check("alice")).action == "allow"


async def test_slow_mode_counts_from_acceptance(rig: Rig) -> None:
    await rig.settings(slow_mode_s=10)
    sender = rig.sender("alice")
    assert (await rig.policy.check(ROOM, sender, "one")).action == "allow"
    rig.clock.advance(3)  # numbering took long
    await rig.policy.accepted(ROOM, sender, {"id": "x", "seq": 1})
    rig.clock.advance(8)  # 11 s after check, 8 s after acceptance
    assert refused(await rig.policy.check(ROOM, sender, "two"), "slow_mode")


async def test_links_off(rig: Rig) -> None:
    await rig.settings(links_allowed=False)
    assert refused(await rig.check("alice", "see https://example.com/x"), "links_off")
    assert refused(await rig.check("alice", "go to www.example.com"), "links_off")
    assert (await rig.check("alice", "no link here")).action == "allow"
    assert (await rig.check("mod", "see https://example.com/x")).action == "allow"


async def test_blocked_terms_block_everyone_and_hold_only_viewers(rig: Rig) -> None:
    await rig.add(
        BlockedTerm(channel_id=rig.channel_id, term="Badword", action="block"),
        BlockedTerm(channel_id=rig.channel_id, term="holdme", action="hold"),
        BlockedTerm(channel_id=None, term="serverword", action="block"),
    )
    for name in ("alice", "mod", "caster", "boss"):
        verdict = await rig.check(name, "this is BADWORD indeed")
        assert refused(verdict, "blocked_term"), name
        assert "badword" not in verdict.detail.lower()  # the term is not echoed
        assert refused(await rig.check(name, "a serverword here"), "blocked_term"), name
    held = await rig.check("alice", "please HOLDME now")
    assert held.action == "hold" and held.code == "held"
    assert (await rig.check("mod", "please holdme now")).action == "allow"
    assert (await rig.check("alice", "clean text")).action == "allow"


async def test_server_terms_apply_to_every_channel(rig: Rig) -> None:
    await rig.add(BlockedTerm(channel_id=None, term="serverword", action="block"))
    async with rig.db.transaction() as session:
        session.add(Channel(name="other", owner_id=rig.users["alice"]))
    verdict = await rig.policy.check("other", rig.sender("bob"), "serverword!")
    assert refused(verdict, "blocked_term")


async def test_hold_puts_the_message_in_the_queue(rig: Rig) -> None:
    message = {
        "type": "chat",
        "id": "a" * 32,
        "ts": 1700000000000,
        "from": {"id": "p-alice", "name": "alice", "role": "viewer", "user": rig.users["alice"]},
        "text": "please holdme now",
    }
    await rig.policy.hold(ROOM, message, Verdict("hold", "held"))
    async with rig.db.session() as session:
        report = (await session.scalars(select(ChatReport))).one()
    assert (report.kind, report.status, report.channel_id, report.message_id) == (
        "held",
        "open",
        rig.channel_id,
        "a" * 32,
    )
    assert report.message == {k: v for k, v in message.items() if k != "type"}
    assert report.reporter_id is None


async def test_unknown_room_allows_with_server_terms(rig: Rig) -> None:
    await rig.add(BlockedTerm(channel_id=None, term="serverword", action="block"))
    assert (await rig.policy.check("nochannel", rig.sender("alice"), "hi")).action == "allow"
    assert refused(
        await rig.policy.check("nochannel", rig.sender("alice"), "serverword"), "blocked_term"
    )


class QueryCounter:
    def __init__(self, db: Database) -> None:
        self.count = 0
        event.listen(db.engine.sync_engine, "before_cursor_execute", self._seen)

    def _seen(self, *args: Any) -> None:
        self.count += 1


async def test_fresh_cache_costs_no_query_and_reloads_when_stale(rig: Rig) -> None:
    await rig.settings(slow_mode_s=0)
    assert (await rig.check("alice")).action == "allow"  # loads the room
    queries = QueryCounter(rig.db)
    for _ in range(50):
        assert (await rig.check("alice")).action == "allow"
    assert queries.count == 0
    # A ban written elsewhere (another instance) shows once the cache is stale.
    async with rig.db.transaction() as session:
        session.add(ChatBan(channel_id=rig.channel_id, target=rig.users["alice"]))
    rig.clock.advance(RULES_TTL_S / 2)
    assert (await rig.check("alice")).action == "allow"
    rig.clock.advance(RULES_TTL_S / 2)
    assert refused(await rig.check("alice"), "banned")
    assert queries.count > 0


async def test_invalidate_drops_the_room_at_once(rig: Rig) -> None:
    assert (await rig.check("alice")).action == "allow"
    async with rig.db.transaction() as session:
        session.add(ChatBan(channel_id=rig.channel_id, target=rig.users["alice"]))
    assert (await rig.check("alice")).action == "allow"  # cached
    rig.policy.invalidate(ROOM)
    assert refused(await rig.check("alice"), "banned")


async def test_concurrent_checks_share_one_reload(rig: Rig) -> None:
    queries = QueryCounter(rig.db)
    verdicts = await asyncio.gather(*(rig.check("alice") for _ in range(20)))
    assert all(v.action == "allow" for v in verdicts)
    single = queries.count
    queries.count = 0
    rig.policy.invalidate()
    await rig.check("alice")
    assert single == queries.count  # twenty callers, the queries of one load


async def test_database_outage_keeps_the_last_rules(rig: Rig, tmp_path: Path) -> None:
    await rig.add(ChatBan(channel_id=rig.channel_id, target=rig.users["alice"]))
    assert refused(await rig.check("alice"), "banned")
    unreachable = Database(
        create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'x.db'}")
    )
    rig.policy.db = unreachable
    try:
        rig.clock.advance(RULES_TTL_S)  # stale: the reload fails, the rules stay
        assert refused(await rig.check("alice"), "banned")
        assert (await rig.check("bob")).action == "allow"
        # A room never loaded has no rules to fall back on: refused, not let through.
        verdict = await rig.policy.check("other", rig.sender("bob"), "hi")
        assert refused(verdict, "unavailable")
    finally:
        await unreachable.close()


async def test_a_change_during_a_reload_is_not_lost(rig: Rig) -> None:
    """A load that read the rows before a change and finishes after ``invalidate`` is used
    by its waiters but not kept: the next message reloads and sees the change."""
    started, release = asyncio.Event(), asyncio.Event()
    original = rig.policy._matcher

    async def slow_matcher(terms: tuple[tuple[str, str], ...]) -> Any:
        started.set()
        await release.wait()
        return await original(terms)

    rig.policy._matcher = slow_matcher  # type: ignore[method-assign]
    first = asyncio.create_task(rig.check("alice"))
    await started.wait()  # the rows are read; a ban arrives now
    await rig.add(ChatBan(channel_id=rig.channel_id, target=rig.users["alice"]))
    release.set()
    assert (await first).action == "allow"
    assert refused(await rig.check("alice"), "banned")
