"""``worker.ports.free_ports``: ports to listen on a moment later, which no outgoing connection
can take meanwhile (they lie outside the kernel's ephemeral range)."""

from __future__ import annotations

import socket

from worker.ports import ephemeral_ports, free_port, free_ports


def test_free_ports_lie_outside_the_ephemeral_range_and_can_be_bound() -> None:
    low, high = ephemeral_ports()
    for _ in range(50):
        first = free_ports(3)
        ports = range(first, first + 3)
        assert not any(low <= port <= high for port in ports), (first, low, high)
        for port in ports:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
    assert not low <= free_port() <= high


def test_a_port_in_use_is_never_chosen() -> None:
    held = []
    try:
        for _ in range(20):
            s = socket.socket()
            s.bind(("127.0.0.1", free_port()))
            s.listen()
            held.append(s)
        taken = {s.getsockname()[1] for s in held}
        assert len(taken) == 20
        assert not taken & {free_port() for _ in range(200)}
    finally:
        for s in held:
            s.close()
