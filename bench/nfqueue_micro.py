"""CPU cost of the NFQUEUE hot path per packet, without NFQUEUE.

A :class:`nfkit.nfqueue.Server` serves a queue whose netlink socket is a unix
datagram socket pair: the setup's requests are acked through it, then it is
filled with packet messages shaped like those of ``bench/nfqueue_bench.py``
(raw PREROUTING, a TCP segment with 64 payload bytes: PACKET_HDR,
IFINDEX_INDEV, HWADDR, SKB_INFO, PAYLOAD) and the server drains them; its
verdict datagrams are counted, not sent. Reported: the process's user and
system CPU time per packet while draining (getrusage, so other programs on
the machine hardly matter): user is nfkit's Python (take the datagram, build
the packet, call the handler, collect and encode the verdict), system the
receive system calls on a unix socket (cheaper than netlink's, but they
scale the same way with the number of calls). On a busy machine CPU times
vary by tens of percent from run to run; ``--instructions`` counts the
user-space instructions per packet under valgrind instead, which hardly vary.

    python bench/nfqueue_micro.py [--packets N] [--repeat N] [--handlers accept,dport]
                                  [--batch | --no-batch] [--instructions]
"""

from __future__ import annotations

import argparse
import resource
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / "src")]

from nfkit.netlink.codec import Message, attr, attr_be32, nfgenmsg, parse_messages  # noqa: E402
from nfkit.netlink.socket import NetlinkSocket  # noqa: E402
from nfkit.netlink.testing import ack  # noqa: E402
from nfkit.nfqueue import ACCEPT, DROP, Queue, QueuedPacket, Server, Verdict, const  # noqa: E402
from nfkit.packet.build import build_ipv4, build_tcp  # noqa: E402

PORT = 9
SRC, DST = "192.0.2.1", "192.0.2.2"
SO_SNDBUFFORCE = 32


def packet_message(packet_id: int) -> bytes:
    """What the kernel sends for one of the bench's segments (attributes in its order)."""
    segment = build_tcp(20000 + packet_id % 512, PORT, 1, 1, 0x10, 1024, bytes(64), SRC, DST)
    payload = build_ipv4(SRC, DST, 6, segment)
    body = (
        nfgenmsg(2, 0)
        + attr(const.ATTR_PACKET_HDR, struct.pack("!IHB", packet_id, 0x0800, 0))
        + attr_be32(const.ATTR_IFINDEX_INDEV, 5)
        + attr(const.ATTR_HWADDR, struct.pack("!H2x", 6) + bytes.fromhex("fa87baad9b1c0000"))
        + attr_be32(const.ATTR_SKB_INFO, 4)
        + attr(const.ATTR_PAYLOAD, payload)[: 4 + len(payload)]  # the last one is not padded
    )
    return Message(const.MSG_PACKET, 0, payload=body).encode()


class UnixNetlink(NetlinkSocket):
    """A NetlinkSocket over one end of a unix datagram pair; ``kernel`` is the other end."""

    def __init__(self) -> None:  # no super().__init__: it opens a netlink socket
        self._sock, self.kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.kernel.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 1 << 30)
        self.protocol = 0
        self.portid = 4242
        self._buffer = bytearray(1 << 17)
        self._view = memoryview(self._buffer)
        self.set_receive_timeout(0.001)
        self.on_verdicts: Callable[[], None] = lambda: None

    def send(self, data: bytes) -> None:
        """Ack the setup's requests; tell about verdicts."""
        if struct.unpack_from("=H", data, 4)[0] == const.MSG_CONFIG:
            for request in parse_messages(data):
                request.pid = self.portid
                self.kernel.send(ack(request).encode())
        else:
            self.on_verdicts()


def accept(packet: QueuedPacket) -> Verdict:
    return ACCEPT


def dport(packet: QueuedPacket) -> Verdict:
    ports = packet.ports
    return ACCEPT if ports is None or ports[0] != 6 or ports[2] == PORT else DROP


#: "default": no handler of one's own (the Server accepts every packet).
HANDLERS: dict[str, Callable[[QueuedPacket], Verdict] | None] = {
    "accept": accept,
    "dport": dport,
    "default": None,
}


def drain(
    datagrams: list[bytes], handler: Callable[[QueuedPacket], Verdict] | None, batch: bool
) -> tuple[float, float]:
    """User and system CPU seconds of one Server.run() over ``datagrams``."""
    sock = UnixNetlink()
    queue = Queue(0, transport=sock, batch_verdicts=batch)
    for datagram in datagrams:
        sock.kernel.send(datagram)
    server = Server(queue, handler)

    def stop_when_drained() -> None:
        if queue.stats.received == len(datagrams) and not queue.waiting:
            server.stop()

    sock.on_verdicts = stop_when_drained
    before = resource.getrusage(resource.RUSAGE_SELF)
    counted(server.run)
    after = resource.getrusage(resource.RUSAGE_SELF)
    assert queue.stats.received == len(datagrams) and queue.waiting == 0, queue.stats
    queue.close()
    sock.kernel.close()
    return after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


def counted(function: Callable[[], None]) -> None:
    """Call ``function`` through ``sorted``: ``valgrind --tool=callgrind
    --toggle-collect=builtin_sorted`` then counts its instructions and nothing else."""

    def key(_item: int) -> int:
        function()
        return 0

    sorted((0,), key=key)


def instructions(args: argparse.Namespace) -> None:
    """Instructions per packet under callgrind (steady where CPU time is not)."""
    for name in args.handlers.split(","):
        for batch in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "callgrind.out"
                subprocess.run(
                    ["valgrind", "--tool=callgrind", "--collect-atstart=no",
                     "--toggle-collect=builtin_sorted", f"--callgrind-out-file={out}",
                     sys.executable, __file__, "--packets", str(args.packets), "--repeat", "1",
                     "--handlers", name, "--batch" if batch else "--no-batch"],
                    check=True, capture_output=True,
                )  # fmt: skip
                totals = next(line for line in out.read_text().splitlines()
                              if line.startswith("totals:"))  # fmt: skip
            per_packet = int(totals.split()[1]) / args.packets
            print(
                f"{name + (' batch' if batch else ''):14} {per_packet:10,.0f} instructions/packet"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--handlers", default="accept,dport", help=f"of {', '.join(HANDLERS)}")
    parser.add_argument("--batch", action=argparse.BooleanOptionalAction, default=None,
                        help="only with (or without) VERDICT_BATCH")  # fmt: skip
    parser.add_argument("--instructions", action="store_true",
                        help="count user-space instructions per packet (valgrind)")  # fmt: skip
    args = parser.parse_args()
    if args.instructions:
        instructions(args)
        return 0
    datagrams = [packet_message(i) for i in range(1, args.packets + 1)]
    print(
        f"{'handler':14} {'user µs/packet':>22} {'system µs/packet':>22}   (min, median of "
        f"{args.repeat} x {args.packets:,} packets)"
    )
    for name in args.handlers.split(","):
        for batch in (False, True) if args.batch is None else (args.batch,):
            runs = [drain(datagrams, HANDLERS[name], batch) for _ in range(args.repeat)]
            user = [u / args.packets * 1e6 for u, _s in runs]
            system = [s / args.packets * 1e6 for _u, s in runs]
            print(
                f"{name + (' batch' if batch else ''):14} {min(user):10.3f} "
                f"{statistics.median(user):10.3f}  {min(system):10.3f} "
                f"{statistics.median(system):10.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
