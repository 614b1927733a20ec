"""The one wait helper of the tests: poll a condition that has no event to await.

* `wait_for` (async): ``await wait_for(predicate, timeout_s, what)`` polls ``predicate()``
  (sync, or async — its coroutine is awaited) every ``interval_s`` until it returns a
  truthy value and returns that value.  Give ``wake`` (an `asyncio.Event` the producer
  sets on every change, e.g. "a message arrived") to re-check as soon as it is set, not
  only every ``interval_s``; the event is cleared before each check, so no change is
  missed.  An async predicate's check is itself bounded by the time left.
* `wait_for_sync`: the same for blocking code (process start-up outside an event loop).

On timeout both raise `WaitTimeout` (an `AssertionError`, so pytest shows it as a test
failure): ``timed out after 10 s waiting for <what>``; ``what`` may be a callable, called
only then, to add the last state seen (e.g. ``lambda: f"4 viewers (last: {seen})"``).

Exceptions raised by ``predicate`` propagate at once: a predicate can fail a wait early
("the node exited") by raising.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_INTERVAL_S = 0.05

What = str | Callable[[], str]


class WaitTimeout(AssertionError):
    """The awaited condition did not hold within the timeout."""


def _timed_out(timeout_s: float, what: What) -> WaitTimeout:
    text = what() if callable(what) else what
    return WaitTimeout(f"timed out after {timeout_s:g} s waiting for {text}")


async def wait_for(
    predicate: Callable[[], T | Awaitable[T]],
    timeout_s: float,
    what: What,
    *,
    interval_s: float = DEFAULT_INTERVAL_S,
    wake: asyncio.Event | None = None,
) -> T:
    """Wait until ``predicate()`` is truthy; return that value.

    :param predicate: called with no argument; may return an awaitable, which gets the
        time left (at least ``interval_s``) to finish.
    :param timeout_s: give up after this many seconds (checked after each evaluation, so
        a predicate that is already true returns even with ``timeout_s=0``).
    :param what: what is awaited, for the timeout message (or a callable giving it).
    :param interval_s: seconds between evaluations (at most).
    :param wake: also re-evaluate as soon as this event is set (it is cleared before
        every evaluation).
    :raises WaitTimeout: the predicate stayed falsy for ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if wake is not None:
            wake.clear()
        value = predicate()
        if inspect.isawaitable(value):
            try:
                value = await asyncio.wait_for(value, max(deadline - time.monotonic(), interval_s))
            except TimeoutError:
                raise _timed_out(timeout_s, what) from None
        if value:
            return value  # type: ignore[return-value]
        left = deadline - time.monotonic()
        if left <= 0:
            raise _timed_out(timeout_s, what)
        if wake is None:
            await asyncio.sleep(min(interval_s, left))
        else:
            try:
                await asyncio.wait_for(wake.wait(), min(interval_s, left))
            except TimeoutError:
                pass


def wait_for_sync(
    predicate: Callable[[], T],
    timeout_s: float,
    what: What,
    *,
    interval_s: float = DEFAULT_INTERVAL_S,
) -> T:
    """`wait_for` for blocking code (``time.sleep`` between evaluations).

    :raises WaitTimeout: the predicate stayed falsy for ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            raise _timed_out(timeout_s, what)
        time.sleep(min(interval_s, left))
