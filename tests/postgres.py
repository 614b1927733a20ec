"""A real PostgreSQL server (Debian's, 15 on bookworm) for tests: 127.0.0.1, a free port, a private data directory.

``PostgresServer.start()`` runs Debian's ``initdb`` and ``pg_ctl`` (the newest ``/usr/lib/postgresql/*/bin``,
or ``$RELAYCAST_PG_BIN``) in a temporary directory — as the unprivileged ``postgres`` user
when the tests run as root (PostgreSQL refuses to run as root) — and waits until the server
accepts connections.  Never the system cluster.  ``fsync`` is off: a test server trades
durability across an OS crash for speed (a killed *client* loses nothing committed).

* :attr:`PostgresServer.url`: ``postgresql+asyncpg://relaycast@127.0.0.1:PORT/relaycast``
  (trust authentication, loopback only).
* :meth:`PostgresServer.create_database`: a fresh, empty database (its URL); one per test
  keeps tests from seeing each other's rows.  :meth:`drop_database` removes it.
* :data:`PG_BIN` / :func:`available`: whether the binaries are installed (tests skip
  with :data:`MISSING` as the reason when not).
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from relaycast.cluster import postgres_bin
from tests.polling import WaitTimeout, wait_for_sync
from tests.redis_server import free_port

PG_BIN = postgres_bin(os.environ) or Path(os.environ.get("RELAYCAST_PG_BIN", "/usr/lib/postgresql/15/bin"))
"""``RELAYCAST_PG_BIN``, else the newest ``/usr/lib/postgresql/*/bin`` (Debian's layout)."""
MISSING = (
    f"PostgreSQL binaries not found in {PG_BIN} "
    "(apt-get install postgresql, or set RELAYCAST_PG_BIN)"
)
SUPERUSER = "relaycast"
DATABASE = "relaycast"


def available() -> bool:
    """Whether ``initdb``, ``pg_ctl`` and ``psql`` are installed in :data:`PG_BIN`."""
    return all(os.access(PG_BIN / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "psql"))


class PostgresServer:
    """One PostgreSQL server, started and stopped by the test session."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="relaycast-pg-"))
        self.data_dir = self._dir / "data"
        self._names = itertools.count(1)
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            # PostgreSQL will not run as root: hand the directory to the ``postgres`` user.
            account = pwd.getpwnam("postgres")
            os.chown(self._dir, account.pw_uid, account.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self.running = False

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the ``relaycast`` database."""
        return self.database_url(DATABASE)

    def database_url(self, name: str) -> str:
        return f"postgresql+asyncpg://{SUPERUSER}@127.0.0.1:{self.port}/{name}"

    def _run(self, *args: str, timeout: float = 60.0) -> str:
        done = subprocess.run(
            [*self._as_user, *args], capture_output=True, text=True, timeout=timeout, cwd=self._dir
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{Path(args[0]).name} failed ({done.returncode}): "
                f"{done.stderr.strip() or done.stdout.strip()}"
            )
        return done.stdout

    def start(self, timeout: float = 60.0) -> None:
        """``initdb`` (first time) and ``pg_ctl start``; then create the ``relaycast`` database.

        :raises RuntimeError: a tool failed (its stderr in the message).
        """
        assert not self.running, "already running"
        first = not self.data_dir.exists()
        if first:
            self._run(
                str(PG_BIN / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            )
        options = (
            f"-p {self.port} -k {self._dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        self._run(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self._dir / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            str(int(timeout)),
            "start",
            timeout=timeout + 10,
        )
        self.running = True
        try:
            wait_for_sync(lambda: self._ready(), timeout, f"PostgreSQL on port {self.port}")
        except WaitTimeout:
            self.stop()
            raise
        if first:
            self.sql(f'CREATE DATABASE "{DATABASE}"')

    def _ready(self) -> bool:
        done = subprocess.run(
            [
                *self._as_user,
                str(PG_BIN / "pg_isready"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
            ],
            capture_output=True,
        )
        return done.returncode == 0

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one SQL statement with ``psql`` (tuples only, unaligned); its output."""
        return self._run(
            str(PG_BIN / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            SUPERUSER,
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-qtAX",
            "-c",
            statement,
        )

    def create_database(self) -> str:
        """A new empty database (from ``template0``); :returns: its SQLAlchemy URL."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        self.sql(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.database_url(name)

    def drop_database(self, url: str) -> None:
        """Drop the database of ``url`` (closing any connection still open to it)."""
        name = url.rsplit("/", 1)[1]
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """``pg_ctl stop -m immediate`` (the data directory stays for a later :meth:`start`)."""
        if self.running:
            self._run(
                str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"
            )
            self.running = False

    def close(self) -> None:
        """Stop the server and delete its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
