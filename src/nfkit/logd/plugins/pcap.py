"""PCAP: packets to a classic libpcap capture file (raw IP link type).

The format is ulogd2's: a file header in host byte order (magic 0xa1b2c3d4,
version 2.4, snaplen 65536, link type 101 = LINKTYPE_RAW, packets starting
at the IP header) written when the file is new or empty, then one record
per packet. Unlike ulogd2, the header of an existing file is checked before
appending: records added to a capture of another link type, byte order or
time resolution would make the whole file unreadable. ``thiszone`` is
written as 0, as every libpcap writer does (ulogd2 puts the C library's
``timezone`` there, which no reader uses).
"""

from __future__ import annotations

import struct
import sys
import time

from nfkit.logd.errors import StartError
from nfkit.logd.files import OutputFile
from nfkit.logd.keys import Event, KeyType, keys
from nfkit.logd.plugin import ERROR, DataType, Option, Plugin, Role
from nfkit.logd.registry import register

MAGIC = 0xA1B2C3D4
MAGIC_NANOSECONDS = 0xA1B23C4D
PCAPNG_MAGIC = 0x0A0D0D0A
VERSION = (2, 4)
SNAPLEN = 65536
LINKTYPE_RAW = 101
FILE_HEADER = struct.Struct("=IHHiIII")
RECORD_HEADER = struct.Struct("=IIII")
IPV6_HEADER_LEN = 40
AF_INET, AF_INET6 = 2, 10


def file_header() -> bytes:
    return FILE_HEADER.pack(MAGIC, *VERSION, 0, 0, SNAPLEN, LINKTYPE_RAW)


def header_problem(path: str) -> str | None:
    """Why records cannot be appended to ``path``; None if they can (or it is empty)."""
    try:
        with open(path, "rb") as existing:
            head = existing.read(FILE_HEADER.size)
    except OSError:
        return None  # missing: it will be created; unreadable: opening it will say why
    if not head:
        return None
    if len(head) < FILE_HEADER.size:
        return f"{path} holds {len(head)} bytes, too few for a pcap file header"
    magic, major, minor, _, _, _, linktype = FILE_HEADER.unpack(head)
    swapped = int.from_bytes(head[:4], "big" if sys.byteorder == "little" else "little")
    if magic == MAGIC_NANOSECONDS:
        return f"{path} is a nanosecond-resolution pcap file"
    if magic == PCAPNG_MAGIC:
        return f"{path} is a pcapng file"
    if swapped in (MAGIC, MAGIC_NANOSECONDS):
        return f"{path} is a pcap file in the other byte order"
    if magic != MAGIC:
        return f"{path} is not a pcap file (magic 0x{magic:08x})"
    if (major, minor) != VERSION:
        return f"{path} is a pcap file version {major}.{minor}, not 2.4"
    if linktype != LINKTYPE_RAW:
        return f"{path} has link type {linktype}, not {LINKTYPE_RAW} (raw IP)"
    return None


@register
class PCAP(Plugin):
    name = "PCAP"
    summary = "write packets to a pcap capture file (link type raw IP)"
    role = Role.OUTPUT
    input_type = DataType.PACKET
    output_type = DataType.SINK
    options = (
        Option("file", str, "/var/log/ulogd.pcap"),
        Option("sync", int, 0),
    )
    input_keys = keys(
        ("raw.pkt", KeyType.UINT32),  # sic: ulogd2 declares the payload so; --info shows it
        ("raw.pktlen", KeyType.UINT32),
        ("ip.totlen", KeyType.UINT16),
        ("oob.time.sec", KeyType.UINT32),
        ("oob.time.usec", KeyType.UINT32),
        ("oob.family", KeyType.UINT8),
        ("ip6.payloadlen", KeyType.UINT16),
    )

    out: OutputFile | None = None

    def start(self) -> None:
        path = self.settings["file"]
        problem = header_problem(path)
        if problem:
            raise StartError(
                f"cannot append to {problem}",
                self.settings.where("file"),
                "move the existing file away (rotate it) or set file= to another path",
            )
        self.out = OutputFile(
            path,
            binary=True,
            sync=bool(self.settings["sync"]),
            where=self.settings.where("file"),
            loop=self.context.loop,
        )
        self.out.open()
        self._write_header_if_empty()

    def _write_header_if_empty(self) -> None:
        assert self.out is not None
        if self.out.size == 0:
            self.out.write(file_header())
            self.out.flush()

    def interp(self, event: Event) -> int | None:
        get = event.get
        packet = get("raw.pkt")
        if packet is None:
            return ERROR  # nothing to capture (the rule copies no payload)
        captured = get("raw.pktlen")
        if captured is not None and captured < len(packet):
            packet = packet[:captured]
        caplen = len(packet)
        family = get("oob.family")
        if family == AF_INET:
            length = get("ip.totlen")
        elif family == AF_INET6:
            length = get("ip6.payloadlen")
            if length is not None:
                length += IPV6_HEADER_LEN
        else:
            length = None
        # The original length is never below what was captured (readers reject that).
        if length is None or length < caplen:
            length = caplen
        second = get("oob.time.sec")
        usec = get("oob.time.usec")
        if second is None or usec is None:
            now = time.time()
            second = int(now)
            usec = int((now - second) * 1e6)
        assert self.out is not None
        self.out.write(RECORD_HEADER.pack(second & 0xFFFFFFFF, usec, caplen, length) + packet)
        return None

    def reopen(self) -> None:
        """SIGHUP: continue in a fresh file at the same path (log rotation)."""
        if self.out is None:
            return
        problem = header_problem(self.out.path)
        if problem:
            self.log.error("%s: not reopening: cannot append to %s", self, problem)
            return
        if self.out.reopen():
            self._write_header_if_empty()
        else:
            self.log.error("%s: cannot reopen %s; still writing to the old file", self,
                           self.out.path)

    def stop(self) -> None:
        out, self.out = self.out, None
        if out is not None:
            out.close()
