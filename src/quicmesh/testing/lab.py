"""The network lab: hosts in Linux network namespaces on a real kernel network, faults injected by
the kernel (nftables) and by signals.

Theory of operation
-------------------
A :class:`Lab` builds, with ``ip`` (iproute2) and ``nft`` (nftables):

- one namespace per **LAN** holding a bridge (the LAN's switch);
- one namespace per **host**, joined to its LAN's bridge by a veth pair, with an address in the
  LAN's subnet (``10.<lan>.0.<n>/24``);
- one namespace per **router**, with a veth into each LAN it joins, forwarding between them; the
  hosts of those LANs route the other LANs' subnets through it.

Nothing is ever connected to the machine's own network: no veth into the root namespace, no
route that leaves the lab, so no packet leaves it. Every name starts with ``qml-<run id>-``
(``run id`` = the owning process id in hex plus a random suffix); :func:`cleanup_stale` deletes
the namespaces of runs whose process is gone (a crashed earlier run), and the lab tears itself
down on exit, on failure (context manager, ``atexit``) and on a signal that ends the process
normally.

Faults are nftables rules in each host's ``inet qml`` table (input and output hooks):
:meth:`Lab.partition` drops traffic between two groups both ways, :meth:`Lab.cut` one way,
:meth:`Lab.loss` drops a random share of packets on every link of the given hosts
(``numgen random mod 100 < P drop``), :meth:`Lab.heal` removes them all. Process faults use the
node process's pid: :meth:`LabNode.kill` (SIGKILL), :meth:`LabNode.pause` / ``resume``
(SIGSTOP / SIGCONT) and restart with the same key and address.

Nodes are real ``quicmesh node`` processes started inside their host's namespace with
``ip netns exec`` (the command line a user types, plus ``--control`` for the harness): see
:meth:`Lab.spawn`.

:func:`unavailable` says in one line why a lab cannot be built here (not root, ``ip`` or ``nft``
missing, namespaces refused), so tests can skip with that line on a machine without the rights;
CI (``.ci/run``, as root) installs what is needed and runs them.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .process import NodeProcess

__all__ = ["Host", "Lab", "LabNode", "cleanup_stale", "one_overlay", "unavailable"]

PREFIX = "qml-"
"""Every namespace of a lab starts with this, then the run id."""

_TABLE = "qml"


def _run(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, input=input, timeout=30)


def unavailable() -> str | None:
    """Why a lab cannot be built on this machine (one line), or None when it can."""
    if os.name != "posix" or not Path("/proc/self/ns/net").exists():
        return "the network lab needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the network lab needs root (network namespaces, veth, nftables); CI runs it as root"
    for tool, pkg in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"the network lab needs `{tool}` (Debian package {pkg}); .ci/run installs it"
    probe = f"{PREFIX}probe-{os.getpid():x}"
    r = _run("ip", "netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()[:200]}"
    try:
        r = _run("ip", "netns", "exec", probe, "nft", "list", "tables", check=False)
        if r.returncode != 0:
            return f"nftables does not work in a namespace: {r.stderr.strip()[:200]}"
    finally:
        _run("ip", "netns", "del", probe, check=False)
    return None


def _namespaces() -> list[str]:
    r = _run("ip", "netns", "list", check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale() -> list[str]:
    """Delete the namespaces of lab runs whose owning process is gone; returns their names."""
    gone: list[str] = []
    for ns in _namespaces():
        if not ns.startswith(PREFIX):
            continue
        run = ns[len(PREFIX):].split("-", 1)[0]
        try:
            pid = int(run.split("x", 1)[0], 16)
        except ValueError:
            pid = -1
        if pid > 0 and _pid_alive(pid) and pid != os.getpid():
            continue
        if pid == os.getpid():
            continue
        _run("ip", "netns", "del", ns, check=False)
        gone.append(ns)
    return gone


@dataclass
class Lan:
    """A LAN: a bridge in its own namespace and a /24 subnet."""

    name: str
    index: int
    ns: str
    subnet: ipaddress.IPv4Network
    members: int = 0
    ends: list[tuple[str, str, str]] = field(default_factory=list)  # bounded: at most 250 members
    """(member namespace, member interface, bridge port) of each member, for :meth:`Lab.set_mtu`."""


@dataclass
class Host:
    """A host: a namespace on one LAN with one address."""

    name: str
    ns: str
    lan: Lan
    address: str
    nodes: list[LabNode] = field(default_factory=list)


@dataclass
class LabNode:
    """A ``quicmesh node`` process running in a lab host."""

    host: Host
    name: str
    process: NodeProcess
    port: int
    key: Path
    args: tuple[str, ...]
    env: dict[str, str] | None = None

    @property
    def address(self) -> str:
        """``ADDRESS:PORT`` the node listens on."""
        return f"{self.host.address}:{self.port}"

    @property
    def pid(self) -> int:
        """The node process's pid (``ip netns exec`` execs the node in place)."""
        pid = self.process.proc.pid
        assert pid is not None
        return pid

    def kill(self) -> None:
        """SIGKILL the node."""
        self.process.kill()

    def pause(self) -> None:
        """SIGSTOP the node (a paused host)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT the node."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGCONT)


class Lab:
    """A lab of network namespaces; use as a context manager (``with Lab() as lab:``)."""

    def __init__(self, *, run_id: str | None = None) -> None:
        self.run_id = run_id or f"{os.getpid():x}x{secrets.token_hex(2)}"
        self.lans: dict[str, Lan] = {}  # bounded: the lab's own topology, a handful of LANs
        self.hosts: dict[str, Host] = {}  # bounded: the lab's own topology
        self.routers: dict[str, list[tuple[Lan, str]]] = {}  # bounded: the lab's own topology
        self._namespaces: list[str] = []  # bounded: one per LAN, host and router created
        self._rules: dict[str, list[str]] = {}  # bounded: fault rules per host, removed by heal()
        self.dir = Path(tempfile.mkdtemp(prefix=f"qml-{self.run_id}-"))
        self._closed = False
        atexit.register(self.teardown)

    # -- topology ---------------------------------------------------------------------------------

    def _ns(self, kind: str, name: str) -> str:
        ns = f"{PREFIX}{self.run_id}-{kind}-{name}"
        _run("ip", "netns", "add", ns)
        self._namespaces.append(ns)
        self._exec(ns, "ip", "link", "set", "lo", "up")
        return ns

    def _exec(self, ns: str, *args: str, check: bool = True, input: str | None = None) -> str:
        r = _run("ip", "netns", "exec", ns, *args, check=False, input=input)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} in {ns} failed: {r.stderr.strip()[:300]}")
        return r.stdout

    def add_lan(self, name: str) -> Lan:
        """A new LAN (a bridge in its own namespace) with the next free 10.N.0.0/24 subnet."""
        index = len(self.lans) + 1
        ns = self._ns("lan", name)
        self._exec(ns, "ip", "link", "add", "br0", "type", "bridge")
        self._exec(ns, "ip", "link", "set", "br0", "up")
        lan = Lan(name, index, ns, ipaddress.IPv4Network(f"10.{index}.0.0/24"))
        self.lans[name] = lan
        return lan

    def _plug(self, ns: str, ifname: str, lan: Lan) -> str:
        lan.members += 1
        if lan.members > 250:
            raise RuntimeError(f"LAN {lan.name} is full")
        port = f"p{lan.members}"
        addr = str(lan.subnet.network_address + lan.members)
        _run("ip", "link", "add", ifname, "netns", ns, "type", "veth", "peer", "name", port, "netns", lan.ns)
        self._exec(lan.ns, "ip", "link", "set", port, "master", "br0")
        self._exec(lan.ns, "ip", "link", "set", port, "up")
        self._exec(ns, "ip", "addr", "add", f"{addr}/24", "dev", ifname)
        self._exec(ns, "ip", "link", "set", ifname, "up")
        lan.ends.append((ns, ifname, port))
        return addr

    def set_mtu(self, lan: str, mtu: int) -> None:
        """#14: set the MTU of every link of ``lan`` (its bridge, ports and members' interfaces,
        routers' included), e.g. 9000 for a jumbo-frame LAN or 1500 for a narrow hop on a path."""
        ln = self.lans[lan]
        for ns, ifname, port in ln.ends:
            self._exec(ln.ns, "ip", "link", "set", port, "mtu", str(mtu))
            self._exec(ns, "ip", "link", "set", ifname, "mtu", str(mtu))
        self._exec(ln.ns, "ip", "link", "set", "br0", "mtu", str(mtu))

    def add_host(self, name: str, lan: str | Lan) -> Host:
        """A new host namespace on ``lan`` with the LAN's next address."""
        ln = self.lans[lan] if isinstance(lan, str) else lan
        ns = self._ns("h", name)
        addr = self._plug(ns, "eth0", ln)
        host = Host(name, ns, ln, addr)
        self.hosts[name] = host
        self._exec(ns, "nft", "-f", "-", input=_base_table())
        for router in self.routers.values():
            self._route_host(host, router)
        return host

    def add_router(self, name: str, lans: Sequence[str]) -> None:
        """A router namespace joined to each of ``lans``, forwarding between them; every host of
        those LANs (now and later) routes the other LANs' subnets through it."""
        ns = self._ns("r", name)
        ports: list[tuple[Lan, str]] = []
        for i, ln in enumerate(lans):
            lan = self.lans[ln]
            ports.append((lan, self._plug(ns, f"eth{i}", lan)))
        self._exec(ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        self.routers[name] = ports
        for host in self.hosts.values():
            self._route_host(host, ports)

    def _route_host(self, host: Host, ports: list[tuple[Lan, str]]) -> None:
        via = [addr for lan, addr in ports if lan is host.lan]
        if not via:
            return
        for lan, _ in ports:
            if lan is not host.lan:
                self._exec(host.ns, "ip", "route", "replace", str(lan.subnet), "via", via[0])

    def nat(self, router: str, private_lan: str, *, random_fully: bool = False) -> str:
        """Make ``router`` a NAT for ``private_lan`` (#13): packets from that LAN leaving by any
        other port are masqueraded to the router's address there (``random_fully``: with
        randomised source ports, nft ``masquerade fully-random``, a port-randomising NAT), and
        nothing enters the private LAN unless it answers a flow opened from inside. Like a home
        gateway's firewall, the router also drops new flows from outside addressed to itself: a
        hole punch's first packet that arrives before the inside host sent its own must not leave
        a conntrack entry that makes the router map the host's packet to another port. Returns
        the router's address on the first other LAN (what the private hosts appear as)."""
        ports = self.routers[router]
        inside = [i for i, (lan, _) in enumerate(ports) if lan.name == private_lan]
        if not inside:
            raise ValueError(f"router {router} is not on LAN {private_lan}")
        i = inside[0]
        subnet = ports[i][0].subnet
        ns = self._router_ns(router)
        flags = " fully-random" if random_fully else ""
        self._exec(ns, "nft", "-f", "-", input=(
            "table ip qmlnat {\n"
            "  chain postrouting { type nat hook postrouting priority 100; policy accept;\n"
            f"    ip saddr {subnet} oifname != \"eth{i}\" masquerade{flags}\n  }}\n"
            "  chain forward { type filter hook forward priority 0; policy accept;\n"
            f"    oifname \"eth{i}\" ct state != {{ established, related }} drop\n  }}\n"
            "  chain input { type filter hook input priority 0; policy accept;\n"
            f"    iifname != \"eth{i}\" ct state new drop\n  }}\n"
            "}\n"))
        return next(addr for lan, addr in ports if lan.name != private_lan)

    def _router_ns(self, router: str) -> str:
        return f"{PREFIX}{self.run_id}-r-{router}"

    # -- faults -----------------------------------------------------------------------------------

    def blackhole_icmp(self, router: str) -> None:
        """#14: ``router`` sends no ICMP any more (a path MTU black hole: a packet too large for
        the next link vanishes without a "fragmentation needed"; only probing finds the MTU)."""
        self._exec(self._router_ns(router), "nft", "-f", "-", input=(
            "table inet qm_blackhole {\n"
            "  chain output { type filter hook output priority 0; policy accept;\n"
            "    meta l4proto { icmp, ipv6-icmp } counter drop; }\n"
            "}\n"))

    def _add_rule(self, host: Host, chain: str, rule: str) -> None:
        self._exec(host.ns, "nft", "add", "rule", "inet", _TABLE, chain, *rule.split())
        self._rules.setdefault(host.name, []).append(rule)

    def partition(self, side_a: Iterable[Host], side_b: Iterable[Host]) -> None:
        """Drop every packet between the two groups, both ways."""
        a, b = list(side_a), list(side_b)
        for x in a:
            for y in b:
                self.cut(x, y)
                self.cut(y, x)

    def cut(self, src: Host, dst: Host) -> None:
        """Drop packets from ``src`` to ``dst`` (one way; at ``dst``'s input)."""
        self._add_rule(dst, "input", f"ip saddr {src.address} drop")

    def loss(self, percent: int, hosts: Iterable[Host] | None = None) -> None:
        """Drop ``percent`` % of the packets every given host (default: all) receives."""
        if not 0 <= percent <= 100:
            raise ValueError("percent is 0 to 100")
        for h in hosts if hosts is not None else self.hosts.values():
            self._add_rule(h, "input", f"meta l4proto udp numgen random mod 100 < {percent} drop")

    def heal(self) -> None:
        """Remove every fault rule (partitions, cuts, loss)."""
        for name in list(self._rules):
            host = self.hosts[name]
            self._exec(host.ns, "nft", "flush", "chain", "inet", _TABLE, "input")
            self._exec(host.ns, "nft", "flush", "chain", "inet", _TABLE, "output")
        self._rules.clear()

    def counters(self, host: Host) -> str:
        """The host's nftables ruleset (with counters), for reports."""
        return self._exec(host.ns, "nft", "list", "table", "inet", _TABLE)

    # -- nodes ------------------------------------------------------------------------------------

    async def spawn(self, host: Host | str, name: str, *, port: int = 7000, realm: str = "lab",
                    bootstrap: Sequence[str] = (), extra: Sequence[str] = (), key: Path | None = None,
                    timeout: float = 30.0, env: dict[str, str] | None = None) -> LabNode:
        """Start ``quicmesh node --listen ADDR:PORT`` inside ``host``'s namespace (with a key file
        in the lab's directory, kept for restarts; ``env`` adds environment variables, e.g.
        ``QUICMESH_*`` settings)."""
        h = self.hosts[host] if isinstance(host, str) else host
        key = key or self.dir / f"{name}.key"
        args = ("--key", str(key), *extra)
        proc = await NodeProcess.spawn(name, realm=realm, bootstrap=bootstrap, extra=args, timeout=timeout,
                                       prefix=("ip", "netns", "exec", h.ns), listen=f"{h.address}:{port}", env=env)
        node = LabNode(h, name, proc, port, key, tuple(extra), env)
        h.nodes.append(node)
        return node

    async def restart(self, node: LabNode, *, realm: str = "lab", bootstrap: Sequence[str] = ()) -> LabNode:
        """Start ``node`` again (same host, port and key) after it was killed or stopped."""
        node.kill()
        await node.process.stop(timeout=5)
        node.host.nodes.remove(node)
        return await self.spawn(node.host, node.name, port=node.port, realm=realm, bootstrap=bootstrap,
                                extra=node.args, key=node.key, env=node.env)

    async def stop_nodes(self) -> None:
        """Stop every node of the lab (resuming paused ones first)."""
        for h in self.hosts.values():
            for n in list(h.nodes):
                n.resume()
                await n.process.stop(timeout=5)
            h.nodes.clear()

    # -- lifetime ---------------------------------------------------------------------------------

    def teardown(self) -> None:
        """Kill the lab's node processes and delete every namespace it made (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for h in self.hosts.values():
            for n in h.nodes:
                n.resume()
                n.kill()
        for ns in reversed(self._namespaces):
            _run("ip", "netns", "del", ns, check=False)
        self._namespaces.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
        with contextlib.suppress(Exception):
            atexit.unregister(self.teardown)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def namespaces(self) -> list[str]:
        """The namespaces this lab made and still has."""
        return list(self._namespaces)


def one_overlay(edges: Mapping[str, Collection[str]]) -> bool:
    """Whether ``edges`` (each node -> the nodes it holds connections to, as its health reports)
    form one connected graph over the nodes it names (connections to others are ignored)."""
    if not edges:
        return True
    start = next(iter(edges))
    seen, todo = {start}, [start]
    while todo:
        for p in edges[todo.pop()]:
            if p in edges and p not in seen:
                seen.add(p)
                todo.append(p)
    return len(seen) == len(edges)


def _base_table() -> str:
    return (f"table inet {_TABLE} {{\n"
            "  chain input { type filter hook input priority 0; policy accept; }\n"
            "  chain output { type filter hook output priority 0; policy accept; }\n"
            "}\n")
