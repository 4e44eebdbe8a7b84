"""Whether a server can listen on an address, and who holds it when it cannot (Linux's /proc).

Used before anything slow starts: the worker checks its web ports, the dev broker its Kafka port.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_ports(count: int, host: str = "127.0.0.1") -> int:
    """The first of ``count`` consecutive free ports (``--processes N`` serves port, port + 1, ...)."""
    while True:
        first = free_port(host)
        try:
            for port in range(first, first + count):
                with socket.socket() as s:
                    s.bind((host, port))
            return first
        except OSError:
            continue


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
