"""CPU cost of the logd hot path per packet, without the kernel.

Builds the benchmark stack (NFLOG -> BASE -> IFINDEX -> IP2STR -> PRINTPKT ->
LOGEMU) from a config, replaces the NFLOG socket with synthetic datagrams
shaped like the kernel's (INPUT hook, Ethernet header, timestamp, 64-byte UDP
payload, 64 packets per datagram) and times the whole path, then the parser and
each plugin on their own.

    python bench/pipeline_micro.py [--packets N] [--repeat N] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import struct
import tempfile
import time
from collections.abc import Callable

from nfkit import nflog
from nfkit.logd.config import ConfigFile
from nfkit.logd.engine import Pipeline, Stack
from nfkit.logd.keys import Event
from nfkit.logd.loop import EventLoop
from nfkit.logd.plugin import Context
from nfkit.logd.plugins.nflog import NFLOG, GroupReader
from nfkit.netlink.codec import Message, attr, attr_be32, nfgenmsg
from nfkit.packet.build import build_ipv4, build_udp

CONFIG = """[global]
stack=log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,print1:PRINTPKT,emu1:LOGEMU
[log1]
group=1
[emu1]
file="{path}"
"""


def datagram(count: int = 64) -> bytes:
    src, dst = "192.0.2.1", "192.0.2.2"
    packet = build_ipv4(src, dst, 17, build_udp(40000, 5000, b"x" * 36, src, dst))
    head = (
        nfgenmsg(2, 1)
        + attr(nflog.ATTR_PACKET_HDR, struct.pack("!HBx", 0x0800, 1))
        + attr(nflog.ATTR_PREFIX, b"bench \0")
        + attr_be32(nflog.ATTR_IFINDEX_INDEV, 1)
        + attr(nflog.ATTR_HWADDR, struct.pack("!HH", 6, 0) + bytes(range(6)) + b"\0\0")
        + attr(nflog.ATTR_HWTYPE, struct.pack("!H", 1))
        + attr(nflog.ATTR_HWLEN, struct.pack("!H", 14))
        + attr(nflog.ATTR_HWHEADER, bytes(range(12)) + b"\x08\x00")
        + attr(nflog.ATTR_TIMESTAMP, struct.pack("!QQ", int(time.time()), 123456))
    )
    # The kernel numbers the packets of a group one by one.
    return b"".join(
        Message(
            nflog.MSG_PACKET,
            0,
            0,
            0,
            head + attr_be32(nflog.ATTR_SEQ, seq) + attr(nflog.ATTR_PAYLOAD, packet),
        ).encode()
        for seq in range(count)
    )


class FakeSocket:
    """Stands in for NetlinkSocket inside the group reader: hands out datagrams."""

    def __init__(self, data: bytes, batches: int) -> None:
        self.data = data
        self.left = batches

    def recv(self) -> bytes:
        if self.left == 0:
            raise BlockingIOError
        self.left -= 1
        return self.data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=64 * 2000)
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best and median shown")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "out.log")
        config = ConfigFile("bench.conf", CONFIG.format(path=path))
        context = Context(EventLoop())
        pipeline = Pipeline(config, context)
        for stack in pipeline.stacks:
            for plugin in reversed(stack.elements[1:]):
                plugin.start()
            stack.input.attach(stack.run, pipeline.wanted_keys(stack))
        reader = nflog_reader(pipeline, context)
        data = datagram()
        batches = args.packets // 64
        # Before the whole-stack runs: writeback of their output slows later writes down.
        stages, stage_lines = stage_costs(reader, pipeline.stacks[0], data, args.repeat)
        profiler = cProfile.Profile() if args.profile else None
        costs = []
        for _ in range(1 if profiler else args.repeat):
            fake = FakeSocket(data, batches)
            reader.sock = type("FakeNflogSocket", (), {"sock": fake})()
            cpu = time.process_time()
            if profiler:
                profiler.enable()
            while fake.left:
                reader.on_readable()
            if profiler:
                profiler.disable()
            costs.append((time.process_time() - cpu) / (batches * 64) * 1e6)
        for plugin in pipeline.instances():
            plugin.stop()  # flushes LOGEMU
        with open(path) as fh:
            lines = sum(1 for _ in fh)
        assert lines == batches * 64 * len(costs) + stage_lines, f"{lines} lines logged"
        print(
            f"{batches * 64} packets x {len(costs)} runs: {min(costs):.2f} us CPU per packet "
            f"(whole stack; best run, median {statistics.median(costs):.2f})"
        )
        print(
            f"per stage (best of {args.repeat}): "
            + ", ".join(f"{name} {cost:.2f}" for name, cost in stages)
        )
        if profiler:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def stage_costs(
    reader: GroupReader, stack: Stack, data: bytes, repeat: int, rounds: int = 300
) -> tuple[list[tuple[str, float]], int]:
    """us per packet of the NFLOG parser and of each plugin; and the lines it logged.

    Each plugin's cost is the stack's cost up to it minus the cost up to the
    one before, on fresh copies of one datagram's events.
    """
    parse = reader.parser.parse
    events, _ = parse(data)

    def best(work: Callable[[], object]) -> float:
        times = []
        for _ in range(repeat):
            cpu = time.process_time()
            for _ in range(rounds):
                work()
            times.append(time.process_time() - cpu)
        return min(times) / (rounds * len(events)) * 1e6

    def through(steps: list[Callable[..., list[Event]]]) -> None:
        batch = [dict(event) for event in events]
        for step in steps:
            batch = step(batch, lambda result: None)

    costs = [("NFLOG parse", best(lambda: parse(data)))]
    before = best(lambda: through([]))
    plugins = stack.elements[1:]
    for count, plugin in enumerate(plugins, 1):
        steps = [p.interp_batch for p in plugins[:count]]
        cost = best(lambda steps=steps: through(steps))
        costs.append((f"{plugin.name}", cost - before))
        before = cost
    return costs, repeat * rounds * len(events)


def nflog_reader(pipeline: Pipeline, context: Context) -> GroupReader:
    """A group reader prepared as start() would, minus the kernel socket."""
    reader = GroupReader(1, context)
    for plugin in pipeline.inputs.values():
        assert isinstance(plugin, NFLOG)
        plugin.start()
        reader.subscribe(plugin)
    reader.parser, reader.seq_key = GroupReader.parser_for(reader.subscribers)
    return reader


if __name__ == "__main__":
    main()
