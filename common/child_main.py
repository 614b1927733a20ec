"""Helper child processes (LL-HLS transcoder, thumbnail worker, bandwidth estimator): how
the service starts one (:func:`spawn_child`) and the start of its ``main``
(:func:`start_child`: its command line, dying with its parent, log redaction and logging,
SIGINT ignored)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys

from .log_redaction import install_redaction
from .parent_death import die_with_parent


async def spawn_child(module: str, nice: int = 0) -> tuple[asyncio.subprocess.Process, socket.socket]:
    """Start ``python -m MODULE --fd N --parent PID --log-level LEVEL`` with one end of a new
    ``AF_UNIX`` stream socket pair; returns the process and this process's end.

    The child runs in a process group of its own (a terminal's Ctrl-C reaches only the
    service, which stops it) but in the service's session: with autogroup scheduling
    (sched(7)) a new session would be a CPU group of its own, as heavy as the forwarding
    process whatever its nice value.  ``nice`` (0..19) is added to this process's at once,
    before the child has imported anything or started a thread.

    :raises OSError: the process could not be started (both ends are closed then).
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, "--fd", str(theirs.fileno()), "--parent", str(os.getpid()),
            "--log-level", logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower(),
            pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL, process_group=0)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    if nice:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, proc.pid, min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice))
    return proc, ours


def start_child(prog: str, parent: str, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``--fd FD --parent PID [--log-level LEVEL]`` and set the process up.

    The child dies with ``PID`` (:func:`common.parent_death.die_with_parent`), logs through
    :func:`common.log_redaction.install_redaction` at ``LEVEL`` (default info) with its pid
    in every line, and ignores SIGINT: a Ctrl-C reaches the parent, which stops its children
    itself.

    :param prog: the ``python -m ...`` name shown in usage messages.
    :param parent: what the parent is, for ``--help`` (e.g. "the bridge's process id").
    :returns: the parsed arguments (``fd``, ``parent``, ``log_level``).
    """
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--fd", type=int, required=True, help="the inherited link socket")
    parser.add_argument("--parent", type=int, required=True, help=parent)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    die_with_parent(args.parent)
    install_redaction()
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return args
