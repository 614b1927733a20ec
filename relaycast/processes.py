"""Child processes of ``relaycast``: started in their own session, stopped with SIGTERM then
SIGKILL, and tied to their parent's life.

Used by ``relaycast cluster`` (:mod:`relaycast.cluster`) and by ``relaycast serve
--workers N`` (:mod:`relaycast.workers`).  A child runs in a session of its own
(``setsid``), so a Ctrl-C typed in the terminal reaches only the parent, which stops its
children itself, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

from common.parent_death import die_with_parent, parent_alive

__all__ = ["Process", "die_with_parent", "parent_alive", "spawn", "terminate"]

Process = asyncio.subprocess.Process


async def spawn(argv: Sequence[str], env: Mapping[str, str], *,
                stdout: int | IO[Any] | None = None, stderr: int | IO[Any] | None = None) -> Process:
    """Start ``argv`` in a new session (its own process group), stdin from /dev/null.

    :param stdout/stderr: as for :func:`asyncio.create_subprocess_exec` (``None``: this
        process's own).
    :raises OSError: the program cannot be started.
    """
    return await asyncio.create_subprocess_exec(
        *argv, env=dict(env), stdin=asyncio.subprocess.DEVNULL, stdout=stdout, stderr=stderr,
        start_new_session=True)


async def terminate(procs: Sequence[Process], timeout_s: float,
                    on_kill: Callable[[Process], None] | None = None) -> None:
    """Stop ``procs`` together: SIGTERM to each one still running, then, for those still
    running ``timeout_s`` seconds later, ``on_kill(proc)`` and SIGKILL to the process's
    group (its session, see `spawn`).  Returns once every one has exited."""
    running = [p for p in procs if p.returncode is None]
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    if not running:
        return
    try:
        await asyncio.wait_for(asyncio.gather(*(p.wait() for p in running)), timeout_s)
        return
    except TimeoutError:
        pass
    for proc in running:
        if proc.returncode is None:
            if on_kill is not None:
                on_kill(proc)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()  # not a group leader after all (started elsewhere)
    await asyncio.gather(*(p.wait() for p in running))
