"""Capture files: classic pcap and pcapng read record by record, and the NFLOG link type.

:func:`open_capture` recognises the format from the first bytes (pcap in either
byte order with microsecond or nanosecond timestamps, or pcapng) and returns a
:class:`CaptureReader` whose :meth:`~CaptureReader.records` yields every packet
as a :class:`Record`, in file order, with its interface's link type. pcapng
sections may differ in byte order; interfaces in link type and timestamp
resolution (``if_tsresol``, ``if_tsoffset``).

Reading never raises for what the file holds. A problem is counted and handed
to ``on_problem`` with its byte offset; a block whose framing is intact (a
pcapng block with a bad packet inside, an unknown interface) is skipped, and
when the rest of the file cannot be trusted (a truncated record, an impossible
length, a broken block trailer) reading ends after the records already read.
Block types other than packets and interfaces are stepped over and counted.

Writing: the classic pcap file header and record header in native byte order,
as libpcap writes them, and :func:`encode_nflog` of ``LINKTYPE_NFLOG``.
``LINKTYPE_NFLOG`` packets are an nfnetlink_log message without its netlink
header: ``nfgenmsg`` (family, version 0, group in network order), then the
attributes, whose length and type are in the byte order of the host that
captured them (the file's) and whose values are in network order.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

from nfkit import nflog
from nfkit.errors import NfkitError
from nfkit.netlink.errors import DecodeError

ByteOrder = Literal["little", "big"]

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_NFLOG = 239
LINKTYPE_LINUX_SLL2 = 276
#: The link type proper; the field's high bits may describe a frame check sequence.
LINKTYPE_MASK = 0x03FFFFFF

PCAP_MAGIC = 0xA1B2C3D4
PCAP_MAGIC_NANOSECONDS = 0xA1B23C4D
PCAP_VERSION = (2, 4)
#: Native byte order, as libpcap writes: magic, version, thiszone, sigfigs, snaplen, link type.
PCAP_FILE_HEADER = struct.Struct("=IHHiIII")
#: Seconds, microseconds (or nanoseconds), captured length, original length.
PCAP_RECORD_HEADER = struct.Struct("=IIII")

PCAPNG_SECTION_HEADER = 0x0A0D0D0A
PCAPNG_BYTE_ORDER_MAGIC = 0x1A2B3C4D
BLOCK_INTERFACE = 1
BLOCK_OBSOLETE_PACKET = 2
BLOCK_SIMPLE_PACKET = 3
BLOCK_ENHANCED_PACKET = 6
OPTION_END = 0
OPTION_IF_TSRESOL = 9
OPTION_IF_TSOFFSET = 14

#: libpcap's largest snapshot length: a longer record is corruption.
MAX_PACKET = 262144
#: Bound on any pcapng block (libpcap allows 16 MiB).
MAX_BLOCK = 16 * 1024 * 1024
NANOSECONDS = 1_000_000_000

_MAGICS: dict[bytes, tuple[ByteOrder, int]] = {
    PCAP_MAGIC.to_bytes(4, "little"): ("little", 1000),
    PCAP_MAGIC.to_bytes(4, "big"): ("big", 1000),
    PCAP_MAGIC_NANOSECONDS.to_bytes(4, "little"): ("little", 1),
    PCAP_MAGIC_NANOSECONDS.to_bytes(4, "big"): ("big", 1),
}
_SECTION_MAGIC = PCAPNG_SECTION_HEADER.to_bytes(4, "little")  # a palindrome
_ORDER_MAGICS: dict[bytes, ByteOrder] = {
    PCAPNG_BYTE_ORDER_MAGIC.to_bytes(4, "little"): "little",
    PCAPNG_BYTE_ORDER_MAGIC.to_bytes(4, "big"): "big",
}
_PREFIX = {"little": "<", "big": ">"}


class CaptureError(NfkitError):
    """The file is not a capture nfkit can read (nothing in it can be used)."""


class _Unreadable(Exception):
    """The file's structure is broken at ``offset``: nothing after it can be trusted."""

    def __init__(self, offset: int, what: str) -> None:
        super().__init__(what)
        self.offset = offset


@dataclass(frozen=True, slots=True)
class Record:
    """One packet of a capture file.

    ``time_ns``: nanoseconds since the epoch, None when the record has none
    (pcapng simple packet blocks). ``length``: the packet's original length
    (``data`` may be cut by the snapshot length). ``byteorder``: the writer's,
    which ``LINKTYPE_NFLOG`` attribute headers follow.
    """

    data: bytes
    linktype: int
    time_ns: int | None
    length: int
    offset: int
    interface: int
    byteorder: ByteOrder


@dataclass(slots=True)
class Interface:
    """A pcapng interface description (classic pcap files have one)."""

    linktype: int
    snaplen: int
    units_per_second: int = 1_000_000
    offset_ns: int = 0

    def time_ns(self, units: int) -> int:
        if self.units_per_second == 1_000_000:
            return units * 1000 + self.offset_ns
        return units * NANOSECONDS // self.units_per_second + self.offset_ns


ProblemHandler = Callable[[int, str], None]


class CaptureReader:
    """Records of one open capture file (see the module documentation)."""

    def __init__(
        self, stream: BinaryIO, name: str, on_problem: ProblemHandler | None = None
    ) -> None:
        self.stream = stream
        self.name = name
        self.on_problem = on_problem
        #: Position of the next unread byte.
        self.offset = 0
        #: Problems met (each reported to on_problem).
        self.problems = 0
        #: pcapng blocks stepped over: statistics, name resolution, unknown types.
        self.other_blocks = 0
        #: pcapng: the current section's byte order and interfaces.
        self._byteorder: ByteOrder = "little"
        self._interfaces: list[Interface] = []
        self._head = head = self._read(4)
        if head == _SECTION_MAGIC:
            self.format = "pcapng"
        elif head in _MAGICS:
            self.format = "pcap"
        elif not head:
            raise CaptureError(f"{name} is empty")
        else:
            raise CaptureError(f"{name} is not a pcap or pcapng file (it starts with {head.hex()})")

    def close(self) -> None:
        self.stream.close()

    def records(self) -> Iterator[Record]:
        """Every readable record, in file order (call once); problems go to ``on_problem``."""
        if self.format == "pcap":
            return self._pcap_records()
        return self._pcapng_records()

    # -- plumbing ------------------------------------------------------------------

    def _read(self, size: int) -> bytes:
        data = self.stream.read(size)
        self.offset += len(data)
        return data

    def _problem(self, offset: int, what: str) -> None:
        self.problems += 1
        if self.on_problem is not None:
            self.on_problem(offset, what)

    def _truncated(self, offset: int, what: str, got: int, wanted: int) -> None:
        self._problem(offset, f"truncated {what}: the file ends after {got} of {wanted} bytes")

    # -- classic pcap ----------------------------------------------------------------

    def _pcap_records(self) -> Iterator[Record]:
        byteorder, scale = _MAGICS[self._head]
        rest = self._read(PCAP_FILE_HEADER.size - 4)
        if len(rest) < PCAP_FILE_HEADER.size - 4:
            self._truncated(0, "file header", len(rest) + 4, PCAP_FILE_HEADER.size)
            return
        prefix = _PREFIX[byteorder]
        major, _minor, _zone, _sigfigs, _snaplen, linktype = struct.unpack(prefix + "HHiIII", rest)
        if major != PCAP_VERSION[0]:
            self._problem(4, f"pcap version {major} (only version 2 exists): nothing read")
            return
        linktype &= LINKTYPE_MASK
        header = struct.Struct(prefix + "IIII")
        while True:
            offset = self.offset
            head = self._read(header.size)
            if len(head) < header.size:
                if head:
                    self._truncated(offset, "record header", len(head), header.size)
                return
            sec, fraction, caplen, length = header.unpack(head)
            if caplen > MAX_PACKET:
                self._problem(
                    offset,
                    f"record claims {caplen} bytes (at most {MAX_PACKET} are possible): the "
                    "rest of the file cannot be read",
                )
                return
            data = self._read(caplen)
            if len(data) < caplen:
                self._truncated(offset, "record", len(data), caplen)
                return
            yield Record(
                data, linktype, sec * NANOSECONDS + fraction * scale, length, offset, 0, byteorder
            )

    # -- pcapng ----------------------------------------------------------------

    def _pcapng_records(self) -> Iterator[Record]:
        head = self._head + self._read(4)
        try:
            while len(head) == 8:
                record = self._block(head, self.offset - 8)
                if record is not None:
                    yield record
                head = self._read(8)
        except _Unreadable as exc:
            self._problem(exc.offset, f"{exc}: the rest of the file cannot be read")
            return
        if head:
            self._truncated(self.offset - len(head), "block header", len(head), 8)

    def _block(self, head: bytes, offset: int) -> Record | None:
        """Read the block starting with ``head``; its packet record, if it holds one.

        Raises:
            _Unreadable: the file's structure is broken from ``offset`` on.
        """
        body_start = 0
        if head[:4] == _SECTION_MAGIC:
            magic = self._read(4)
            found = _ORDER_MAGICS.get(magic)
            if len(magic) < 4:
                raise _Unreadable(offset, "truncated block: the file ends in a section header")
            if found is None:
                raise _Unreadable(offset, f"section header with byte-order magic {magic.hex()}")
            self._byteorder, self._interfaces = found, []
            body_start = 4  # the magic is the body's start, already read
        prefix = _PREFIX[self._byteorder]
        block_type, total = struct.unpack(prefix + "II", head)
        if total < 12 + body_start or total % 4 or total > MAX_BLOCK:
            raise _Unreadable(offset, f"block of type 0x{block_type:x} claims {total} bytes")
        wanted = total - 12 - body_start
        body = self._read(wanted)
        trailer = self._read(4)
        if len(body) < wanted or len(trailer) < 4:
            got = 8 + body_start + len(body) + len(trailer)
            raise _Unreadable(
                offset, f"truncated block: the file ends after {got} of {total} bytes"
            )
        if struct.unpack(prefix + "I", trailer)[0] != total:
            raise _Unreadable(
                offset, f"block of type 0x{block_type:x}: its trailing length differs"
            )
        if block_type == PCAPNG_SECTION_HEADER:
            if len(body) < 4 or struct.unpack_from(prefix + "H", body)[0] != 1:
                raise _Unreadable(offset, "section of an unknown pcapng version")
            return None
        if block_type == BLOCK_INTERFACE:
            # A bad description still takes its number, so the next ones keep theirs.
            interface = self._interface(body, prefix, offset)
            self._interfaces.append(interface or Interface(linktype=-1, snaplen=0))
            return None
        return self._packet(block_type, body, prefix, offset)

    def _interface(self, body: bytes, prefix: str, offset: int) -> Interface | None:
        if len(body) < 8:
            self._problem(offset, "interface description too short: its packets are skipped")
            return None
        linktype, _reserved, snaplen = struct.unpack_from(prefix + "HHI", body)
        interface = Interface(linktype=linktype & LINKTYPE_MASK, snaplen=snaplen)
        for code, value in _options(body, 8, prefix):
            if code == OPTION_IF_TSRESOL and value:
                exponent = value[0] & 0x7F
                if exponent > 63:  # 10**64 units per second: nothing real
                    self._problem(offset, f"interface timestamp resolution {value[0]:#x} ignored")
                    continue
                base = 2 if value[0] & 0x80 else 10
                interface.units_per_second = base**exponent
            elif code == OPTION_IF_TSOFFSET and len(value) >= 8:
                interface.offset_ns = struct.unpack_from(prefix + "q", value)[0] * NANOSECONDS
        return interface

    def _packet(self, block_type: int, body: bytes, prefix: str, offset: int) -> Record | None:
        """The record of a packet block; None for other blocks or a bad packet (reported)."""
        interfaces = self._interfaces
        if block_type == BLOCK_ENHANCED_PACKET:
            fixed = 20
            if len(body) >= fixed:
                index, high, low, caplen, length = struct.unpack_from(prefix + "IIIII", body)
        elif block_type == BLOCK_OBSOLETE_PACKET:
            fixed = 20
            if len(body) >= fixed:
                index, _drops, high, low, caplen, length = struct.unpack_from(
                    prefix + "HHIIII", body
                )
        elif block_type == BLOCK_SIMPLE_PACKET:
            fixed = 4
            if len(body) >= fixed:
                index, high, low = 0, None, 0
                (length,) = struct.unpack_from(prefix + "I", body)
                caplen = min(length, len(body) - fixed)
                if interfaces and interfaces[0].snaplen:
                    caplen = min(caplen, interfaces[0].snaplen)
        else:
            self.other_blocks += 1
            return None
        if len(body) < fixed:
            self._problem(offset, f"packet block of {len(body)} bytes is too short: skipped")
            return None
        if index >= len(interfaces) or interfaces[index].linktype < 0:
            self._problem(offset, f"packet of undescribed interface {index}: skipped")
            return None
        if caplen > len(body) - fixed or caplen > MAX_PACKET:
            self._problem(
                offset,
                f"packet claims {caplen} bytes in a block of {len(body) + 12}: skipped",
            )
            return None
        interface = interfaces[index]
        time_ns = None if high is None else interface.time_ns(high << 32 | low)
        data = body[fixed : fixed + caplen]
        return Record(data, interface.linktype, time_ns, length, offset, index, self._byteorder)


def _options(body: bytes, start: int, prefix: str) -> Iterator[tuple[int, bytes]]:
    """The ``(code, value)`` options of a pcapng block body from ``start``; stops at garbage."""
    header = struct.Struct(prefix + "HH")
    while start + 4 <= len(body):
        code, size = header.unpack_from(body, start)
        if code == OPTION_END or start + 4 + size > len(body):
            return
        yield code, body[start + 4 : start + 4 + size]
        start += 4 + ((size + 3) & ~3)


def open_capture(path: str, on_problem: ProblemHandler | None = None) -> CaptureReader:
    """Open a pcap or pcapng file.

    Raises:
        OSError: the file cannot be opened.
        CaptureError: it is empty or not a capture file.
    """
    stream = open(path, "rb", buffering=1 << 16)  # noqa: SIM115 (the reader owns it)
    try:
        return CaptureReader(stream, path, on_problem)
    except BaseException:
        stream.close()
        raise


def pcap_file_header(linktype: int, snaplen: int = 65536) -> bytes:
    """A classic pcap file header (microseconds, native byte order, thiszone 0)."""
    return PCAP_FILE_HEADER.pack(PCAP_MAGIC, *PCAP_VERSION, 0, 0, snaplen, linktype)


# -- LINKTYPE_NFLOG ----------------------------------------------------------------------

NFGENMSG = struct.Struct("!BBH")
_NATIVE_TLV = struct.Struct("=HH")
_SWAPPED_TLV = struct.Struct(("<" if sys.byteorder == "big" else ">") + "HH")
_BE16 = struct.Struct("!H")
_BE32 = struct.Struct("!I")
_TIMESTAMP = struct.Struct("!QQ")
_HWADDR = struct.Struct("!H2x8s")
_PACKET_HDR = struct.Struct("!HBx")


def _header(kind: int, size: int) -> bytes:
    """The attribute header of a fixed-size value (native byte order)."""
    return _NATIVE_TLV.pack(4 + size, kind)


#: Fixed-size attributes as (field, header) in the kernel's order (nfnetlink_log.c):
#: 32-bit values before the hardware address, and after the timestamp.
_EARLY_BE32 = tuple(
    (field, _header(kind, 4))
    for field, kind in (
        ("indev", nflog.ATTR_IFINDEX_INDEV),
        ("outdev", nflog.ATTR_IFINDEX_OUTDEV),
        ("physindev", nflog.ATTR_IFINDEX_PHYSINDEV),
        ("physoutdev", nflog.ATTR_IFINDEX_PHYSOUTDEV),
        ("mark", nflog.ATTR_MARK),
    )
)
_LATE_BE32 = tuple(
    (field, _header(kind, 4))
    for field, kind in (
        ("uid", nflog.ATTR_UID),
        ("gid", nflog.ATTR_GID),
        ("seq", nflog.ATTR_SEQ),
        ("seq_global", nflog.ATTR_SEQ_GLOBAL),
    )
)
_PACKET_HDR_HEADER = _header(nflog.ATTR_PACKET_HDR, _PACKET_HDR.size)
_HWADDR_HEADER = _header(nflog.ATTR_HWADDR, _HWADDR.size)
_HWTYPE_HEADER = _header(nflog.ATTR_HWTYPE, 2)
_HWLEN_HEADER = _header(nflog.ATTR_HWLEN, 2)
_TIMESTAMP_HEADER = _header(nflog.ATTR_TIMESTAMP, _TIMESTAMP.size)
_PADDING = (b"", b"\0", b"\0\0", b"\0\0\0")


def _attribute(kind: int, value: bytes) -> bytes:
    return _NATIVE_TLV.pack(4 + len(value), kind) + value + _PADDING[-len(value) % 4]


def decode_nflog(data: bytes, byteorder: ByteOrder) -> nflog.LogPacket:
    """The packet of a ``LINKTYPE_NFLOG`` record written on a ``byteorder`` host.

    Attributes are walked once to check them: a last attribute cut by the
    snapshot length is kept shortened if it is the payload (as a copy range
    would) and dropped otherwise; the walk stops at an attribute whose length
    is impossible.

    Raises:
        DecodeError: too short for the header, or an NFLOG version other than 0.
    """
    if len(data) < NFGENMSG.size:
        raise DecodeError(f"NFLOG record of {len(data)} bytes: no header")
    family, version, group = NFGENMSG.unpack_from(data)
    if version != 0:
        raise DecodeError(f"NFLOG version {version} (only 0 exists)")
    tlv = _NATIVE_TLV if byteorder == sys.byteorder else _SWAPPED_TLV
    end = len(data)
    start = NFGENMSG.size
    fixed: list[bytes] | None = None if tlv is _NATIVE_TLV else [data[:start]]
    while start + 4 <= end:
        length, kind = tlv.unpack_from(data, start)
        if length < 4:
            break
        if start + length > end:
            if kind & 0x3FFF == nflog.ATTR_PAYLOAD:
                fixed = fixed or [data[:start]]
                fixed.append(_NATIVE_TLV.pack(end - start, kind) + data[start + 4 : end])
                start = end
            break
        if fixed is not None:
            fixed.append(_NATIVE_TLV.pack(length, kind) + data[start + 4 : start + length])
            fixed.append(bytes(-length % 4))
        start += (length + 3) & ~3
    if fixed is not None:
        data = b"".join(fixed)
        end = len(data)
    else:
        end = min(start, end)
    return nflog.LogPacket(family, group, data, NFGENMSG.size, end)


def encode_nflog(fields: Mapping[str, Any]) -> bytes:
    """A ``LINKTYPE_NFLOG`` record (native byte order) from :data:`nflog.FIELDS` values.

    ``family`` is required; every other field is written when present, in the
    kernel's attribute order; ``mark`` 0 is left out, as the kernel does.
    """
    get = fields.get
    be32 = _BE32.pack
    parts = [NFGENMSG.pack(fields["family"], 0, get("group") or 0)]
    append = parts.append
    hw_protocol, hook = get("hw_protocol"), get("hook")
    if hw_protocol is not None or hook is not None:
        append(_PACKET_HDR_HEADER + _PACKET_HDR.pack(hw_protocol or 0, hook or 0))
    prefix = get("prefix")
    if prefix is not None:
        append(_attribute(nflog.ATTR_PREFIX, prefix.encode("utf-8", "surrogateescape") + b"\0"))
    for name, header in _EARLY_BE32:
        value = get(name)
        if value:
            append(header + be32(value))
    hwaddr = get("hwaddr")
    if hwaddr is not None:
        append(_HWADDR_HEADER + _HWADDR.pack(min(len(hwaddr), 8), hwaddr))
    hwheader = get("hwheader")
    if hwheader is not None:
        append(_HWTYPE_HEADER + _BE16.pack(get("hwtype") or 0) + b"\0\0")
        append(_HWLEN_HEADER + _BE16.pack(get("hwlen", len(hwheader))) + b"\0\0")
        append(_attribute(nflog.ATTR_HWHEADER, hwheader))
    ts_sec = get("ts_sec")
    if ts_sec is not None:
        append(_TIMESTAMP_HEADER + _TIMESTAMP.pack(ts_sec, get("ts_usec") or 0))
    for name, header in _LATE_BE32:
        value = get(name)
        if value is not None:
            append(header + be32(value))
    payload = get("payload")
    if payload is not None:
        append(_attribute(nflog.ATTR_PAYLOAD, payload))
    return b"".join(parts)
