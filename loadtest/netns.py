"""A viewer's host behind an impaired link: a network namespace joined to the root
namespace by a veth pair, with ``tbf`` rate limits (the kernel here has no ``netem``).

::

    with NetNs() as ns:                      # or: async with NetNs() as ns
        ns.server_address                    # "10.213.N.1": root side; the SFU gathers ICE
                                             #   on it, servers listen on it
        ns.address                           # "10.213.N.2": the namespace side (the viewer)
        ns.set_rate("down", 800_000)         # root -> namespace (the viewer's download), bps
        ns.set_rate("up", 300_000)           # namespace -> root (the viewer's upload)
        ns.clear_rate()                      # both directions unlimited again
        ns.move()                            # the viewer's address changes (ICE restart tests)
        proc = ns.popen(["python3", "-m", ...])          # a process inside the namespace
        sock = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a socket inside, in process
        await ns.expose_tcp(port)            # 127.0.0.1:port inside -> 127.0.0.1:port outside

A relaycast service for a viewer inside: ``Service(make_config(ice_gather=("127.0.0.1",
ns.server_address)))`` (the SFU worker pins aioice to ``config.sfu.ice_gather``, so set it
there, not with ``set_host_addresses``), then ``await ns.expose_tcp(port)`` so pages and
WHEP POSTs inside use ``http://127.0.0.1:<port>`` while media crosses the veth.  A browser
inside: :mod:`loadtest.netns_chromium`.  aiortc viewers inside run as processes
(``ns.popen``/``ns.start_process``) pinned to `NetNs.address`: a socket's namespace is
fixed when aioice creates it in the process's own namespace.

Layout: a /24 of 10.213.0.0/16 per namespace (a third octet no root-namespace address or
route uses, chosen under a file lock so concurrent test processes never collide); the root
end holds ``.1``, the namespace end ``.2`` (then ``.3``, ``.4``, ... after each `NetNs.move`).
The namespace reaches only the root end's address (and its own loopback): its default
route points onto the link with no gateway (browsers need one to pick their host
candidate), where no one answers ARP for other addresses, so nothing a test runs there can
leave the machine.

Everything is removed on exit, also after an exception or ``KeyboardInterrupt``: the
processes started in the namespace (and any other process still in it, which can only be
one of ours: the namespace's name is unique), the sockets and forwarders made by
`NetNs.socket` / `NetNs.expose_tcp`, the veth pair (``ip link del``: synchronous, while the
kernel destroys a deleted namespace's devices asynchronously) and the namespace.  An
``atexit`` hook removes namespaces a test left open, and `remove_stale` those of test
processes that were killed (names carry the creating process id).

Needs root and iproute2 (``ip``, ``tc``): tests call `require_netns` (a pytest skip with
the reason) or use `NETNS_MARKS`.  Namespaces are entered per thread with ``setns(2)``
(through ctypes: Python 3.11 has no ``os.setns``) only to create a socket; the calling
thread's namespace never changes.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import fcntl
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

SUBNET = ipaddress.ip_network("10.213.0.0/16")
"""The private block each namespace takes one /24 of."""
PREFIX = "rcns"
"""Namespace names: ``rcns-<pid>-<n>``; veth ends ``rcr<pid>x<n>`` (root) and ``rcn<pid>x<n>``."""
LOCK_PATH = Path("/tmp/relaycast-netns.lock")
NETNS_DIR = Path("/var/run/netns")
CLONE_NEWNET = 0x40000000
VETH_OVERHEAD_BYTES = 14
"""Bytes ``tbf`` counts per packet on a veth beyond the IP packet (the Ethernet header)."""

Direction = Literal["down", "up", "both"]

_NAME = re.compile(rf"^{PREFIX}-(\d+)-(\d+)$")
_counter = 0
_counter_lock = threading.Lock()
_open: weakref.WeakSet[NetNs] = weakref.WeakSet()
_made_server_addresses: set[str] = set()


class NetnsError(RuntimeError):
    """An ``ip``/``tc`` command failed (its command line and stderr are in the message)."""


def _run(args: Sequence[str], *, check: bool = True, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


# ----------------------------------------------------------------- availability

_skip_reason: str | None | bool = False  # False: not probed yet


def skip_reason() -> str | None:
    """Why network namespaces cannot be used here, or ``None`` when they can.

    Checks root, ``ip`` and ``tc`` on the PATH, and once per process that ``ip netns add``
    works (a probe namespace is added and deleted again).
    """
    global _skip_reason
    if _skip_reason is not False:
        return _skip_reason  # type: ignore[return-value]
    reason: str | None = None
    if os.geteuid() != 0:
        reason = "network namespaces need root (ip netns add, veth, tc)"
    elif shutil.which("ip") is None or shutil.which("tc") is None:
        reason = "iproute2's ip and tc are not on the PATH (apt-get install iproute2)"
    else:
        probe = f"{PREFIX}-{os.getpid()}-probe"
        proc = _run(["ip", "netns", "add", probe], check=False)
        if proc.returncode != 0:
            reason = f"ip netns add failed: {proc.stderr.strip()}"
        else:
            _run(["ip", "netns", "del", probe], check=False)
    _skip_reason = reason
    return reason


def require_netns() -> None:
    """``pytest.skip`` with the reason when network namespaces cannot be used here."""
    reason = skip_reason()
    if reason is not None:
        import pytest

        pytest.skip(reason)


def _marks() -> list[Any]:
    import pytest

    return [pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))]


def __getattr__(name: str) -> Any:
    # NETNS_MARKS is computed on first use (the probe runs ip), not at import.
    if name == "NETNS_MARKS":
        return _marks()
    raise AttributeError(name)


# ----------------------------------------------------------------- setns per thread

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def in_namespace(name: str, fn: Any, *args: Any) -> Any:
    """Call ``fn(*args)`` in a short-lived thread that has entered namespace ``name``.

    A socket made there stays in that namespace for its life (the namespace is fixed
    when a socket is created), so the caller's event loop can use it as usual.
    """
    result: list[Any] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            with open(NETNS_DIR / name, "rb") as f:
                _setns(f.fileno())
            result.append(fn(*args))
        except BaseException as exc:  # handed to the caller
            error.append(exc)

    thread = threading.Thread(target=target, name=f"setns-{name}")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


# ----------------------------------------------------------------- addresses


def _used_third_octets() -> set[int]:
    used: set[int] = set()
    for args in (["ip", "-o", "-4", "addr", "show"], ["ip", "-4", "route", "show", "table", "all"]):
        for match in re.finditer(r"\b10\.213\.(\d+)\.\d+", _run(args, check=False).stdout):
            used.add(int(match.group(1)))
    return used


def _rate_arg(bps: int) -> str:
    return f"{int(bps)}bit"


class NetNs:
    """One network namespace joined to the root namespace by a veth pair.

    Use as ``with NetNs() as ns`` or ``async with NetNs() as ns`` (the async form also
    closes the forwarders of `expose_tcp`); `create`/`close` for explicit control.

    :ivar name: the namespace (``ip netns exec <name> ...``).
    :ivar server_address: the root end's IPv4 address (``10.213.N.1``): what servers in
        the root namespace listen on and the SFU gathers ICE candidates on.
    :ivar address: the namespace end's current IPv4 address (changes with `move`).
    :ivar root_if: the root end's interface; ``ns_if`` the namespace end's.
    """

    PREFIX_LEN = 24

    def __init__(self) -> None:
        global _counter
        with _counter_lock:
            _counter += 1
            n = _counter
        pid = os.getpid()
        self.name = f"{PREFIX}-{pid}-{n}"
        self.root_if = f"rcr{pid}x{n}"[:15]
        self.ns_if = f"rcn{pid}x{n}"[:15]
        self.network: ipaddress.IPv4Network | None = None
        self.server_address = ""
        self.address = ""
        self._next_host = 2
        self._procs: list[subprocess.Popen[Any] | asyncio.subprocess.Process] = []
        self._sockets: list[socket.socket] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._links: set[asyncio.Task[None]] = set()
        self._created = False
        self._closed = False

    # ------------------------------------------------------------ life cycle

    def create(self) -> NetNs:
        """Add the namespace, the veth pair, the addresses; bring the links up.

        :raises NetnsError: an ``ip`` command failed (whatever was made is removed).
        """
        if self._created:
            return self
        self._created = True
        _open.add(self)
        try:
            _run(["ip", "netns", "add", self.name])
            LOCK_PATH.touch(exist_ok=True)
            with open(LOCK_PATH, "r+") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                used = _used_third_octets()
                start = random.randrange(256)
                octet = next((o % 256 for o in range(start, start + 256) if o % 256 not in used), None)
                if octet is None:
                    raise NetnsError("every /24 of 10.213.0.0/16 is in use")
                self.network = ipaddress.ip_network(f"10.213.{octet}.0/{self.PREFIX_LEN}")
                self.server_address = str(self.network.network_address + 1)
                self.address = str(self.network.network_address + 2)
                _made_server_addresses.add(self.server_address)
                _run(["ip", "link", "add", self.root_if, "type", "veth", "peer", "name", self.ns_if])
                _run(["ip", "addr", "add", f"{self.server_address}/{self.PREFIX_LEN}", "dev", self.root_if])
            _run(["ip", "link", "set", self.ns_if, "netns", self.name])
            _run(["ip", "-n", self.name, "addr", "add", f"{self.address}/{self.PREFIX_LEN}",
                  "dev", self.ns_if])
            # IPv4 only: no link-local IPv6 candidates or neighbour discovery on the link
            Path(f"/proc/sys/net/ipv6/conf/{self.root_if}/disable_ipv6").write_text("1")
            _run(["ip", "netns", "exec", self.name, "sysctl", "-qw",
                  f"net.ipv6.conf.{self.ns_if}.disable_ipv6=1"])
            _run(["ip", "link", "set", self.root_if, "up"])
            _run(["ip", "-n", self.name, "link", "set", self.ns_if, "up"])
            _run(["ip", "-n", self.name, "link", "set", "lo", "up"])
            self._default_route()
        except BaseException:
            self.close()
            raise
        return self

    def _default_route(self) -> None:
        # A default route onto the link without a gateway: a browser without camera/mic
        # permission gathers host candidates only on the address of its default route
        # (Chromium finds it by connect()ing a UDP socket to a public address), so without
        # one it offers no candidate at all.  Nothing can leave through it: packets to any
        # other address wait for an ARP answer nobody on the link gives.
        _run(["ip", "-n", self.name, "route", "replace", "default", "dev", self.ns_if])

    def close(self) -> list[str]:
        """Remove everything this namespace holds; idempotent.

        Order: processes (SIGTERM, then SIGKILL after 2 s), sockets and forwarders, the veth
        pair, the namespace.  :returns: what could not be removed (empty when all went).
        """
        if self._closed:
            return []
        self._closed = True
        _open.discard(self)
        for server in self._servers:
            server.close()
        for task in self._links:
            task.cancel()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self._stop_processes()
        _run(["ip", "link", "del", self.root_if], check=False)
        _run(["ip", "netns", "del", self.name], check=False)
        return self.leftovers()

    def leftovers(self) -> list[str]:
        """What of this namespace still exists (``ip netns list``, ``ip link``); empty once closed."""
        left: list[str] = []
        names = _run(["ip", "netns", "list"], check=False).stdout.split()
        if self.name in names:
            left.append(f"namespace {self.name}")
        links = _run(["ip", "-o", "link", "show"], check=False).stdout
        for ifname in (self.root_if, self.ns_if):
            if re.search(rf"^\d+: {re.escape(ifname)}[@:]", links, re.MULTILINE):
                left.append(f"link {ifname}")
        return left

    def _stop_processes(self) -> None:
        for proc in self._procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        deadline = time.monotonic() + 2.0
        for proc in self._procs:
            if isinstance(proc, subprocess.Popen):
                try:
                    proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(2.0)
        # asyncio processes are reaped by their loop; and any process still in the
        # namespace (a browser's children, ...) is one this test started: the name is ours.
        if self._created:
            for _ in range(20):
                pids = [int(p) for p in _run(["ip", "netns", "pids", self.name], check=False).stdout.split()]
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.05)

    def __enter__(self) -> NetNs:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> NetNs:
        return await asyncio.to_thread(self.create)

    async def __aexit__(self, *exc: object) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._links):
            task.cancel()
        if self._links:
            await asyncio.gather(*self._links, return_exceptions=True)
        for proc in self._procs:
            if isinstance(proc, asyncio.subprocess.Process) and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 2.0)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
        # ``ip`` calls block; the loop keeps serving the other tasks meanwhile
        await asyncio.shield(asyncio.to_thread(self.close))

    # ------------------------------------------------------------ rate limits

    def _dev(self, direction: str) -> list[str]:
        if direction == "down":
            return ["dev", self.root_if]
        if direction == "up":
            return ["-n", self.name, "dev", self.ns_if]
        raise ValueError(f"direction must be 'down', 'up' or 'both', not {direction!r}")

    @staticmethod
    def _directions(direction: Direction) -> tuple[str, ...]:
        return ("down", "up") if direction == "both" else (direction,)

    def set_rate(
        self,
        direction: Direction,
        rate_bps: int,
        *,
        burst_bytes: int | None = None,
        latency_ms: float = 50.0,
    ) -> None:
        """Limit a direction to ``rate_bps`` with a token bucket (``tc qdisc replace ... tbf``).

        ``down``: root -> namespace (the root end's egress: what a viewer inside receives);
        ``up``: namespace -> root; ``both``.  The rate counts whole frames (IP packet +
        `VETH_OVERHEAD_BYTES`).  ``burst_bytes``: the bucket (default 10 ms of the rate, at
        least 4 full frames); ``latency_ms``: the longest a packet may wait in the queue
        (more is dropped: tbf's ``limit``).  Replacing takes effect at once, mid-stream.

        :raises NetnsError: ``tc`` refused the parameters.
        """
        if rate_bps <= 0:
            raise ValueError(f"rate_bps must be positive, not {rate_bps}")
        burst = burst_bytes if burst_bytes is not None else max(4 * 1514, int(rate_bps) // 800)
        for d in self._directions(direction):
            dev = self._dev(d)
            netns = dev[:2] if d == "up" else []
            _run(["tc", *netns, "qdisc", "replace", *dev[-2:], "root", "tbf",
                  "rate", _rate_arg(rate_bps), "burst", str(burst), "latency", f"{latency_ms:g}ms"])

    def clear_rate(self, direction: Direction = "both") -> None:
        """Remove the rate limit (the default qdisc again); no error when there was none."""
        for d in self._directions(direction):
            dev = self._dev(d)
            netns = dev[:2] if d == "up" else []
            _run(["tc", *netns, "qdisc", "del", *dev[-2:], "root"], check=False)

    def qdisc_stats(self, direction: Literal["down", "up"]) -> dict[str, Any]:
        """The root qdisc of a direction as ``tc -s -j qdisc show`` gives it: ``kind``
        (``tbf`` or ``noqueue`` when unlimited), ``bytes``, ``packets``, ``drops``,
        ``overlimits``, and for tbf ``options.rate`` (bytes/s) etc."""
        dev = self._dev(direction)
        netns = dev[:2] if direction == "up" else []
        out = _run(["tc", *netns, "-s", "-j", "qdisc", "show", *dev[-2:]]).stdout
        qdiscs = [q for q in json.loads(out or "[]") if q.get("root")]
        return qdiscs[0] if qdiscs else {}

    # ------------------------------------------------------------ address change

    def move(self, new_address: str | None = None) -> str:
        """Give the namespace end a new address: the old one is deleted, then the new one added
        (sockets bound to the old address stop working, as on a change of network).

        :param new_address: an address inside `network`, not the root end's (default: the
            next unused host, ``.3``, ``.4``, ...).
        :returns: the new address (also `address`).
        :raises ValueError: ``new_address`` is outside the namespace's /24 or taken.
        """
        assert self.network is not None, "create() first"
        if new_address is None:
            self._next_host += 1
            new_address = str(self.network.network_address + self._next_host)
        addr = ipaddress.ip_address(new_address)
        if addr not in self.network or new_address in (self.server_address, self.address):
            raise ValueError(f"{new_address} is not a free host of {self.network}")
        _run(["ip", "-n", self.name, "addr", "del", f"{self.address}/{self.PREFIX_LEN}", "dev", self.ns_if])
        _run(["ip", "-n", self.name, "addr", "add", f"{new_address}/{self.PREFIX_LEN}", "dev", self.ns_if])
        self.address = new_address
        self._default_route()
        return new_address

    # ------------------------------------------------------------ running things inside

    def command(self, args: Sequence[str]) -> list[str]:
        """``args`` prefixed with ``ip netns exec <name>``."""
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, args: Sequence[str], *, timeout: float = 30.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``args`` inside the namespace to completion (text output captured).

        :raises subprocess.CalledProcessError: ``check`` and a non-zero exit.
        """
        return subprocess.run(self.command(args), capture_output=True, text=True,
                              timeout=timeout, check=check)

    def popen(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``args`` inside the namespace (``subprocess.Popen`` keyword arguments pass
        through); it is stopped when the namespace closes."""
        proc = subprocess.Popen(self.command(args), **kwargs)
        self._procs.append(proc)
        return proc

    async def start_process(self, *args: str, **kwargs: Any) -> asyncio.subprocess.Process:
        """`popen` for asyncio (``asyncio.create_subprocess_exec`` keyword arguments)."""
        proc = await asyncio.create_subprocess_exec(*self.command(args), **kwargs)
        self._procs.append(proc)
        return proc

    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_DGRAM,
               proto: int = 0) -> socket.socket:
        """A socket created inside the namespace (non-blocking; closed with the namespace).

        Bind it to `address` (or ``127.0.0.1``, the namespace's own loopback) and use it
        from the event loop like any other (``loop.create_datagram_endpoint(sock=...)``).
        """
        sock: socket.socket = in_namespace(self.name, socket.socket, family, type, proto)
        sock.setblocking(False)
        self._sockets.append(sock)
        return sock

    async def expose_tcp(self, port: int, target: tuple[str, int] | None = None,
                         *, listen_host: str = "127.0.0.1") -> int:
        """Serve ``listen_host:port`` inside the namespace by forwarding each connection to
        ``target`` in the root namespace (default ``("127.0.0.1", port)``).

        So a browser inside opens ``http://127.0.0.1:<port>/`` — the same origin as outside,
        a secure context — while its media goes over the veth to `server_address`.
        :returns: ``port``.
        """
        target = target or ("127.0.0.1", port)
        sock = self.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((listen_host, port))
        sock.listen(64)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    writer.close()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                up_reader, up_writer = await asyncio.open_connection(*target)
            except OSError:
                writer.close()
                return
            for a, b in ((reader, up_writer), (up_reader, writer)):
                task = asyncio.ensure_future(pipe(a, b))
                self._links.add(task)
                task.add_done_callback(self._links.discard)

        server = await asyncio.start_server(serve, sock=sock)
        self._servers.append(server)
        return port

    def __repr__(self) -> str:
        return f"NetNs({self.name!r}, server={self.server_address}, ns={self.address})"


def open_server_addresses() -> set[str]:
    """The root-side addresses of this process's namespaces that are open now."""
    return {ns.server_address for ns in list(_open) if ns.server_address}


def server_addresses_made() -> set[str]:
    """Every root-side address a namespace of this process had (open or closed): the ICE
    candidate addresses besides 127.0.0.1 an SFU under test may legitimately offer."""
    return set(_made_server_addresses)


def remove_stale() -> list[str]:
    """Remove the namespaces (and their root veth ends) of test processes that no longer
    run (``rcns-<pid>-<n>`` with ``<pid>`` gone).  :returns: the names removed."""
    removed: list[str] = []
    for name in _run(["ip", "netns", "list"], check=False).stdout.split():
        match = _NAME.match(name)
        if not match:
            continue
        pid, n = int(match.group(1)), match.group(2)
        try:
            os.kill(pid, 0)
            continue  # still running: its own
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        _run(["ip", "link", "del", f"rcr{pid}x{n}"[:15]], check=False)
        _run(["ip", "netns", "del", name], check=False)
        removed.append(name)
    return removed


@atexit.register
def _close_open() -> None:
    for ns in list(_open):
        ns.close()
