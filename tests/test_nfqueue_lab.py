"""NFQUEUE through the real kernel: ``nfkit queue`` and the library in lab namespaces.

Packets are queued by iptables' NFQUEUE target (nft's queue statement is not
built on the test kernel). The runner serves queues in namespace b; traffic
comes from namespace a. Its statistics (stdout, ``key=value``) and iptables
rule counters say what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import signal
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ctlab import enable_labels
from nfkit.conntrack import Conntrack
from nfkit.lab import Lab, LabError
from nfkit.netlink.socket import NETLINK_CAP_ACK, NETLINK_NO_ENOBUFS, SOL_NETLINK
from nfkit.nfqueue import ACCEPT, Action, Flag, Queue, QueuedPacket, Server, SkbInfo, Verdict, aio
from nfkit.nfqueue.verdict import encode_verdict, queue_prefix

pytestmark = pytest.mark.lab

STATS_LINE = re.compile(r"^queue (\d+): (.*)$")


class Runner:
    """``nfkit queue`` started in a lab namespace, its stdout and stderr in files."""

    def __init__(self, lab: Lab, ns: object, workdir: Path, *args: str, name: str = "runner"):
        self.out = workdir / f"{name}.out"
        self.err = workdir / f"{name}.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = lab.popen(
                ns, sys.executable, "-m", "nfkit.cli.main", "queue", *args,
                stdout=out, stderr=err, cwd=workdir,
            )  # fmt: skip
        self.wait_for(lambda: "serving queue" in self.err.read_text(), "start")

    def wait_for(self, condition: Any, what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"nfkit queue exited ({self.proc.returncode}): {self.err.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"nfkit queue: no {what} within {timeout} s: {self.err.read_text()}")
            time.sleep(0.05)

    def stats(self) -> dict[int, dict[str, int]]:
        """SIGUSR1, then the statistics it printed."""
        before = self.out.read_text().count("\n")
        self.proc.send_signal(signal.SIGUSR1)
        self.wait_for(lambda: self.out.read_text().count("\n") > before, "statistics")
        time.sleep(0.1)  # all lines of the report
        return parse_stats(self.out.read_text().splitlines()[before:])

    def stop(self) -> dict[int, dict[str, int]]:
        """SIGTERM; the final statistics."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=20) == 0, self.err.read_text()
        lines = self.out.read_text().splitlines()
        final = parse_stats(lines)
        return final


def parse_stats(lines: list[str]) -> dict[int, dict[str, int]]:
    """The last statistics line of each queue."""
    out: dict[int, dict[str, int]] = {}
    for line in lines:
        match = STATS_LINE.match(line)
        if match:
            pairs = (item.split("=") for item in match[2].split())
            out[int(match[1])] = {key: int(value) for key, value in pairs}
    return out


def handler_module(workdir: Path, name: str, source: str) -> str:
    (workdir / f"{name}.py").write_text(textwrap.dedent(source))
    return name


def nfqueue_rule(lab: Lab, *match: str, queue: int = 0, table: str = "filter",
                 chain: str = "INPUT", ipv6: bool = False) -> None:  # fmt: skip
    run = lab.ip6tables if ipv6 else lab.iptables
    run(lab.b, "-t", table, "-A", chain, *match, "-j", "NFQUEUE", "--queue-num", str(queue))


def udp_queue(lab: Lab, **options: Any) -> Queue:
    """Queue 0 bound in b, fed with the UDP packets to port 9000."""
    nfqueue_rule(lab, "-p", "udp", "--dport", "9000")
    with lab.entered(lab.b):
        return Queue(0, **options)


def counter(lab: Lab, chain: str, fragment: str, table: str = "filter", ipv6: bool = False) -> int:
    """Packets counted by the rule of ``chain`` in b whose text contains ``fragment``."""
    rules = [r for r in lab.rule_counters(lab.b, chain, table, ipv6) if fragment in r.rule]
    assert len(rules) == 1, rules
    return rules[0].packets


# -- verdicts through the runner ---------------------------------------------------------


def test_accept_and_drop(lab: Lab, tmp_path: Path) -> None:
    nfqueue_rule(lab, "-p", "udp")
    handler_module(tmp_path, "ports", """
        def handle(packet):
            return packet.headers.l4.dport != 9001
    """)  # fmt: skip
    runner = Runner(lab, lab.b, tmp_path, "--queue", "0", "--handler", "ports:handle")
    assert lab.udp(lab.a, "192.0.2.2", 9000, count=5, recv=True)["received"] == 5
    assert lab.udp(lab.a, "192.0.2.2", 9001, count=3, recv=True, timeout=3)["received"] == 0
    stats = runner.stop()[0]
    assert (stats["received"], stats["accepted"], stats["dropped"]) == (8, 5, 3)
    assert stats["kernel_dropped"] == stats["id_gaps"] == stats["handler_errors"] == 0


def test_mark_is_seen_by_a_later_rule(lab: Lab, tmp_path: Path) -> None:
    # ACCEPT goes on to the next hook function: mangle INPUT (-150), then filter INPUT.
    nfqueue_rule(lab, "-p", "udp", table="mangle")
    lab.iptables(lab.b, "-A", "INPUT", "-m", "mark", "--mark", "0x2a/0xff")
    handler_module(tmp_path, "marker", """
        from nfkit.nfqueue import Verdict

        def handle(packet):
            return Verdict.accept(mark=0x2A, mark_mask=0xFF)
    """)  # fmt: skip
    runner = Runner(lab, lab.b, tmp_path, "--queue", "0", "--handler", "marker:handle")
    assert lab.udp(lab.a, "192.0.2.2", 9000, count=4, recv=True)["received"] == 4
    runner.stop()
    assert counter(lab, "INPUT", "--mark 0x2a/0xff") == 4


def test_conntrack_mark_is_seen_by_conntrack_list(lab: Lab, tmp_path: Path) -> None:
    # A conntrack match makes the namespace track connections at all.
    nfqueue_rule(lab, "-p", "udp", "--dport", "9000", "-m", "conntrack", "--ctstate", "NEW,EST")
    handler_module(tmp_path, "ctmark", """
        from nfkit.nfqueue import Verdict

        def handle(packet):
            return Verdict.accept(ct_mark=0x77)
    """)  # fmt: skip
    runner = Runner(lab, lab.b, tmp_path, "--queue", "0", "--handler", "ctmark:handle")
    assert lab.udp(lab.a, "192.0.2.2", 9000, count=3, sport=4321, recv=True)["received"] == 3
    stats = runner.stop()[0]
    listing = lab.run(lab.b, sys.executable, "-m", "nfkit.cli.main", "conntrack", "-L",
                      "-m", "0x77").stdout  # fmt: skip
    assert "sport=4321 dport=9000" in listing and "mark=119" in listing
    # Without the NFQA_CT glue (this kernel) the change goes over ctnetlink, else in the verdict.
    assert stats["ct_update_errors"] == 0 and stats["ct_updates"] in (0, 3)


def test_ips_repeat_mode(lab: Lab, tmp_path: Path) -> None:
    b = lab.b
    lab.iptables(b, "-A", "INPUT", "-m", "mark", "!", "--mark", "0x1/0x1",
                 "-j", "NFQUEUE", "--queue-num", "0")  # fmt: skip
    lab.iptables(b, "-A", "INPUT", "-p", "tcp", "--dport", "23", "-j", "DROP")
    lab.iptables(b, "-A", "INPUT", "-m", "mark", "--mark", "0x1/0x1", "-j", "ACCEPT")
    lab.iptables(b, "-A", "INPUT", "-j", "ACCEPT")  # what passed unmarked
    runner = Runner(lab, b, tmp_path, "--queue", "0", "--mode", "repeat", "--repeat-mark", "1/1")
    assert lab.tcp_exchange(lab.a, "192.0.2.2", 8080, b"inspected") == b"inspected"
    with pytest.raises(LabError):
        lab.tcp_exchange(lab.a, "192.0.2.2", 23, b"telnet", timeout=2)
    assert lab.ping(lab.a, "192.0.2.2", count=2, interval=0.05)
    stats = runner.stop()[0]
    assert stats["repeated"] == stats["received"] > 0 and stats["accepted"] == 0
    assert counter(lab, "INPUT", "--dport 23 -j DROP") >= 1
    assert counter(lab, "INPUT", "-m mark --mark 0x1/0x1 -j ACCEPT") >= 5
    unmarked = [r for r in lab.rule_counters(b, "INPUT") if r.rule == "-j ACCEPT"]
    assert [r.packets for r in unmarked] == [0]


def test_queue_routing_to_a_second_runner(lab: Lab, tmp_path: Path) -> None:
    nfqueue_rule(lab, "-p", "udp", "--dport", "9000")
    second = Runner(lab, lab.b, tmp_path, "--queue", "1", name="second")
    first = Runner(lab, lab.b, tmp_path, "--queue", "0", "--mode", "route", "--route-queue", "1",
                   name="first")  # fmt: skip
    assert lab.udp(lab.a, "192.0.2.2", 9000, count=10, recv=True)["received"] == 10
    one, two = first.stop()[0], second.stop()[1]
    assert (one["received"], one["queued"]) == (10, 10)
    assert (two["received"], two["accepted"]) == (10, 10)


def test_a_range_of_queues_one_socket_each(lab: Lab, tmp_path: Path) -> None:
    nfqueue_rule(lab, "-p", "udp", "--dport", "9300", queue=3)
    nfqueue_rule(lab, "-p", "udp", "--dport", "9301", queue=4)
    runner = Runner(lab, lab.b, tmp_path, "--queue", "3:4")
    live = runner.stats()
    assert set(live) == {3, 4} and live[3]["kernel_waiting"] == live[4]["kernel_waiting"] == 0
    assert lab.udp(lab.a, "192.0.2.2", 9300, count=2, recv=True)["received"] == 2
    assert lab.udp(lab.a, "192.0.2.2", 9301, count=3, recv=True)["received"] == 3
    stats = runner.stop()
    assert (stats[3]["accepted"], stats[4]["accepted"]) == (2, 3)


def test_deferred_decision_by_a_unix_socket_message(lab: Lab, tmp_path: Path) -> None:
    # NuFW: hold the SYN until the user authenticates; snet: no answer in time -> drop.
    control = tmp_path / "auth.sock"
    events = tmp_path / "auth.events"
    handler_module(tmp_path, "auth", f"""
        import ipaddress, re, socket, threading
        from nfkit.nfqueue import Verdict

        MARKS = {{"alice": 0x100}}
        held, users = {{}}, {{}}
        lock = threading.Lock()

        def note(line):
            with open({str(events)!r}, "a") as fh:
                fh.write(line + "\\n")

        def listen():
            server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            server.bind({str(control)!r})
            while True:
                text = server.recv(256).decode()
                match = re.fullmatch(r"user (\\w+) authenticated from (\\S+)", text)
                if not match:
                    continue
                with lock:
                    users[match[2]] = MARKS[match[1]]
                    waiting = held.pop(match[2], [])
                for packet in waiting:
                    packet.decide(Verdict.accept(mark=users[match[2]]))
                note(f"authenticated {{match[2]}}")

        threading.Thread(target=listen, daemon=True).start()

        def handle(packet):
            source = str(ipaddress.ip_address(packet.headers.ip.src))
            with lock:
                if source in users:
                    return Verdict.accept(mark=users[source])
                held.setdefault(source, []).append(packet)
            note(f"held {{source}}")
            return packet.defer()
    """)  # fmt: skip
    nfqueue_rule(lab, "-p", "tcp", "--syn", "--dport", "7000", table="mangle")
    lab.iptables(lab.b, "-A", "INPUT", "-p", "tcp", "--dport", "7000", "-m", "mark",
                 "--mark", "0x100", "-j", "ACCEPT")  # fmt: skip
    runner = Runner(lab, lab.b, tmp_path, "--queue", "0", "--handler", "auth:handle",
                    "--deadline-ms", "1500", "--default-verdict", "drop")  # fmt: skip
    runner.wait_for(control.exists, "control socket")

    def held_count() -> int:
        return events.read_text().count("held 192.0.2.1") if events.exists() else 0

    # Nobody authenticates: the SYN waits until the deadline, then it is dropped.
    with pytest.raises(LabError):
        lab.tcp_exchange(lab.a, "192.0.2.2", 7000, b"anonymous", timeout=2)
    runner.wait_for(lambda: runner.stats()[0]["expired"] >= 1, "expiry")
    # Alice authenticates while her SYN waits.
    before = held_count()
    result: dict[str, Any] = {}
    client = threading.Thread(
        target=lambda: result.update(echo=lab.tcp_exchange(lab.a, "192.0.2.2", 7000, b"alice",
                                                           timeout=15)))  # fmt: skip
    client.start()
    runner.wait_for(lambda: held_count() > before, "a held SYN")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"user alice authenticated from 192.0.2.1", str(control))
    client.join(timeout=30)
    assert result.get("echo") == b"alice"
    stats = runner.stop()[0]
    assert stats["deferred"] >= 2 and stats["expired"] >= 1 and stats["dropped"] >= 1
    assert counter(lab, "INPUT", "--mark 0x100") >= 1  # the SYN passed with alice's mark


REWRITE = """
    from nfkit.nfqueue import Verdict, with_l4_payload

    def fixed(packet):
        new = b"PONG" + packet.headers.payload[4:] + b" (rewritten)"
        return Verdict.accept(payload=with_l4_payload(packet.payload, packet.family, new))

    def broken(packet):
        data = bytearray(packet.payload)
        data[-4:] = b"XXXX"  # the checksum no longer matches
        return Verdict.accept(payload=bytes(data))
"""


def udp_errors(lab: Lab, ipv6: bool) -> int:
    """The checksum errors of UDP in b (InCsumErrors / Udp6InCsumErrors)."""
    if ipv6:
        text = lab.run(lab.b, "cat", "/proc/net/snmp6").stdout
        return int(re.search(r"Udp6InCsumErrors\s+(\d+)", text)[1])  # type: ignore[index]
    lines = [line.split() for line in lab.run(lab.b, "cat", "/proc/net/snmp").stdout.splitlines()]
    names, values = [row for row in lines if row[0] == "Udp:"][:2]
    return int(values[names.index("InCsumErrors")])


@contextlib.contextmanager
def udp_pair(
    lab: Lab, ipv6: bool
) -> Iterator[tuple[socket.socket, socket.socket, tuple[str, int]]]:
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    address = ("2001:db8::2" if ipv6 else "192.0.2.2", 9100)
    with lab.entered(lab.b):
        receiver = socket.socket(family, socket.SOCK_DGRAM)
    with lab.entered(lab.a):
        sender = socket.socket(family, socket.SOCK_DGRAM)
    with receiver, sender:
        receiver.bind(address)
        receiver.settimeout(10)
        yield sender, receiver, address


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_payload_rewrite_arrives_with_valid_checksums(lab: Lab, tmp_path: Path, ipv6: bool) -> None:
    nfqueue_rule(lab, "-p", "udp", "--dport", "9100", ipv6=ipv6)
    handler_module(tmp_path, "rewrite", REWRITE)
    runner = Runner(lab, lab.b, tmp_path, "--queue", "0", "--handler", "rewrite:fixed")
    errors = udp_errors(lab, ipv6)
    with udp_pair(lab, ipv6) as (sender, receiver, address):
        for n in range(3):
            sender.sendto(b"ping %d" % n, address)
            # The kernel verifies the checksum of a rewritten (CHECKSUM_NONE) packet.
            assert receiver.recv(2048) == b"PONG %d (rewritten)" % n
    assert udp_errors(lab, ipv6) == errors
    assert runner.stop()[0]["accepted"] == 3


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_a_rewrite_without_checksums_is_dropped_by_the_receiver(
    lab: Lab, tmp_path: Path, ipv6: bool
) -> None:
    # The control of the test above: the receiver does check.
    nfqueue_rule(lab, "-p", "udp", "--dport", "9100", ipv6=ipv6)
    handler_module(tmp_path, "rewrite", REWRITE)
    runner = Runner(lab, lab.b, tmp_path, "--queue", "0", "--handler", "rewrite:broken")
    errors = udp_errors(lab, ipv6)
    with udp_pair(lab, ipv6) as (sender, receiver, address):
        sender.sendto(b"ping 0", address)
        runner.wait_for(lambda: udp_errors(lab, ipv6) > errors, "a checksum error")
        receiver.setblocking(False)
        with pytest.raises(BlockingIOError):
            receiver.recv(2048)
    runner.stop()


@pytest.mark.parametrize("fail_open", [False, True], ids=["drop", "fail-open"])
def test_overload_with_a_small_queue(lab: Lab, tmp_path: Path, fail_open: bool) -> None:
    nfqueue_rule(lab, "-p", "udp", "--dport", "9200")
    handler_module(tmp_path, "slow", """
        import time

        def handle(packet):
            time.sleep(0.05)
            return True
    """)  # fmt: skip
    options = ["--queue", "0", "--handler", "slow:handle", "--maxlen", "4"]
    runner = Runner(lab, lab.b, tmp_path, *options, *(["--fail-open"] if fail_open else []))
    sent = 40
    got = lab.udp(lab.a, "192.0.2.2", 9200, count=sent, recv=True, timeout=15)["received"]
    runner.wait_for(lambda: runner.stats()[0]["kernel_waiting"] == 0, "an empty queue")
    stats = runner.stop()[0]
    assert stats["received"] == stats["accepted"] < sent
    if fail_open:
        # Beyond the queue the kernel accepted the packets, and counted nothing.
        assert got == sent and stats["kernel_dropped"] == 0
    else:
        assert got == stats["accepted"]
        assert stats["kernel_dropped"] > 0
        assert stats["received"] + stats["kernel_dropped"] + stats["kernel_user_dropped"] == sent


# -- bad input ------------------------------------------------------------------------


def test_a_queue_bound_by_another_program_is_a_clear_error(lab: Lab, tmp_path: Path) -> None:
    first = Runner(lab, lab.b, tmp_path, "--queue", "5")
    second = lab.run(lab.b, sys.executable, "-m", "nfkit.cli.main", "queue", "--queue", "4:6",
                     check=False)  # fmt: skip
    assert second.returncode == 1
    assert "queue 5 is already bound by another program" in second.stderr
    assert first.stop()[5]["received"] == 0


def test_not_root_is_a_clear_error(lab: Lab) -> None:
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
              "--inh-caps=-all", "--bounding-set=-all"]  # fmt: skip
    cli = lab.run(lab.b, *nobody, sys.executable, "-m", "nfkit.cli.main", "queue", "--queue", "0",
                  check=False)  # fmt: skip
    assert cli.returncode == 1 and "needs root (CAP_NET_ADMIN)" in cli.stderr
    library = lab.run(lab.b, *nobody, sys.executable, "-c",
                      "from nfkit.nfqueue import Queue; Queue(0)", check=False)  # fmt: skip
    assert "NetlinkPermissionError" in library.stderr
    assert "bind NFQUEUE queue 0" in library.stderr and "CAP_NET_ADMIN" in library.stderr


def test_verdict_errors_mid_stream_are_counted_not_fatal(lab: Lab) -> None:
    queue = udp_queue(lab)
    with queue:
        lab.udp(lab.a, "192.0.2.2", 9000, count=1)
        (packet,) = wait_packets(queue, 1)
        # A verdict for an id the kernel does not know: it answers ENOENT in the stream.
        queue._transport.send(encode_verdict(ACCEPT, queue_prefix(0), packet.id + 1000, None))
        packet.decide(ACCEPT)
        lab.udp(lab.a, "192.0.2.2", 9000, count=1)
        (second,) = wait_packets(queue, 1)
        second.decide(ACCEPT)
        queue.flush()
        assert queue.stats.verdict_errors == {errno.ENOENT: 1}
        assert queue.stats.received == 2 and queue.stats.malformed == 0


# -- the library in-process -------------------------------------------------------------


def wait_packets(queue: Queue, count: int, timeout: float = 10.0) -> list[QueuedPacket]:
    packets: list[QueuedPacket] = []
    deadline = time.monotonic() + timeout
    while len(packets) < count and time.monotonic() < deadline:
        packets += queue.receive(timeout=0.2)
    assert len(packets) == count
    return packets


def test_packet_attributes_from_the_kernel(lab: Lab) -> None:
    a, b = lab.a, lab.b
    lab.iptables(b, "-A", "INPUT", "-p", "udp", "-j", "NFQUEUE", "--queue-num", "0")
    lab.iptables(a, "-A", "OUTPUT", "-p", "udp", "-j", "NFQUEUE", "--queue-num", "0")
    with lab.entered(b):
        incoming = Queue(0)
    with lab.entered(a):
        outgoing = Queue(0, flags=Flag.UID_GID | Flag.GSO)
    with incoming, outgoing:
        lab.udp(a, "192.0.2.2", 9000, count=1, size=100)
        (sent,) = wait_packets(outgoing, 1)
        assert (sent.hook, sent.outdev_name, sent.indev) == (3, a.ifname, None)
        assert (sent.uid, sent.gid) == (0, 0)
        assert SkbInfo.CSUMNOTREADY in sent.skb_info
        sent.decide(ACCEPT)
        outgoing.flush()
        (arrived,) = wait_packets(incoming, 1)
        assert (arrived.hook, arrived.indev_name, arrived.indev) == (1, b.ifname, b.ifindex)
        assert arrived.hwaddr == bytes.fromhex(a.mac.replace(":", ""))
        assert arrived.uid is None and arrived.mark == 0 and not arrived.truncated
        udp = arrived.headers.l4
        assert udp is not None and udp.dport == 9000 and len(arrived.headers.payload) == 100
        assert arrived.ports == (17, udp.sport, 9000)
        assert arrived.headers.ip is not None and arrived.headers.ip.src == bytes([192, 0, 2, 1])


def test_truncated_copies_carry_the_real_length(lab: Lab) -> None:
    queue = udp_queue(lab, copy_range=64)
    with queue:
        lab.udp(lab.a, "192.0.2.2", 9000, count=1, size=500)
        (packet,) = wait_packets(queue, 1)
        assert len(packet.payload or b"") == 64 and packet.cap_len == 528 and packet.truncated


@pytest.mark.parametrize("workers", [0, 3])
def test_server_in_a_thread_with_and_without_workers(lab: Lab, workers: int) -> None:
    queue = udp_queue(lab)
    threads: set[str] = set()

    def handler(packet: QueuedPacket) -> Verdict:
        threads.add(threading.current_thread().name)
        return Verdict.accept(mark=packet.id)

    server = Server(queue, handler, workers=workers)
    loop = threading.Thread(target=server.run)
    loop.start()
    try:
        assert lab.udp(lab.a, "192.0.2.2", 9000, count=20, recv=True)["received"] == 20
    finally:
        server.stop()
        loop.join(timeout=10)
        queue.close()
    assert queue.stats.count(1) == 20
    assert all(name.startswith("nfqueue") for name in threads) == bool(workers)


def test_asyncio_serve_with_a_coroutine_handler(lab: Lab) -> None:
    queue = udp_queue(lab, deadline=5.0)

    async def handler(packet: QueuedPacket) -> Verdict | bool:
        await asyncio.sleep(0.001)  # a lookup somewhere
        return packet.headers.l4.dport == 9000  # type: ignore[union-attr]

    async def main() -> dict[str, Any]:
        task = asyncio.ensure_future(aio.serve(queue, handler))
        result = await asyncio.to_thread(lab.udp, lab.a, "192.0.2.2", 9000, count=10, recv=True)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return result

    assert asyncio.run(main())["received"] == 10
    assert queue.closed and queue.stats.count(1) == 10


def test_ids_of_a_queue_start_at_one_and_have_no_gaps(lab: Lab) -> None:
    queue = udp_queue(lab)
    with queue:
        lab.udp(lab.a, "192.0.2.2", 9000, count=5)
        packets = wait_packets(queue, 5)
        assert [p.id for p in packets] == [1, 2, 3, 4, 5]
        for packet in packets:
            packet.decide(ACCEPT)
        queue.flush()
        counters = queue.kernel_counters()
        assert counters is not None and counters.id_sequence == 5 and counters.total == 0
        assert queue.stats.id_gaps == 0 and queue.stats.batches == 1


def test_socket_options_of_a_queue(lab: Lab) -> None:
    queue = udp_queue(lab)
    with queue, socket.socket(fileno=os.dup(queue.fileno())) as sock:
        assert sock.getsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS) == 1
        assert sock.getsockopt(SOL_NETLINK, NETLINK_CAP_ACK) == 1
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 1024 * 2048


def test_losses_show_as_enobufs_id_gaps_and_kernel_counters(lab: Lab) -> None:
    # A tiny socket buffer and NETLINK_NO_ENOBUFS off: most of a burst cannot be delivered.
    queue = udp_queue(lab, no_enobufs=False, receive_buffer=4096)
    with queue:
        assert lab.udp(lab.a, "192.0.2.2", 9000, count=300)["sent"] == 300
        ids: list[int] = []
        empty = 0
        while empty < 5:  # the socket is drained (the ENOBUFS error comes first)
            packets = queue.receive(timeout=0.1)
            empty = 0 if packets else empty + 1
            for packet in packets:
                ids.append(packet.id)
                packet.decide(ACCEPT)
        queue.flush()
        counters = queue.kernel_counters()
        assert counters is not None and counters.user_dropped > 0 and queue.stats.enobufs >= 1
        # Every packet the socket could not take used up an id: gaps, or ids after the last.
        assert queue.stats.id_gaps + counters.id_sequence - max(ids) == counters.user_dropped
        assert len(ids) + counters.user_dropped == 300 == counters.id_sequence


def test_connection_mark_bits_and_labels_from_verdicts(lab: Lab) -> None:
    enable_labels(lab, lab.b)
    queue = udp_queue(lab)
    labels = (1 << 3 | 1 << 70).to_bytes(16, "little")
    verdict = Verdict.accept(ct_mark=0x5, ct_mark_mask=0xF, labels=labels, labels_mask=labels)
    with queue:
        # A mark the verdict changes only under its mask (CONNMARK also turns conntrack on).
        lab.iptables(lab.b, "-t", "mangle", "-A", "PREROUTING", "-p", "udp",
                     "-j", "CONNMARK", "--set-mark", "0x132")  # fmt: skip
        lab.udp(lab.a, "192.0.2.2", 9000, count=1, sport=5555)
        (packet,) = wait_packets(queue, 1)
        packet.decide(verdict)
        queue.flush()
        with lab.entered(lab.b), Conntrack(prefetch=False) as ct:
            (flow,) = [f for f in ct.dump() if f.orig is not None and f.orig.sport == 5555]
        assert flow.mark == 0x135 and flow.label_bits == {3, 70}
        assert queue.stats.ct_update_errors == 0


def exchange(lab: Lab, queue: Queue, verdict: Verdict) -> int:
    """One UDP packet to port 9000 through ``queue`` with ``verdict``; how many arrived."""
    result: dict[str, Any] = {}
    sender = threading.Thread(
        target=lambda: result.update(lab.udp(lab.a, "192.0.2.2", 9000, recv=True, timeout=3))
    )
    sender.start()
    (packet,) = wait_packets(queue, 1)
    packet.decide(verdict)
    queue.flush()
    sender.join(timeout=30)
    return int(result["received"])


def test_queue_to_a_queue_nobody_serves_with_and_without_bypass(lab: Lab) -> None:
    with udp_queue(lab) as queue:
        assert exchange(lab, queue, Verdict.to_queue(7, bypass=True)) == 1
        assert exchange(lab, queue, Verdict.to_queue(7)) == 0
        assert queue.stats.count(Action.QUEUE) == 2 and not queue.stats.verdict_errors


def test_stop_skips_the_later_hook_functions(lab: Lab) -> None:
    # Queued in mangle INPUT; filter INPUT (a later hook function) drops the packet.
    nfqueue_rule(lab, "-p", "udp", "--dport", "9000", table="mangle")
    lab.iptables(lab.b, "-A", "INPUT", "-p", "udp", "--dport", "9000", "-j", "DROP")
    with lab.entered(lab.b):
        queue = Queue(0)
    with queue:
        assert exchange(lab, queue, ACCEPT) == 0
        assert exchange(lab, queue, Verdict.stop()) == 1
