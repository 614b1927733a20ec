"""Polling helper for tests that wait on state with no event to await."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


async def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> float:
    """Poll an async/sync predicate every 50 ms; the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
