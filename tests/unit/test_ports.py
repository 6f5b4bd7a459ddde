"""Free ports for local servers: outside the range outgoing connections take theirs from."""
from __future__ import annotations

import socket

from maskflow.infra.ops.processes import ephemeral_port_range, free_port


def test_free_ports_are_below_the_ephemeral_range_distinct_and_bindable():
    low, high = ephemeral_port_range()
    assert 1024 < low <= high
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)
    assert all(port < low for port in ports), [port for port in ports if port >= low]
    for port in ports[:20]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
