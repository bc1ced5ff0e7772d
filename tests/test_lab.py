"""Tests of the namespace lab itself (nfkit.lab): topology, traffic, cleanup."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
from typing import Any

import pytest

from nfkit import netns
from nfkit.lab import Lab, LabError, sweep_stale, traffic, unavailable_reason

pytestmark = pytest.mark.lab

needs_ping = pytest.mark.skipif(shutil.which("ping") is None, reason="ping not installed")


def _root_state() -> dict[str, str]:
    """Read-only snapshot of the root namespace's network configuration."""
    out = {}
    for key, argv in {
        "link": ["ip", "-o", "link"],
        "addr": ["ip", "-o", "addr"],
        "route4": ["ip", "-4", "route", "show", "table", "all"],
        "route6": ["ip", "-6", "route", "show", "table", "all"],
        "iptables": ["iptables", "-S"],
        "ip6tables": ["ip6tables", "-S"],
    }.items():
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        out[key] = cp.stdout + cp.stderr
    return out


def _list_counter(lab: Lab, ns: Any, chain: str, cmd: str = "iptables") -> list[int]:
    """Packet counters of ``chain`` parsed from ``iptables -L CHAIN -v -x -n``."""
    out = lab.run(ns, cmd, "-L", chain, "-v", "-x", "-n").stdout
    lines = out.splitlines()
    assert lines[0].startswith(f"Chain {chain}")
    assert lines[1].split()[:2] == ["pkts", "bytes"]
    return [int(line.split()[0]) for line in lines[2:] if line.strip()]


# ------------------------------------------------------------------ topology


def test_topology_attributes(lab: Lab) -> None:
    assert re.fullmatch(rf"nfk-{os.getpid()}-[0-9a-f]+-a", lab.a.name)
    assert lab.b.name == lab.a.name[:-1] + "b"
    assert (lab.a.ip4, lab.a.ip6) == ("192.0.2.1", "2001:db8::1")
    assert (lab.b.ip4, lab.b.ip6) == ("192.0.2.2", "2001:db8::2")
    assert lab.r is None
    assert str(lab.a) == lab.a.name
    assert lab["b"] is lab.b
    assert lab.owner_of("2001:db8::2") is lab.b
    for node in (lab.a, lab.b):
        assert netns.exists(node.name)
        cp = lab.ip(node, "-o", "link", "show", node.ifname)
        assert cp.stdout.startswith(f"{node.ifindex}: {node.ifname}@")
        assert node.mac in cp.stdout
        addrs = lab.ip(node, "-o", "addr", "show", "dev", node.ifname).stdout
        assert f"{node.ip4}/24" in addrs
        assert f"{node.ip6}/64" in addrs
        assert "tentative" not in addrs
    assert lab.get_sysctl(lab.a, "net.ipv4.ip_forward") == "0"


def test_labs_are_independent() -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"lab: {reason}")
    with Lab() as one, Lab() as two:
        assert not set(one.namespaces) & set(two.namespaces)
        # same addresses in both labs, no interference
        assert one.tcp_exchange(one.a, one.b.ip4, 7000, b"one") == b"one"
        assert two.tcp_exchange(two.a, two.b.ip4, 7000, b"two") == b"two"


@needs_ping
@pytest.mark.parametrize("family", [4, 6])
def test_ping_both_ways(lab: Lab, family: int) -> None:
    for src, dst in ((lab.a, lab.b), (lab.b, lab.a)):
        ip = dst.ip4 if family == 4 else dst.ip6
        assert ip is not None
        assert lab.ping(src, ip, count=2, interval=0.05, timeout=3)


@needs_ping
def test_ping_failure_is_bounded(lab: Lab) -> None:
    lab.iptables(lab.b, "-A", "INPUT", "-p", "icmp", "-j", "DROP")
    t0 = time.monotonic()
    assert not lab.ping(lab.a, "192.0.2.2", timeout=1)
    assert time.monotonic() - t0 < 5
    with pytest.raises(LabError):
        lab.ping(lab.a, "192.0.2.2", timeout=1, check=True)


@pytest.mark.parametrize("family", [4, 6])
def test_tcp_exchange(lab: Lab, family: int) -> None:
    ip_b = lab.b.ip4 if family == 4 else lab.b.ip6
    ip_a = lab.a.ip4 if family == 4 else lab.a.ip6
    assert ip_a and ip_b
    assert lab.tcp_exchange(lab.a, ip_b, 8080, data=b"hello") == b"hello"
    payload = bytes(range(256)) * 40
    assert lab.tcp_exchange(lab.b, ip_a, 8081, data=payload) == payload


def test_tcp_exchange_refused(lab: Lab) -> None:
    lab.iptables(
        lab.b,
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        "8080",
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    )
    with pytest.raises(LabError, match="failed"):
        lab.tcp_exchange(lab.a, "192.0.2.2", 8080, timeout=3)


@pytest.mark.parametrize("family", [4, 6])
def test_udp_send_recv_count(lab: Lab, family: int) -> None:
    dst = lab.b.ip4 if family == 4 else lab.b.ip6
    assert dst is not None
    res = lab.udp(lab.a, dst, 5000, count=50, size=100, recv=True)
    assert res["sent"] == 50
    assert res["received"] == 50
    assert res["bytes"] == 5000


def test_udp_receiver_times_out(lab: Lab) -> None:
    with lab.udp_receiver(lab.b, 5000, count=10, timeout=0.5) as rx:
        lab.udp(lab.a, "192.0.2.2", 5000, count=3)
        res = rx.result(timeout=10)
    assert res["received"] == 3
    assert rx.proc.returncode == 1  # fewer than asked for


def test_udp_rate_pacing(lab: Lab) -> None:
    res = lab.udp(lab.a, "192.0.2.2", 5000, count=400, rate=2000)
    assert res["sent"] == 400
    assert 0.19 <= res["elapsed"] < 2.0


# ------------------------------------------------------------------ firewall


def test_iptables_counter_increments(lab: Lab) -> None:
    lab.iptables(lab.b, "-A", "INPUT", "-p", "udp", "--dport", "5000", "-j", "ACCEPT")
    lab.ip6tables(lab.b, "-A", "INPUT", "-p", "udp", "--dport", "5000", "-j", "ACCEPT")
    assert _list_counter(lab, lab.b, "INPUT") == [0]
    lab.udp(lab.a, "192.0.2.2", 5000, count=7, recv=True)
    lab.udp(lab.a, "2001:db8::2", 5000, count=3, recv=True)
    assert _list_counter(lab, lab.b, "INPUT") == [7]
    assert _list_counter(lab, lab.b, "INPUT", cmd="ip6tables") == [3]
    (rule,) = lab.rule_counters(lab.b, "INPUT")
    assert (rule.packets, rule.bytes) == (7, 7 * (20 + 8 + 64))
    assert "--dport 5000" in rule.rule
    (rule6,) = lab.rule_counters(lab.b, "INPUT", ipv6=True)
    assert rule6.packets == 3
    # the root namespace's ruleset is a different one
    root = subprocess.run(
        ["iptables", "-S", "INPUT"], capture_output=True, text=True, check=False, timeout=30
    )
    assert "--dport 5000" not in root.stdout


@pytest.mark.parametrize("lab", [{"router": True}], indirect=True)
def test_router_topology(lab: Lab) -> None:
    r = lab.r
    assert r is not None
    assert (lab.b.ip4, lab.b.ip6) == ("198.51.100.2", "2001:db8:1::2")
    assert lab.iface_between(r, lab.b).ip4 == "198.51.100.254"
    assert lab.get_sysctl(r, "net.ipv4.ip_forward") == "1"
    assert lab.get_sysctl(r, "net.ipv6.conf.all.forwarding") == "1"
    assert lab.get_sysctl(lab.a, "net.ipv4.ip_forward") == "0"
    lab.iptables(r, "-A", "FORWARD", "-p", "tcp", "--dport", "8080", "-j", "ACCEPT")
    assert lab.tcp_exchange(lab.a, "198.51.100.2", 8080) == b"hello"
    assert lab.tcp_exchange(lab.b, "2001:db8::1", 8080) == b"hello"
    (fwd,) = lab.rule_counters(r, "FORWARD")
    assert fwd.packets >= 5  # SYN, ACK, data, FIN, ACK at least
    res = lab.udp(lab.a, "2001:db8:1::2", 5000, count=20, recv=True)
    assert res["received"] == 20
    if shutil.which("ping"):
        assert lab.ping(lab.b, "192.0.2.1")
        assert lab.ping(lab.a, "2001:db8:1::2")


# ------------------------------------------------------------------ entered()


def test_entered_moves_the_thread(lab: Lab) -> None:
    outside = netns.current_netns_inode()
    with pytest.raises(OSError):
        socket.if_nametoindex(lab.a.ifname)
    with netns.entered(lab.a.name):
        assert netns.current_netns_inode() == netns.netns_inode(lab.a.name)
        assert socket.if_nametoindex(lab.a.ifname) == lab.a.ifindex
        with lab.entered(lab.b):  # nests
            assert socket.if_nametoindex(lab.b.ifname) == lab.b.ifindex
        assert socket.if_nametoindex(lab.a.ifname) == lab.a.ifindex
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert netns.current_netns_inode() == outside
        with pytest.raises(OSError):
            socket.if_nametoindex(lab.a.ifname)
        # the socket stayed in namespace a, where 192.0.2.1 exists
        sock.bind(("192.0.2.1", 0))
    finally:
        sock.close()


def test_entered_restores_on_error(lab: Lab) -> None:
    outside = netns.current_netns_inode()
    with pytest.raises(ZeroDivisionError), netns.entered(lab.b.name):
        _ = 1 / 0
    assert netns.current_netns_inode() == outside
    with pytest.raises(FileNotFoundError), netns.entered("nfk-does-not-exist"):
        pass
    assert netns.current_netns_inode() == outside


def test_entered_is_per_thread_and_traffic_in_process(lab: Lab) -> None:
    """Receiver thread inside b, sender in this thread inside a, both in-process."""
    ready = threading.Event()
    result: dict[str, Any] = {}

    def receiver() -> None:
        with netns.entered(lab.b.name):
            result.update(
                traffic.udp_recv(6000, count=20, timeout=10, emit=lambda _ev: ready.set())
            )

    outside = netns.current_netns_inode()
    th = threading.Thread(target=receiver)
    th.start()
    try:
        assert ready.wait(10)
        assert netns.current_netns_inode() == outside  # other thread moved, not us
        with lab.entered(lab.a):
            sent = traffic.udp_send("2001:db8::2", 6000, count=20, size=32)
    finally:
        th.join(15)
    assert sent["sent"] == 20
    assert result["received"] == 20
    assert result["peers"] == ["2001:db8::1"]


# ------------------------------------------------------------------ cleanup


def test_close_removes_everything_and_root_is_unchanged() -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"lab: {reason}")
    before = _root_state()
    lab = Lab(router=True)
    lab.start()
    try:
        names = lab.namespaces
        assert all(netns.exists(n) for n in names)
        lab.iptables(lab.b, "-A", "INPUT", "-p", "tcp", "-j", "ACCEPT")
        lab.ip6tables(lab.a, "-P", "FORWARD", "DROP")
        lab.sysctl(lab.b, "net.ipv4.conf.all.rp_filter", 1)
        assert lab.tcp_exchange(lab.a, "198.51.100.2", 9000) == b"hello"
        sleeper = lab.popen(lab.b, "sleep", "60")
        talker = lab.popen(lab.a, "sh", "-c", "echo hi; exec sleep 60", stdout=subprocess.PIPE)
        server = lab.tcp_server(lab.b, 9001, timeout=60)
    finally:
        t0 = time.monotonic()
        lab.close()
        took = time.monotonic() - t0
    lab.close()  # idempotent
    assert took < 5
    assert sleeper.poll() is not None
    assert talker.poll() is not None
    assert talker.stdout is not None
    with talker.stdout:  # the caller's pipes stay usable after close()
        assert talker.stdout.read() == b"hi\n"
    assert server.proc.poll() is not None
    assert not any(netns.exists(n) for n in names)
    assert not os.path.exists(f"/run/nfkit-lab/{lab.id}.json")
    with pytest.raises(LabError):
        lab.run(lab.a, "true")
    assert _root_state() == before


def test_sysctl_refuses_host_keys(lab: Lab) -> None:
    with pytest.raises(LabError):
        lab.sysctl(lab.a, "kernel.printk", "4")


def test_sweep_stale_only_removes_dead_owners() -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"lab: {reason}")
    dead_pid = next(p for p in range(4_000_000, 3_000_000, -1) if not os.path.exists(f"/proc/{p}"))
    dead = f"nfk-{dead_pid}-0123abcd-a"
    alive = "nfk-1-0123abcd-a"  # pid 1 exists
    foreign = f"nfkx-{dead_pid}-0123abcd-a"  # does not match the pattern
    created = []
    try:
        for name in (dead, alive, foreign):
            subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
            created.append(name)
        removed = sweep_stale()
        assert dead in removed
        assert not netns.exists(dead)
        assert netns.exists(alive)
        assert netns.exists(foreign)
    finally:
        for name in created:
            if netns.exists(name):
                subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)
