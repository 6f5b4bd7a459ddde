"""Hosts on one machine: Linux network namespaces on a private bridge, and the processes in them.

Each host is a network namespace with one veth into a bridge of its own; every host has an
address on a /24 that no interface on this machine uses yet, and the test process reaches the
bridge from the root namespace through the bridge's own address (.254).  Names carry the pid
(``mfh<pid>-<host>``, interfaces ``mfh<pid>...``), so parallel runs do not collide, and a run
finds and removes what an earlier run whose process is gone left behind.

Processes run inside a host with ``ip netns exec``; killing a host SIGKILLs every process in its
namespace (``ip netns pids``), which is what a machine losing power looks like to the others,
except that its address still refuses connections instead of timing out.
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from maskflow.infra.ops.processes import StackError, wait_until

PREFIX = "mfh"
SUBNET_FIRST = "10.231"


class LabError(RuntimeError):
    pass


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None."""
    if subprocess.run(["which", "ip"], capture_output=True).returncode != 0:
        return "iproute2's `ip` is not installed"
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return (f"cannot create a network namespace (`ip netns add` as uid {os.getuid()}: "
                f"{made.stderr.strip()}); the multi-host test needs root or CAP_NET_ADMIN")
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def sweep_leftovers() -> list[str]:
    """Remove the namespaces and bridges of earlier runs whose test process is gone."""
    removed = []
    listing = sh("ip", "netns", "list", check=False).stdout.split("\n")
    for line in listing:
        name = line.split(" ")[0]
        m = re.fullmatch(rf"{PREFIX}(\d+)-\w+", name)
        if m and not _pid_alive(int(m.group(1))):
            _kill_namespace(name)
            sh("ip", "netns", "del", name, check=False)
            removed.append(name)
    for line in sh("ip", "-o", "link", "show", "type", "bridge", check=False).stdout.splitlines():
        m = re.search(rf"\d+: ({PREFIX}(\d+)b):", line)
        if m and not _pid_alive(int(m.group(2))):
            sh("ip", "link", "del", m.group(1), check=False)
            removed.append(m.group(1))
    rules = sh("iptables", "-S", "FORWARD", check=False).stdout if shutil.which("iptables") else ""
    for m in re.finditer(rf"^-A FORWARD (-i ({PREFIX}(\d+)b) -o \2 -j ACCEPT)$", rules, flags=re.M):
        if not _pid_alive(int(m.group(3))):
            sh("iptables", "-D", "FORWARD", *m.group(1).split(), check=False)
            removed.append(f"FORWARD rule for {m.group(2)}")
    return removed


def _namespace_pids(ns: str) -> list[int]:
    out = sh("ip", "netns", "pids", ns, check=False).stdout.split()
    return [int(p) for p in out if p.isdigit()]


def _kill_namespace(ns: str) -> list[int]:
    pids = _namespace_pids(ns)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def free_subnet() -> str:
    """10.231.N (no /24 of it on any interface here), picked from the pid."""
    used = sh("ip", "-4", "-o", "addr", "show").stdout + sh("ip", "-4", "route", "show", "table", "all").stdout
    start = os.getpid() % 200
    for k in range(200):
        third = 20 + (start + k) % 200
        net = f"{SUBNET_FIRST}.{third}."
        if net not in used:
            return net[:-1]
    raise LabError(f"no free /24 in {SUBNET_FIRST}.20-219.0")


@dataclass
class Host:
    name: str
    ns: str
    ip: str
    veth: str  # root-namespace end, in the bridge


@dataclass
class Proc:
    host: Host
    name: str
    popen: subprocess.Popen
    log: Path


@dataclass
class Lab:
    """A bridge, hosts on it, and the processes started in them; `close` removes all of it."""
    workdir: Path
    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}")
    subnet: str = ""
    hosts: dict[str, Host] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    extra_links: list[str] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"{self.tag}b"

    @property
    def forward_rule(self) -> list[str]:
        return ["-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]

    @property
    def gateway(self) -> str:
        return f"{self.subnet}.254"

    def open(self) -> None:
        self.subnet = free_subnet()
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        # A Docker engine on the machine (the container tests start one) sets FORWARD to DROP
        # and makes every bridge's frames go through iptables, which cut this bridge's hosts off
        # from each other in a run here: let our bridge's own traffic through, while we run.
        if shutil.which("iptables"):
            sh("iptables", "-I", "FORWARD", *self.forward_rule)
        sh("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")

    def add_host(self, name: str, index: int) -> Host:
        ns, ip = f"{self.tag}-{name}", f"{self.subnet}.{index}"
        veth, peer = f"{self.tag}h{index}", f"{self.tag}p{index}"
        sh("ip", "netns", "add", ns)
        host = Host(name, ns, ip, veth)
        self.hosts[name] = host
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
        sh("ip", "link", "set", veth, "master", self.bridge, "up")
        sh("ip", "link", "set", peer, "netns", ns)
        self.ip(host, "link", "set", peer, "name", "eth0")
        self.ip(host, "addr", "add", f"{ip}/24", "dev", "eth0")
        self.ip(host, "link", "set", "eth0", "up")
        self.ip(host, "link", "set", "lo", "up")
        return host

    def add_floating_address(self, owner: Host, address: str, device: str = "vip0") -> None:
        """An address on an interface of its own that can move from host to host.

        The interface is one end of a veth pair whose other end stays in the bridge, so moving
        it into another namespace (`move_floating_address`) keeps its MAC and its bridge port:
        the other hosts' ARP caches stay right and nothing needs a gratuitous ARP.
        """
        root, peer = f"{self.tag}v", f"{self.tag}vp"
        sh("ip", "link", "add", root, "type", "veth", "peer", "name", peer)
        sh("ip", "link", "set", root, "master", self.bridge, "up")
        sh("ip", "link", "set", peer, "netns", owner.ns)
        self.ip(owner, "link", "set", peer, "name", device)
        self.ip(owner, "addr", "add", f"{address}/32", "dev", device)
        self.ip(owner, "link", "set", device, "up")

    def sysctl(self, host: Host, *settings: str) -> None:
        self.run(host, "sysctl", "-q", "-w", *settings)

    def ip(self, host: Host, *args: str) -> subprocess.CompletedProcess:
        return sh("ip", "-n", host.ns, *args)

    def run(self, host: Host, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", host.ns, *argv, check=check)

    def spawn(self, host: Host, name: str, argv: list[str], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> Proc:
        log = self.workdir / "logs" / f"{host.name}.{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            popen = subprocess.Popen(["ip", "netns", "exec", host.ns, *argv], env=env, cwd=cwd,
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        proc = Proc(host, name, popen, log)
        self.procs.append(proc)
        return proc

    def kill_host(self, host: Host) -> list[int]:
        """SIGKILL every process of the host, and reap the ones this process started."""
        pids = _kill_namespace(host.ns)
        for proc in self.procs:
            if proc.host is host:
                proc.popen.wait(timeout=30)
        wait_until(lambda: not _namespace_pids(host.ns), f"every process of {host.name} gone", 30, every=0.1)
        return pids

    def signal_host(self, host: Host, signum: int) -> None:
        """Send `signum` to every process of the host (SIGSTOP freezes it)."""
        for pid in _namespace_pids(host.ns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def kill(self, proc: Proc) -> None:
        proc.popen.kill()
        proc.popen.wait(timeout=30)

    def close(self) -> list[str]:
        """Kill everything, remove every namespace and link; returns what could not be removed."""
        problems = []
        for host in self.hosts.values():
            _kill_namespace(host.ns)
        for proc in self.procs:
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
            try:
                proc.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                problems.append(f"{proc.host.name}/{proc.name} pid {proc.popen.pid} did not exit")
        for host in self.hosts.values():
            with contextlib.suppress(StackError):
                wait_until(lambda h=host: not _namespace_pids(h.ns), f"{host.ns} empty", 10)
            done = sh("ip", "netns", "del", host.ns, check=False)
            if done.returncode != 0:
                problems.append(f"ip netns del {host.ns}: {done.stderr.strip()}")
        left = [line.split(" ")[0] for line in sh("ip", "netns", "list", check=False).stdout.splitlines()
                if line.startswith(f"{self.tag}-")]
        if left:
            problems.append(f"namespaces left: {left}")

        def links_left() -> list[str]:
            return re.findall(rf"\d+: ({self.tag}\w*)", sh("ip", "-o", "link", "show", check=False).stdout)
        # Deleting a namespace deletes its veth ends, and with them their peers in the bridge, but
        # only once nothing holds the namespace: a killed process' orphaned TCP sockets can keep
        # it for minutes (a CI run saw two veths outlive the test).  Deleting our ends of the
        # pairs removes them now.
        for link in [*links_left(), self.bridge, *self.extra_links]:
            if sh("ip", "link", "show", link, check=False).returncode == 0:
                sh("ip", "link", "del", link, check=False)
        if shutil.which("iptables"):
            while sh("iptables", "-D", "FORWARD", *self.forward_rule, check=False).returncode == 0:
                pass
        with contextlib.suppress(StackError):
            wait_until(lambda: not links_left(), "links gone", 10)
        if links_left():
            problems.append("links left: " + ", ".join(links_left()))
        return problems


def in_subnet(address: str, subnet: str) -> bool:
    return ipaddress.ip_address(address) in ipaddress.ip_network(f"{subnet}.0/24")
