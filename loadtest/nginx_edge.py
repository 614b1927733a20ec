"""A real nginx LL-HLS edge on 127.0.0.1, started from ``deploy/nginx/`` for tests and benchmarks.

::

    async with NginxEdge(origin_url, workdir) as edge:
        edge.url          # "http://127.0.0.1:PORT": the origin's URLs, through the edge
        edge.access_log   # Path of the access log (format ``relaycast_edge``)
        edge.origin_requests()   # Counter: request URI -> requests that reached the origin

``origin_url`` is the origin's base URL (``http://127.0.0.1:8080``; only host and port
are used).  Everything nginx writes (config, pid, error and access logs, temp files,
cache) lives under ``workdir``, which is created if needed.  nginx runs in the
foreground (``daemon off``) as a child of this process, as the current user; when that
user is root the config says ``user root`` so the workers do not switch to ``nobody``
(who could not write to ``workdir``).  ``stop()`` (or leaving the ``async with``) sends
SIGTERM (fast shutdown) and waits, bounded; if that fails, SIGKILL to the master and
its workers, by pid.

The edge config itself is ``deploy/nginx/relaycast-edge.conf.template`` rendered with
:func:`render_template`; this module adds only the main-context wrapper a standalone
nginx needs (pid, error log, temp paths in ``workdir``).  :func:`parse_access_log`
reads the access log back as :class:`LogEntry` records.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "NGINX",
    "TEMPLATE",
    "LogEntry",
    "NginxEdge",
    "NginxEdgeError",
    "find_nginx",
    "parse_access_log",
    "render_template",
]

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "deploy" / "nginx" / "relaycast-edge.conf.template"
TLS_TEMPLATE = ROOT / "deploy" / "nginx" / "relaycast-edge-tls.conf.template"
LOCATIONS = ROOT / "deploy" / "nginx" / "relaycast-edge-locations.conf"
REDIRECT = ROOT / "deploy" / "nginx" / "relaycast-edge-redirect.conf"
NGINX = "/usr/sbin/nginx"
HEALTH_PATH = "/edge-healthz"
HEALTH_BODY = b"relaycast-edge\n"

_PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


class NginxEdgeError(RuntimeError):
    """nginx could not be rendered, started or stopped (the message has its stderr/log)."""


def find_nginx() -> str | None:
    """Path of the nginx binary (``/usr/sbin/nginx``, else on PATH), or None."""
    if os.access(NGINX, os.X_OK):
        return NGINX
    return shutil.which("nginx")


def render_template(text: str, values: Mapping[str, str]) -> str:
    """Replace every ``${NAME}`` placeholder (upper-case names) with ``values[NAME]``.

    nginx's own ``$variables`` are lower-case and left alone.  Raises KeyError naming
    every placeholder without a value.
    """
    missing = sorted({m.group(1) for m in _PLACEHOLDER.finditer(text)} - set(values))
    if missing:
        raise KeyError(f"no value for placeholder(s) {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One access-log line (``log_format relaycast_edge``)."""

    time: float
    """When the request finished (``$msec``, seconds since the epoch)."""
    method: str
    uri: str
    """``$request_uri``: path and query exactly as the client sent them."""
    status: int
    bytes: int
    cache_status: str
    """``$upstream_cache_status``: HIT, MISS, EXPIRED, UPDATING, STALE, ... or "-"."""
    request_time: float
    upstream_time: str
    upstream_addr: str
    """Origin address(es) the request went to, "-" when it was answered by the edge."""

    @property
    def reached_origin(self) -> bool:
        return self.upstream_addr not in ("", "-")


def parse_access_log(path: Path | str, *, since: float | None = None,
                     until: float | None = None) -> list[LogEntry]:
    """The entries of an access log written with ``relaycast_edge``, optionally those
    that finished within ``[since, until]``.  Malformed lines are skipped."""
    entries = []
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        cols = line.split("\t")
        if len(cols) != 9:
            continue
        try:
            entry = LogEntry(float(cols[0]), cols[1], cols[2], int(cols[3]), int(cols[4]),
                             cols[5], float(cols[6]), cols[7], cols[8])
        except ValueError:
            continue
        if since is not None and entry.time < since:
            continue
        if until is not None and entry.time > until:
            continue
        entries.append(entry)
    return entries


def origin_request_counts(entries: Iterable[LogEntry]) -> Counter[str]:
    """Request URI -> how many of its requests reached the origin (0 for edge-only ones)."""
    counts: Counter[str] = Counter()
    for entry in entries:
        counts[entry.uri] += 1 if entry.reached_origin else 0
    return counts


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc; nginx workers of a master)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            out.append(int(entry.name))
    return out


class NginxEdge:
    """A real nginx running ``deploy/nginx/relaycast-edge.conf.template`` on 127.0.0.1.

    - ``origin_url``: the origin's base URL, e.g. ``svc.url`` (scheme http).
    - ``workdir``: folder for config, logs, pid, temp files and cache (created).
    - ``port``: edge port; 0 picks a free one (retried if taken meanwhile).
    - ``workers``: nginx worker processes (1 is plenty for tests).
    - ``cache_max_size``: ``max_size`` of the cache (nginx size syntax).
    - ``template``: the http-context template to render (default: the deploy one).

    After `start`: ``url``, ``port``, ``pid`` (the master), ``access_log``,
    ``error_log``, ``conf_path``.
    """

    def __init__(
        self,
        origin_url: str,
        workdir: Path | str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        workers: int = 1,
        cache_max_size: str = "1g",
        nginx: str | None = None,
        template: Path | str = TEMPLATE,
        start_timeout: float = 10.0,
        tls: tuple[Path | str, Path | str] | None = None,
    ) -> None:
        parts = urlsplit(origin_url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"origin_url must be http://HOST:PORT, got {origin_url!r}")
        origin_host = parts.hostname
        self.origin = f"[{origin_host}]:{parts.port}" if ":" in origin_host else f"{origin_host}:{parts.port}"
        self.workdir = Path(workdir).resolve()
        self.host = host
        self.port = port
        self.workers = workers
        self.cache_max_size = cache_max_size
        self.nginx = nginx or find_nginx()
        self.template = Path(template)
        self.start_timeout = start_timeout
        self.tls = None if tls is None else (str(Path(tls[0]).resolve()), str(Path(tls[1]).resolve()))
        """(certificate, key): an HTTPS server too (``relaycast-edge-tls.conf.template``),
        plain HTTP redirected to it; ``url`` is then the HTTPS one, ``http_url`` the plain."""
        self.tls_port = 0
        self.tls_conf_path = self.workdir / "relaycast-edge-tls.conf"
        self.http_url = ""
        self.conf_path = self.workdir / "nginx.conf"
        self.edge_conf_path = self.workdir / "relaycast-edge.conf"
        self.access_log = self.workdir / "logs" / "access.log"
        self.error_log = self.workdir / "logs" / "error.log"
        self.pid_path = self.workdir / "nginx.pid"
        self.cache_dir = self.workdir / "cache"
        self.url = ""
        self.pid: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr_task: asyncio.Task[bytes] | None = None

    # -- config ---------------------------------------------------------------------

    def template_values(self, port: int) -> dict[str, str]:
        """The placeholder values for this edge (see deploy/nginx/README.md)."""
        values = {
            "RELAYCAST_ORIGIN": self.origin,
            "EDGE_LISTEN": f"{self.host}:{port}",
            "EDGE_CACHE_DIR": str(self.cache_dir),
            "EDGE_CACHE_MAX_SIZE": self.cache_max_size,
            "EDGE_ACCESS_LOG": str(self.access_log),
            "EDGE_HTTP_LOCATIONS": str(REDIRECT if self.tls else LOCATIONS),
        }
        if self.tls is not None:
            values.update(EDGE_TLS_LISTEN=f"{self.host}:{self.tls_port}", EDGE_TLS_CERT=self.tls[0],
                          EDGE_TLS_KEY=self.tls[1], EDGE_LOCATIONS=str(LOCATIONS))
        return values

    def main_config(self) -> str:
        """The main-context wrapper: what a distro's nginx.conf would provide."""
        user = ""
        if os.geteuid() == 0:
            # Workers of a root master switch to `nobody` unless told otherwise.
            name = pwd.getpwuid(os.geteuid()).pw_name
            group = grp.getgrgid(os.getegid()).gr_name
            user = f"user {name} {group};"
        temp = self.workdir / "temp"
        return "\n".join([
            "# Generated by loadtest/nginx_edge.py: a standalone nginx for the relaycast edge.",
            user,
            "daemon off;",
            "master_process on;",
            f"worker_processes {self.workers};",
            "worker_rlimit_nofile 16384;",
            f"pid {self.pid_path};",
            f"error_log {self.error_log} warn;",
            "events { worker_connections 8192; }",
            "http {",
            "    default_type application/octet-stream;",
            "    sendfile on;",
            "    tcp_nodelay on;",
            "    keepalive_timeout 75s;",
            "    keepalive_requests 100000;",
            f"    client_body_temp_path {temp}/client_body;",
            f"    proxy_temp_path {temp}/proxy;",
            f"    fastcgi_temp_path {temp}/fastcgi;",
            f"    uwsgi_temp_path {temp}/uwsgi;",
            f"    scgi_temp_path {temp}/scgi;",
            f"    include {self.edge_conf_path};",
            *([f"    include {self.tls_conf_path};"] if self.tls else []),
            "}",
            "",
        ])

    def write_config(self, port: int) -> None:
        for sub in ("logs", "temp", "cache"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        values = self.template_values(port)
        self.edge_conf_path.write_text(render_template(self.template.read_text(), values))
        if self.tls is not None:
            self.tls_conf_path.write_text(render_template(TLS_TEMPLATE.read_text(), values))
        self.conf_path.write_text(self.main_config())

    def _command(self, *extra: str) -> list[str]:
        assert self.nginx is not None
        # -e: messages before the config's error_log is read go there too, not to /var/log.
        return [self.nginx, "-p", str(self.workdir), "-c", str(self.conf_path),
                "-e", str(self.error_log), *extra]

    # -- lifecycle ------------------------------------------------------------------

    async def __aenter__(self) -> NginxEdge:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def start(self) -> None:
        """Render the config, check it with ``nginx -t``, start nginx, wait until it answers."""
        if self.nginx is None:
            raise NginxEdgeError("nginx is not installed (apt-get install nginx)")
        if self._proc is not None:
            raise NginxEdgeError("already started")
        attempts = 1 if self.port else 3
        last_error = ""
        for _ in range(attempts):
            port = self.port or _free_port(self.host)
            if self.tls is not None:
                self.tls_port = _free_port(self.host)
            self.write_config(port)
            test = await asyncio.create_subprocess_exec(
                *self._command("-t", "-q"), stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT)
            out, _ = await asyncio.wait_for(test.communicate(), 30)
            if test.returncode != 0:
                raise NginxEdgeError(f"nginx -t failed for {self.conf_path}:\n{out.decode(errors='replace')}")
            proc = await asyncio.create_subprocess_exec(
                *self._command(), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            self._proc, self.pid = proc, proc.pid
            assert proc.stderr is not None
            self._stderr_task = asyncio.create_task(proc.stderr.read())
            self.port = port
            self.http_url = self.url = f"http://{self.host}:{port}"
            if self.tls is not None:
                self.url = f"https://{self.host}:{self.tls_port}"
            try:
                await self._wait_ready()
                return
            except NginxEdgeError as exc:
                last_error = str(exc)
                await self.stop()
                self.port = 0 if attempts > 1 else port
                if "Address already in use" not in last_error:
                    break
        raise NginxEdgeError(last_error)

    async def _wait_ready(self) -> None:
        """Poll the edge's own health location until nginx answers (bounded)."""
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        request = f"GET {HEALTH_PATH} HTTP/1.0\r\nHost: {self.host}\r\n\r\n".encode()
        while time.monotonic() < deadline:
            if self._proc.returncode is not None:
                break
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), 1.0)
                try:
                    writer.write(request)
                    data = await asyncio.wait_for(reader.read(), 2.0)
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
                if data.startswith(b"HTTP/1.1 200") and data.endswith(HEALTH_BODY):
                    return
            except (OSError, TimeoutError):
                pass
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._proc.wait(), 0.05)
        raise NginxEdgeError(f"nginx did not come up on {self.url}:\n{self.diagnostics()}")

    def diagnostics(self) -> str:
        """The tail of nginx's error log (for error messages)."""
        try:
            log = self.error_log.read_text(errors="replace")[-4000:]
        except OSError:
            log = ""
        return f"exit code {self._proc.returncode if self._proc else None}\n{log}"

    async def stop(self, timeout: float = 10.0) -> None:
        """Fast shutdown (SIGTERM), bounded; SIGKILL to the master and its workers if needed.

        Idempotent. nginx flushes the access log on exit.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            workers = _children(proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                for pid in [proc.pid, *workers]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                await asyncio.wait_for(proc.wait(), 5)
        if self._stderr_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._stderr_task, 2)
            self._stderr_task = None

    # -- reading the logs -----------------------------------------------------------

    def log_entries(self, since: float | None = None, until: float | None = None) -> list[LogEntry]:
        """The access log so far (lines are written when each request ends)."""
        return parse_access_log(self.access_log, since=since, until=until)

    def origin_requests(self, since: float | None = None, until: float | None = None) -> Counter[str]:
        """Request URI -> number of its requests that reached the origin (see `LogEntry`)."""
        return origin_request_counts(self.log_entries(since, until))

    def cpu_pids(self) -> list[int]:
        """The master and worker pids (for CPU accounting)."""
        return [] if self.pid is None else [self.pid, *_children(self.pid)]
