"""PCAP: packets to a classic libpcap capture file (raw IP link type).

The format is ulogd2's: a file header in host byte order (magic 0xa1b2c3d4,
version 2.4, snaplen 65536, link type 101 = LINKTYPE_RAW, packets starting
at the IP header) written when the file is new or empty, then one record
per packet. Unlike ulogd2, the header of an existing file is checked before
appending: records added to a capture of another link type, byte order or
time resolution would make the whole file unreadable. ``thiszone`` is
written as 0, as every libpcap writer does (ulogd2 puts the C library's
``timezone`` there, which no reader uses).

Beyond ulogd2, ``linktype=239`` writes LINKTYPE_NFLOG records instead: each
packet with the NFLOG attributes its event carries (prefix, hook, interface
indexes, mark, hardware header and address, uid/gid, sequence numbers,
timestamp), as ``tcpdump -i nflog:N`` captures them. Wireshark shows them, and
PCAPREPLAY gives them back as the very events NFLOG gave.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from typing import Any

from nfkit.logd.errors import ConfigError, StartError
from nfkit.logd.files import OutputFile
from nfkit.logd.keys import Event, KeyType, keys
from nfkit.logd.plugin import ERROR, DataType, Option, Plugin, Role
from nfkit.logd.plugins.nflog import NFLOG
from nfkit.logd.plugins.pcapreplay import RECORD_FIELD_KEYS
from nfkit.logd.registry import register
from nfkit.packet.capture import (
    LINKTYPE_NFLOG,
    LINKTYPE_RAW,
    PCAP_FILE_HEADER,
    PCAP_MAGIC,
    PCAP_MAGIC_NANOSECONDS,
    PCAP_RECORD_HEADER,
    PCAP_VERSION,
    PCAPNG_SECTION_HEADER,
    encode_nflog,
    pcap_file_header,
)

SNAPLEN = 65536
LINKTYPES = {LINKTYPE_RAW: "raw IP", LINKTYPE_NFLOG: "NFLOG"}
IPV6_HEADER_LEN = 40
AF_INET, AF_INET6 = 2, 10
#: What an NFLOG record holds beyond the packet, its family and time: event key -> field.
NFLOG_METADATA = {
    key: field
    for field, key in RECORD_FIELD_KEYS.items()
    if field not in ("payload", "payload_len", "family", "ts_sec", "ts_usec")
}
#: The keys of NFLOG_METADATA as inputs: written when an event has them.
NFLOG_METADATA_KEYS = tuple(
    dataclasses.replace(key, optional=True)
    for key in NFLOG.output_keys
    if key.name in NFLOG_METADATA
)


def header_problem(path: str, linktype: int = LINKTYPE_RAW) -> str | None:
    """Why records cannot be appended to ``path``; None if they can (or it is empty)."""
    try:
        with open(path, "rb") as existing:
            head = existing.read(PCAP_FILE_HEADER.size)
    except OSError:
        return None  # missing: it will be created; unreadable: opening it will say why
    if not head:
        return None
    if len(head) < PCAP_FILE_HEADER.size:
        return f"{path} holds {len(head)} bytes, too few for a pcap file header"
    magic, major, minor, _, _, _, found = PCAP_FILE_HEADER.unpack(head)
    swapped = int.from_bytes(head[:4], "big" if sys.byteorder == "little" else "little")
    if magic == PCAP_MAGIC_NANOSECONDS:
        return f"{path} is a nanosecond-resolution pcap file"
    if magic == PCAPNG_SECTION_HEADER:
        return f"{path} is a pcapng file"
    if swapped in (PCAP_MAGIC, PCAP_MAGIC_NANOSECONDS):
        return f"{path} is a pcap file in the other byte order"
    if magic != PCAP_MAGIC:
        return f"{path} is not a pcap file (magic 0x{magic:08x})"
    if (major, minor) != PCAP_VERSION:
        return f"{path} is a pcap file version {major}.{minor}, not 2.4"
    if found != linktype:
        return f"{path} has link type {found}, not {linktype} ({LINKTYPES[linktype]})"
    return None


@register
class PCAP(Plugin):
    name = "PCAP"
    summary = "write packets to a pcap capture file (link type raw IP, or NFLOG)"
    role = Role.OUTPUT
    input_type = DataType.PACKET
    output_type = DataType.SINK
    options = (
        Option("file", str, "/var/log/ulogd.pcap"),
        Option("sync", int, 0),
        Option("linktype", int, LINKTYPE_RAW, help="101: raw IP (as ulogd2); 239: NFLOG"),
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

    def configure(self, upstream: Sequence[Any]) -> None:
        self.linktype = self.settings["linktype"]
        if self.linktype not in LINKTYPES:
            raise ConfigError(
                f"link type {self.linktype} cannot be written",
                self.settings.where("linktype"),
                "use 101 (raw IP packets, as ulogd2) or 239 (NFLOG: packets with their metadata)",
            )
        if self.linktype == LINKTYPE_NFLOG:
            self.inputs = self.input_keys + NFLOG_METADATA_KEYS

    def start(self) -> None:
        path = self.settings["file"]
        problem = header_problem(path, self.linktype)
        if problem:
            raise StartError(
                f"cannot append to {problem}",
                self.settings.where("file"),
                "move the existing file away (rotate it) or set file= to another path",
            )
        self.out = OutputFile.opened_for(self, binary=True)
        self._write_header_if_empty()

    def _write_header_if_empty(self) -> None:
        assert self.out is not None
        if self.out.size == 0:
            self.out.write(pcap_file_header(self.linktype, SNAPLEN))
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
        if self.linktype == LINKTYPE_NFLOG:
            record = self._nflog_record(event, packet, second, usec)
            # The original length still counts what the copy range cut off the payload.
            length += len(record) - caplen
            packet, caplen = record, len(record)
        assert self.out is not None
        self.out.write(PCAP_RECORD_HEADER.pack(second & 0xFFFFFFFF, usec, caplen, length) + packet)
        return None

    @staticmethod
    def _nflog_record(event: Event, packet: bytes, second: int, usec: int) -> bytes:
        fields = {field: event[key] for key, field in NFLOG_METADATA.items() if key in event}
        fields.update(family=event.get("oob.family", 0), payload=packet)
        fields.update(ts_sec=second, ts_usec=usec)
        return encode_nflog(fields)

    def reopen(self) -> None:
        """SIGHUP: continue in a fresh file at the same path (log rotation)."""
        if self.out is None:
            return
        problem = header_problem(self.out.path, self.linktype)
        if problem:
            self.log.error("%s: not reopening: cannot append to %s", self, problem)
            return
        if self.out.reopen():
            self._write_header_if_empty()
        else:
            self.log.error(
                "%s: cannot reopen %s; still writing to the old file", self, self.out.path
            )

    def stop(self) -> None:
        out, self.out = self.out, None
        if out is not None:
            out.close()
