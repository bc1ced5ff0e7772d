"""PCAPREPLAY and the capture files it reads.

Files come from this test (pcap in both byte orders and resolutions, pcapng
with several sections and interfaces), from Wireshark's editcap, from our PCAP
output (link types 101 and 239) and, in the lab, from tcpdump and a live NFLOG
run whose output the replays must reproduce, run as an unprivileged user.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from nfkit import nflog
from nfkit.lab import Lab
from nfkit.logd.errors import ConfigError, StartError
from nfkit.logd.keys import Event
from nfkit.logd.loop import EventLoop, Timer
from nfkit.logd.plugin import Context, Settings
from nfkit.logd.plugins import pcap
from nfkit.logd.plugins.pcapreplay import PCAPREPLAY, Pacer
from nfkit.netlink.errors import DecodeError
from nfkit.packet import build_icmp_echo, build_ipv4, build_ipv6, build_udp
from nfkit.packet.capture import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NFLOG,
    LINKTYPE_RAW,
    PCAP_MAGIC,
    PCAP_MAGIC_NANOSECONDS,
    CaptureError,
    Record,
    decode_nflog,
    encode_nflog,
    open_capture,
)

SRC = str(Path(__file__).resolve().parent.parent / "src")
SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
LOG = logging.getLogger("nfkit.test.replay")
SECOND = 1_000_000_000
T0 = 1_700_000_000 * SECOND

# -- packets and files ---------------------------------------------------------------------


def udp4(sport: int = 1000, payload: bytes = b"hello") -> bytes:
    return build_ipv4(
        "192.0.2.1", "192.0.2.2", 17, build_udp(sport, 53, payload, "192.0.2.1", "192.0.2.2")
    )


def udp6(sport: int = 2000) -> bytes:
    src, dst = "2001:db8::1", "2001:db8::2"
    return build_ipv6(src, dst, 17, build_udp(sport, 53, b"six", src, dst))


def ping4() -> bytes:
    return build_ipv4("198.51.100.1", "198.51.100.2", 1, build_icmp_echo(7, 1, b"ping"))


DST_MAC, SRC_MAC = bytes.fromhex("020000000002"), bytes.fromhex("020000000001")


def ether(packet: bytes, ethertype: int = 0x0800, vlan: int | None = None) -> bytes:
    tag = b"" if vlan is None else struct.pack("!HH", 0x8100, vlan)
    return DST_MAC + SRC_MAC + tag + struct.pack("!H", ethertype) + packet


def pcap_bytes(
    packets: list[tuple[int, bytes]],
    linktype: int = LINKTYPE_RAW,
    byteorder: str = "little",
    nanoseconds: bool = False,
) -> bytes:
    """A classic pcap file of ``(time_ns, data)`` records."""
    order = "<" if byteorder == "little" else ">"
    magic = PCAP_MAGIC_NANOSECONDS if nanoseconds else PCAP_MAGIC
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)]
    for time_ns, data in packets:
        sec, fraction = divmod(time_ns, SECOND)
        fraction = fraction if nanoseconds else fraction // 1000
        out.append(struct.pack(order + "IIII", sec, fraction, len(data), len(data) + 3) + data)
    return b"".join(out)


class Pcapng:
    """A pcapng file built block by block."""

    def __init__(self, byteorder: str = "little") -> None:
        self.parts: list[bytes] = []
        self.section(byteorder)

    def block(self, kind: int, body: bytes) -> Pcapng:
        body += bytes(-len(body) % 4)
        total = len(body) + 12
        self.parts.append(
            struct.pack(self.e + "II", kind, total) + body + struct.pack(self.e + "I", total)
        )
        return self

    def section(self, byteorder: str) -> Pcapng:
        self.e = "<" if byteorder == "little" else ">"
        option = self.option(4, b"nfkit test")  # shb_userappl
        return self.block(0x0A0D0D0A, struct.pack(self.e + "IHHq", 0x1A2B3C4D, 1, 0, -1) + option)

    def option(self, code: int, value: bytes) -> bytes:
        return struct.pack(self.e + "HH", code, len(value)) + value + bytes(-len(value) % 4)

    def interface(self, linktype: int, snaplen: int = 0, *options: tuple[int, bytes]) -> Pcapng:
        body = struct.pack(self.e + "HHI", linktype, 0, snaplen)
        body += b"".join(self.option(code, value) for code, value in options)
        return self.block(1, body + bytes(4))

    def enhanced(self, interface: int, units: int, data: bytes) -> Pcapng:
        head = struct.pack(self.e + "IIIII", interface, units >> 32, units & 0xFFFFFFFF,
                           len(data), len(data))  # fmt: skip
        return self.block(6, head + data)

    def obsolete(self, interface: int, units: int, data: bytes) -> Pcapng:
        head = struct.pack(self.e + "HHIIII", interface, 0, units >> 32, units & 0xFFFFFFFF,
                           len(data), len(data))  # fmt: skip
        return self.block(2, head + data)

    def simple(self, data: bytes) -> Pcapng:
        return self.block(3, struct.pack(self.e + "I", len(data)) + data)

    def bytes(self) -> bytes:
        return b"".join(self.parts)


def read_all(path: Path) -> tuple[list[Record], list[tuple[int, str]]]:
    problems: list[tuple[int, str]] = []
    reader = open_capture(str(path), lambda offset, what: problems.append((offset, what)))
    try:
        return list(reader.records()), problems
    finally:
        reader.close()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# -- reading the formats ---------------------------------------------------------------------


@pytest.mark.parametrize("byteorder", ["little", "big"])
@pytest.mark.parametrize("nanoseconds", [False, True])
def test_classic_pcap_in_both_byte_orders_and_resolutions(
    tmp_path: Path, byteorder: str, nanoseconds: bool
) -> None:
    packets = [(T0 + 123_456_789, udp4()), (T0 + 2 * SECOND, udp6())]
    path = write(tmp_path, "x.pcap", pcap_bytes(packets, LINKTYPE_RAW, byteorder, nanoseconds))
    records, problems = read_all(path)
    assert problems == []
    expected_first = T0 + (123_456_789 if nanoseconds else 123_456_000)
    assert [(r.time_ns, r.data, r.length, r.linktype, r.byteorder) for r in records] == [
        (expected_first, udp4(), len(udp4()) + 3, LINKTYPE_RAW, byteorder),
        (T0 + 2 * SECOND, udp6(), len(udp6()) + 3, LINKTYPE_RAW, byteorder),
    ]
    assert [r.offset for r in records] == [24, 24 + 16 + len(udp4())]


def test_pcapng_sections_interfaces_and_blocks(tmp_path: Path) -> None:
    frame = ether(udp4())
    nflog_record = encode_nflog({"family": 2, "prefix": "ng", "payload": udp4()})
    data = (
        Pcapng("little")
        .interface(LINKTYPE_RAW, 0, (9, b"\x09"), (2, b"raw0"))  # nanoseconds
        .interface(LINKTYPE_ETHERNET, 0, (9, b"\x94"), (14, struct.pack("<q", 10)))  # 2^-20 s
        .block(4, b"\x00" * 8)  # name resolution: stepped over
        .enhanced(0, T0 + 5, udp4())
        .enhanced(1, 3 << 20, frame)  # 3 s after 10 s (if_tsoffset)
        .block(0x0BAD, b"garbage!")  # unknown type: stepped over
        .obsolete(0, T0 + 7, udp6())
        .simple(udp4(sport=9))
        .block(5, bytes(20))  # interface statistics
        .section("big")  # interfaces start again, in the other byte order
        .interface(LINKTYPE_NFLOG, 0)
        .enhanced(0, (T0 // 1000) + 1, nflog_record)  # microseconds
        .bytes()
    )
    path = write(tmp_path, "x.pcapng", data)
    records, problems = read_all(path)
    assert problems == []
    assert [(r.linktype, r.interface, r.time_ns, r.data, r.byteorder) for r in records] == [
        (LINKTYPE_RAW, 0, T0 + 5, udp4(), "little"),
        (LINKTYPE_ETHERNET, 1, 13 * SECOND, frame, "little"),
        (LINKTYPE_RAW, 0, T0 + 7, udp6(), "little"),
        (LINKTYPE_RAW, 0, None, udp4(sport=9), "little"),
        (LINKTYPE_NFLOG, 0, T0 + 1000, nflog_record, "big"),
    ]
    reader = open_capture(str(path))
    list(reader.records())
    assert (reader.format, reader.problems, reader.other_blocks) == ("pcapng", 0, 3)
    reader.close()


@pytest.mark.skipif(shutil.which("editcap") is None, reason="editcap (Wireshark) missing")
@pytest.mark.parametrize("kind", ["pcapng", "nsecpcap", "pcap"])
def test_files_written_by_editcap(tmp_path: Path, kind: str) -> None:
    packets = [(T0 + i * 250_000_000, udp4(sport=1000 + i)) for i in range(4)]
    source = write(tmp_path, "in.pcap", pcap_bytes(packets))
    converted = tmp_path / f"out.{kind}"
    subprocess.run(["editcap", "-F", kind, str(source), str(converted)], check=True, timeout=60)
    records, problems = read_all(converted)
    assert problems == []
    assert [(r.time_ns, r.data, r.linktype) for r in records] == [
        (t, p, LINKTYPE_RAW) for t, p in packets
    ]


def test_nflog_records_round_trip_in_both_byte_orders() -> None:
    fields = {
        "family": 10, "group": 3, "hw_protocol": 0x86DD, "hook": 1, "prefix": "x y",
        "indev": 4, "outdev": 5, "mark": 0x2A, "hwaddr": SRC_MAC, "hwtype": 1, "hwlen": 14,
        "hwheader": ether(b"", 0x86DD), "ts_sec": 1_700_000_000, "ts_usec": 999_999,
        "uid": 1000, "gid": 100, "seq": 7, "seq_global": 9, "payload": udp6(),
    }  # fmt: skip
    native = encode_nflog(fields)
    other: Literal["little", "big"] = "big" if sys.byteorder == "little" else "little"
    swapped = _swap_tlv_headers(native)
    for data, order in ((native, sys.byteorder), (swapped, other)):
        got = nflog.packet_fields(decode_nflog(data, order))
        assert got == {**fields, "payload_len": len(udp6())}


def _swap_tlv_headers(record: bytes) -> bytes:
    """``record`` as a host of the other byte order writes it."""
    other = "<" if sys.byteorder == "big" else ">"
    out, start = [record[:4]], 4
    while start < len(record):
        length, kind = struct.unpack_from("=HH", record, start)
        padded = (length + 3) & ~3
        out.append(struct.pack(other + "HH", length, kind) + record[start + 4 : start + padded])
        start += padded
    return b"".join(out)


def test_nflog_record_cut_by_the_snapshot_keeps_the_payload_start() -> None:
    full = udp4(payload=b"x" * 100)
    record = encode_nflog({"family": 2, "prefix": "cut", "payload": full})
    packet = decode_nflog(record[:-60], sys.byteorder)
    assert (packet.prefix, packet.payload) == ("cut", full[:-60])
    in_prefix = decode_nflog(record[:10], sys.byteorder)
    assert (in_prefix.family, in_prefix.prefix, in_prefix.payload) == (2, None, None)
    with pytest.raises(DecodeError):
        decode_nflog(b"\x02\x01\x00\x00", sys.byteorder)  # version 1


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark missing")
def test_pcap_output_nflog_records_read_by_tshark(tmp_path: Path) -> None:
    path = tmp_path / "out.pcap"
    output = pcap_output(path, linktype=239)
    event = live_like_event(udp4(), prefix="tshark sees", mark=0x2A, indev=3, uid=1000)
    output.interp(event)
    output.stop()
    fields = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "nflog.prefix", "-e", "nflog.hook",
         "-e", "nflog.ifindex_indev", "-e", "nflog.uid", "-e", "ip.src", "-e", "udp.srcport",
         "-e", "frame.time_epoch"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.rstrip("\n").split("\t")  # fmt: skip
    assert fields == [
        "tshark sees", "1", "3", "1000", "192.0.2.1", "1000", "1700000000.250000000",
    ]  # fmt: skip


# -- the plugin, on a fake event loop ---------------------------------------------------------


class FakeLoop:
    """Timers on a fake clock: run() jumps from one due timer to the next."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[Timer] = []
        self.stopped = False

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(self.now + delay, callback, None)
        self.timers.append(timer)
        return timer

    def run(self, limit: int = 10_000) -> None:
        for _ in range(limit):
            live = [t for t in self.timers if not t.cancelled]
            if not live or self.stopped:
                return
            timer = min(live, key=lambda t: t.when)
            self.timers.remove(timer)
            self.now = max(self.now, timer.when)
            timer.callback()
        raise AssertionError("the replay never ended")

    def stop(self) -> None:
        self.stopped = True


def replay_plugin(path: Path, context: Context, instance: str = "r1", **values: Any) -> PCAPREPLAY:
    settings = {o.name: o.default for o in PCAPREPLAY.options} | {"file": str(path)} | values
    plugin = PCAPREPLAY(instance, Settings(instance, settings, {}), context)
    plugin.configure([])
    return plugin


def replay(
    path: Path, wanted: set[str] | None = None, **values: Any
) -> tuple[list[tuple[float, list[Event]]], PCAPREPLAY, FakeLoop]:
    """Replay ``path`` on a fake loop; the batches with the fake time each arrived."""
    loop = FakeLoop()
    plugin = replay_plugin(path, Context(loop, LOG), **values)
    plugin.clock = lambda: loop.now
    batches: list[tuple[float, list[Event]]] = []
    plugin.attach(lambda events: batches.append((loop.now, events)), wanted)
    plugin.start()
    plugin.activate()
    loop.run()
    plugin.stop()
    return batches, plugin, loop


def events_of(path: Path, wanted: set[str] | None = None, **values: Any) -> list[Event]:
    batches, _, _ = replay(path, wanted, **values)
    return [event for _, batch in batches for event in batch]


COMMON = {"raw.pktcount": 1, "raw.label": 0, "oob.mark": 0, "oob.time.sec": 1_700_000_000,
          "oob.time.usec": 250_000}  # fmt: skip


def single(tmp_path: Path, linktype: int, data: bytes) -> Event:
    path = write(tmp_path, "one.pcap", pcap_bytes([(T0 + 250_000_000, data)], linktype))
    (event,) = events_of(path, wanted=None)
    return event


def test_ethernet_frames_give_the_mac_header_and_family(tmp_path: Path) -> None:
    event = single(tmp_path, LINKTYPE_ETHERNET, ether(udp4()))
    assert event == {
        **COMMON, "raw.pkt": udp4(), "raw.pktlen": len(udp4()), "oob.family": 2,
        "oob.protocol": 0x0800, "raw.mac": ether(b""), "raw.mac_len": 14, "raw.type": 1,
        "raw.mac.saddr": SRC_MAC, "raw.mac.addrlen": 6, "raw": event["raw"],
    }  # fmt: skip
    assert isinstance(event["raw"], nflog.LogPacket) and event["raw"].payload == udp4()
    tagged = single(tmp_path, LINKTYPE_ETHERNET, ether(udp6(), 0x86DD, vlan=5))
    assert (tagged["oob.family"], tagged["oob.protocol"], tagged["raw.mac_len"]) == (10, 0x86DD, 18)
    assert tagged["raw.pkt"] == udp6()
    arp = single(tmp_path, LINKTYPE_ETHERNET, ether(bytes(28), 0x0806))
    assert (arp["oob.family"], arp["oob.protocol"]) == (7, 0x0806)  # as a bridge rule logs it


@pytest.mark.parametrize(
    ("linktype", "packet", "family", "protocol"),
    [
        (LINKTYPE_RAW, udp4(), 2, 0x0800),
        (LINKTYPE_RAW, udp6(), 10, 0x86DD),
        (LINKTYPE_IPV4, ping4(), 2, 0x0800),
        (LINKTYPE_IPV6, udp6(), 10, 0x86DD),
    ],
)
def test_raw_ip(tmp_path: Path, linktype: int, packet: bytes, family: int, protocol: int) -> None:
    event = single(tmp_path, linktype, packet)
    assert {k: v for k, v in event.items() if k != "raw"} == {
        **COMMON, "raw.pkt": packet, "raw.pktlen": len(packet), "oob.family": family,
        "oob.protocol": protocol,
    }  # fmt: skip


def test_linux_cooked_captures(tmp_path: Path) -> None:
    v1 = struct.pack("!HHH8sH", 0, 1, 6, SRC_MAC, 0x0800) + udp4()
    event = single(tmp_path, LINKTYPE_LINUX_SLL, v1)
    assert (event["raw.type"], event["raw.mac.saddr"], event["oob.protocol"]) == (1, SRC_MAC, 0x800)
    assert event["raw.pkt"] == udp4() and "raw.mac" not in event and "oob.ifindex_in" not in event
    for direction, key in ((0, "oob.ifindex_in"), (4, "oob.ifindex_out")):
        v2 = struct.pack("!HHIHBB8s", 0x86DD, 0, 7, 1, direction, 6, SRC_MAC) + udp6()
        event = single(tmp_path, LINKTYPE_LINUX_SLL2, v2)
        assert event[key] == 7 and event["oob.family"] == 10 and event["raw.pkt"] == udp6()


def test_nflog_records_give_every_attribute(tmp_path: Path) -> None:
    record = encode_nflog({
        "family": 2, "hw_protocol": 0x800, "hook": 3, "prefix": "out", "outdev": 9,
        "mark": 0x2A, "uid": 65534, "gid": 65534, "seq": 4, "ts_sec": 1_600_000_000,
        "ts_usec": 7, "payload": udp4(),
    })  # fmt: skip
    event = single(tmp_path, LINKTYPE_NFLOG, record)
    assert {k: v for k, v in event.items() if k != "raw"} == {
        **COMMON, "raw.pkt": udp4(), "raw.pktlen": len(udp4()), "oob.family": 2,
        "oob.protocol": 0x800, "oob.hook": 3, "oob.prefix": "out", "oob.ifindex_out": 9,
        "oob.mark": 0x2A, "oob.uid": 65534, "oob.gid": 65534, "oob.seq.local": 4,
        "oob.time.sec": 1_600_000_000, "oob.time.usec": 7,  # the kernel's, not the record's
    }  # fmt: skip
    for no_time in (
        {"family": 2, "payload": udp4()},
        {"family": 2, "payload": udp4(), "ts_sec": 0, "ts_usec": 5},  # "none"
        {"family": 2, "payload": udp4(), "ts_sec": 2**40, "ts_usec": 5},  # garbage
        {"family": 2, "payload": udp4(), "ts_sec": 1, "ts_usec": 2**40},
    ):
        event = single(tmp_path, LINKTYPE_NFLOG, encode_nflog(no_time))
        assert (event["oob.time.sec"], event["oob.time.usec"]) == (1_700_000_000, 250_000)


def test_only_wanted_keys_are_made(tmp_path: Path) -> None:
    path = write(tmp_path, "e.pcap", pcap_bytes([(T0, ether(udp4()))], LINKTYPE_ETHERNET))
    (event,) = events_of(path, wanted={"raw.pkt", "oob.prefix"})
    # NFLOG's always-present keys stay (BASE, PCAP and checks need them).
    assert set(event) == {"raw.pkt", "raw.pktlen", "oob.family", "oob.time.sec",
                          "oob.time.usec", "oob.mark"}  # fmt: skip


# -- timing ------------------------------------------------------------------------------------


def timed_capture(tmp_path: Path) -> Path:
    # Recorded at 0, 1, 1, 3 and 2.5 s (the last one out of order).
    times = [0.0, 1.0, 1.0, 3.0, 2.5]
    packets = [(T0 + int(t * SECOND), udp4(sport=1000 + i)) for i, t in enumerate(times)]
    return write(tmp_path, "timed.pcap", pcap_bytes(packets))


def ports(events: list[Event]) -> list[int]:
    return [struct.unpack_from("!H", e["raw.pkt"], 20)[0] for e in events]


@pytest.mark.parametrize(("speed", "arrivals"), [
    ("1", [0.0, 1.0, 3.0]),
    ("2", [0.0, 0.5, 1.5]),
    ("0.5", [0.0, 2.0, 6.0]),
])  # fmt: skip
def test_recorded_speed_keeps_the_gaps_divided_by_the_factor(
    tmp_path: Path, speed: str, arrivals: list[float]
) -> None:
    batches, _, loop = replay(timed_capture(tmp_path), speed=speed)
    start = batches[0][0]
    got = [(round(at - start, 6), ports(events)) for at, events in batches]
    # Packets due together come in one batch; one recorded earlier than its
    # predecessor comes at once, after it (file order is kept).
    assert got == [
        (arrivals[0], [1000]),
        (arrivals[1], [1001, 1002]),
        (arrivals[2], [1003, 1004]),
    ]
    assert loop.stopped  # exit_when_done


def test_fast_mode_delivers_everything_at_once_in_file_order(tmp_path: Path) -> None:
    batches, plugin, _ = replay(timed_capture(tmp_path), speed="0")
    assert [(at, ports(events)) for at, events in batches] == [
        (100.0, [1000, 1001, 1002, 1003, 1004])
    ]
    assert plugin.progress.statistics()["received"] == 5


def test_fast_mode_yields_to_the_loop_between_batches(tmp_path: Path) -> None:
    packets = [(T0 + i, udp4(sport=i)) for i in range(600)]
    batches, _, _ = replay(write(tmp_path, "many.pcap", pcap_bytes(packets)))
    assert [len(events) for _, events in batches] == [256, 256, 88]
    assert [p for _, events in batches for p in ports(events)] == list(range(600))


def test_pacer_with_a_fake_clock() -> None:
    clock = [50.0]
    pacer = Pacer(4.0, lambda: clock[0])
    assert pacer.wait(T0) == 0.0
    assert pacer.wait(T0 + 2 * SECOND) == pytest.approx(0.5)
    clock[0] = 50.4
    assert pacer.wait(T0 + 2 * SECOND) == pytest.approx(0.1)
    assert pacer.wait(None) == 0.0  # no timestamp: now
    assert pacer.wait(T0 - SECOND) < 0  # earlier than the first: now


def test_daemon_exits_only_when_every_replay_is_done(tmp_path: Path) -> None:
    loop = FakeLoop()
    context = Context(loop, LOG)
    short = write(tmp_path, "short.pcap", pcap_bytes([(T0, udp4())]))
    long = write(tmp_path, "long.pcap", pcap_bytes([(T0, udp4()), (T0 + 10 * SECOND, udp4())]))
    first = replay_plugin(short, context, "r1")
    second = replay_plugin(long, context, "r2", speed="1", exit_when_done=0)
    finished: list[tuple[str, float]] = []
    for plugin in (first, second):
        plugin.clock = lambda: loop.now
        plugin.attach(lambda events, p=plugin: finished.append((p.id, loop.now)), None)
        plugin.start()
    for plugin in (first, second):
        plugin.activate()
    loop.run()
    # r1 asked for the exit, but r2 was still replaying: the loop stopped after r2.
    assert loop.stopped and finished[-1] == ("r2", 110.0)


# -- the event loop behaviours replays rely on ------------------------------------------------


def test_a_timer_that_stops_the_loop_ends_it_at_once() -> None:
    loop = EventLoop()
    loop.call_later(3600, lambda: None)  # e.g. the statistics timer
    loop.call_later(0, loop.stop)
    runner = threading.Thread(target=loop.run, daemon=True)
    runner.start()
    runner.join(timeout=30)
    assert not runner.is_alive()
    loop.close()


def test_the_wait_for_the_next_timer_counts_from_after_the_callbacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr("nfkit.logd.loop.time.monotonic", lambda: clock[0])
    loop = EventLoop()

    def slow_step() -> None:  # a batch that takes 10 s, then the next one at once
        clock[0] += 10
        loop.call_later(0, slow_step)

    loop.call_later(0, slow_step)
    assert loop._run_timers() == 0.0
    loop.close()


# -- configuration and bad input -------------------------------------------------------------


@pytest.mark.parametrize("speed", ["fast", "-1", "nan", "inf"])
def test_bad_speed_is_a_configuration_error(tmp_path: Path, speed: str) -> None:
    with pytest.raises(ConfigError, match="speed"):
        replay_plugin(tmp_path / "x.pcap", Context(FakeLoop(), LOG), speed=speed)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot open the capture file"),
        (b"", "is empty"),
        (b"GIF89a and more", "is not a pcap or pcapng file (it starts with 47494638)"),
    ],
)
def test_unusable_files_refuse_to_start(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "bad.pcap"
    if content is not None:
        path.write_bytes(content)
    plugin = replay_plugin(path, Context(FakeLoop(), LOG))
    with pytest.raises(StartError, match=re.escape(message)):
        plugin.start()
    with pytest.raises(CaptureError) if content is not None else pytest.raises(OSError):
        open_capture(str(path))


def mixed_capture() -> bytes:
    return (
        Pcapng()
        .interface(LINKTYPE_RAW)
        .interface(147)  # a user link type: skipped
        .enhanced(0, 1, udp4(sport=1))
        .enhanced(1, 2, b"whatever")
        .enhanced(5, 3, udp4())  # no interface 5
        .enhanced(0, 4, b"\x00garbage, not IP")  # undecodable
        .enhanced(0, 5, udp4(sport=2))
        .bytes()
    )


def test_bad_records_are_skipped_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, "mixed.pcapng", mixed_capture())
    with caplog.at_level(logging.DEBUG, LOG.name):
        batches, plugin, loop = replay(path)
    assert [p for _, events in batches for p in ports(events)] == [1, 2]
    assert plugin.progress.statistics() == {
        "received": 2, "undecodable": 1, "unsupported_link_type": 1, "file_problems": 1,
    }  # fmt: skip
    text = caplog.text
    assert f"{path} at offset " in text
    assert "link type 147 (interface 1) is not one PCAPREPLAY reads" in text
    assert "packet of undescribed interface 5: skipped" in text
    assert "packet skipped: too short for its link layer, or not IP" in text
    assert (
        "2 packets replayed (end of file), 1 undecodable, 1 of unsupported link types, "
        "1 file problems" in text
    )
    assert loop.stopped


@pytest.mark.parametrize("kind", ["pcap", "pcapng"])
def test_truncated_anywhere_keeps_what_was_read(tmp_path: Path, kind: str) -> None:
    packets = [(T0 + i, udp4(sport=i)) for i in range(3)]
    if kind == "pcap":
        data = pcap_bytes(packets)
    else:
        builder = Pcapng().interface(LINKTYPE_RAW)
        for t, p in packets:
            builder.enhanced(0, t, p)
        data = builder.bytes()
    complete, _ = read_all(write(tmp_path, "full", data))
    if kind == "pcap":
        ends = {r.offset for r in complete} | {len(data)}
    else:
        ends = set(itertools.accumulate(len(part) for part in builder.parts))
    for size in range(4, len(data)):
        records, problems = read_all(write(tmp_path, "cut", data[:size]))
        assert complete[: len(records)] == records
        assert bool(problems) == (size not in ends)
        if problems:
            assert "truncated" in problems[0][1] and problems[0][0] <= size


def test_impossible_lengths_end_the_file_after_what_was_read(tmp_path: Path) -> None:
    good = pcap_bytes([(T0, udp4(sport=1))])
    oversized = struct.pack("<IIII", 0, 0, 300_000, 300_000)
    records, problems = read_all(write(tmp_path, "big.pcap", good + oversized + bytes(100)))
    assert [r.data for r in records] == [udp4(sport=1)]
    assert problems == [(len(good), "record claims 300000 bytes (at most 262144 are possible): "
                         "the rest of the file cannot be read")]  # fmt: skip
    builder = Pcapng().interface(LINKTYPE_RAW).enhanced(0, 1, udp4(sport=1))
    base, packet_block = builder.bytes(), builder.parts[-1]
    for garbage, what in [
        (struct.pack("<II", 6, 13), "block of type 0x6 claims 13 bytes"),
        (struct.pack("<II", 6, 1 << 30), "block of type 0x6 claims 1073741824 bytes"),
        (struct.pack("<III", 6, 16, 0) + struct.pack("<I", 20), "its trailing length differs"),
        (bytes.fromhex("0a0d0d0a") + struct.pack("<I", 28) + b"\x12\x34\x56\x78", "magic"),
    ]:
        records, problems = read_all(write(tmp_path, "g.pcapng", base + garbage + packet_block))
        assert [r.data for r in records] == [udp4(sport=1)]
        assert len(problems) == 1 and problems[0][0] == len(base) and what in problems[0][1]


def test_packet_longer_than_its_block_is_skipped(tmp_path: Path) -> None:
    builder = Pcapng().interface(LINKTYPE_RAW)
    builder.block(6, struct.pack("<IIIII", 0, 0, 1, 500, 500) + udp4())  # claims 500 bytes
    builder.enhanced(0, 2, udp4(sport=2))
    records, problems = read_all(write(tmp_path, "x.pcapng", builder.bytes()))
    assert [r.data for r in records] == [udp4(sport=2)]
    assert len(problems) == 1 and "packet claims 500 bytes" in problems[0][1]


def test_random_damage_never_raises(tmp_path: Path) -> None:
    nflog_record = encode_nflog({"family": 2, "prefix": "p", "uid": 1, "payload": udp4()})
    samples = [
        pcap_bytes([(T0 + i, ether(udp4(sport=i))) for i in range(4)], LINKTYPE_ETHERNET),
        pcap_bytes([(T0, nflog_record)] * 3, LINKTYPE_NFLOG, "big"),
        mixed_capture(),
        Pcapng()
        .interface(LINKTYPE_NFLOG, 0, (9, b"\x06"), (14, bytes(8)))
        .enhanced(0, 1, nflog_record)
        .simple(udp4())
        .bytes(),
    ]
    rng = random.Random(4)
    path = tmp_path / "damaged"
    for _ in range(300):
        data = bytearray(rng.choice(samples))
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(4, len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data))
        # Every record through the link layers: nothing raises, the events are sane.
        for event in events_of(path):
            assert 0 <= event["oob.time.sec"] < 2**32 and 0 <= event["oob.time.usec"] < 10**6
            assert isinstance(event["raw"], nflog.LogPacket)


# -- the PCAP output's NFLOG records -----------------------------------------------------------


def pcap_output(path: Path, **values: Any) -> pcap.PCAP:
    settings = {o.name: o.default for o in pcap.PCAP.options} | {"file": str(path)} | values
    plugin = pcap.PCAP("p1", Settings("p1", settings, {}), Context(None, LOG))
    plugin.configure([])
    plugin.start()
    return plugin


def live_like_event(packet: bytes, **extra: Any) -> Event:
    """An event as NFLOG and BASE give it for an IPv4 packet received by eth0 (index 3)."""
    event: Event = {
        "raw.pkt": packet, "raw.pktlen": len(packet), "ip.totlen": len(packet),
        "oob.family": 2, "oob.protocol": 0x800, "oob.hook": 1, "oob.time.sec": 1_700_000_000,
        "oob.time.usec": 250_000, "raw.mac": ether(b""), "raw.mac_len": 14, "raw.type": 1,
        "raw.mac.saddr": SRC_MAC,
    }  # fmt: skip
    names = {"prefix": "oob.prefix", "mark": "oob.mark", "indev": "oob.ifindex_in",
             "uid": "oob.uid"}  # fmt: skip
    event.update({names[name]: value for name, value in extra.items()})
    return event


def test_pcap_output_nflog_records_replay_as_the_original_events(tmp_path: Path) -> None:
    path = tmp_path / "out.pcap"
    output = pcap_output(path, linktype=239)
    originals = [
        live_like_event(udp4(), prefix="first", mark=7, indev=3, uid=1000),
        {**live_like_event(udp4(payload=b"p" * 40)), "raw.pktlen": 30},  # copy range 30
    ]
    for event in originals:
        output.interp(dict(event))
    output.stop()
    records, _ = read_all(path)
    assert records[1].length == len(records[1].data) + len(udp4(payload=b"p" * 40)) - 30
    replayed = [{k: v for k, v in e.items() if k != "raw"} for e in events_of(path)]
    expected = [
        {**COMMON, **originals[0], "oob.mark": 7, "raw.mac.addrlen": 6},
        {**COMMON, **originals[1], "raw.pkt": udp4(payload=b"p" * 40)[:30], "raw.mac.addrlen": 6},
    ]
    for event in expected:
        del event["ip.totlen"]  # BASE's, not NFLOG's
    assert replayed == expected


def test_pcap_output_101_stays_ulogds_and_link_types_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "out.pcap"
    output = pcap_output(path)
    output.interp(live_like_event(udp4(), prefix="lost in 101"))
    output.stop()
    data = path.read_bytes()
    assert data[20:24] == struct.pack("=I", 101) and data.endswith(udp4())
    assert len(data) == 24 + 16 + len(udp4())
    with pytest.raises(StartError, match="has link type 101, not 239 \\(NFLOG\\)"):
        pcap_output(path, linktype=239)
    with pytest.raises(ConfigError, match="link type 1 cannot be written"):
        pcap_output(tmp_path / "other.pcap", linktype=1)


# -- whole daemons -----------------------------------------------------------------------------

needs_nobody = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None or not os.access(SYSTEM_PYTHON, os.X_OK),
    reason="needs root, setpriv and /usr/bin/python3 to run the daemon as nobody",
)

REPLAY_STACKS = (
    "stack=r1:PCAPREPLAY,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,print1:PRINTPKT,emu1:LOGEMU\n"
    "stack=r1:PCAPREPLAY,base2:BASE,ip2str2:IP2STR,json1:JSON\n"
)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory nobody may read and write into (removed afterwards)."""
    path = Path(tempfile.mkdtemp(prefix="nfkit-replay-test-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def replay_config(directory: Path, capture: Path, name: str, options: str = "") -> Path:
    capture.chmod(0o644)
    conf = directory / f"{name}.conf"
    conf.write_text(
        f'[global]\nlogfile="{directory}/{name}.log"\nloglevel=3\n{REPLAY_STACKS}'
        f'[r1]\nfile="{capture}"\n{options}\n'
        f'[emu1]\nfile="{directory}/{name}.emu"\n[json1]\nfile="{directory}/{name}.json"\n'
    )
    conf.chmod(0o644)
    return conf


def logd_as_nobody(*args: str) -> list[str]:
    return [*NOBODY, SYSTEM_PYTHON, "-m", "nfkit.cli.main", "logd", *args]


NOBODY_ENV = {**os.environ, "PYTHONPATH": SRC}


@needs_nobody
def test_unprivileged_daemon_replays_and_exits(shared_dir: Path) -> None:
    packets = [(T0 + i * SECOND // 10, ether(udp4(sport=1000 + i))) for i in range(3)]
    capture = write(shared_dir, "eth.pcap", pcap_bytes(packets, LINKTYPE_ETHERNET))
    conf = replay_config(shared_dir, capture, "run")
    done = subprocess.run(logd_as_nobody("-c", str(conf)), env=NOBODY_ENV, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")
    lines = (shared_dir / "run.emu").read_text().splitlines()
    assert [re.sub(r"^.{15} \S+ ", "", line) for line in lines] == [
        f"IN= OUT= MAC=02:00:00:00:00:02:02:00:00:00:00:01:08:00 SRC=192.0.2.1 DST=192.0.2.2 "
        f"LEN=33 TOS=00 PREC=0x00 TTL=64 ID=0 PROTO=UDP SPT={1000 + i} DPT=53 LEN=13 MARK=0x0 "
        for i in range(3)
    ]
    objects = [json.loads(line) for line in (shared_dir / "run.json").read_text().splitlines()]
    assert [o["src_port"] for o in objects] == [1000, 1001, 1002]
    assert objects[1]["timestamp"] == "2023-11-14T22:13:20.100000+0000"
    log = (shared_dir / "run.log").read_text()
    assert "3 packets replayed (end of file)" in log and "every capture file replayed" in log


@needs_nobody
def test_without_exit_when_done_the_daemon_waits_for_a_signal(shared_dir: Path) -> None:
    capture = write(shared_dir, "one.pcap", pcap_bytes([(T0, udp4())]))
    conf = replay_config(shared_dir, capture, "wait", "exit_when_done=0")
    daemon = subprocess.Popen(logd_as_nobody("-c", str(conf)), env=NOBODY_ENV,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_for(lambda: "(end of file)" in read(shared_dir / "wait.log"))
        assert daemon.poll() is None
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert len((shared_dir / "wait.json").read_text().splitlines()) == 1


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


# -- a live NFLOG run and its replays (lab) -------------------------------------------------

LIVE_GROUP, TCPDUMP_GROUP = 21, 22
IN_PORT, OUT_PORT = 5000, 6000
LIVE_STACKS = (
    "stack=log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,print1:PRINTPKT,emu1:LOGEMU\n"
    "stack=log1:NFLOG,base2:BASE,ip2str2:IP2STR,json1:JSON\n"
    "stack=log1:NFLOG,base3:BASE,pcap1:PCAP\n"
    "stack=log1:NFLOG,base4:BASE,pcap2:PCAP\n"
)
#: What a raw IP capture cannot hold: NFLOG's metadata.
NFLOG_METADATA_KEYS = {
    "oob.prefix", "oob.hook", "oob.ifindex_in", "oob.ifindex_out", "oob.mark", "oob.uid",
    "oob.gid", "raw.mac", "raw.mac_len", "raw.type", "raw.mac.saddr", "raw.mac.addrlen",
}  # fmt: skip
LOGEMU_LINE = re.compile(r"\w{3} [ \d]\d \d\d:\d\d:\d\d \S+ (.*)")


def log_twice(lab: Lab) -> None:
    """Rules on b logging each test packet to nfkit's group and to tcpdump's."""
    b = lab.b
    lab.iptables(b, "-t", "mangle", "-A", "OUTPUT", "-p", "udp", "--dport", str(OUT_PORT),
                 "-j", "MARK", "--set-mark", "0x2a")  # fmt: skip
    for group, extra in ((LIVE_GROUP, ()), (TCPDUMP_GROUP, ("--nflog-threshold", "1"))):
        nflog_rule = ["-j", "NFLOG", "--nflog-group", str(group), *extra, "--nflog-prefix"]
        for tables, prefix in ((lab.iptables, "in4"), (lab.ip6tables, "in6")):
            tables(b, "-A", "INPUT", "-p", "udp", "--dport", str(IN_PORT), *nflog_rule, prefix)
        lab.iptables(b, "-A", "OUTPUT", "-p", "udp", "--dport", str(OUT_PORT), *nflog_rule, "out4")


def tcpdump(lab: Lab, directory: Path, name: str, *args: str) -> subprocess.Popen[bytes]:
    errors = directory / f"{name}.stderr"
    with errors.open("wb") as stderr:
        proc = lab.popen(lab.b, "tcpdump", "-Z", "root", "-U", "-w", str(directory / name),
                         *args, stdout=subprocess.DEVNULL, stderr=stderr)  # fmt: skip
    wait_for(lambda: "listening on" in read(errors))
    return proc


def count_records(path: Path) -> int:
    if not path.exists() or path.stat().st_size < 24:
        return 0
    reader = open_capture(str(path))
    try:
        return sum(1 for _ in reader.records())
    finally:
        reader.close()


def printed(line: str) -> str:
    """A LOGEMU line without its time and host."""
    match = LOGEMU_LINE.fullmatch(line)
    assert match, line
    return match.group(1)


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


def objects_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines_of(path)]


@pytest.mark.lab
@needs_nobody
@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump missing")
def test_replays_reproduce_the_live_nflog_run(lab: Lab, shared_dir: Path) -> None:
    b, d = lab.b, shared_dir
    assert b.ip4 and b.ip6 and lab.a.ip4
    log_twice(lab)
    conf = d / "live.conf"
    conf.write_text(
        f'[global]\nlogfile="{d}/live.log"\nloglevel=3\n{LIVE_STACKS}'
        f"[log1]\ngroup={LIVE_GROUP}\nnetlink_qthreshold=1\n"
        f'[emu1]\nfile="{d}/live.emu"\nsync=1\n[json1]\nfile="{d}/live.json"\nsync=1\n'
        f'[pcap1]\nfile="{d}/ours101.pcap"\nsync=1\n'
        f'[pcap2]\nfile="{d}/ours239.pcap"\nsync=1\nlinktype=239\n'
    )
    live = lab.popen(b, sys.executable, "-m", "nfkit.cli.main", "logd", "-c", str(conf),
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    received = [f"udp dst port {IN_PORT}"]
    dumps = [
        tcpdump(lab, d, "tcpdump239.pcap", "-i", f"nflog:{TCPDUMP_GROUP}"),
        tcpdump(lab, d, "ether.pcap", "-Q", "in", "-i", b.ifname, *received),
        tcpdump(lab, d, "cooked.pcap", "-Q", "in", "-i", "any", "-y", "LINUX_SLL2", *received),
    ]
    wait_for(lambda: "entering main loop" in read(d / "live.log"))
    lab.udp(lab.a, b.ip4, IN_PORT, count=3)
    lab.udp(lab.a, b.ip6, IN_PORT, count=2)
    lab.udp(b, lab.a.ip4, OUT_PORT, count=2)
    wait_for(lambda: len(read(d / "live.emu").splitlines()) == 7)
    wait_for(lambda: count_records(d / "tcpdump239.pcap") == 7)
    wait_for(lambda: count_records(d / "ether.pcap") == 5)
    wait_for(lambda: count_records(d / "cooked.pcap") == 5)
    for proc in (live, *dumps):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    for name in ("ours239", "ours101", "tcpdump239", "ether", "cooked"):
        replay_conf = replay_config(d, d / f"{name}.pcap", name)
        done = lab.run(b, *logd_as_nobody("-c", str(replay_conf)), env=NOBODY_ENV, check=False)
        assert (done.returncode, done.stderr) == (0, ""), name
        assert (
            f"{len(lines_of(d / f'{name}.emu'))} packets replayed (end of file), "
            "0 undecodable, 0 of unsupported link types, 0 file problems" in read(d / f"{name}.log")
        )

    live_lines, live_objects = lines_of(d / "live.emu"), objects_of(d / "live.json")
    assert [printed(line).split(" ", 1)[0] for line in live_lines] == (
        ["in4"] * 3 + ["in6"] * 2 + ["out4"] * 2
    )
    assert "MARK=0x2a" in live_lines[-1] and "UID=0 GID=0" in live_lines[-1]
    # Our NFLOG records: everything, to the microsecond.
    assert lines_of(d / "ours239.emu") == live_lines
    assert objects_of(d / "ours239.json") == live_objects
    # tcpdump's: the same but the time, the kernel's for each rule (or tcpdump's
    # for OUTPUT, where the kernel gives none), not for each packet.
    assert [printed(line) for line in lines_of(d / "tcpdump239.emu")] == [
        printed(line) for line in live_lines
    ]
    untimed = {"timestamp", "oob.time.sec", "oob.time.usec"}
    assert [
        {k: v for k, v in o.items() if k not in untimed} for o in objects_of(d / "tcpdump239.json")
    ] == [{k: v for k, v in o.items() if k not in untimed} for o in live_objects]
    # Raw IP: the packets and their times, not NFLOG's metadata.
    assert [strip_metadata(line) for line in lines_of(d / "ours101.emu")] == [
        strip_metadata(line) for line in live_lines
    ]
    assert objects_of(d / "ours101.json") == [
        {**{k: v for k, v in o.items() if k not in NFLOG_METADATA_KEYS}, "oob.mark": 0}
        for o in live_objects
    ]
    # Ethernet (received packets only): the MAC header and the packet.
    assert [line[line.index("MAC=") :] for line in lines_of(d / "ether.emu")] == [
        line[line.index("MAC=") :] for line in live_lines[:5]
    ]
    # Linux cooked v2 (received packets only): the interface, the source address, the packet.
    assert [printed(line) for line in lines_of(d / "cooked.emu")] == [
        re.sub(r"^\S+ (.*)MAC=\S+", r"\1MAC=", printed(line)) for line in live_lines[:5]
    ]
    no_header = untimed | {"oob.prefix", "oob.hook", "raw.mac", "raw.mac_len"}
    for cooked, original in zip(objects_of(d / "cooked.json"), live_objects, strict=False):
        assert {k: v for k, v in original.items() if k not in no_header} == {
            k: v for k, v in cooked.items() if k not in untimed
        }


def strip_metadata(line: str) -> str:
    """A LOGEMU line's time and packet, without the NFLOG metadata raw IP cannot hold."""
    time_and_host, packet = line.split(" SRC=", 1)
    return time_and_host[:15] + " SRC=" + re.sub(r"UID=\d+ GID=\d+ |MARK=0x\w+ ", "", packet)
