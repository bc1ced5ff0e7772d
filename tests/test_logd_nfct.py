"""nfkit logd's NFCT input: flow records from the kernel's conntrack table.

Most tests run the plugin in this process with sockets opened inside a lab
namespace (records are compared as the dicts the stacks get, addresses as
bytes); the daemon tests run ``nfkit logd`` with a JSON output.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from nfkit.cli import logd as logd_cli
from nfkit.lab import Lab
from nfkit.logd.keys import Event
from nfkit.logd.loop import EventLoop
from nfkit.logd.plugin import Context, Settings
from nfkit.logd.plugins.nfct import NFCT

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


def packed(text: str | None) -> bytes:
    assert text is not None
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


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
