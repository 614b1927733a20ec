"""Process CPU, memory and UDP drop counters from /proc (psutil when it is installed)."""

from __future__ import annotations

import os
from pathlib import Path

try:  # optional: the same numbers, read more portably
    import psutil
except ImportError:  # pragma: no cover - depends on the environment
    psutil = None

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of process ``pid`` (all its threads)."""
    if psutil is not None:
        times = psutil.Process(pid).cpu_times()
        return float(times.user), float(times.system)
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(fields[11]) / _TICKS, int(fields[12]) / _TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads)."""
    return sum(cpu_times(pid))


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (of all its threads), from ``/proc/PID/task/*/children``."""
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return out


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` in bytes."""
    if psutil is not None:
        return int(psutil.Process(pid).memory_info().rss)
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        entries = list(fd_dir.iterdir())
    except OSError:
        return inodes
    for entry in entries:
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def udp_drops(pid: int) -> int:
    """Datagrams the kernel dropped on ``pid``'s UDP sockets (receive buffer full), cumulative."""
    inodes = _socket_inodes(pid)
    total = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) >= 13 and cols[9] in inodes:
                total += int(cols[12])
    return total


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine (all cores, from /proc/stat), cumulative."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    values = [int(v) for v in fields[:8]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / _TICKS


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def pin(pid: int, cpus: set[int]) -> bool:
    """Set the CPU affinity of every thread of ``pid`` (``sched_setaffinity(2)`` per thread:
    the call itself sets one thread's).  False when the process is gone."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return False
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            continue  # the thread ended meanwhile
    return True


def affinity(pid: int) -> set[int]:
    """The CPUs ``pid``'s main thread may run on (empty when it is gone)."""
    try:
        return set(os.sched_getaffinity(pid))
    except OSError:
        return set()
