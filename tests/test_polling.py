"""tests/polling.py, the tests' one wait helper: returns the predicate's value, awaits
async predicates, wakes on an event, names what it waited for on timeout."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.polling import WaitTimeout, wait_for, wait_for_sync


async def test_returns_the_first_truthy_value() -> None:
    values = iter([0, None, "", ["x"]])
    assert await wait_for(lambda: next(values), 5, "a list", interval_s=0.001) == ["x"]


async def test_awaits_an_async_predicate() -> None:
    calls = 0

    async def ready() -> int:
        nonlocal calls
        calls += 1
        return calls if calls >= 3 else 0

    assert await wait_for(ready, 5, "the third call", interval_s=0.001) == 3


async def test_timeout_names_what_was_awaited() -> None:
    with pytest.raises(WaitTimeout, match=r"timed out after 0.05 s waiting for the room to be live"):
        await wait_for(lambda: False, 0.05, "the room to be live", interval_s=0.01)


async def test_a_callable_what_is_evaluated_on_timeout_only() -> None:
    seen = [1, 2]
    described: list[str] = []

    def what() -> str:
        described.append("x")
        return f"3 viewers (last: {seen})"

    assert await wait_for(lambda: len(seen) >= 2, 5, what) is True
    assert described == []
    with pytest.raises(WaitTimeout, match=r"waiting for 3 viewers \(last: \[1, 2\]\)"):
        await wait_for(lambda: len(seen) >= 3, 0.05, what, interval_s=0.01)
    assert described == ["x"]


async def test_a_hanging_async_predicate_is_bounded_by_the_timeout() -> None:
    never = asyncio.Event()

    async def hangs() -> bool:
        await never.wait()
        return True

    with pytest.raises(WaitTimeout, match="waiting for an answer"):
        await wait_for(hangs, 0.05, "an answer", interval_s=0.01)


async def test_a_true_predicate_returns_even_with_no_time_left() -> None:
    assert await wait_for(lambda: 7, 0, "seven") == 7


async def test_exceptions_of_the_predicate_propagate_at_once() -> None:
    def exited() -> bool:
        raise RuntimeError("the process exited")

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited"):
        await wait_for(exited, 30, "never")
    assert time.monotonic() - started < 5


async def test_wake_event_rechecks_before_the_interval() -> None:
    changed = asyncio.Event()
    items: list[str] = []

    async def produce() -> None:
        await asyncio.sleep(0.01)
        items.append("a")
        changed.set()

    producer = asyncio.create_task(produce())
    started = time.monotonic()
    # interval 60 s: only the event can make this return within the 30 s timeout.
    assert await wait_for(lambda: list(items), 30, "an item", interval_s=60, wake=changed) == ["a"]
    assert time.monotonic() - started < 10
    await producer


def test_sync_variant() -> None:
    values = iter([False, False, "done"])
    assert wait_for_sync(lambda: next(values), 5, "done", interval_s=0.001) == "done"
    with pytest.raises(WaitTimeout, match="waiting for redis-server to answer PING"):
        wait_for_sync(lambda: None, 0.03, "redis-server to answer PING", interval_s=0.01)
