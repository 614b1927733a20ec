"""What the channels' chat policy costs per message: ``ChannelChatPolicy.check`` with a
1,000-term channel list (plus the server's defaults) on a real SQLite database, its rules
cached (the hot path), against ``TermMatcher.match`` alone on the same messages (timed
interleaved, message by message, so the difference is the policy's own cost even on a busy
machine).

Two channel set-ups: ``open`` (only blocked terms) and ``strict`` (slow mode, followers-only
with every sender an old follower, links off: every rule is evaluated).  Senders are
distinct logged-in users, so slow mode never refuses and every message reaches the term
check.  Messages come from :mod:`loadtest.chat_filter_bench` (``--hit-share`` of them with a
blocked term in an evasive spelling).  Each ``await check()`` is timed alone
(``perf_counter_ns``) after a warm-up; the database queries issued during the timed loop are
counted (expected 0 while the cache is fresh: the policy's monotonic clock is frozen, so
nothing goes stale inside the loop).  Also timed: a room's first load (queries +
compiling the term list) and a reload of stale rules (queries only: the compiled matcher is
reused while the list is unchanged).

Run: ``python -m loadtest.chat_policy_bench`` (``--help`` for the knobs); prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event

from community.chat_filter import DEFAULT_TERMS, TermMatcher
from community.chat_moderation import ChannelChatPolicy
from community.database import Database
from community.models import BlockedTerm, Channel, ChatSettings, Follow, User, utcnow
from signaling.chat import Sender

from .chat_filter_bench import _stats, make_messages, make_terms


async def _channel(
    db: Database, name: str, terms: list[tuple[str, str]], users: list[str], strict: bool
) -> None:
    async with db.transaction() as session:
        owner = User(username=f"{name}_owner", password_hash="!")
        session.add(owner)
        await session.flush()
        channel = Channel(name=name, owner_id=owner.id)
        session.add(channel)
        await session.flush()
        session.add_all(BlockedTerm(channel_id=channel.id, term=t, action=a) for t, a in terms)
        if strict:
            session.add(
                ChatSettings(
                    channel_id=channel.id, slow_mode_s=30, followers_only_s=600, links_allowed=False
                )
            )
            old = utcnow() - timedelta(days=1)
            session.add_all(Follow(user_id=u, channel_id=channel.id, created_at=old) for u in users)


async def _time_checks(
    policy: ChannelChatPolicy,
    room: str,
    senders: list[Sender],
    texts: list[str],
    matcher: TermMatcher,
) -> tuple[list[float], list[float], dict[str, int]]:
    """µs of each ``check`` and, interleaved on the same message just before it, of
    ``matcher.match`` alone (so machine noise hits both alike); the verdicts by code."""
    check_us, match_us, verdicts = [], [], {}
    for sender, text in zip(senders, texts, strict=True):
        start = time.perf_counter_ns()
        matcher.match(text)
        middle = time.perf_counter_ns()
        verdict = await policy.check(room, sender, text)
        end = time.perf_counter_ns()
        match_us.append((middle - start) / 1000)
        check_us.append((end - middle) / 1000)
        key = verdict.code or verdict.action
        verdicts[key] = verdicts.get(key, 0) + 1
    return check_us, match_us, verdicts


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    terms = make_terms(args.terms, rng)
    texts = [text for text, _ in make_messages(args.messages, terms, args.hit_share, rng)]
    with tempfile.TemporaryDirectory() as tmp:
        db = await Database.open(f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}")
        try:
            async with db.transaction() as session:
                people = [
                    User(username=f"viewer{i}", password_hash="!") for i in range(args.messages)
                ]
                session.add_all(people)
            users = [u.id for u in people]
            for name, strict in (("open", False), ("strict", True)):
                await _channel(db, name, terms, users, strict)
            senders = [
                Sender(id=f"p{i}", name=f"viewer{i}", user_id=u) for i, u in enumerate(users)
            ]

            queries = 0

            def count(*_: Any) -> None:
                nonlocal queries
                queries += 1

            event.listen(db.engine.sync_engine, "before_cursor_execute", count)
            result: dict[str, Any] = {
                "terms": len(terms),
                "messages": len(texts),
                "hit_share": args.hit_share,
            }
            matcher = TermMatcher.compile(DEFAULT_TERMS + tuple(terms))  # what the policy compiles
            for room in ("open", "strict"):
                # A frozen monotonic clock: nothing cached goes stale inside the timed loop.
                policy = ChannelChatPolicy(db, clock=lambda: 0.0)
                start = time.perf_counter()
                await policy.rules(room)
                first_load_ms = (time.perf_counter() - start) * 1000
                if room == "strict":  # follows are looked up once per user, then cached
                    await _time_checks(policy, room, senders, texts, matcher)
                    policy._last_sent.clear()
                await _time_checks(policy, room, senders[:2000], texts[:2000], matcher)  # warm-up
                policy._last_sent.clear()
                queries = 0
                check_us, match_us, verdicts = await _time_checks(
                    policy, room, senders, texts, matcher
                )
                timed_queries = queries
                reload_ms = []
                for _ in range(args.reloads):
                    policy.invalidate(room)
                    start = time.perf_counter()
                    await policy.rules(room)
                    reload_ms.append((time.perf_counter() - start) * 1000)
                paired = [c - m for c, m in zip(check_us, match_us, strict=True)]
                result[room] = {
                    "check": _stats(check_us),
                    "match_alone": _stats(match_us),
                    "overhead_us": {
                        "median": round(statistics.median(paired), 1),
                        "p90": round(sorted(paired)[int(0.9 * len(paired))], 1),
                    },
                    "verdicts": verdicts,
                    "queries_while_fresh": timed_queries,
                    "first_load_ms": round(first_load_ms, 1),
                    "reload_ms": round(statistics.median(reload_ms), 2),
                }
            return result
        finally:
            await db.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--terms", type=int, default=1000, help="channel blocked terms (1000)")
    parser.add_argument(
        "--messages", type=int, default=20000, help="messages, one sender each (20000)"
    )
    parser.add_argument("--hit-share", type=float, default=0.2, help="share with a term (0.2)")
    parser.add_argument("--reloads", type=int, default=20, help="stale reloads timed (20)")
    parser.add_argument("--seed", type=int, default=12, help="random seed (12)")
    print(json.dumps(asyncio.run(run(parser.parse_args(argv))), indent=2))


if __name__ == "__main__":
    main()
