"""Host names and addresses as the config gives them."""
from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Is `host` (a name, an IPv4 address, or an IPv6 one with or without brackets) loopback?"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
