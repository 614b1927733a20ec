"""signaling.redis_state.cancel_and_wait: background loops end even when a cancellation is
lost (Python 3.11's asyncio.wait_for can swallow one that races its inner completion)."""

from __future__ import annotations

import asyncio

from signaling.redis_state import cancel_and_wait


async def test_a_task_that_loses_one_cancellation_still_ends() -> None:
    swallowed = 0

    async def loop_that_loses_a_cancel() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed == 0:  # what a swallowed cancellation looks like to the loop
                    swallowed += 1
                    continue
                raise

    task = asyncio.create_task(loop_that_loses_a_cancel())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task, retry_s=0.05), 5)
    assert task.cancelled() and swallowed == 1


async def test_a_task_that_failed_or_finished_is_left_as_it_is() -> None:
    async def fail() -> None:
        raise RuntimeError("boom")

    failed = asyncio.create_task(fail())
    done = asyncio.create_task(asyncio.sleep(0))
    await asyncio.wait({failed, done})
    await cancel_and_wait(failed)
    await cancel_and_wait(done)
    assert isinstance(failed.exception(), RuntimeError) and done.result() is None
