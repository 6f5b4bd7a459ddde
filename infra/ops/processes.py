"""Processes and ports on this machine: free loopback ports, waiting for something to be true,
and whether a pid is still the process we started.  The stack and the tests share these."""
from __future__ import annotations

import random
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

READY_TIMEOUT = 60.0

T = TypeVar("T")


class StackError(RuntimeError):
    """The stack could not be brought up or down; the message says what to do."""


_ports = random.Random()  # its own state: a seeded global random must not repeat our picks
_handed_out: set[int] = set()


def ephemeral_port_range() -> tuple[int, int]:
    """The range the kernel takes outgoing connections' source ports from."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A loopback port nothing is bound to, below the ephemeral range, not handed out before.

    Not bind(0): that port comes from the ephemeral range, so between choosing it and a
    server binding it any connect() on the machine may take it as its source port (a CI run
    lost `maskflow up` to that).  connect() never picks a port below the range.
    """
    low, _ = ephemeral_port_range()
    candidates = range(max(1024, low // 2), low)
    for _ in range(200 if candidates else 0):
        port = _ports.choice(candidates)
        if port not in _handed_out and port_is_free("127.0.0.1", port):
            _handed_out.add(port)
            return port
    raise StackError(f"no free loopback port below {low}")


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def wait_until(probe: Callable[[], T], what: str, timeout: float = READY_TIMEOUT,
               proc: subprocess.Popen | None = None, log: Path | None = None,
               state: Callable[[], object] | None = None, every: float = 0.25,
               fatal: Callable[[Exception], str | None] | None = None) -> T:
    """Poll `probe` until it returns something true, and return that; StackError after `timeout`.

    The pause between probes grows from 20 ms to `every` seconds.  An exception from `probe`
    means "not yet" (the last one is in the message), unless `fatal` makes a message of it
    (a certificate nobody trusts will not fix itself): StackError with that message at once.
    It fails early if `proc` dies; `log`'s last lines and `state()` go into the message.
    """
    deadline = time.monotonic() + timeout
    delay = min(0.02, every)
    last: Exception | None = None
    while True:
        try:
            value = probe()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - any failure of a probe just means "not yet"
            last = exc
            if fatal is not None and (message := fatal(exc)):
                raise StackError(message) from None
        if proc is not None and proc.poll() is not None:
            raise StackError(f"{what} exited with code {proc.returncode} before it was ready"
                             + tail(log))
        if time.monotonic() > deadline:
            raise StackError(f"gave up waiting for {what} after {timeout:.0f} s"
                             + (f" (last error: {last!r})" if last else "")
                             + (f"; {state()}" if state else "") + tail(log))
        time.sleep(delay)
        delay = min(delay * 1.5, every)


def tail(log: Path | None, lines: int = 8) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").strip().splitlines()[-lines:]
    return f"; last lines of {log}:\n  " + "\n  ".join(text) if text else ""


def alive(pid: int, marker: str) -> bool:
    """Is `pid` a running (not zombie) process whose command line contains `marker`?"""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, IndexError):
        return False
    return state != "Z" and marker in cmdline
