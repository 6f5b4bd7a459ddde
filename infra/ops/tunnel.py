"""TLS from MinIO to Redis: stunnel beside MinIO, since MinIO's Redis target cannot speak TLS.

The pinned MinIO's target (internal/event/target/redis.go) dials ``redis.Dial("tcp", address)``
with no TLS option, so its events would cross the network in clear.  The stack runs stunnel
in client mode on loopback: MinIO's targets connect to it, and it connects to Redis' TLS port,
checking Redis' certificate against ``redis.ca_file`` and its address.  In production the
same stunnel runs beside every MinIO node (docs/security.md).
"""
from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from maskflow.infra.ops import install, roles
from maskflow.infra.ops.processes import free_port

if TYPE_CHECKING:
    from maskflow.infra.ops.stack import Service, Stack

LOOPBACK = "127.0.0.1"


def tunnel_port(stack: Stack) -> int:
    """The tunnel's port, chosen once: MinIO's environment names it."""
    path = stack.data_dir / "redis-tunnel.port"
    if path.exists():
        return int(path.read_text())
    stack.data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    path.write_text(str(port))
    return port


def tunnel_address(stack: Stack) -> str:
    return f"{LOOPBACK}:{tunnel_port(stack)}"


def tunnel_config(stack: Stack) -> str:
    redis = stack.cfg.redis
    check = "checkIP" if _is_address(redis.host) else "checkHost"
    return "\n".join([
        "foreground = yes", "pid =", "syslog = no", "debug = warning",
        "[redis]", "client = yes",
        f"accept = {tunnel_address(stack)}",
        f"connect = {redis.host}:{redis.port}",
        "verifyChain = yes",
        f"CAfile = {redis.ca_file}" if redis.ca_file else "CApath = /etc/ssl/certs",
        f"{check} = {redis.host}", ""])


def tunnel_service(stack: Stack) -> Service:
    from maskflow.infra.ops.stack import Service
    conf = stack.data_dir / "redis-tunnel.conf"
    conf.write_text(tunnel_config(stack))
    port = tunnel_port(stack)
    return Service("redis-tunnel", [str(install.stunnel()), str(conf)], roles.inherited_env(),
                   lambda: _accepts(port), (LOOPBACK, port))


def _accepts(port: int) -> bool:
    with socket.create_connection((LOOPBACK, port), timeout=1):
        return True


def _is_address(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host.strip("[]"))
        return True
    except OSError:
        return False
