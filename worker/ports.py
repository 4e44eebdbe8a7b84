"""Whether a server can listen on an address, and who holds it when it cannot (Linux's /proc).

Used before anything slow starts: the worker checks its web ports, the dev broker its Kafka port.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import socket
from pathlib import Path

LOWEST_FREE_PORT = 10000  # below: the well-known services' usual ports
LINUX_EPHEMERAL = (32768, 60999)  # Linux's default ip_local_port_range


def ephemeral_ports() -> tuple[int, int]:
    """The range the kernel takes outgoing connections' local ports from."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return LINUX_EPHEMERAL
    return low, high


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing holds, to listen on a moment later (``--web-port 0``, the tests' servers)."""
    return free_ports(1, host)


def free_ports(count: int, host: str = "127.0.0.1") -> int:
    """The first of ``count`` consecutive free ports (``--processes N`` serves port, port + 1, ...).

    Chosen outside the kernel's ephemeral range: a port the kernel handed out as free (bind to
    port 0) is in that range, so an outgoing connection (any process's: a Kafka client's) could
    take it as its local port before the server binds it, which then fails with "address already
    in use"."""
    low, high = ephemeral_ports()
    spans = [(a, b) for a, b in ((LOWEST_FREE_PORT, low - count), (high + 1, 65536 - count)) if b > a]
    pick = random.SystemRandom()
    for _ in range(1000 if spans else 0):
        a, b = pick.choice(spans)
        if _all_free(host, first := pick.randrange(a, b), count):
            return first
    while True:  # no room outside the ephemeral range: take the kernel's choice
        with socket.socket() as s:
            s.bind((host, 0))
            first = int(s.getsockname()[1])
        if _all_free(host, first, count):
            return first


def _all_free(host: str, first: int, count: int) -> bool:
    try:
        for port in range(first, first + count):
            with socket.socket() as s:
                s.bind((host, port))
    except OSError:
        return False
    return True


def _listening_inodes(port: int) -> set[int] | None:
    """The inodes of this network namespace's TCP sockets listening on ``port`` (Linux's
    ``/proc/net/tcp`` and ``tcp6``); None where that cannot be read."""
    inodes: set[int] = set()
    found = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        found = True
        for line in lines:
            fields = line.split()  # sl local_address rem_address st ... inode
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                inodes.add(int(fields[9]))
    return inodes if found else None


def _socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process ``pid`` holds (raises OSError where /proc says nothing)."""
    inodes = set()
    for fd in os.scandir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(fd.path)
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    return inodes


def listens_on(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` has a socket listening on ``port``; None where Linux's /proc cannot
    tell (another system, a restricted /proc)."""
    listening = _listening_inodes(port)
    if listening is None:
        return None
    try:
        return bool(listening & _socket_inodes(pid))
    except OSError:
        return None


def port_holders(port: int) -> list[str]:
    """``name, pid N`` of each process of ours that listens on ``port``; empty when /proc cannot
    tell (not Linux, another user's process). For error messages only: it reads all of /proc."""
    listening = _listening_inodes(port)
    holders: list[str] = []
    if not listening:
        return holders
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                if listening & _socket_inodes(int(entry.name)):
                    name = Path(f"/proc/{entry.name}/comm").read_text().strip()
                    holders.append(f"{name}, pid {entry.name}")
            except OSError:
                continue  # gone, or another user's
    return holders


def bind_problem(host: str, port: int) -> OSError | None:
    """Why a server could not listen on ``host:port`` now (in use, not an address of this machine,
    a privileged port), or None when it could.

    Binds and listens as asyncio's and tokio's servers do (SO_REUSEADDR, so connections of an
    earlier server in TIME_WAIT are no obstacle; IPv6 sockets IPv6-only), on every address
    ``host`` resolves to, then lets go. A hostname that does not resolve is a ``socket.gaierror``.
    """
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return exc
    for family, kind, proto, _name, address in addresses:
        try:
            with socket.socket(family, kind, proto) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind(address)
                s.listen()
        except OSError as exc:
            return exc
    return None


def describe_bind_problem(problem: OSError, port: int) -> str:
    """``already in use (held by NAME, pid N)`` for EADDRINUSE, else the system's words."""
    if problem.errno == errno.EADDRINUSE:
        holders = port_holders(port)
        return f"already in use ({'held by ' + ', '.join(holders) if holders else problem.strerror})"
    return f"not available ({problem.strerror or problem})"
