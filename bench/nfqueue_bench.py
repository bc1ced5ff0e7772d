"""NFQUEUE throughput and CPU cost: ``nfkit.nfqueue`` against the NetfilterQueue package.

One lab, one queue (``iptables -t raw -j NFQUEUE`` in namespace b, then
``-j DROP`` in filter INPUT so nothing answers), one consumer at a time in b,
pinned to CPU 1, while namespace a blasts TCP segments (64-byte payload, 512
flows) at it from a TPACKET_V2 TX ring, pinned to CPU 0: 512 frames per
``send``, 200-330k packets/s here. Two modes:

* ``live``: the consumer answers while the sender sends (queue maxlen 1024);
  measured over 3 s once the queue is full. When the consumer answers about
  as fast as the sender sends, the sender is the limit (the report says so).
* ``drain``: the consumer is stopped (SIGSTOP), the sender fills its queue
  (maxlen 50,000) and stops, then the consumer is let go (SIGCONT) and
  measured until the queue is empty: the most it can answer, a full burst at
  a time, with CPU 1 to itself and nothing else on CPU 0 either.

Contenders, each with two handlers (``accept``: accept every packet;
``dport``: accept TCP to port 9, drop other TCP, from the TCP header):

* ``NetfilterQueue``: ``NetfilterQueue().bind(0, handler)`` and ``run()``
  (libnetfilter_queue: one ``recv`` and one ``sendmsg`` per packet); the
  dport handler unpacks the port from ``get_payload()`` with ``struct``.
* ``nfkit``: ``Server(Queue(0, batch_verdicts=False), handler).run()``: a
  burst of up to 64 packets per ``recvmmsg``, one VERDICT message per packet
  (those of a burst in one ``send``); the dport handler
  reads ``packet.ports`` (protocol and ports straight from the payload).
* ``nfkit-batch``: the same with ``batch_verdicts=True`` (equal verdicts in a
  row go out as one VERDICT_BATCH).
* ``python-loop`` and ``python-loop-batch`` (the floor, no target): nfkit
  binds the queue, then a hand-written loop on its socket reads a burst of up
  to 64 datagrams with one ``recvmmsg`` (nfkit's BurstReceiver), takes each
  packet id (and, for dport, the port), and answers the burst with one
  ``send`` (a VERDICT per packet, or one VERDICT_BATCH): about the least a
  Python program can do per packet.

Throughput is counted by the kernel, the same way for every contender:
verdicts delivered = packets handed to the socket (``id_sequence`` minus
``user_dropped`` in ``/proc/PID/net/netfilter/nfnetlink_queue``) minus
those still waiting (``total``), sampled twice while the queue is saturated
(after a warm-up). CPU is the consumer's CPU time (``/proc/PID/schedstat``,
its kernel part as ``/proc/PID/stat`` splits it)
between the same two samples. Losses over the whole run: the kernel's
queue-full and socket-full drops, and fail-open accepts (none: the queue has
no FAIL_OPEN flag); the DROP rule's counter must equal the accept verdicts.

    python bench/nfqueue_bench.py [--repeat 5] [--seconds 3] [--contenders A,B]
                                  [--output docs/benchmarks.md | --no-write]

Needs root (network namespaces), iptables, taskset and NetfilterQueue (``make bench-queue``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import mmap
import os
import select
import shlex
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests"), str(ROOT / "bench")]

from conntrack_bench import nfkit_commit  # noqa: E402
from nfkit.lab import Lab, unavailable_reason  # noqa: E402
from nfkit.nfqueue.stats import KernelCounters, read_kernel_counters  # noqa: E402
from nfkit.packet.build import build_ipv4, build_tcp  # noqa: E402
from nflog_bench import background_load, environment, pin  # noqa: E402
from reference import iptables_restore  # noqa: E402
from report import write_section  # noqa: E402

QUEUE = 0
PORT = 9  # discard
#: How each mode binds the queue: maxlen, and the socket's receive buffer (the same for all).
#: Linux 6.18 finds queued packets in one hash table (all queues), which grows in the
#: background: filled fast, it took 65,536 at most here, and a packet it could not take was
#: dropped after it took an id, which the verdict count cannot tell from an answer.
QUEUE_SIZES = {"live": (1024, 2 << 20), "drain": (50_000, 64 << 20)}
MODES = ("live", "drain")
#: Seconds the sender fills the queue of a stopped consumer in drain mode (far more than
#: the queue takes: it ends full).
FILL_SECONDS = 1.5
#: Fills and drains per drain run (a drain takes a few tenths of a second).
DRAIN_CYCLES = 3
CONTENDERS = ("NetfilterQueue", "nfkit", "nfkit-batch", "python-loop", "python-loop-batch")
REFERENCE = "NetfilterQueue"
HANDLERS = ("accept", "dport")
#: packets/s of nfkit over NetfilterQueue's, at least (issue 6)
TARGETS = {"nfkit": 1.5, "nfkit-batch": 2.0}
#: Packets reaching the queue per verdict above which the consumer, not the sender, is the limit.
SATURATED = 1.1


# -- the sender (namespace a) -------------------------------------------------------------

SOL_PACKET = 263
PACKET_VERSION = 10
PACKET_TX_RING = 13
PACKET_QDISC_BYPASS = 20
TPACKET_V2 = 1
TP_STATUS_SEND_REQUEST = 1
FRAME_SIZE = 2048
FRAMES = 512
#: Where a TX frame's data starts: TPACKET_ALIGN(sizeof(struct tpacket2_hdr)).
FRAME_DATA = 32
_FRAME_HDR = struct.Struct("=II")  # tp_status, tp_len
_STATUS = struct.Struct("=I")


def tcp_frames(src_mac: str, dst_mac: str, src: str, dst: str, flows: int) -> list[bytes]:
    """Ethernet frames of TCP ACK segments (64 payload bytes) to ``dst``:PORT, one per flow."""
    ethernet = bytes.fromhex(dst_mac.replace(":", "") + src_mac.replace(":", "")) + b"\x08\x00"
    frames = []
    for flow in range(flows):
        segment = build_tcp(20000 + flow, PORT, 1, 1, 0x10, 1024, bytes(64), src, dst)
        frames.append(ethernet + build_ipv4(src, dst, socket.IPPROTO_TCP, segment))
    return frames


def blast(ifname: str, frames: list[bytes], seconds: float) -> dict[str, float]:
    """Send ``frames`` over and over for ``seconds``: one ``send`` per ring of FRAMES."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: receives nothing
    sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
    sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
    ring_size = FRAME_SIZE * FRAMES
    sock.setsockopt(SOL_PACKET, PACKET_TX_RING, struct.pack("=IIII", ring_size, 1, FRAME_SIZE,
                                                            FRAMES))
    ring = mmap.mmap(sock.fileno(), ring_size)
    sock.bind((ifname, 0))
    offsets = range(0, ring_size, FRAME_SIZE)
    for offset, frame in zip(offsets, frames * (FRAMES // len(frames) + 1), strict=False):
        _FRAME_HDR.pack_into(ring, offset, 0, len(frame))
        ring[offset + FRAME_DATA : offset + FRAME_DATA + len(frame)] = frame
    request = _STATUS.pack_into
    sent = 0
    print(json.dumps({"event": "start"}), flush=True)
    start = time.monotonic()
    end = start + seconds
    while time.monotonic() < end:
        for offset in offsets:
            request(ring, offset, TP_STATUS_SEND_REQUEST)
        sock.send(b"")  # blocks until the kernel took every frame of the ring
        sent += FRAMES
    elapsed = time.monotonic() - start
    left = sum(_STATUS.unpack_from(ring, offset)[0] != 0 for offset in offsets)
    ring.close()
    sock.close()
    return {"sent": sent - left, "seconds": elapsed, "pps": (sent - left) / elapsed}


# -- the consumers (namespace b) ----------------------------------------------------------

_BE16 = struct.Struct("!H")


class Stop(Exception):
    """SIGTERM: leave the consumer's loop."""


def raise_stop(_signo: int, _frame: object) -> None:
    raise Stop


def netfilterqueue_consumer(handler_name: str, maxlen: int, receive_buffer: int) -> None:
    """NetfilterQueue bound to QUEUE, its ``run()`` until SIGTERM."""
    from netfilterqueue import NetfilterQueue

    port_at = _BE16.unpack_from

    def accept(packet: Any) -> None:
        packet.accept()

    def dport(packet: Any) -> None:
        payload = packet.get_payload()
        tcp = payload[9] == socket.IPPROTO_TCP
        if not tcp or port_at(payload, (payload[0] & 15) * 4 + 2)[0] == PORT:
            packet.accept()
        else:
            packet.drop()

    nfq = NetfilterQueue()
    nfq.bind(QUEUE, {"accept": accept, "dport": dport}[handler_name], max_len=maxlen,
             sock_len=receive_buffer)
    signal.signal(signal.SIGTERM, raise_stop)
    ready()
    try:
        nfq.run()
    except Stop:
        pass
    finally:
        nfq.unbind()


def nfkit_consumer(handler_name: str, maxlen: int, receive_buffer: int, batch: bool) -> None:
    """A :class:`nfkit.nfqueue.Server` on QUEUE until SIGTERM."""
    from nfkit.nfqueue import ACCEPT, DROP, Queue, QueuedPacket, Server, Verdict

    def accept(packet: QueuedPacket) -> Verdict:
        return ACCEPT

    def dport(packet: QueuedPacket) -> Verdict:
        ports = packet.ports  # (protocol, sport, dport) straight from the payload
        if ports is None or ports[0] != socket.IPPROTO_TCP or ports[2] == PORT:
            return ACCEPT
        return DROP

    with Queue(QUEUE, maxlen=maxlen, batch_verdicts=batch, receive_buffer=receive_buffer) as queue:
        server = Server(queue, {"accept": accept, "dport": dport}[handler_name])
        signal.signal(signal.SIGTERM, lambda _signo, _frame: server.stop())
        ready()
        server.run()


def python_loop_consumer(handler_name: str, maxlen: int, receive_buffer: int, batch: bool) -> None:
    """The least a Python program can do: nfkit binds the queue, then a hand-written loop
    reads a burst of datagrams with one ``recvmmsg`` (nfkit's BurstReceiver), takes each
    packet id (and the TCP port), and answers the burst with one ``send`` (one
    VERDICT_BATCH, or a VERDICT per packet)."""
    from nfkit.netlink.codec import NLATTR, NLM_F_REQUEST, NLMSGHDR
    from nfkit.nfqueue import Queue
    from nfkit.nfqueue.burst import BurstReceiver
    from nfkit.nfqueue.const import ATTR_PAYLOAD, MSG_PACKET, MSG_VERDICT, MSG_VERDICT_BATCH
    from nfkit.nfqueue.verdict import queue_prefix

    header, attribute, pair = NLMSGHDR.pack, NLATTR.unpack_from, struct.Struct("!II").pack
    first = struct.Struct("=4xH18xI").unpack_from  # message type, packet id (big-endian: below)
    verdict_tail = queue_prefix(QUEUE) + struct.pack("=HH", 12, 2)  # NFQA_VERDICT_HDR
    read_port = handler_name == "dport"
    with Queue(QUEUE, maxlen=maxlen, receive_buffer=receive_buffer) as queue:
        sock = socket.socket(fileno=os.dup(queue.fileno()))
        sock.settimeout(None)
        receive = BurstReceiver(sock.fileno(), 1 << 16).receive
        send = sock.send
        signal.signal(signal.SIGTERM, raise_stop)
        ready()
        with sock, contextlib.suppress(Stop):
            while True:
                ids = []
                try:
                    datagrams = receive(True)
                except (BlockingIOError, InterruptedError):
                    continue
                for data in datagrams:
                    mtype, packet_id = first(data)
                    if mtype != MSG_PACKET:
                        continue
                    if read_port:
                        offset, size = 32, len(data)  # the attribute after NFQA_PACKET_HDR
                        while offset < size:
                            length, atype = attribute(data, offset)
                            if atype & 0x7FFF == ATTR_PAYLOAD:
                                ip = offset + 4
                                if data[ip + 9] == socket.IPPROTO_TCP:
                                    _BE16.unpack_from(data, ip + (data[ip] & 15) * 4 + 2)
                                break
                            offset += (length + 3) & ~3
                    ids.append(socket.ntohl(packet_id))
                if batch and ids:
                    top = ids[-1]
                    send(header(32, MSG_VERDICT_BATCH, NLM_F_REQUEST, top, 0) + verdict_tail
                         + pair(1, top))
                elif ids:
                    send(b"".join(header(32, MSG_VERDICT, NLM_F_REQUEST, i, 0) + verdict_tail
                                  + pair(1, i) for i in ids))


def ready() -> None:
    print(json.dumps({"event": "ready"}), flush=True)


#: Each gets the handler's name, the queue's maxlen and the socket's receive buffer.
CONSUMERS: dict[str, Callable[[str, int, int], None]] = {
    "NetfilterQueue": netfilterqueue_consumer,
    "nfkit": functools.partial(nfkit_consumer, batch=False),
    "nfkit-batch": functools.partial(nfkit_consumer, batch=True),
    "python-loop": functools.partial(python_loop_consumer, batch=False),
    "python-loop-batch": functools.partial(python_loop_consumer, batch=True),
}


# -- the orchestra ------------------------------------------------------------------------

RULES = f"""*raw
-F PREROUTING
-A PREROUTING -p tcp --dport {PORT} -j CT --notrack
-A PREROUTING -p tcp --dport {PORT} -j NFQUEUE --queue-num {QUEUE}
COMMIT
*filter
-F INPUT
-A INPUT -p tcp --dport {PORT} -j DROP
COMMIT
"""


@dataclass(frozen=True)
class Sample:
    """The consumer's CPU time and its queue's kernel counters at one moment."""

    time: float
    cpu: float  # seconds, exact (schedstat)
    user_ticks: int  # how /proc/PID/stat splits it, in clock ticks
    system_ticks: int
    counters: KernelCounters

    @property
    def verdicts(self) -> int:
        """Packets the consumer has answered: handed to its socket, minus those still waiting."""
        c = self.counters
        return c.id_sequence - c.user_dropped - c.total

    @property
    def offered(self) -> int:
        """Packets that reached the queue: handed to the socket, or dropped because it was full."""
        return self.counters.id_sequence + self.counters.dropped


def sample(pid: int) -> Sample:
    """Read both, the time between the two reads."""
    before = time.monotonic()
    with open(f"/proc/{pid}/schedstat", encoding="ascii") as f:
        cpu = int(f.read().split()[0]) / 1e9
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    counters = read_kernel_counters(f"/proc/{pid}/net/netfilter/nfnetlink_queue")[QUEUE]
    return Sample((before + time.monotonic()) / 2, cpu, int(fields[11]), int(fields[12]),
                  counters)


@dataclass
class Run:
    """One contender, one handler, one mode, one burst of traffic."""

    mode: str
    contender: str
    handler: str
    # while measured (live: the queue saturated; drain: from the start of the drain to its end)
    pps: float  # verdicts/s
    cpu_us: float  # the consumer's user+sys CPU µs per verdict
    sys_us: float  # of which in the kernel
    offered: float  # packets that reached the queue per verdict (> 1: more than it answered)
    cpu_share: float  # the consumer's CPU time per second (1: it had its CPU to itself)
    # the whole run
    sent: int
    sender_pps: float
    reached: int  # the NFQUEUE rule's counter
    verdicts: int
    accepted: int  # the DROP rule's counter (after the queue)
    queue_dropped: int  # the queue was full
    user_dropped: int  # the socket was full
    load: float  # the machine's CPU use before the run (0-1)

    @property
    def fail_open(self) -> int:
        """Packets the kernel let past the queue instead of queueing them (FAIL_OPEN)."""
        return self.reached - self.verdicts - self.queue_dropped - self.user_dropped


def this_script(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


def start(lab: Lab, ns: str, cpu: int, *args: str) -> subprocess.Popen[bytes]:
    """This script with ``args`` in namespace ``ns``, pinned to ``cpu``, stdout unbuffered."""
    return lab.popen(ns, *pin(cpu), *this_script(*args), stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, bufsize=0)


def read_event(proc: subprocess.Popen[bytes], what: str, timeout: float = 20.0) -> dict[str, Any]:
    """The next JSON line of ``proc``'s stdout (unbuffered: select sees every byte)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.2)[0]:
            line = proc.stdout.readline()
            if not line:
                break  # it exited
            event: dict[str, Any] = json.loads(line)
            return event
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr and proc.poll() else ""
    raise RuntimeError(f"no {what} from {proc.args!r} (exit {proc.poll()}): {stderr}")


def run_one(lab: Lab, mode: str, contender: str, handler: str, seconds: float, warmup: float,
            patience: float) -> Run:
    """Bind, send, measure (live or drain), let the queue empty, stop, count."""
    load = background_load(patience)
    iptables_restore(lab, lab.b, RULES)  # fresh counters
    maxlen, receive_buffer = QUEUE_SIZES[mode]
    consumer = start(lab, lab.b.name, 1, "consume", contender, handler, str(maxlen),
                     str(receive_buffer))
    try:
        read_event(consumer, "ready line")
        measure = measure_live if mode == "live" else measure_drain
        sent, sender_pps, intervals = measure(lab, consumer.pid, seconds, warmup)
        final = drained(consumer.pid)
        reached = sum(r.packets for r in lab.rule_counters(lab.b, "PREROUTING", "raw")
                      if "NFQUEUE" in r.rule)
        accepted = sum(r.packets for r in lab.rule_counters(lab.b, "INPUT"))
        consumer.send_signal(signal.SIGTERM)
        if consumer.wait(timeout=20) != 0:
            stderr = consumer.stderr.read().decode(errors="replace") if consumer.stderr else ""
            raise RuntimeError(f"{contender} exited with {consumer.returncode}: {stderr}")
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait(timeout=5)
    answered, elapsed, cpu, offered = (
        sum(getattr(last, name) - getattr(first, name) for first, last in intervals)
        for name in ("verdicts", "time", "cpu", "offered")
    )
    # The kernel's share: /proc/PID/stat splits CPU time in clock ticks only.
    ticks = [sum(getattr(last, name) - getattr(first, name) for first, last in intervals)
             for name in ("user_ticks", "system_ticks")]
    system = cpu * ticks[1] / sum(ticks) if sum(ticks) else 0.0
    return Run(mode, contender, handler, answered / elapsed, cpu * 1e6 / answered,
               system * 1e6 / answered, offered / answered, cpu / elapsed, sent, sender_pps,
               reached, final.verdicts, accepted, final.counters.dropped,
               final.counters.user_dropped, load)


#: Packets sent, the sender's rate, and the intervals measured (first and last sample).
Measured = tuple[int, float, list[tuple["Sample", "Sample"]]]


def measure_live(lab: Lab, pid: int, seconds: float, warmup: float) -> Measured:
    """Blast for ``warmup + seconds``; sample at ``warmup`` and ``seconds`` later."""
    with sending(lab, warmup + seconds + 0.2) as sender:
        time.sleep(warmup)
        first = sample(pid)
        time.sleep(seconds)
        last = sample(pid)
        sent = read_event(sender, "result", timeout=seconds + 30)
    return int(sent["sent"]), sent["pps"], [(first, last)]


def measure_drain(lab: Lab, pid: int, seconds: float, warmup: float) -> Measured:
    """DRAIN_CYCLES times: fill the queue of the stopped consumer, let it go, sample until it
    emptied the queue (it answers as fast as it can, a full burst at a time, alone)."""
    sent, rates, intervals = 0, [], []
    for _ in range(DRAIN_CYCLES):
        os.kill(pid, signal.SIGSTOP)
        with sending(lab, FILL_SECONDS) as sender:
            result = read_event(sender, "result", timeout=FILL_SECONDS + 30)
        first = settled(pid)
        os.kill(pid, signal.SIGCONT)
        intervals.append((first, drained(pid, pause=0.002)))
        sent += int(result["sent"])
        rates.append(result["pps"])
    return sent, statistics.mean(rates), intervals


@contextlib.contextmanager
def sending(lab: Lab, seconds: float) -> Iterator[subprocess.Popen[bytes]]:
    """The sender in namespace a, blasting for ``seconds`` (killed if still there at the end)."""
    sender = start(lab, lab.a.name, 0, "send", lab.a.ifname, lab.a.mac, lab.b.mac,
                   str(lab.a.ip4), str(lab.b.ip4), str(seconds))
    try:
        read_event(sender, "start line")
        yield sender
    finally:
        if sender.poll() is None:
            sender.kill()
        sender.wait(timeout=5)


def settled(pid: int, timeout: float = 10.0) -> Sample:
    """The consumer's counters once no more packets reach its queue."""
    deadline = time.monotonic() + timeout
    before = sample(pid)
    while True:
        time.sleep(0.05)
        now = sample(pid)
        if now.offered == before.offered or time.monotonic() > deadline:
            return now
        before = now


def drained(pid: int, timeout: float = 10.0, pause: float = 0.02) -> Sample:
    """The consumer's counters once nothing waits in its queue any more."""
    deadline = time.monotonic() + timeout
    while True:
        now = sample(pid)
        if now.counters.total == 0 or time.monotonic() > deadline:
            return now
        time.sleep(pause)


# -- the report ---------------------------------------------------------------------------


def median_range(values: Sequence[float], digits: int) -> str:
    """The median, and the range of more than one value."""
    text = f"{statistics.median(values):,.{digits}f}"
    if len(values) > 1:
        text += f" ({min(values):,.{digits}f}-{max(values):,.{digits}f})"
    return text


def table(runs: list[Run]) -> str:
    head = ("| mode | handler | consumer | verdicts/s | CPU µs / verdict (of which kernel) "
            "| verdicts/s vs NetfilterQueue | CPU / verdict vs NetfilterQueue "
            "| offered / answered | consumer's CPU share | sent | sender's rate | verdicts "
            "| lost: queue full + socket full + fail-open | other load before |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for mode in MODES:
        for handler in HANDLERS:
            reference = select_runs(runs, mode, REFERENCE, handler)
            for contender in CONTENDERS:
                mine = select_runs(runs, mode, contender, handler)
                if mine:
                    lines.append(row(mine, reference if contender != REFERENCE else []))
    return "\n".join(lines)


def row(mine: list[Run], reference: list[Run]) -> str:
    """The table's line of one mode, handler and contender (compared with ``reference``)."""
    speed = median_range(ratios(mine, reference, "pps"), 2) if reference else ""
    cost = median_range(ratios(mine, reference, "cpu_us"), 2) if reference else ""
    # Draining, the queue gets nothing new: nothing to compare the answers with.
    offered = median_range([r.offered for r in mine], 2) if mine[0].mode == "live" else "-"
    sent = sum(r.sent for r in mine)
    lost = [sum(getattr(r, name) for r in mine)
            for name in ("queue_dropped", "user_dropped", "fail_open")]
    return (f"| {mine[0].mode} | {mine[0].handler} | {mine[0].contender} "
            f"| {median_range([r.pps for r in mine], 0)} "
            f"| {median_range([r.cpu_us for r in mine], 2)} "
            f"({statistics.median(r.sys_us for r in mine):.2f}) | {speed} | {cost} | {offered} "
            f"| {median_range([100 * r.cpu_share for r in mine], 0)} % | {sent:,} "
            f"| {statistics.median(r.sender_pps for r in mine):,.0f}/s "
            f"| {sum(r.verdicts for r in mine):,} "
            f"| {100 * sum(lost) / sent:.0f} %: {lost[0]:,} + {lost[1]:,} + {lost[2]:,} "
            f"| {100 * max(r.load for r in mine):.0f} % |")


def select_runs(runs: list[Run], mode: str, contender: str, handler: str) -> list[Run]:
    return [r for r in runs
            if r.mode == mode and r.contender == contender and r.handler == handler]


def ratios(mine: list[Run], reference: list[Run], name: str) -> list[float]:
    """``name`` of each run over that of the reference's run of the same round."""
    return [getattr(m, name) / getattr(r, name) for m, r in zip(mine, reference, strict=True)]


def verdicts(runs: list[Run]) -> list[str]:
    """The targets, PASS or FAIL; and the accounting of every run."""
    out = []
    for mode, handler, (contender, target) in itertools.product(MODES, HANDLERS,
                                                                TARGETS.items()):
        reference = select_runs(runs, mode, REFERENCE, handler)
        mine = select_runs(runs, mode, contender, handler)
        if not mine or not reference:
            continue
        what = ("answers" if mode == "live" else "drains a full queue at") + " >="
        ratio = statistics.median(ratios(mine, reference, "pps"))
        out.append(f"{'PASS' if ratio >= target else 'FAIL'}: {contender} ({handler}, {mode}) "
                   f"{what} {target} x NetfilterQueue's packets/s: {ratio:.2f} x")
        if mode == "live":
            # With a whole CPU each, packets/s would go as 1 / CPU per verdict: the same
            # target where other programs' share of CPU 1 and the sender's limit do not count.
            ratio = statistics.median(1 / r for r in ratios(mine, reference, "cpu_us"))
            out.append(f"{'PASS' if ratio >= target else 'FAIL'}: {contender} ({handler}, live) "
                       f"at equal CPU (NetfilterQueue's CPU per verdict / its own) "
                       f">= {target} x: {ratio:.2f} x")
    bound = sorted({f"{r.contender} ({r.handler})" for r in runs
                    if r.mode == "live" and r.offered < SATURATED})
    if any(r.mode == "live" for r in runs):
        out.append(f"{'PASS' if not bound else 'NOTE'}: live, the queue was saturated while "
                   f"measured (at least {SATURATED} x the packets answered reached it)"
                   + (f", except in runs of {', '.join(bound)}: there the sender was the limit, "
                      "their verdicts/s are lower bounds" if bound else ""))
    unaccounted = [r for r in runs if r.accepted != r.verdicts or r.fail_open]
    out.append(f"{'PASS' if not unaccounted else 'FAIL'}: in every run the DROP rule after the "
               f"queue counted exactly the verdicts, and nothing was accepted fail-open"
               + "".join(f"; {r.contender} {r.handler} {r.mode}: {r.accepted} vs {r.verdicts}, "
                         f"fail-open {r.fail_open}" for r in unaccounted))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds before measuring")
    parser.add_argument("--repeat", type=int, default=5, help="runs per contender and handler")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--handlers", default=",".join(HANDLERS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="only print the table")
    parser.add_argument("--patience", type=float, default=5.0,
                        help="seconds to wait before each run for other programs to go idle")
    args = parser.parse_args()
    reason = unavailable_reason() or netfilterqueue_missing()
    if reason:
        print(f"nfqueue_bench: cannot run: {reason}", file=sys.stderr)
        return 2
    contenders = args.contenders.split(",")
    handlers = args.handlers.split(",")
    modes = args.modes.split(",")
    command = shlex.join(["python", "bench/nfqueue_bench.py", *sys.argv[1:]])
    started = time.monotonic()
    runs: list[Run] = []
    with Lab() as lab:
        lab.ping(lab.a, str(lab.b.ip4))  # resolve the neighbour first
        for repeat in range(args.repeat):
            # rotate who goes first, so that no one always meets the same neighbours
            turn = repeat % len(contenders)
            for contender, mode, handler in itertools.product(
                contenders[turn:] + contenders[:turn], modes, handlers
            ):
                run = run_one(lab, mode, contender, handler, args.seconds, args.warmup,
                              args.patience)
                runs.append(run)
                print(f"#{repeat + 1} {contender} {handler} {mode}: {run.pps:,.0f} verdicts/s, "
                      f"{run.cpu_us:.2f} µs CPU/verdict ({run.sys_us:.2f} sys, CPU share "
                      f"{100 * run.cpu_share:.0f} %), offered "
                      f"{run.offered:.2f} x; sent {run.sent:,} at {run.sender_pps:,.0f}/s, "
                      f"verdicts {run.verdicts:,}, queue full {run.queue_dropped:,}, "
                      f"socket full {run.user_dropped:,}, fail-open {run.fail_open} "
                      f"(other load before: {100 * run.load:.0f} %)", file=sys.stderr)
    section = (f"{environment(command)}* nfkit at {nfkit_commit()}, NetfilterQueue "
               f"{netfilterqueue_version()}\n"
               f"* {len(contenders)} consumers x {len(handlers)} handlers x {len(modes)} modes, "
               f"{args.repeat} run(s) each; live: {args.seconds:g} s measured after "
               f"{args.warmup:g} s; drain: {QUEUE_SIZES['drain'][0]:,} packets at most; "
               f"took {time.monotonic() - started:.0f} s\n\n{table(runs)}\n\n"
               + "".join(f"* {v}\n" for v in verdicts(runs)))
    print(section)
    if not args.no_write:
        write_section(args.output, "nfqueue_bench", section, heading="NFQUEUE")
        print(f"written to {args.output}", file=sys.stderr)
    return 0


def netfilterqueue_version() -> str:
    from importlib.metadata import version

    return version("NetfilterQueue")


def netfilterqueue_missing() -> str | None:
    try:
        import netfilterqueue  # noqa: F401
    except ImportError:
        return "the NetfilterQueue package is missing (make bench-queue installs it)"
    return None


def entry() -> int:
    if sys.argv[1:2] == ["send"]:
        ifname, src_mac, dst_mac, src, dst, seconds = sys.argv[2:8]
        result = blast(ifname, tcp_frames(src_mac, dst_mac, src, dst, FRAMES), float(seconds))
        print(json.dumps(result), flush=True)
        return 0
    if sys.argv[1:2] == ["consume"]:
        CONSUMERS[sys.argv[2]](sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return 0
    return main()


if __name__ == "__main__":
    sys.exit(entry())
