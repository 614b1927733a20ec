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
import ctypes
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal this process gets when its parent thread exits."""

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


def die_with_parent(parent_pid: int) -> bool:
    """Have the kernel SIGKILL this process when its parent exits (Linux ``prctl(2)``
    ``PR_SET_PDEATHSIG``; the parent is the thread that forked it — for an asyncio parent
    its event-loop thread).  Exits at once (status 1) when the parent is already gone,
    i.e. ``os.getppid()`` is no longer ``parent_pid``.

    :returns: whether the kernel will do it; ``False`` off Linux, where the caller polls
        `parent_alive` instead.
    """
    done = False
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)  # this process's symbols: libc's prctl
        done = libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    if not parent_alive(parent_pid):  # it died before prctl took effect
        os._exit(1)
    return done


def parent_alive(parent_pid: int) -> bool:
    """Whether this process's parent is still ``parent_pid`` (an orphan is re-parented)."""
    return os.getppid() == parent_pid
