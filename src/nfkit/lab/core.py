"""The throwaway network-namespace lab (see :class:`Lab`)."""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import math
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from nfkit import netns

__all__ = [
    "Iface",
    "Lab",
    "LabCommandError",
    "LabError",
    "Node",
    "RuleCounter",
    "ServerProcess",
    "sweep_stale",
    "unavailable_reason",
]

PREFIX = "nfk"
#: Bookkeeping directory: one small JSON file per live lab (owner pid, start time).
STATE_DIR = "/run/nfkit-lab"
_NAME_RE = re.compile(r"nfk-(?P<pid>[0-9]+)-(?P<tag>[0-9a-f]{6,16})-(?P<role>[a-z][a-z0-9]{0,7})")
_ROLE_RE = re.compile(r"[a-z][a-z0-9]{0,7}")
TRAFFIC_MODULE = "nfkit.lab.traffic"


class LabError(RuntimeError):
    """Something in the lab did not work (setup, traffic, timeouts)."""


class LabCommandError(LabError, subprocess.CalledProcessError):
    """A command run with ``check=True`` failed; the message includes its stderr."""

    def __init__(self, cp: subprocess.CompletedProcess[Any], ns: str | None) -> None:
        subprocess.CalledProcessError.__init__(
            self, cp.returncode, cp.args, output=cp.stdout, stderr=cp.stderr
        )
        self.ns = ns

    def __str__(self) -> str:
        err = self.stderr
        if isinstance(err, bytes):
            err = err.decode("utf-8", "replace")
        where = f" in netns {self.ns}" if self.ns else ""
        cmd = " ".join(str(a) for a in self.cmd)
        return f"command failed{where} (exit {self.returncode}): {cmd}\n{(err or '').strip()}"


# ------------------------------------------------------------------ topology


@dataclass
class Iface:
    """One interface of a lab node (addresses are plain strings, no prefix)."""

    name: str
    ns: str
    ip4: str | None = None
    ip6: str | None = None
    plen4: int = 24
    plen6: int = 64
    ifindex: int = 0
    mac: str = ""
    peer_ns: str = ""
    peer_name: str = ""

    @property
    def cidr4(self) -> str | None:
        return f"{self.ip4}/{self.plen4}" if self.ip4 else None

    @property
    def cidr6(self) -> str | None:
        return f"{self.ip6}/{self.plen6}" if self.ip6 else None


@dataclass
class Node:
    """A lab namespace.  ``str(node)`` is the namespace name.

    ``ip4``/``ip6``/``ifname``/``ifindex``/``mac`` describe the node's first
    interface (the only one for ``a`` and ``b``; for the router ``r`` the one
    facing ``a``, ``r.ifaces[1]`` faces ``b``).
    """

    role: str
    name: str
    ifaces: list[Iface] = field(default_factory=list)
    gw4: str | None = None
    gw6: str | None = None
    forwarding: bool = False

    def __str__(self) -> str:
        return self.name

    @property
    def iface(self) -> Iface:
        if not self.ifaces:
            raise LabError(f"node {self.role} ({self.name}) has no interfaces")
        return self.ifaces[0]

    @property
    def ifname(self) -> str:
        return self.iface.name

    @property
    def ifindex(self) -> int:
        return self.iface.ifindex

    @property
    def mac(self) -> str:
        return self.iface.mac

    @property
    def ip4(self) -> str | None:
        return self.iface.ip4

    @property
    def ip6(self) -> str | None:
        return self.iface.ip6

    def addresses(self) -> list[str]:
        return [a for i in self.ifaces for a in (i.ip4, i.ip6) if a]


@dataclass(frozen=True)
class RuleCounter:
    """One rule of ``iptables-save -c``: chain, rule text (without -A CHAIN), counters."""

    chain: str
    rule: str
    packets: int
    bytes: int


# ------------------------------------------------------------------ helpers


def _package_root() -> str:
    import nfkit

    return str(Path(nfkit.__file__).resolve().parent.parent)


def child_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for python children: PYTHONPATH extended so ``nfkit`` imports."""
    env = dict(os.environ if base is None else base)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    root = _package_root()
    if root not in parts:
        parts.insert(0, root)
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def traffic_argv(*args: str) -> list[str]:
    """argv running ``python -m nfkit.lab.traffic ARGS`` with this interpreter."""
    return [sys.executable, "-m", TRAFFIC_MODULE, *args]


def _proc_starttime(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def _pidns() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _pids_in_netns(names: Sequence[str]) -> list[int]:
    """PIDs whose network namespace is one of ``names`` (like ``ip netns pids``)."""
    ids: set[tuple[int, int]] = set()
    for name in names:
        try:
            st = os.stat(netns.netns_path(name))
        except OSError:
            continue
        ids.add((st.st_dev, st.st_ino))
    if not ids:
        return []
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in ids:
            found.append(int(entry))
    return found


def _kill_netns_pids(names: Sequence[str], timeout: float = 2.0) -> None:
    """SIGKILL every process still inside the given namespaces (bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = _pids_in_netns(names)
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def _ip_batch(lines: Sequence[str], ns: str | None = None, force: bool = False) -> None:
    if not lines:
        return
    argv = ["ip"]
    if ns is not None:
        argv += ["-n", ns]
    if force:
        argv.append("-force")
    argv += ["-b", "-"]
    cp = subprocess.run(
        argv, input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=30, check=False
    )
    if cp.returncode != 0 and not force:
        raise LabCommandError(cp, ns)


def _delete_netns(names: Sequence[str]) -> None:
    names = [n for n in names if netns.exists(n)]
    if names:
        _ip_batch([f"netns del {n}" for n in names], force=True)


def _owner_alive(pid: int, tag: str) -> bool:
    """Conservative: True unless we are sure the lab's owner is gone."""
    state: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        state = json.loads(Path(STATE_DIR, f"{PREFIX}-{pid}-{tag}.json").read_text())
    if state.get("pidns") and state["pidns"] != _pidns():
        return True  # owner lives in another pid namespace: cannot judge, keep
    if not os.path.exists(f"/proc/{pid}"):
        return False
    want = state.get("starttime")
    return not (want is not None and _proc_starttime(pid) not in (None, want))


def unavailable_reason() -> str | None:
    """Why a Lab cannot be built on this machine (for skips), or None when it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    missing = [t for t in ("ip", "iptables", "ip6tables") if shutil.which(t) is None]
    if missing:
        return f"needs {', '.join(missing)} (not found in PATH)"
    if not os.path.exists("/proc/thread-self/ns/net"):
        return "no network namespace support (/proc/thread-self/ns/net missing)"
    return None


def sweep_stale() -> list[str]:
    """Delete ``nfk-<pid>-<tag>-<role>`` namespaces whose owner process is gone.

    Anything that does not match that exact pattern is never touched, nor are
    namespaces of live owners (or owners in another pid namespace).  Returns
    the deleted names.
    """
    stale: list[str] = []
    for name in netns.list_netns():
        m = _NAME_RE.fullmatch(name)
        if m is None:
            continue
        pid = int(m["pid"])
        if pid == os.getpid() or _owner_alive(pid, m["tag"]):
            continue
        stale.append(name)
    if stale:
        _kill_netns_pids(stale)
        _delete_netns(stale)
    with contextlib.suppress(OSError):
        remaining = netns.list_netns()
        for f in Path(STATE_DIR).glob(f"{PREFIX}-*.json"):
            m = re.fullmatch(r"nfk-([0-9]+)-([0-9a-f]+)", f.stem)
            if m is None or _owner_alive(int(m[1]), m[2]):
                continue
            if not any(n.startswith(f.stem + "-") for n in remaining):
                f.unlink(missing_ok=True)
    return stale


def _read_json_lines(data: bytes) -> list[dict[str, Any]]:
    out = []
    for line in data.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


class ServerProcess:
    """A background traffic command (tcp-server / udp-recv) started in a namespace.

    Created by :meth:`Lab.tcp_server` / :meth:`Lab.udp_receiver`, which return
    only once the socket is bound (the ``ready`` event).  :meth:`result` waits
    for the command to end and returns its final JSON result.
    """

    def __init__(self, lab: Lab, ns: str, proc: subprocess.Popen[bytes]) -> None:
        self.lab = lab
        self.ns = ns
        self.proc = proc
        self._buf = b""
        self.ready: dict[str, Any] = {}
        self._result: dict[str, Any] | None = None

    def wait_ready(self, timeout: float = 10.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                for ev in _read_json_lines(line):
                    if ev.get("event") == "ready":
                        self.ready = ev
                        return ev
                    if ev.get("event") == "error":
                        self.stop()
                        raise LabError(f"{self.proc.args!r} in {self.ns} failed: {ev}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                raise LabError(f"{self.proc.args!r} in {self.ns} not ready within {timeout}s")
            r, _, _ = select.select([fd], [], [], remaining)
            if not r:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                err = self._stderr()
                self.proc.wait(timeout=5)
                raise LabError(
                    f"{self.proc.args!r} in {self.ns} exited before ready: "
                    f"{(self._buf + err).decode(errors='replace').strip()}"
                )
            self._buf += chunk

    def _stderr(self) -> bytes:
        if self.proc.stderr is None:
            return b""
        with contextlib.suppress(OSError, ValueError):
            return self.proc.stderr.read() or b""
        return b""

    def result(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait (bounded) for the command to finish; return its ``result`` event."""
        if self._result is not None:
            return self._result
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            self.stop()
            raise LabError(f"{self.proc.args!r} in {self.ns} did not finish in {timeout}s") from exc
        events = _read_json_lines(self._buf + (out or b""))
        for ev in reversed(events):
            if ev.get("event") in ("result", "error"):
                self._result = ev
                return self._result
        raise LabError(
            f"{self.proc.args!r} in {self.ns}: no result "
            f"(exit {self.proc.returncode}): {(err or b'').decode(errors='replace')}"
        )

    def stop(self) -> None:
        self.lab._terminate(self.proc, close_streams=True)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------ the lab


class Lab:
    """A throwaway lab of network namespaces joined by veth pairs.

    Default topology (``Lab()``)::

        a [nfka0] 192.0.2.1/24 2001:db8::1/64 <--veth--> [nfkb0] b 192.0.2.2/24 2001:db8::2/64

    With ``Lab(router=True)``::

        a [nfka0] ---- [nfkr0] r [nfkr1] ---- [nfkb0] b
          192.0.2.1    192.0.2.254  198.51.100.254   198.51.100.2
          2001:db8::1  2001:db8::fe 2001:db8:1::fe   2001:db8:1::2

    a and b route everything through r; forwarding is enabled inside r only.
    ``extra=("c", ...)`` adds bare namespaces (loopback up, no links) that can
    be wired with :meth:`add_link`.

    Namespace names are ``nfk-<pid>-<random>-<role>``.  Use as a context
    manager, or call :meth:`start` / :meth:`close` (close is idempotent and
    also registered with :mod:`atexit`).  Wherever a namespace is expected you
    can pass a :class:`Node`, a role (``"a"``) or a full namespace name.
    """

    def __init__(self, router: bool = False, extra: Sequence[str] = (), sweep: bool = True) -> None:
        self.tag = secrets.token_hex(4)
        self.id = f"{PREFIX}-{os.getpid()}-{self.tag}"
        self.sweep = sweep
        self.nodes: dict[str, Node] = {}
        self._links: list[tuple[Iface, Iface]] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._own_pipes: set[int] = set()  # pids of helpers whose pipes the lab owns
        self._started = False
        self._closed = False
        self.env = child_env()
        self.setup_seconds = 0.0

        a = self._plan_node("a")
        r = self._plan_node("r", forwarding=True) if router else None
        b = self._plan_node("b")
        if r is None:
            self._plan_link(a, b, ("192.0.2.1", "2001:db8::1"), ("192.0.2.2", "2001:db8::2"))
        else:
            self._plan_link(a, r, ("192.0.2.1", "2001:db8::1"), ("192.0.2.254", "2001:db8::fe"))
            self._plan_link(
                r, b, ("198.51.100.254", "2001:db8:1::fe"), ("198.51.100.2", "2001:db8:1::2")
            )
            a.gw4, a.gw6 = "192.0.2.254", "2001:db8::fe"
            b.gw4, b.gw6 = "198.51.100.254", "2001:db8:1::fe"
        for role in extra:
            self._plan_node(role)
        self.a: Node = a
        self.b: Node = b
        self.r: Node | None = r

    # -- planning --------------------------------------------------------

    def _plan_node(self, role: str, forwarding: bool = False) -> Node:
        if not _ROLE_RE.fullmatch(role):
            raise ValueError(f"invalid role {role!r}: 1-8 chars [a-z0-9], starting with a letter")
        if role in self.nodes:
            raise ValueError(f"duplicate role {role!r}")
        node = Node(role=role, name=f"{self.id}-{role}", forwarding=forwarding)
        self.nodes[role] = node
        return node

    def _plan_link(
        self,
        x: Node,
        y: Node,
        x_addrs: tuple[str | None, str | None],
        y_addrs: tuple[str | None, str | None],
        x_ifname: str | None = None,
        y_ifname: str | None = None,
        plen4: int = 24,
        plen6: int = 64,
    ) -> tuple[Iface, Iface]:
        xn = x_ifname or f"nfk{x.role}{len(x.ifaces)}"
        yn = y_ifname or f"nfk{y.role}{len(y.ifaces)}"
        for n in (xn, yn):
            if len(n) > 15:
                raise ValueError(f"interface name too long: {n!r}")
        if x is y:
            raise ValueError("cannot link a node to itself")
        # Explicit, distinct ifindexes on both ends: with equal indexes (both
        # would be 2 in fresh namespaces) the kernel's linkwatch treats the
        # carrier change as non-urgent and operstate (hence IPv6) lags up to 1 s.
        base = 100 + 2 * len(self._links)
        xi = Iface(
            xn,
            x.name,
            x_addrs[0],
            x_addrs[1],
            plen4,
            plen6,
            ifindex=base,
            peer_ns=y.name,
            peer_name=yn,
        )
        yi = Iface(
            yn,
            y.name,
            y_addrs[0],
            y_addrs[1],
            plen4,
            plen6,
            ifindex=base + 1,
            peer_ns=x.name,
            peer_name=xn,
        )
        x.ifaces.append(xi)
        y.ifaces.append(yi)
        self._links.append((xi, yi))
        return xi, yi

    # -- lifecycle -------------------------------------------------------

    @property
    def namespaces(self) -> list[str]:
        return [n.name for n in self.nodes.values()]

    def start(self) -> Lab:
        if self._started:
            return self
        if self._closed:
            raise LabError("a closed Lab cannot be restarted; create a new one")
        self._started = True
        t0 = time.monotonic()
        atexit.register(self.close)
        try:
            if self.sweep:
                sweep_stale()
            self._write_state()
            _ip_batch([f"netns add {n}" for n in self.namespaces])
            for node in self.nodes.values():
                self._base_sysctls(node)
            created: set[int] = set()
            for node in self.nodes.values():
                lines = ["link set lo up"]
                for xi, yi in self._links:
                    if id(xi) not in created and node.name in (xi.ns, yi.ns):
                        if xi.ns != node.name:
                            xi, yi = yi, xi
                        lines.append(self._veth_line(xi, yi))
                        created.add(id(xi))
                        created.add(id(yi))
                lines += self._iface_lines(node)
                _ip_batch(lines, ns=node.name)
            self._wait_ready(list(self.nodes.values()))
        except BaseException:
            self.close()
            raise
        self.setup_seconds = time.monotonic() - t0
        return self

    @staticmethod
    def _veth_line(xi: Iface, yi: Iface) -> str:
        return (
            f"link add {xi.name} index {xi.ifindex} type veth "
            f"peer name {yi.name} index {yi.ifindex} netns {yi.ns}"
        )

    def _iface_lines(self, node: Node, ifaces: Sequence[Iface] | None = None) -> list[str]:
        lines = []
        for i in node.ifaces if ifaces is None else ifaces:
            if i.ip4:
                lines.append(f"addr add {i.cidr4} dev {i.name}")
            if i.ip6:
                lines.append(f"addr add {i.cidr6} dev {i.name} nodad")
            lines.append(f"link set {i.name} up")
        if ifaces is None:
            if node.gw4:
                lines.append(f"route add default via {node.gw4}")
            if node.gw6:
                lines.append(f"route add ::/0 via {node.gw6}")
        return lines

    def _base_sysctls(self, node: Node) -> None:
        fwd = "1" if node.forwarding else "0"
        with netns.entered(node.name):
            for key, value in (
                ("net.ipv6.conf.all.accept_dad", "0"),
                ("net.ipv6.conf.default.accept_dad", "0"),
                ("net.ipv6.conf.default.router_solicitations", "0"),
                ("net.ipv6.conf.default.accept_ra", "0"),
                ("net.ipv4.ip_forward", fwd),
                ("net.ipv6.conf.all.forwarding", fwd),
            ):
                _write_sysctl(key, value)

    def _wait_ready(self, nodes: Sequence[Node], timeout: float = 10.0) -> None:
        """Wait until every lab interface is up with carrier and no tentative address."""
        deadline = time.monotonic() + timeout
        pending = list(nodes)
        while pending:
            node = pending[0]
            info = {d["ifname"]: d for d in json.loads(self.ip(node, "-j", "addr", "show").stdout)}
            ok = True
            for i in node.ifaces:
                d = info.get(i.name)
                if d is None:
                    raise LabError(f"interface {i.name} missing in {node.name}")
                i.ifindex = int(d["ifindex"])
                i.mac = d.get("address", "")
                if "LOWER_UP" not in d.get("flags", ()) or d.get("operstate") != "UP":
                    ok = False
                for a in d.get("addr_info", ()):
                    if a.get("tentative") or a.get("dadfailed"):
                        ok = False
            if ok:
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise LabError(f"interfaces of {node.name} not ready after {timeout}s: {info}")
            time.sleep(0.01)

    def _write_state(self) -> None:
        with contextlib.suppress(OSError):
            os.makedirs(STATE_DIR, exist_ok=True)
            state = {
                "pid": os.getpid(),
                "starttime": _proc_starttime(os.getpid()),
                "pidns": _pidns(),
                "namespaces": self.namespaces,
            }
            Path(STATE_DIR, f"{self.id}.json").write_text(json.dumps(state))

    def close(self) -> None:
        """Kill every process of the lab and delete its namespaces. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        try:
            for p in self._procs:
                self._terminate(p, close_streams=p.pid in self._own_pipes)
            self._procs.clear()
            names = [n for n in self.namespaces if netns.exists(n)]
            _kill_netns_pids(names)
            _delete_netns(names)
        finally:
            with contextlib.suppress(OSError):
                Path(STATE_DIR, f"{self.id}.json").unlink(missing_ok=True)

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __getitem__(self, role: str) -> Node:
        return self.nodes[role]

    def __repr__(self) -> str:
        state = "closed" if self._closed else "started" if self._started else "new"
        return f"<Lab {self.id} {state} nodes={list(self.nodes)}>"

    # -- topology helpers ----------------------------------------------

    def node(self, ns: Node | str) -> Node:
        """Resolve a Node, a role or a namespace name to the Node."""
        if isinstance(ns, Node):
            return ns
        if ns in self.nodes:
            return self.nodes[ns]
        for n in self.nodes.values():
            if n.name == ns:
                return n
        raise LabError(f"no lab node {ns!r} in {self.id}")

    def ns(self, ns: Node | str) -> str:
        """Namespace name for a Node / role / name (unknown names pass through)."""
        if isinstance(ns, Node):
            return ns.name
        if ns in self.nodes:
            return self.nodes[ns].name
        return ns

    def owner_of(self, addr: str) -> Node:
        """The node that has address ``addr``."""
        want = ipaddress.ip_address(addr)
        for n in self.nodes.values():
            if any(ipaddress.ip_address(a) == want for a in n.addresses()):
                return n
        raise LabError(f"no lab node owns {addr}")

    def iface_between(self, x: Node | str, y: Node | str) -> Iface:
        """x's interface on the link that joins x and y."""
        xn, yn = self.node(x), self.node(y)
        for i in xn.ifaces:
            if i.peer_ns == yn.name:
                return i
        raise LabError(f"no link between {xn.role} and {yn.role}")

    def add_node(self, role: str, forwarding: bool = False) -> Node:
        """Add a bare namespace (loopback up) to a started lab."""
        node = self._plan_node(role, forwarding)
        if self._started:
            _ip_batch([f"netns add {node.name}"])
            self._write_state()
            self._base_sysctls(node)
            _ip_batch(["link set lo up"], ns=node.name)
        return node

    def add_link(
        self,
        x: Node | str,
        y: Node | str,
        x_addrs: tuple[str | None, str | None] = (None, None),
        y_addrs: tuple[str | None, str | None] = (None, None),
        x_ifname: str | None = None,
        y_ifname: str | None = None,
        plen4: int = 24,
        plen6: int = 64,
    ) -> tuple[Iface, Iface]:
        """Join two nodes with a new veth pair; addresses are ``(ip4, ip6)`` tuples."""
        xn, yn = self.node(x), self.node(y)
        xi, yi = self._plan_link(xn, yn, x_addrs, y_addrs, x_ifname, y_ifname, plen4, plen6)
        if self._started:
            _ip_batch([self._veth_line(xi, yi), *self._iface_lines(xn, [xi])], ns=xn.name)
            _ip_batch(self._iface_lines(yn, [yi]), ns=yn.name)
            self._wait_ready([xn, yn])
        return xi, yi

    # -- running things ------------------------------------------------

    def _check_open(self) -> None:
        if not self._started or self._closed:
            raise LabError(f"lab {self.id} is not running (call start())")

    def run(
        self,
        ns: Node | str,
        *argv: str,
        check: bool = True,
        input: str | bytes | None = None,
        timeout: float = 30,
        text: bool | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` inside ``ns`` (``ip netns exec``), capture output, bounded by timeout.

        Output is text unless ``input`` is bytes or ``text=False``.  With
        ``check=True`` a non-zero exit raises :class:`LabCommandError` (with stderr).
        """
        self._check_open()
        name = self.ns(ns)
        if text is None:
            text = not isinstance(input, bytes)
        try:
            cp = subprocess.run(
                ["ip", "netns", "exec", name, *argv],
                input=input,
                capture_output=True,
                text=text,
                # Output may hold non-UTF-8 bytes (e.g. a rule's log prefix).
                errors="replace" if text else None,
                timeout=timeout,
                env=self.env if env is None else env,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"timeout after {timeout}s in {name}: {' '.join(argv)}") from exc
        if check and cp.returncode != 0:
            raise LabCommandError(cp, name)
        return cp

    def popen(self, ns: Node | str, *argv: str, **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in ``ns`` in the background; it is killed at :meth:`close`.

        Keyword arguments go to :class:`subprocess.Popen` (defaults: lab
        environment, stdin from /dev/null, own session).
        """
        self._check_open()
        kw.setdefault("env", self.env)
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("start_new_session", True)
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(ns), *argv], **kw
        )
        self._procs.append(proc)
        return proc

    def _terminate(
        self, proc: subprocess.Popen[Any], grace: float = 1.0, close_streams: bool = False
    ) -> None:
        """SIGTERM, then SIGKILL after ``grace`` s; the caller's pipes stay open unless asked."""
        if proc.poll() is None:
            # the process leads its own session (start_new_session), so its
            # process group contains only what we started
            try:
                sig_target: int | None = proc.pid if os.getpgid(proc.pid) == proc.pid else None
            except ProcessLookupError:
                sig_target = None
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    if sig_target is not None:
                        os.killpg(sig_target, sig)
                    else:
                        proc.send_signal(sig)
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
        if not close_streams:
            return
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def ip(
        self, ns: Node | str, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``ip -n NS ARGS`` (no exec needed)."""
        cp = subprocess.run(
            ["ip", "-n", self.ns(ns), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if check and cp.returncode != 0:
            raise LabCommandError(cp, self.ns(ns))
        return cp

    def iptables(
        self, ns: Node | str, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.run(ns, "iptables", *args, check=check)

    def ip6tables(
        self, ns: Node | str, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.run(ns, "ip6tables", *args, check=check)

    def nft(
        self, ns: Node | str, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``nft ARGS`` in ``ns``; pass a ruleset as ``input`` with args ``-f -``."""
        return self.run(ns, "nft", *args, input=input, check=check)

    def rule_counters(
        self, ns: Node | str, chain: str, table: str = "filter", ipv6: bool = False
    ) -> list[RuleCounter]:
        """Rules of ``chain`` with their packet/byte counters (``iptables-save -c``)."""
        cmd = "ip6tables-save" if ipv6 else "iptables-save"
        out = self.run(ns, cmd, "-c", "-t", table).stdout
        rules = []
        for line in out.splitlines():
            m = re.match(r"\[(\d+):(\d+)\] -A (\S+) ?(.*)$", line)
            if m and m[3] == chain:
                rules.append(RuleCounter(m[3], m[4], int(m[1]), int(m[2])))
        return rules

    def sysctl(self, ns: Node | str, key: str, value: str | int) -> None:
        """Set a sysctl inside ``ns`` (writes /proc/sys from a thread inside the netns).

        Only network-namespaced keys (``net.*``) are allowed, so the host is never touched.
        """
        if not key.startswith("net."):
            raise LabError(f"refusing non-namespaced sysctl {key!r}")
        self._check_open()
        with netns.entered(self.ns(ns)):
            _write_sysctl(key, str(value))

    def get_sysctl(self, ns: Node | str, key: str) -> str:
        self._check_open()
        with netns.entered(self.ns(ns)):
            path = Path("/proc/sys", key if "/" in key else key.replace(".", "/"))
            return path.read_text().strip()

    @contextlib.contextmanager
    def entered(self, ns: Node | str) -> Iterator[None]:
        """Move the calling thread into ``ns`` for the block (see :func:`netns.entered`)."""
        self._check_open()
        with netns.entered(self.ns(ns)):
            yield

    # -- traffic -------------------------------------------------------

    def ping(
        self,
        src: Node | str,
        dst: str,
        count: int = 1,
        timeout: float = 5.0,
        interval: float = 0.2,
        check: bool = False,
    ) -> bool:
        """Ping ``dst`` (v4 or v6) from ``src``; True when all ``count`` replies came back."""
        if shutil.which("ping") is None:
            raise LabError("ping not found (apt-get install -y iputils-ping)")
        fam = "-6" if ipaddress.ip_address(dst).version == 6 else "-4"
        deadline = max(1, math.ceil(timeout))
        cp = self.run(
            src,
            "ping",
            fam,
            "-n",
            "-q",
            "-c",
            str(count),
            "-i",
            str(interval),
            "-W",
            str(deadline),
            "-w",
            str(deadline),
            dst,
            check=False,
            timeout=deadline + 5,
        )
        if check and cp.returncode != 0:
            raise LabCommandError(cp, self.ns(src))
        return cp.returncode == 0

    def _start_server(self, ns: Node | str, args: Sequence[str], timeout: float) -> ServerProcess:
        proc: subprocess.Popen[bytes] = self.popen(
            ns, *traffic_argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self._own_pipes.add(proc.pid)
        srv = ServerProcess(self, self.ns(ns), proc)
        srv.wait_ready(timeout=timeout)
        return srv

    def tcp_server(
        self,
        ns: Node | str,
        port: int,
        count: int = 1,
        timeout: float = 30.0,
        bind: str | None = None,
    ) -> ServerProcess:
        """Start an echo server in ``ns``; returns once it listens."""
        args = ["tcp-server", "--port", str(port), "--count", str(count), "--timeout", str(timeout)]
        if bind:
            args += ["--bind", bind]
        return self._start_server(ns, args, timeout=min(timeout, 10.0))

    def udp_receiver(
        self,
        ns: Node | str,
        port: int,
        count: int = 1,
        timeout: float = 10.0,
        idle: float | None = None,
        bind: str | None = None,
    ) -> ServerProcess:
        """Start a UDP receiver in ``ns``; returns once it is bound."""
        args = ["udp-recv", "--port", str(port), "--count", str(count), "--timeout", str(timeout)]
        if idle is not None:
            args += ["--idle", str(idle)]
        if bind:
            args += ["--bind", bind]
        return self._start_server(ns, args, timeout=min(timeout, 10.0))

    def udp(
        self,
        src: Node | str,
        dst_ip: str,
        port: int,
        count: int = 1,
        size: int = 64,
        rate: float | None = None,
        sport: int | None = None,
        recv: bool = False,
        dst_ns: Node | str | None = None,
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        """Send ``count`` UDP datagrams from ``src``; returns the sender's result dict.

        With ``recv=True`` a receiver is started first in ``dst_ns`` (default:
        the node owning ``dst_ip``) and the result gains ``received``.
        """
        srv = None
        if recv:
            owner = self.node(dst_ns) if dst_ns is not None else self.owner_of(dst_ip)
            srv = self.udp_receiver(owner, port, count, timeout=timeout, idle=1.0)
        try:
            args = [
                "udp-send",
                "--dst",
                dst_ip,
                "--port",
                str(port),
                "--count",
                str(count),
                "--size",
                str(size),
            ]
            if rate:
                args += ["--rate", str(rate)]
            if sport is not None:
                args += ["--sport", str(sport)]
            cp = self.run(src, *traffic_argv(*args), check=False, timeout=timeout + 30)
            events = _read_json_lines(cp.stdout.encode())
            if cp.returncode != 0 or not events or events[-1].get("event") != "result":
                raise LabError(f"udp-send in {self.ns(src)} failed: {cp.stdout}{cp.stderr}")
            res = events[-1]
            if srv is not None:
                res["received"] = srv.result(timeout=timeout + 5).get("received", 0)
            return res
        finally:
            if srv is not None:
                srv.stop()

    def tcp_exchange(
        self,
        src: Node | str,
        dst_ip: str,
        port: int,
        data: bytes = b"hello",
        dst_ns: Node | str | None = None,
        sport: int | None = None,
        timeout: float = 10.0,
    ) -> bytes:
        """Echo server in the destination namespace + client in ``src``; returns the echo.

        One full connection: handshake, data, FIN both ways.  Raises
        :class:`LabError` when the connection fails or the echo does not match.
        """
        owner = self.node(dst_ns) if dst_ns is not None else self.owner_of(dst_ip)
        with self.tcp_server(owner, port, count=1, timeout=timeout) as srv:
            args = [
                "tcp-client",
                "--dst",
                dst_ip,
                "--port",
                str(port),
                "--data-hex",
                data.hex(),
                "--timeout",
                str(timeout),
            ]
            if sport is not None:
                args += ["--sport", str(sport)]
            cp = self.run(src, *traffic_argv(*args), check=False, timeout=timeout + 30)
            events = _read_json_lines(cp.stdout.encode())
            if cp.returncode != 0 or not events or events[-1].get("event") != "result":
                raise LabError(
                    f"tcp exchange {self.ns(src)} -> [{dst_ip}]:{port} failed: "
                    f"{cp.stdout.strip()} {cp.stderr.strip()}"
                )
            srv.result(timeout=timeout)
            return bytes.fromhex(events[-1]["received_hex"])


def _write_sysctl(key: str, value: str) -> None:
    path = Path("/proc/sys", key if "/" in key else key.replace(".", "/"))
    try:
        path.write_text(value)
    except OSError as exc:
        raise LabError(f"sysctl {key}={value}: {exc}") from exc
