"""NFLOG: packets logged by ``iptables -j NFLOG`` / nft ``log group N``.

A :class:`NflogSocket` binds one or more log groups and receives the kernel's
batched datagrams; each packet message becomes a :class:`LogPacket` that walks
its attributes once and decodes each field only when asked.

The kernel lets exactly one netlink socket own a group (a second BIND gets
EBUSY from the owner, EPERM from anyone else), so programs that want several
consumers of one group must fan out in userspace, as ``nfkit logd`` does.
"""

from __future__ import annotations

import enum
import struct
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from nfkit.netlink.codec import (
    NFGENMSG,
    NLM_F_ACK,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_MIN_TYPE,
    NLMSGHDR,
    Message,
    attr,
    attr_be16,
    attr_be32,
    attr_spans,
    iter_attrs,
    nfgenmsg,
    nfnl_type,
    parse_error,
)
from nfkit.netlink.conn import Connection
from nfkit.netlink.errors import DecodeError, NetlinkError, TruncatedError
from nfkit.netlink.socket import NETLINK_NETFILTER, NETLINK_NO_ENOBUFS, NetlinkSocket

NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
MSG_PACKET = nfnl_type(NFNL_SUBSYS_ULOG, NFULNL_MSG_PACKET)
MSG_CONFIG = nfnl_type(NFNL_SUBSYS_ULOG, NFULNL_MSG_CONFIG)

# enum nfulnl_attr_config
CFG_CMD = 1
CFG_MODE = 2
CFG_NLBUFSIZ = 3
CFG_TIMEOUT = 4
CFG_QTHRESH = 5
CFG_FLAGS = 6

# enum nfulnl_attr_type
ATTR_PACKET_HDR = 1
ATTR_MARK = 2
ATTR_TIMESTAMP = 3
ATTR_IFINDEX_INDEV = 4
ATTR_IFINDEX_OUTDEV = 5
ATTR_IFINDEX_PHYSINDEV = 6
ATTR_IFINDEX_PHYSOUTDEV = 7
ATTR_HWADDR = 8
ATTR_PAYLOAD = 9
ATTR_PREFIX = 10
ATTR_UID = 11
ATTR_SEQ = 12
ATTR_SEQ_GLOBAL = 13
ATTR_GID = 14
ATTR_HWTYPE = 15
ATTR_HWHEADER = 16
ATTR_HWLEN = 17
ATTR_CT = 18
ATTR_CT_INFO = 19
ATTR_VLAN = 20
ATTR_L2HDR = 21

VLAN_PROTO = 1
VLAN_TCI = 2

MAX_COPY_RANGE = 0xFFFF


class Command(enum.IntEnum):
    BIND = 1
    UNBIND = 2
    PF_BIND = 3
    PF_UNBIND = 4


class CopyMode(enum.IntEnum):
    NONE = 0
    META = 1
    PACKET = 2


class Flag(enum.IntFlag):
    """NFULNL_CFG_F_*: the FLAGS attribute replaces the whole word."""

    SEQ = 1
    SEQ_GLOBAL = 2
    CONNTRACK = 4


_BE16 = struct.Struct("!H")
_BE32 = struct.Struct("!I")
_PACKET_HDR = struct.Struct("!HB")
_TIMESTAMP = struct.Struct("!QQ")
_MODE = struct.Struct("!IBx")
_NLATTR = struct.Struct("=HH")


class LogPacket:
    """One logged packet; attributes the kernel did not send are None.

    The attributes are walked once, in one tight loop, because every consumer
    reads most of the small ones; the payload stays raw bytes (decode it with
    :mod:`nfkit.packet` only when needed).
    """

    __slots__ = (
        "ct",
        "ct_info",
        "family",
        "gid",
        "group",
        "hook",
        "hw_protocol",
        "hwaddr",
        "hwheader",
        "hwlen",
        "hwtype",
        "indev",
        "l2header",
        "mark",
        "outdev",
        "payload",
        "physindev",
        "physoutdev",
        "prefix",
        "seq",
        "seq_global",
        "timestamp",
        "uid",
        "vlan",
    )

    hw_protocol: int | None
    hook: int | None
    mark: int | None
    timestamp: tuple[int, int] | None
    indev: int | None
    outdev: int | None
    physindev: int | None
    physoutdev: int | None
    hwaddr: bytes | None
    hwtype: int | None
    hwlen: int | None
    hwheader: bytes | None
    payload: bytes | None
    prefix: str | None
    uid: int | None
    gid: int | None
    seq: int | None
    seq_global: int | None
    ct: bytes | None
    ct_info: int | None
    vlan: tuple[int, int] | None
    l2header: bytes | None

    def __init__(self, family: int, group: int, data: bytes, start: int, end: int) -> None:
        self.family = family
        self.group = group
        _reset(self)
        unpack_attr = _NLATTR.unpack_from
        be32 = _BE32.unpack_from
        while start + 4 <= end:
            length, atype = unpack_attr(data, start)
            stop = start + length
            if length < 4 or stop > end:
                raise TruncatedError(
                    f"NFLOG attribute {atype & 0x3FFF} at {start}: bad length {length}"
                )
            atype &= 0x3FFF
            size = length - 4
            pos = start + 4
            if atype == ATTR_PAYLOAD:
                self.payload = data[pos:stop]
            elif atype == ATTR_PACKET_HDR and size >= 3:
                self.hw_protocol, self.hook = _PACKET_HDR.unpack_from(data, pos)
            elif atype == ATTR_PREFIX:
                self.prefix = _prefix(data[pos:stop])
            elif size >= 4 and atype in _U32_FIELDS:
                setattr(self, _U32_FIELDS[atype], be32(data, pos)[0])
            elif atype == ATTR_TIMESTAMP and size >= 16:
                self.timestamp = _TIMESTAMP.unpack_from(data, pos)
            elif atype == ATTR_HWHEADER:
                self.hwheader = data[pos:stop]
            elif atype == ATTR_HWADDR and size >= 4:
                (addrlen,) = _BE16.unpack_from(data, pos)
                self.hwaddr = data[pos + 4 : min(pos + 4 + addrlen, stop)]
            elif atype == ATTR_HWTYPE and size >= 2:
                (self.hwtype,) = _BE16.unpack_from(data, pos)
            elif atype == ATTR_HWLEN and size >= 2:
                (self.hwlen,) = _BE16.unpack_from(data, pos)
            elif atype == ATTR_CT:
                self.ct = data[pos:stop]
            elif atype == ATTR_L2HDR:
                self.l2header = data[pos:stop]
            elif atype == ATTR_VLAN:
                self.vlan = _vlan(data, pos, stop)
            start += (length + 3) & ~3

    def __repr__(self) -> str:
        return (
            f"<LogPacket group={self.group} family={self.family} hook={self.hook} "
            f"prefix={self.prefix!r} len={len(self.payload or b'')}>"
        )


_U32_FIELDS = {
    ATTR_MARK: "mark",
    ATTR_IFINDEX_INDEV: "indev",
    ATTR_IFINDEX_OUTDEV: "outdev",
    ATTR_IFINDEX_PHYSINDEV: "physindev",
    ATTR_IFINDEX_PHYSOUTDEV: "physoutdev",
    ATTR_UID: "uid",
    ATTR_GID: "gid",
    ATTR_SEQ: "seq",
    ATTR_SEQ_GLOBAL: "seq_global",
    ATTR_CT_INFO: "ct_info",
}

_PREFIXES: dict[bytes, str] = {}


def _prefix(raw: bytes) -> str:
    """Decode a NUL-terminated prefix; the few distinct prefixes are cached."""
    text = _PREFIXES.get(raw)
    if text is None:
        nul = raw.find(b"\0")
        text = (raw if nul < 0 else raw[:nul]).decode("utf-8", "surrogateescape")
        if len(_PREFIXES) < 4096:
            _PREFIXES[raw] = text
    return text


def _vlan(data: bytes, start: int, end: int) -> tuple[int, int] | None:
    inner = attr_spans(data, start, end)
    proto, tci = inner.get(VLAN_PROTO), inner.get(VLAN_TCI)
    if proto is None or tci is None:
        return None
    return int(_BE16.unpack_from(data, proto[0])[0]), int(_BE16.unpack_from(data, tci[0])[0])


#: Fields a LogPacket has, in the names compiled parsers and dict targets use.
#: ``timestamp`` splits into ``ts_sec``/``ts_usec``; ``payload_len`` is derived.
FIELDS = (
    "family", "group", "hw_protocol", "hook", "mark", "ts_sec", "ts_usec", "indev", "outdev",
    "physindev", "physoutdev", "hwaddr", "hwtype", "hwlen", "hwheader", "payload", "payload_len",
    "prefix", "uid", "gid", "seq", "seq_global", "ct", "ct_info", "vlan", "l2header",
)  # fmt: skip


#: Compiled layouts compare headers (host order) as one little-endian integer.
COMPILABLE = sys.byteorder == "little"


def _layout_source(
    data: bytes,
    start: int,
    end: int,
    names: dict[str, str] | None,
    fill: dict[str, Any] | None = None,
) -> tuple[str, int, int] | None:
    """A parser for the layout of the message ``data[start:end]``, or None.

    Packets from one rule and hook share their layout up to the payload: the
    netlink type, family, group, ethertype, hook and every attribute header.
    The generated ``parse(data, offset, total, append)`` proves a message has
    that layout by comparing those bytes at once (``head & mask == fixed``,
    the message read as a little-endian integer), reads every other value
    with one ``struct`` unpack, appends the packet and goes on with the next
    message while they match; it returns the offset of the first message it
    did not take.

    Returns the source, ``mask`` and ``fixed``; None when the layout cannot
    be compiled (no payload last, nested or odd-sized attributes).
    """
    attrs = list(iter_attrs(data, start + 20, end))
    if not COMPILABLE or not attrs or attrs[-1][0] != ATTR_PAYLOAD:
        return None
    payload_header = attrs.pop()[1] - 4 - start
    head_size = payload_header + 4
    mask = bytearray(head_size)

    def fixed_bytes(at: int, size: int) -> None:
        mask[at : at + size] = b"\xff" * size

    fixed_bytes(4, 2)  # nlmsg_type
    fixed_bytes(16, 4)  # nfgenmsg: family, version, group
    fixed_bytes(payload_header + 2, 2)  # the payload attribute's type
    fill = fill or {}
    used = None if names is None else set(names)
    if used is not None:
        if "hwaddr" in used:
            used.add("hwaddr_len")
        if fill.get("ts_sec") is NOW:
            used.add("ts_sec")  # read to tell a missing (zero) timestamp
    family, _version, group = NFGENMSG.unpack_from(data, start + 16)
    values = {"family": str(family), "group": str(group)}
    codes: list[str] = []  # struct codes of the values, from the message start
    fields: tuple[str, ...]
    count = 0
    read_to = 0
    for atype, pos, stop in attrs:
        at, size = pos - start, stop - pos
        fixed_bytes(at - 4, 4)
        if atype == ATTR_PACKET_HDR and size >= 3:
            fixed_bytes(at, 3)
            hw_protocol, hook = _PACKET_HDR.unpack_from(data, pos)
            values["hw_protocol"], values["hook"] = str(hw_protocol), str(hook)
            continue
        if atype in _U32_FIELDS and size == 4:
            code, fields = "I", (_U32_FIELDS[atype],)
        elif atype in (ATTR_HWTYPE, ATTR_HWLEN) and size == 2:
            code, fields = "H", ("hwtype" if atype == ATTR_HWTYPE else "hwlen",)
        elif atype == ATTR_TIMESTAMP and size == 16:
            code, fields = "QQ", ("ts_sec", "ts_usec")
        elif atype in (ATTR_PREFIX, ATTR_HWHEADER):
            code, fields = f"{size}s", ("prefix" if atype == ATTR_PREFIX else "hwheader",)
        elif atype == ATTR_HWADDR and size >= 4:
            code, fields = f"H2x{size - 4}s", ("hwaddr_len", "hwaddr")
        else:
            return None
        if used is not None and used.isdisjoint(fields):
            continue  # nobody reads it: the struct skips it
        codes.append(f"{at - read_to}x{code}" if at > read_to else code)
        read_to = at + struct.calcsize("!" + code)
        for field in fields:
            values[field] = f"raw[{count}]"
            count += 1
    if "hwaddr" in values and "hwaddr_len" in values:
        values["hwaddr"] = f"{values['hwaddr']}[:{values.pop('hwaddr_len')}]"
    lines = [
        "def parse(data, offset, total, append):",
        f"    while total - offset >= {head_size}:",
        f'        head = from_bytes(data[offset:offset + {head_size}], "little")',
        "        if head & mask != fixed:",
        "            break",
        "        length = head & 0xFFFFFFFF",
        f"        size = head >> {8 * payload_header} & 0xFFFF",
        # The kernel pads the message after the payload attribute (or not):
        # accept up to 3 padding bytes but no further attribute.
        f"        if not 4 <= size <= length - {payload_header} < ((size + 3) & ~3) + 4 "
        "or offset + length > total:",
        "            break",
    ]
    if codes:
        lines.insert(0, f"unpack_from = Struct({'!' + ''.join(codes)!r}).unpack_from")
        lines.append("        raw = unpack_from(data, offset)")
    if "prefix" in values:
        # The few distinct prefixes are decoded once (see _prefix).
        lines += [
            f"        text = prefixes.get({values['prefix']})",
            "        if text is None:",
            f"            text = prefix({values['prefix']})",
        ]
        values["prefix"] = "text"
    lines.append(f"        payload = data[offset + {head_size}:offset + {payload_header} + size]")
    values["payload"] = "payload"
    if names is None:
        lines += ["        p = new(LogPacket)", "        reset(p)"]
        for field, expr in values.items():
            if field == "ts_sec":
                lines.append(f"        p.timestamp = ({expr}, {values['ts_usec']})")
            elif field != "ts_usec":
                lines.append(f"        p.{field} = {expr}")
        lines.append("        append(p)")
    else:
        values["payload_len"] = "size - 4"
        if fill.get("ts_sec") is NOW:
            # A zero kernel timestamp means "none": both fields come from the clock.
            sec = values.get("ts_sec")
            values["ts_usec"] = f"{values['ts_usec']} if {sec} else now[1]" if sec else "now[1]"
            values["ts_sec"] = f"{sec} or now[0]" if sec else "now[0]"
        for field, default in fill.items():
            if field not in values and default is not NOW:
                values[field] = repr(default)
        items = [f"{names[f]!r}: {e}" for f, e in values.items() if f in names]
        items += [f"{key!r}: {value!r}" for key, value in (fill.get(CONSTANTS) or {}).items()]
        lines.append("        append({" + ", ".join(items) + "})")
    lines += ["        offset += (length + 3) & ~3", "    return offset"]
    fixed_mask = int.from_bytes(mask, "little")
    fixed = int.from_bytes(data[start : start + head_size], "little") & fixed_mask
    return "\n".join(lines) + "\n", fixed_mask, fixed


def _reset(packet: LogPacket) -> None:
    packet.hw_protocol = packet.hook = packet.mark = packet.timestamp = None
    packet.indev = packet.outdev = packet.physindev = packet.physoutdev = None
    packet.hwaddr = packet.hwtype = packet.hwlen = packet.hwheader = None
    packet.payload = packet.prefix = packet.uid = packet.gid = None
    packet.seq = packet.seq_global = None
    packet.ct = packet.ct_info = packet.vlan = packet.l2header = None


def packet_fields(packet: LogPacket) -> dict[str, Any]:
    """A LogPacket as a dict of :data:`FIELDS` names (absent ones left out)."""
    out: dict[str, Any] = {}
    for name in FIELDS:
        if name in ("ts_sec", "ts_usec"):
            if packet.timestamp is not None:
                out[name] = packet.timestamp[name == "ts_usec"]
        elif name == "payload_len":
            if packet.payload is not None:
                out[name] = len(packet.payload)
        else:
            value = getattr(packet, name)
            if value is not None:
                out[name] = value
    return out


Parsed = TypeVar("Parsed")
#: A compiled layout: ``parse(data, offset, total, append) -> offset after``.
Layout = Callable[[bytes, int, int, Callable[[Any], None]], int]

#: In ``fill``: the time the datagram was parsed (for ``ts_sec``/``ts_usec``).
NOW = object()
#: In ``fill``: extra ``{key: value}`` items every dict gets.
CONSTANTS = "constants"


class PacketParser(Generic[Parsed]):
    """Decodes datagrams, compiling a parser for each attribute layout it meets.

    Parameters:
        names: ``None`` to produce :class:`LogPacket` objects, or a mapping
            from :data:`FIELDS` names to the keys of flat dicts to produce
            instead (fields not in the mapping are left out). Dicts skip an
            object per packet, which matters at 100k packets/s.
        fill: for dicts, values of fields a packet lacks (``{"mark": 0}``);
            :data:`NOW` for ``ts_sec``/``ts_usec`` uses the parse time when
            the kernel sent no (or a zero) timestamp; ``{CONSTANTS: {...}}``
            adds fixed items. Folding them into the compiled code spares a
            per-packet pass in Python.

    Layouts are looked up by the first 16 bytes of a message (family, group,
    ethertype, hook and the next attribute header); a miss decodes with the
    generic attribute walk and compiles the layout for next time.
    """

    MAX_LAYOUTS = 256
    #: Uncompilable layouts (conntrack, VLAN, no payload) seen under one key
    #: before the parser stops trying: each attempt costs a second attribute walk.
    MAX_FAILURES = 8

    def __init__(
        self, names: dict[str, str] | None = None, fill: dict[str, Any] | None = None
    ) -> None:
        self.names = names
        self.fill = fill or {}
        self._now = [0, 0]
        self._clock = self.fill.get("ts_sec") is NOW
        self._layouts: dict[bytes, list[Layout]] = {}
        self._count = 0
        self._failures: dict[bytes, int] = {}
        self._namespace: dict[str, Any] = {
            "Struct": struct.Struct,
            "prefix": _prefix,
            "prefixes": _PREFIXES,
            "new": LogPacket.__new__,
            "LogPacket": LogPacket,
            "reset": _reset,
            "now": self._now,
            "from_bytes": int.from_bytes,
        }

    def parse(self, data: bytes) -> tuple[list[Parsed], list[Message]]:
        """Split a datagram into parsed packets and other messages (errors, ACKs).

        Raises:
            TruncatedError: a message or attribute length is inconsistent.
        """
        packets: list[Parsed] = []
        append = packets.append
        others: list[Message] = []
        unpack_gen = NFGENMSG.unpack_from
        unpack_hdr = NLMSGHDR.unpack_from
        layouts = self._layouts
        offset = 0
        total = len(data)
        if self._clock:
            now = time.time()
            self._now[0] = int(now)
            self._now[1] = int(now * 1e6) % 1000000
        while offset + 16 <= total:
            length, mtype, flags, seq, pid = unpack_hdr(data, offset)
            if length < 16 or offset + length > total:
                raise TruncatedError(f"netlink message at {offset}: bad length {length}")
            if mtype == MSG_PACKET and length >= 20:
                key = data[offset + 16 : offset + 32]
                for layout in layouts.get(key, ()):
                    # A compiled layout takes this message and the like ones after it.
                    after = layout(data, offset, total, append)
                    if after != offset:
                        offset = after
                        break
                else:
                    family, _version, group = unpack_gen(data, offset + 16)
                    append(self._slow(family, group, data, offset + 20, offset + length))
                    self._learn(key, data, offset, offset + length)
                    offset += (length + 3) & ~3
                continue
            if mtype != NLMSG_DONE:
                others.append(Message(mtype, flags, seq, pid, data[offset + 16 : offset + length]))
            offset += (length + 3) & ~3
        return packets, others

    def _slow(self, family: int, group: int, data: bytes, start: int, end: int) -> Any:
        packet = LogPacket(family, group, data, start, end)
        if self.names is None:
            return packet
        names = self.names
        fields = packet_fields(packet)
        if self._clock and not fields.get("ts_sec"):
            fields["ts_sec"], fields["ts_usec"] = self._now
        for field, default in self.fill.items():
            if default is not NOW and field != CONSTANTS:
                fields.setdefault(field, default)
        out = {names[k]: v for k, v in fields.items() if k in names}
        out.update(self.fill.get(CONSTANTS) or {})
        return out

    def _learn(self, key: bytes, data: bytes, start: int, end: int) -> None:
        """Compile the layout of the message ``data[start:end]``, if worth it."""
        if self._count >= self.MAX_LAYOUTS or self._failures.get(key, 0) >= self.MAX_FAILURES:
            return
        compiled = _layout_source(data, start, end, self.names, self.fill)
        if compiled is None:
            self._failures[key] = self._failures.get(key, 0) + 1
            return
        source, mask, fixed = compiled
        namespace = dict(self._namespace, mask=mask, fixed=fixed)
        exec(compile(source, "<nflog layout>", "exec"), namespace)
        self._layouts.setdefault(key, []).append(namespace["parse"])
        self._count += 1


def parse_datagram(data: bytes) -> tuple[list[LogPacket], list[Message]]:
    """Split a datagram with a throwaway parser (see :class:`PacketParser`)."""
    return PacketParser[LogPacket]().parse(data)


class NflogSocket:
    """A netlink socket that owns NFLOG groups.

    Parameters:
        receive_buffer: kernel socket buffer (SO_RCVBUFFORCE, bytes); 0 keeps
            the system default.
        no_enobufs: set NETLINK_NO_ENOBUFS (losses are then only visible as
            sequence gaps; off by default so overruns are reported).
    """

    def __init__(self, receive_buffer: int = 0, no_enobufs: bool = False) -> None:
        self.sock = NetlinkSocket(NETLINK_NETFILTER)
        self.conn = Connection(self.sock, on_unsolicited=self._keep_packet)
        if receive_buffer:
            self.sock.set_receive_buffer(receive_buffer)
        if no_enobufs:
            self.sock.set_option(NETLINK_NO_ENOBUFS)
        self.groups: set[int] = set()
        self._backlog: list[LogPacket] = []
        self._parser = PacketParser[LogPacket]()

    def _config(self, group: int, family: int, *attrs: bytes, operation: str) -> None:
        payload = nfgenmsg(family, group) + b"".join(attrs)
        msg = Message(MSG_CONFIG, NLM_F_ACK, payload=payload)
        self.conn.request(msg, operation)

    def _keep_packet(self, msg: Message) -> None:
        # Packets that arrive while we wait for a config ACK are not lost.
        if msg.type == MSG_PACKET and len(msg.payload) >= 4:
            family, _v, group = NFGENMSG.unpack_from(msg.payload)
            self._backlog.append(LogPacket(family, group, msg.payload, 4, len(msg.payload)))

    def bind(
        self,
        group: int,
        copy_mode: CopyMode = CopyMode.PACKET,
        copy_range: int = MAX_COPY_RANGE,
        nlbufsiz: int | None = None,
        timeout: int | None = None,
        qthreshold: int | None = None,
        flags: Flag | int | None = None,
    ) -> None:
        """Own ``group`` and configure it in one request.

        Parameters:
            timeout: flush timer in 1/100 s (kernel default 100).
            qthreshold: packets per batch (kernel default 100); the rule's
                own threshold, when set, caps it.
            nlbufsiz: batch buffer size; the kernel ignores values outside
                ~3.7 KB .. 128 KB without error.

        Raises:
            NetlinkPermissionError: another socket owns the group.
            NetlinkBusy: this socket owns it already.
        """
        attrs = [attr(CFG_CMD, bytes([Command.BIND]))]
        attrs.append(attr(CFG_MODE, _MODE.pack(min(copy_range, MAX_COPY_RANGE), copy_mode)))
        if nlbufsiz:
            attrs.append(attr_be32(CFG_NLBUFSIZ, nlbufsiz))
        if timeout is not None:
            attrs.append(attr_be32(CFG_TIMEOUT, timeout))
        if qthreshold:
            attrs.append(attr_be32(CFG_QTHRESH, qthreshold))
        if flags is not None:
            attrs.append(attr_be16(CFG_FLAGS, int(flags)))
        self._config(group, 0, *attrs, operation=f"bind NFLOG group {group}")
        self.groups.add(group)

    def set_flags(self, group: int, flags: Flag | int) -> None:
        self._config(
            group, 0, attr_be16(CFG_FLAGS, int(flags)), operation=f"set flags on group {group}"
        )

    def unbind(self, group: int) -> None:
        self._config(
            group, 0, attr(CFG_CMD, bytes([Command.UNBIND])), operation=f"unbind group {group}"
        )
        self.groups.discard(group)

    def pf_bind(self, family: int) -> None:
        """Make nfnetlink_log the netns default logger for ``family`` (group 0)."""
        self._config(
            0, family, attr(CFG_CMD, bytes([Command.PF_BIND])), operation=f"bind family {family}"
        )

    def pf_unbind(self, family: int) -> None:
        """Remove whatever logger is the netns default for ``family``."""
        self._config(
            0,
            family,
            attr(CFG_CMD, bytes([Command.PF_UNBIND])),
            operation=f"unbind family {family}",
        )

    def receive(self) -> list[LogPacket]:
        """Block for one datagram and return its packets (a batch).

        Raises:
            BufferOverrun: the kernel dropped log messages (ENOBUFS).
            NetlinkError: an asynchronous error message arrived.
        """
        if self._backlog:
            backlog, self._backlog = self._backlog, []
            return backlog
        packets, others = self._parser.parse(self.sock.recv())
        for msg in others:
            if msg.type == NLMSG_ERROR:
                err = parse_error(msg.payload, msg.flags)
                if err.code:
                    raise NetlinkError.from_errno(-err.code, "NFLOG", err.message)
            elif msg.type >= NLMSG_MIN_TYPE:
                raise DecodeError(f"unexpected NFLOG message type 0x{msg.type:04x}")
        return packets

    def __iter__(self) -> Iterator[LogPacket]:
        """Yield packets forever (blocking)."""
        while True:
            yield from self.receive()

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        """Close the socket; the kernel unbinds every group it owned."""
        self.sock.close()
        self.groups.clear()

    def __enter__(self) -> NflogSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
