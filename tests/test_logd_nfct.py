"""nfkit logd's NFCT input: flow records from the kernel's conntrack table.

Most tests run the plugin in this process with sockets opened inside a lab
namespace (records are compared as the dicts the stacks get, addresses as
bytes); the daemon tests run ``nfkit logd`` with a JSON output.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ctlab import fill_table, varied_table
from nfkit.cli import logd as logd_cli
from nfkit.conntrack.client import Conntrack
from nfkit.lab import Lab
from nfkit.logd.config import ConfigFile
from nfkit.logd.engine import Pipeline
from nfkit.logd.errors import ConfigError
from nfkit.logd.keys import Event
from nfkit.logd.loop import EventLoop
from nfkit.logd.plugin import Context, Settings
from nfkit.logd.plugins.nfct import NFCT, AcceptFilter, FlowRecords, key_tuple
from reference import DaemonRun, missing_reference, plugin_path

ULOGD = "/usr/sbin/ulogd"
NFCT_SO = "/usr/lib/x86_64-linux-gnu/ulogd/ulogd_inpflow_NFCT.so"
ALL_KEYS = {key.name for key in NFCT.output_keys}
#: The keys of every record (contract), by protocol family of the flow.
COMMON = {"orig.ip.saddr", "orig.ip.daddr", "reply.ip.saddr", "reply.ip.daddr",
          "orig.ip.protocol", "reply.ip.protocol", "orig.raw.pktlen", "orig.raw.pktcount",
          "reply.raw.pktlen", "reply.raw.pktcount", "ct.mark", "ct.id", "ct.event",
          "oob.family", "oob.protocol"}  # fmt: skip
PORTS = {"orig.l4.sport", "orig.l4.dport", "reply.l4.sport", "reply.l4.dport"}
START = {"flow.start.sec", "flow.start.usec"}
END = {"flow.end.sec", "flow.end.usec"}


def packed(address: str | None) -> bytes:
    assert address is not None
    return socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)


def text(address: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(address) == 16 else socket.AF_INET, address)


# -- in-process harness -------------------------------------------------------------------


class Running:
    """An NFCT instance started in a lab namespace, its records collected."""

    def __init__(self, lab: Lab, ns: Any, wanted: set[str] | None, options: dict[str, Any]):
        values = {opt.name: opt.default for opt in NFCT.options}
        values.update(options)
        self.loop = EventLoop()
        self.plugin = NFCT("ct1", Settings("ct1", values, {}), Context(loop=self.loop))
        self.plugin.configure([])
        self.records: list[Event] = []
        self.plugin.attach(self.records.extend, wanted)
        with lab.entered(ns):
            self.plugin.start()
            self.plugin.activate()

    def pump(self, until: Callable[[], bool], timeout: float = 10.0) -> None:
        """Run the loop until ``until()`` holds (checked every 50 ms) or ``timeout``."""
        deadline = time.monotonic() + timeout

        def check() -> None:
            if until() or time.monotonic() > deadline:
                self.loop.stop()

        timer = self.loop.call_every(0.05, check)
        try:
            self.loop.run()
        finally:
            timer.cancel()

    def wait(self, count: int, timeout: float = 10.0) -> list[Event]:
        self.pump(lambda: len(self.records) >= count, timeout)
        return self.records

    def settle(self, seconds: float = 0.3) -> list[Event]:
        """Process whatever arrives within ``seconds``."""
        self.pump(lambda: False, seconds)
        return self.records

    def close(self) -> None:
        self.plugin.stop()
        self.loop.close()


@contextlib.contextmanager
def nfct(
    lab: Lab, wanted: set[str] | None = None, ns: Any = None, **options: Any
) -> Iterator[Running]:
    running = Running(lab, ns if ns is not None else lab.b, wanted, options)
    try:
        yield running
    finally:
        running.close()


def track(lab: Lab, ns: Any = None) -> None:
    """Conntrack on in the namespace (a conntrack rule), with counters and timestamps."""
    node = ns if ns is not None else lab.b
    lab.sysctl(node, "net.netfilter.nf_conntrack_acct", 1)
    lab.sysctl(node, "net.netfilter.nf_conntrack_timestamp", 1)
    for tables in (lab.iptables, lab.ip6tables):
        tables(node, "-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW,ESTABLISHED",
               "-j", "ACCEPT")  # fmt: skip


def delete_flows(lab: Lab, *criteria: str, ns: Any = None) -> None:
    """End flows now (their DESTROY events follow at once, unlike timeouts)."""
    lab.run(ns if ns is not None else lab.b, "conntrack", "-D", *criteria, check=False)


def events_for_every_flow(lab: Lab) -> None:
    """Flows created before the daemon get events too (by default the kernel gives
    them only to flows created while a listener exists)."""
    lab.sysctl(lab.b, "net.netfilter.nf_conntrack_events", 1)


def flush(lab: Lab, family: str = "ipv4") -> None:
    """End every flow of ``family`` in namespace b."""
    lab.run(lab.b, "conntrack", "-F", "-f", family)


needs_conntrack_tool = pytest.mark.skipif(
    shutil.which("conntrack") is None, reason="conntrack (Debian package conntrack) missing"
)


# -- --info -------------------------------------------------------------------------------


def nfkit_info(name: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert logd_cli.main(["-i", name]) == 0
    return out.getvalue()


@pytest.mark.reference
def test_info_is_ulogds_plus_the_icmpv6_keys_of_2_0_9() -> None:
    if not os.access(ULOGD, os.X_OK) or not os.path.exists(NFCT_SO):
        pytest.skip("ulogd2 is not installed")
    ulogd = subprocess.run([ULOGD, "--info", NFCT_SO], capture_output=True, text=True, check=True)
    expected = ulogd.stdout.replace(
        "\tKey: icmp.type (unsigned int 8)\n",
        "\tKey: icmp.type (unsigned int 8)\n"
        "\tKey: icmpv6.code (unsigned int 8)\n\tKey: icmpv6.type (unsigned int 8)\n",
    )
    assert nfkit_info(NFCT_SO) == expected
    assert nfkit_info("NFCT") == expected


# -- event mode through the kernel ------------------------------------------------------------


@pytest.mark.lab
@needs_conntrack_tool
@pytest.mark.parametrize("wanted", [None, ALL_KEYS - {"ct"}], ids=["with-ct", "compiled"])
def test_a_tcp_flow_gives_new_and_destroy_records_with_the_contract_keys(
    lab: Lab, wanted: set[str] | None
) -> None:
    track(lab)
    with nfct(lab, wanted, hash_enable=0) as run:
        before = time.time()
        lab.tcp_exchange(lab.a, lab.b.ip4 or "", 8080, data=b"x" * 100)
        delete_flows(lab, "-p", "tcp", "--dport", "8080")
        new, destroy = run.wait(2)
        after = time.time()
    extra = {"ct"} if wanted is None else set()
    assert set(new) == COMMON | PORTS | START | extra
    assert set(destroy) == COMMON | PORTS | START | END | extra
    assert (new["ct.event"], destroy["ct.event"]) == (1, 4)
    client, server = packed(lab.a.ip4), packed(lab.b.ip4)
    for record in (new, destroy):
        assert (record["orig.ip.saddr"], record["orig.ip.daddr"]) == (client, server)
        assert (record["reply.ip.saddr"], record["reply.ip.daddr"]) == (server, client)
        assert record["orig.ip.protocol"] == record["reply.ip.protocol"] == 6
        assert record["orig.l4.dport"] == record["reply.l4.sport"] == 8080
        assert record["orig.l4.sport"] == record["reply.l4.dport"]
        assert (record["oob.family"], record["oob.protocol"], record["ct.mark"]) == (2, 0, 0)
        assert before - 1 <= record["flow.start.sec"] <= after
    assert new["ct.id"] == destroy["ct.id"] != 0
    # NEW events carry no counters; DESTROY the final ones (nf_conntrack_acct=1):
    # SYN, ACK, data, FIN, ACK... 6 packets of 52-152 bytes from the client.
    assert new["orig.raw.pktcount"] == new["orig.raw.pktlen"] == 0
    assert destroy["orig.raw.pktcount"] >= 5 and destroy["reply.raw.pktcount"] >= 4
    assert destroy["orig.raw.pktlen"] >= 5 * 52 + 100
    start = destroy["flow.start.sec"] + destroy["flow.start.usec"] / 1e6
    end = destroy["flow.end.sec"] + destroy["flow.end.usec"] / 1e6
    assert start <= end <= after + 1
    if wanted is None:
        assert destroy["ct"].orig.src == lab.a.ip4 and destroy["ct"].id == destroy["ct.id"]


@pytest.mark.lab
@needs_conntrack_tool
def test_the_flow_table_makes_one_record_per_ended_flow(lab: Lab) -> None:
    track(lab)
    with nfct(lab, ALL_KEYS - {"ct"}) as run:
        lab.tcp_exchange(lab.a, lab.b.ip4 or "", 8081)
        lab.udp(lab.a, lab.b.ip4 or "", 5001, count=3, size=100, recv=True)
        assert run.settle() == []  # NEW events only fill the table
        assert len(run.plugin.table or ()) == 2
        delete_flows(lab, "-p", "tcp", "--dport", "8081")
        delete_flows(lab, "-p", "udp", "--dport", "5001")
        records = run.wait(2)
        assert run.settle() == records
    assert sorted(r["orig.l4.dport"] for r in records) == [5001, 8081]
    assert {r["ct.event"] for r in records} == {4}
    assert all(set(r) == COMMON | PORTS | START | END for r in records)
    udp = next(r for r in records if r["orig.ip.protocol"] == 17)
    assert (udp["orig.raw.pktcount"], udp["orig.raw.pktlen"]) == (3, 3 * 128)
    assert len(run.plugin.table or ()) == 0


@pytest.mark.lab
@needs_conntrack_tool
def test_icmp_and_icmpv6_flows_have_their_type_and_code_keys(lab: Lab) -> None:
    track(lab)
    with nfct(lab, hash_enable=0) as run:
        assert lab.ping(lab.a, lab.b.ip4 or "", count=1)
        assert lab.ping(lab.a, lab.b.ip6 or "", count=1)
        delete_flows(lab, "-p", "icmp")
        delete_flows(lab, "-f", "ipv6", "-p", "icmpv6")
        records = run.wait(4)
    destroyed = {r["oob.family"]: r for r in records if r["ct.event"] == 4}
    v4, v6 = destroyed[2], destroyed[10]
    assert set(v4) == COMMON | START | END | {"icmp.type", "icmp.code", "ct"}
    assert set(v6) == COMMON | START | END | {"icmpv6.type", "icmpv6.code", "ct"}
    assert (v4["icmp.type"], v4["icmp.code"], v4["orig.ip.protocol"]) == (8, 0, 1)
    assert (v6["icmpv6.type"], v6["icmpv6.code"], v6["orig.ip.protocol"]) == (128, 0, 58)
    assert (v6["orig.ip.saddr"], v6["orig.ip.daddr"]) == (packed(lab.a.ip6), packed(lab.b.ip6))
    assert v4["orig.raw.pktcount"] == v4["reply.raw.pktcount"] == 1


@pytest.mark.lab
@needs_conntrack_tool
def test_connmark_shows_as_ct_mark(lab: Lab) -> None:
    track(lab)
    lab.iptables(lab.b, "-t", "mangle", "-A", "PREROUTING", "-p", "udp", "--dport", "5002",
                 "-j", "CONNMARK", "--set-mark", "0x2a")  # fmt: skip
    with nfct(lab, {"ct.mark", "orig.l4.dport", "ct.event"}) as run:
        lab.udp(lab.a, lab.b.ip4 or "", 5002, count=1, recv=True)
        lab.udp(lab.a, lab.b.ip4 or "", 5003, count=1, recv=True)
        delete_flows(lab, "-p", "udp")
        records = run.wait(2)
    marks = {r.get("orig.l4.dport"): r["ct.mark"] for r in records}
    assert marks == {5002: 0x2A, 5003: 0}
    # Only the keys asked for (and ct.event) are made.
    assert all(set(r) == {"ct.mark", "orig.l4.dport", "ct.event"} for r in records)


@pytest.mark.lab
@pytest.mark.parametrize("lab", [{"router": True}], indirect=True)
@needs_conntrack_tool
def test_a_masqueraded_connection_is_logged_with_inside_and_outside_tuples(lab: Lab) -> None:
    router = lab.r
    assert router is not None
    outside = router.ifaces[1]
    lab.sysctl(router, "net.netfilter.nf_conntrack_acct", 1)
    lab.iptables(router, "-t", "nat", "-A", "POSTROUTING", "-o", outside.name, "-j", "MASQUERADE")
    lab.ip6tables(router, "-t", "nat", "-A", "POSTROUTING", "-o", outside.name,
                  "-j", "MASQUERADE")  # fmt: skip
    with nfct(lab, ALL_KEYS - {"ct"}, ns=router) as run:
        lab.tcp_exchange(lab.a, lab.b.ip4 or "", 8082)
        lab.tcp_exchange(lab.a, lab.b.ip6 or "", 8083)
        delete_flows(lab, "-p", "tcp", ns=router)
        delete_flows(lab, "-f", "ipv6", "-p", "tcp", ns=router)
        records = run.wait(2)
    by_port = {r["orig.l4.dport"]: r for r in records}
    for port, client, server, public in (
        (8082, lab.a.ip4, lab.b.ip4, outside.ip4),
        (8083, lab.a.ip6, lab.b.ip6, outside.ip6),
    ):
        record = by_port[port]
        # Inside: the client's own addresses; outside: the router's address.
        assert (record["orig.ip.saddr"], record["orig.ip.daddr"]) == (packed(client),
                                                                      packed(server))  # fmt: skip
        assert (record["reply.ip.saddr"], record["reply.ip.daddr"]) == (packed(server),
                                                                        packed(public))  # fmt: skip
        assert record["reply.l4.sport"] == port and record["ct.event"] == 4
        assert record["orig.raw.pktcount"] >= 5


# -- the flow table, polling, resynchronisation ------------------------------------------------


@pytest.mark.lab
@needs_conntrack_tool
def test_the_table_starts_with_the_flows_that_exist_and_bounds_its_size(lab: Lab) -> None:
    events_for_every_flow(lab)
    fill_table(lab, lab.b, 3)  # before the daemon: learnt from the first dump
    with nfct(lab, ALL_KEYS - {"ct"}, hash_max_entries=4) as run:
        assert len(run.plugin.table or ()) == 3
        fill_table(lab, lab.b, 3, src_net="203.0.113.0/24")  # one too many
        run.settle()
        assert len(run.plugin.table or ()) == 4
        assert run.plugin.stats.statistics()["untracked"] == 2
        flush(lab)
        records = run.wait(6)
    # Every flow ends with one record; those tracked have their start time.
    assert len(records) == 6 and {r["ct.event"] for r in records} == {4}
    assert sum(1 for r in records if "flow.start.sec" in r) >= 4
    assert all("flow.end.sec" in r for r in records)


@pytest.mark.lab
@needs_conntrack_tool
def test_without_the_table_update_events_are_ignored(lab: Lab) -> None:
    with nfct(lab, ALL_KEYS - {"ct"}, hash_enable=0, event_mask=7) as run:
        fill_table(lab, lab.b, 2)
        fill_table(lab, lab.b, 2, update=True, mark=5)
        flush(lab)
        records = run.wait(4)
        assert run.settle() == records
    assert sorted(r["ct.event"] for r in records) == [1, 1, 4, 4]
    assert [r["ct.mark"] for r in records if r["ct.event"] == 4] == [5, 5]


@pytest.mark.lab
@needs_conntrack_tool
def test_polling_emits_the_flows_that_vanished_between_two_dumps(lab: Lab) -> None:
    track(lab)
    lab.iptables(lab.b, "-t", "mangle", "-A", "PREROUTING", "-p", "udp",
                 "-j", "CONNMARK", "--set-mark", "7")  # fmt: skip
    with nfct(lab, ALL_KEYS - {"ct"}, pollinterval=1) as run:
        assert run.plugin.listener is None  # no event socket
        lab.udp(lab.a, lab.b.ip4 or "", 5004, count=2, size=50, recv=True)
        run.pump(lambda: len(run.plugin.table or ()) == 1, timeout=5)
        before = time.time()
        delete_flows(lab, "-p", "udp")
        (record,) = run.wait(1, timeout=5)
    assert record["ct.event"] == 4 and record["orig.l4.dport"] == 5004
    # Counters and mark as the last dump saw them; the end is when the dump missed it.
    assert (record["orig.raw.pktcount"], record["ct.mark"]) == (2, 7)
    assert before - 1 <= record["flow.end.sec"] <= time.time()
    assert record["flow.start.sec"] <= record["flow.end.sec"]


@pytest.mark.lab
@needs_conntrack_tool
def test_an_overrun_is_resynchronised_every_flow_ending_once(lab: Lab) -> None:
    n = 300
    fill_table(lab, lab.b, n // 2)  # learnt from the first dump
    with nfct(lab, ALL_KEYS - {"ct"}, netlink_resync_timeout=1) as run:
        fill_table(lab, lab.b, n // 2, dst="192.0.2.101")  # learnt from NEW events
        run.pump(lambda: len(run.plugin.table or ()) == n)
        assert len(run.plugin.table or ()) == n
        assert run.plugin.listener is not None
        run.plugin.listener.set_receive_buffer(1)  # the kernel's minimum: a few events
        # Not read meanwhile: new flows' NEW and the old flows' DESTROY events overflow.
        fill_table(lab, lab.b, 20, src_net="203.0.113.0/24")
        delete_flows(lab, "-s", "198.51.100.0/24")
        records = run.wait(n, timeout=15)
        assert run.plugin.stats.overruns >= 1
        # The resynchronisation also learnt the new flows whose NEW was lost.
        run.pump(lambda: len(run.plugin.table or ()) == 20, timeout=5)
        assert len(run.plugin.table or ()) == 20
    keys = [(r["orig.ip.saddr"], r["orig.ip.daddr"], r["orig.l4.sport"]) for r in records]
    assert len(records) == len(set(keys)) == n
    assert 0 < run.plugin.stats.resync_destroyed <= n
    # Records of flows the resynchronisation found ended are whole, with an end.
    assert all(set(r) == COMMON | PORTS | START | END for r in records)
    assert {r["ct.event"] for r in records} == {4}


@pytest.mark.lab
def test_overruns_grow_the_buffer_up_to_the_maxsize(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    with nfct(lab, ALL_KEYS - {"ct"}, hash_enable=0, netlink_socket_buffer_size=4096,
              netlink_socket_buffer_maxsize=16384) as run:  # fmt: skip
        assert run.plugin.listener is not None
        for burst in range(3):  # each burst overflows the buffer it finds
            fill_table(lab, lab.b, 300, src_net=f"203.0.113.{64 * burst}/26")
            run.settle(0.1)
        assert run.plugin.stats.overruns >= 3
        assert run.plugin.listener.receive_buffer == 2 * 16384  # the kernel reports double
    messages = [r.getMessage() for r in caplog.records]
    assert "We are losing events, increasing buffer size to 8192" in messages
    assert "We are losing events, increasing buffer size to 16384" in messages
    reached = "Maximum buffer size (16384) in NFCT has been reached"
    assert sum(m.startswith(reached) for m in messages) == 1  # warned once


@pytest.mark.lab
@needs_conntrack_tool
def test_reliable_mode_loses_no_flow_of_a_burst(lab: Lab) -> None:
    n = 1000
    with nfct(lab, ALL_KEYS - {"ct"}, reliable=1, netlink_socket_buffer_size=16384) as run:
        fill_table(lab, lab.b, n, timeout=30)  # nobody reads: the kernel keeps retrying
        flush(lab)
        records = run.wait(n, timeout=60)
        assert run.settle() == records
        assert run.plugin.stats.overruns == 0
    assert len({(r["orig.ip.saddr"], r["orig.l4.sport"]) for r in records}) == len(records) == n
    assert {r["ct.event"] for r in records} == {4}


# -- filters -------------------------------------------------------------------------------------


@pytest.mark.lab
@needs_conntrack_tool
@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"accept_src_filter": "198.51.100.0/25"}, {"198.51.100.0"}),
        ({"accept_src_filter": "198.51.100.128/25,2001:db8:100::/64"},
         {"198.51.100.128", "2001:db8:100::1"}),
        ({"accept_dst_filter": "2001:db8::/32"}, {"2001:db8:100::1"}),
        ({"accept_proto_filter": "tcp"}, {"198.51.100.128"}),
        ({"accept_proto_filter": "udp,tcp", "accept_dst_filter": "192.0.2.100/32"},
         {"198.51.100.0", "198.51.100.128"}),
    ],
)  # fmt: skip
def test_accept_filters_select_by_network_and_protocol(
    lab: Lab, options: dict[str, str], expected: set[str]
) -> None:
    def flows() -> None:
        fill_table(lab, lab.b, 1, src_net="198.51.100.0/31")  # 198.51.100.0, udp
        fill_table(lab, lab.b, 1, proto="tcp", src_net="198.51.100.128/31")
        fill_table(lab, lab.b, 1, family=6)  # 2001:db8:100::1 -> 2001:db8::100, udp

    events_for_every_flow(lab)
    flows()  # the first dump sees them
    with nfct(lab, {"orig.ip.saddr", "ct.event"}, **options) as run:
        flush(lab)
        flush(lab, "ipv6")
        flows()  # and the events
        flush(lab)
        flush(lab, "ipv6")
        records = run.wait(2 * len(expected))
        records = run.settle()
    sources = [text(r["orig.ip.saddr"]) for r in records]
    assert sorted(sources) == sorted(2 * list(expected))
    assert run.plugin.stats.filtered >= 2 * (3 - len(expected))


@pytest.mark.lab
@needs_conntrack_tool
def test_flows_older_than_the_daemon_are_watched_when_the_kernel_sends_them_no_events(
    lab: Lab,
) -> None:
    assert lab.get_sysctl(lab.b, "net.netfilter.nf_conntrack_events") == "2"
    fill_table(lab, lab.b, 3)  # no listener yet: these flows get no event extension
    with nfct(lab, ALL_KEYS - {"ct"}, netlink_resync_timeout=1) as run:
        fill_table(lab, lab.b, 2, src_net="203.0.113.0/24")
        flush(lab)
        records = run.wait(5, timeout=10)
    assert sorted(r["orig.ip.saddr"][0] for r in records) == [198, 198, 198, 203, 203]
    assert run.plugin.stats.resync_destroyed == 3


# -- SIGUSR2 -------------------------------------------------------------------------------------


@pytest.mark.lab
@needs_conntrack_tool
@pytest.mark.parametrize("hash_enable", [1, 0])
def test_sigusr2_emits_every_flow_as_update_and_zeroes_the_counters(
    lab: Lab, hash_enable: int
) -> None:
    track(lab)
    with nfct(lab, ALL_KEYS - {"ct"}, hash_enable=hash_enable) as run:
        lab.udp(lab.a, lab.b.ip4 or "", 5005, count=3, size=72, recv=True)
        lab.udp(lab.a, lab.b.ip4 or "", 5006, count=1, size=72, recv=True)
        run.settle()
        del run.records[:]  # hash_enable=0: the NEW records
        run.plugin.signal(signal.SIGUSR2)
        first = list(run.records)
        run.plugin.signal(signal.SIGUSR2)
        second = run.records[len(first):]
    assert sorted((r["orig.l4.dport"], r["orig.raw.pktcount"]) for r in first) == [
        (5005, 3), (5006, 1)
    ]  # fmt: skip
    assert all(r["orig.raw.pktlen"] == 100 * r["orig.raw.pktcount"] for r in first)
    assert {r["ct.event"] for r in first + second} == {2}
    assert [r["orig.raw.pktcount"] for r in second] == [0, 0]
    assert all("flow.start.sec" in r and "flow.end.sec" not in r for r in first)


# -- decoding ---------------------------------------------------------------------------------


@pytest.mark.lab
@pytest.mark.parametrize("wanted", [ALL_KEYS - {"ct"}, {"orig.ip.saddr", "icmpv6.type"}])
def test_compiled_records_equal_those_made_from_flow_objects(
    lab: Lab, wanted: set[str]
) -> None:
    flows = varied_table(lab, lab.b)
    records = FlowRecords(wanted, AcceptFilter(), hashed=True)
    with lab.entered(lab.b), Conntrack() as ct:
        reference = sorted(map(records.convert, ct.dump()), key=repr)
        first = sorted(ct.dump_as(records.target), key=repr)  # learns the layouts
        compiled = sorted(ct.dump_as(records.target), key=repr)
    assert compiled == first == reference
    assert len(compiled) == len(flows)
    assert {item[0] for item in compiled} == {2}  # dump entries read as UPDATE
    icmpv6 = [item[2] for item in compiled if "icmpv6.type" in item[2]]
    assert [r["icmpv6.type"] for r in icmpv6] == [128]
    # A key identifies its flow, and is enough to look the flow up (the purge does).
    with lab.entered(lab.b), Conntrack() as ct:
        for _event, key, _record, _start, _stop in compiled:
            tup, zone, flow_id = key_tuple(key)
            assert ct.get(tup, zone).id == flow_id


# -- configuration -----------------------------------------------------------------------------


def config_error(section: str) -> ConfigError:
    text = (
        "[global]\nstack=ct1:NFCT,ip2str1:IP2STR,json1:JSON\n"
        f"[ct1]\n{section}\n[json1]\nfile=\"/dev/null\"\n"
    )
    with pytest.raises(ConfigError) as info:
        Pipeline(ConfigFile("test.conf", text=text), Context())
    return info.value


@pytest.mark.parametrize(
    ("section", "line", "what", "fix"),
    [
        ("accept_src_filter=192.0.2.0/24,198.51.100.7", 4, "no prefix length", "198.51.100.7/32"),
        ("accept_dst_filter=2001:db8::1", 4, "No network specified", "2001:db8::1/128"),
        ("accept_dst_filter=192.0.2.0/33", 4, "not a network", "comma-separated"),
        ("accept_proto_filter=tcp,nosuch", 4, "unknown protocol 'nosuch'", "/etc/protocols"),
        ("pollinterval=10\nhash_enable=0", 5, "polling mode requires the hashtable",
         "hash_enable=1"),
        ("event_mask=0", 4, "selects no flow events", "event_mask=5"),
        ("event_mask=1", 4, "leaves out", "hash_enable=0"),
        ("hash_max_entries=0", 4, "no room", "hash_enable=0"),
        ("netlink_socket_buffer_size=1000000\nnetlink_socket_buffer_maxsize=1000", 4, "exceeds",
         "raise netlink_socket_buffer_maxsize"),
    ],
)  # fmt: skip
def test_configuration_errors_name_the_line_and_the_fix(
    section: str, line: int, what: str, fix: str
) -> None:
    error = config_error(section)
    assert error.where.startswith(f"test.conf:{line}"), error.where
    assert what in error.what and fix in error.fix


def test_accept_filters_parse_ulogds_lists() -> None:
    text = "[global]\nstack=ct1:NFCT,ip2str1:IP2STR,json1:JSON\n[ct1]\n"
    text += 'accept_src_filter=192.0.2.0/24,2001:db8::/32\naccept_proto_filter="tcp,udp,58"\n'
    text += '[json1]\nfile="/dev/null"\n'
    pipeline = Pipeline(ConfigFile("test.conf", text=text), Context())
    (plugin,) = [p for p in pipeline.instances() if isinstance(p, NFCT)]
    accept = plugin.accept
    assert accept.protocols == {6, 17, 58} and accept.destinations is None
    assert accept.sources is not None
    assert accept.accepts(socket.AF_INET, packed("192.0.2.9"), packed("203.0.113.1"), 6)
    assert accept.accepts(socket.AF_INET6, packed("2001:db8::9"), packed("2001:db8::1"), 58)
    assert not accept.accepts(socket.AF_INET, packed("198.51.100.1"), packed("192.0.2.1"), 6)
    assert not accept.accepts(socket.AF_INET, packed("192.0.2.9"), packed("203.0.113.1"), 1)
    # Two networks of different families cannot go to the kernel in one dump request.
    assert accept.dump_filter().criteria() == {}


# -- the daemon ------------------------------------------------------------------------------


def daemon_config(workdir: Path, stacks: list[str], nfct: str, outputs: str = "") -> str:
    names = {token.partition(":")[2] for stack in stacks for token in stack.split(",")}
    lines = ["[global]", f'logfile="{workdir / "daemon.log"}"', "loglevel=3"]
    lines += [f'plugin="{plugin_path(name)}"' for name in sorted(names)]
    lines += [f"stack={stack}" for stack in stacks]
    return "\n".join(lines) + f"\n[ct1]\n{nfct}\n{outputs}"


def json_records(run: DaemonRun, name: str = "flows.json") -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in run.output(name).splitlines()]
    except FileNotFoundError:
        return []


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)


def flows_of_every_kind(lab: Lab) -> None:
    """A TCP connection, UDP (one of them CONNMARKed), ICMP and ICMPv6 echo; all ended."""
    lab.iptables(lab.b, "-t", "mangle", "-A", "PREROUTING", "-p", "udp", "--dport", "5011",
                 "-j", "CONNMARK", "--set-mark", "0x2a")  # fmt: skip
    lab.tcp_exchange(lab.a, lab.b.ip4 or "", 8090, data=b"y" * 300)
    lab.udp(lab.a, lab.b.ip4 or "", 5010, count=2, size=40, recv=True)
    lab.udp(lab.a, lab.b.ip4 or "", 5011, count=1, size=40, recv=True)
    lab.udp(lab.a, lab.b.ip6 or "", 5012, count=1, size=40, recv=True)
    assert lab.ping(lab.a, lab.b.ip4 or "", count=1)
    assert lab.ping(lab.a, lab.b.ip6 or "", count=1)
    flush(lab)
    flush(lab, "ipv6")


@pytest.mark.lab
@pytest.mark.reference
@needs_conntrack_tool
def test_new_and_destroy_records_are_ulogds(lab: Lab, tmp_path: Path) -> None:
    stacks = ["ct1:NFCT,ip2str1:IP2STR,json1:JSON"]
    reason = missing_reference(stacks)
    if reason:
        pytest.skip(reason)
    track(lab)
    runs = {}
    for kind in ("ulogd", "nfkit"):
        workdir = tmp_path / kind
        outputs = f'[json1]\nfile="{workdir / "flows.json"}"\nsync=1\n'
        config = daemon_config(workdir, stacks, "hash_enable=0", outputs)
        runs[kind] = DaemonRun(lab, lab.b, kind, workdir, config).start()
    try:
        flows_of_every_kind(lab)
        # NEW and DESTROY of: TCP, 3 UDP, ICMP, ICMPv6.
        wait_for(lambda: all(len(json_records(run)) >= 12 for run in runs.values()))
    finally:
        for run in runs.values():
            run.stop()
    ulogd, nfkit = (json_records(runs[kind]) for kind in ("ulogd", "nfkit"))
    assert len(ulogd) == len(nfkit) == 12

    def comparable(record: dict[str, Any], ours: bool) -> tuple[Any, ...]:
        record = dict(record)
        del record["timestamp"]  # each daemon's clock
        if record["ct.event"] == 1:
            # The start of a NEW is when the daemon read it (the event has no timestamp).
            assert abs(record.pop("flow.start.sec") - time.time()) < 60
            del record["flow.start.usec"]
        if ours and "icmpv6.type" in record:
            # ulogd 2.0.9's ICMPv6 keys, which 2.0.8 lacks.
            assert (record.pop("icmpv6.type"), record.pop("icmpv6.code")) == (128, 0)
        return record["ct.id"], record["ct.event"], sorted(record.items())

    assert sorted(comparable(r, True) for r in nfkit) == sorted(comparable(r, False) for r in ulogd)
    marks = {r.get("orig.l4.dport"): r["ct.mark"] for r in nfkit if r["ct.event"] == 4}
    assert marks[5011] == 0x2A and marks[5010] == 0


@pytest.mark.lab
@needs_conntrack_tool
def test_the_daemon_logs_flows_and_answers_sigusr2_without_the_table(
    lab: Lab, tmp_path: Path
) -> None:
    # ulogd 2.0.8 dereferences its missing flow table here (fixed in 2.0.9).
    stacks = ["ct1:NFCT,ip2str1:IP2STR,print1:PRINTFLOW,emu1:LOGEMU",
              "ct1:NFCT,ip2str2:IP2STR,json1:JSON"]  # fmt: skip
    track(lab)
    outputs = (f'[emu1]\nfile="{tmp_path / "flows.log"}"\nsync=1\n'
               f'[json1]\nfile="{tmp_path / "flows.json"}"\nsync=1\n')  # fmt: skip
    config = daemon_config(tmp_path, stacks, "hash_enable=0\nevent_mask=0x5", outputs)
    run = DaemonRun(lab, lab.b, "nfkit", tmp_path, config).start()
    try:
        lab.udp(lab.a, lab.b.ip4 or "", 5020, count=3, size=40, recv=True)
        wait_for(lambda: len(json_records(run)) == 1)
        assert run.proc is not None
        run.proc.send_signal(signal.SIGUSR2)
        wait_for(lambda: len(json_records(run)) == 2)
        flush(lab)
        wait_for(lambda: len(json_records(run)) == 3)
    finally:
        assert run.stop() == 0
    new, update, destroy = json_records(run)
    assert [r["ct.event"] for r in (new, update, destroy)] == [1, 2, 4]
    assert (update["orig.raw.pktcount"], update["orig.raw.pktlen"]) == (3, 3 * 68)
    assert destroy["orig.raw.pktcount"] == 0  # SIGUSR2 zeroed the counters
    assert all(r["src_ip"] == lab.a.ip4 and r["orig.l4.dport"] == 5020 for r in (new, update))
    lines = run.output("flows.log").splitlines()
    assert [line.split("] ORIG: ")[0].rsplit("[", 1)[1] for line in lines] == [
        "NEW", "UPDATE", "DESTROY"
    ]  # fmt: skip
    assert f"SRC={lab.a.ip4} DST={lab.b.ip4} PROTO=UDP SPT=" in lines[1]
    assert "DPT=5020 PKTS=3 BYTES=204" in lines[1]
