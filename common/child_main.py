"""The start of a helper child process's ``main`` (LL-HLS transcoder, thumbnail worker):
its command line, dying with its parent, log redaction and logging, SIGINT ignored."""

from __future__ import annotations

import argparse
import logging
import signal

from .log_redaction import install_redaction
from .parent_death import die_with_parent


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
