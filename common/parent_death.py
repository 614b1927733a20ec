"""A child process that must not outlive its parent (Linux ``prctl(2)`` ``PR_SET_PDEATHSIG``)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

__all__ = ["PR_SET_PDEATHSIG", "die_with_parent", "parent_alive"]

PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal this process gets when its parent thread exits."""


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
