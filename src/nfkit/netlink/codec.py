"""Netlink message and attribute encoding.

Layout (all alignment is 4 bytes)::

    nlmsghdr   u32 len | u16 type | u16 flags | u32 seq | u32 pid   (host order)
    nfgenmsg   u8 family | u8 version | be16 res_id                 (netfilter only)
    attribute  u16 len | u16 type | payload | padding to 4

Attribute types carry two flag bits (NESTED, NET_BYTEORDER); the kernel sets
NESTED on nests but never NET_BYTEORDER although nfnetlink payloads are
big-endian, so decoders always mask the type and read big-endian themselves.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from nfkit.netlink.errors import EncodeError, TruncatedError

# Control message types.
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
NLMSG_MIN_TYPE = 0x10

# Header flags.
NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_ECHO = 0x08
NLM_F_DUMP_INTR = 0x10
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_APPEND = 0x800
NLM_F_CAPPED = 0x100  # in NLMSG_ERROR: the request payload is not echoed
NLM_F_ACK_TLVS = 0x200  # in NLMSG_ERROR: extended-ack attributes follow

# Extended ack attributes.
NLMSGERR_ATTR_MSG = 1
NLMSGERR_ATTR_OFFS = 2

NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000
NLA_TYPE_MASK = 0x3FFF

NLMSGHDR = struct.Struct("=IHHII")
NLATTR = struct.Struct("=HH")
NLMSGERR = struct.Struct("=i")
NFGENMSG = struct.Struct("!BBH")
NFNETLINK_V0 = 0

HDRLEN = NLMSGHDR.size
NFGEN_LEN = NFGENMSG.size

_U8 = struct.Struct("B")
_BE16 = struct.Struct("!H")
_BE32 = struct.Struct("!I")
_BE64 = struct.Struct("!Q")
_U32 = struct.Struct("=I")


def align4(n: int) -> int:
    """Round ``n`` up to the netlink alignment (4 bytes)."""
    return (n + 3) & ~3


def nfnl_type(subsys: int, msg: int) -> int:
    """Combine an nfnetlink subsystem id and message type into nlmsg_type."""
    return (subsys << 8) | msg


@dataclass(slots=True)
class Message:
    """One netlink message: header fields and the bytes after the header."""

    type: int
    flags: int = 0
    seq: int = 0
    pid: int = 0
    payload: bytes = b""

    def encode(self) -> bytes:
        """Serialise with a correct length field (payload is padded to 4)."""
        length = HDRLEN + len(self.payload)
        pad = b"\0" * (align4(length) - length)
        return NLMSGHDR.pack(length, self.type, self.flags, self.seq, self.pid) + self.payload + pad


def parse_messages(data: bytes) -> list[Message]:
    """Split a datagram into messages.

    The last message of a datagram may be unpadded (the kernel does not pad a
    trailing payload attribute), so only the declared length is trusted.
    """
    out: list[Message] = []
    for mtype, flags, seq, pid, start, end in iter_message_spans(data):
        out.append(Message(mtype, flags, seq, pid, data[start:end]))
    return out


def iter_message_spans(data: bytes) -> Iterator[tuple[int, int, int, int, int, int]]:
    """Yield ``(type, flags, seq, pid, payload_start, payload_end)`` per message.

    Offsets index into ``data``: no copies, which keeps batch decoding cheap.
    """
    offset = 0
    total = len(data)
    unpack = NLMSGHDR.unpack_from
    while offset + HDRLEN <= total:
        length, mtype, flags, seq, pid = unpack(data, offset)
        if length < HDRLEN or offset + length > total:
            raise TruncatedError(
                f"netlink message at offset {offset} declares {length} bytes, "
                f"{total - offset} available"
            )
        yield mtype, flags, seq, pid, offset + HDRLEN, offset + length
        offset += (length + 3) & ~3


def iter_attrs(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """Yield ``(type, payload_start, payload_end)`` for attributes in ``data[start:end]``.

    The type has its flag bits masked off. A malformed length raises
    :class:`TruncatedError`.
    """
    unpack = NLATTR.unpack_from
    while start + 4 <= end:
        length, atype = unpack(data, start)
        if length < 4 or start + length > end:
            raise TruncatedError(
                f"attribute type {atype & NLA_TYPE_MASK} at {start}: bad length {length}"
            )
        yield atype & NLA_TYPE_MASK, start + 4, start + length
        start += (length + 3) & ~3


def attr_spans(data: bytes, start: int, end: int) -> dict[int, tuple[int, int]]:
    """Map attribute type to its payload span (the last occurrence wins)."""
    spans: dict[int, tuple[int, int]] = {}
    unpack = NLATTR.unpack_from
    while start + 4 <= end:
        length, atype = unpack(data, start)
        if length < 4 or start + length > end:
            raise TruncatedError(
                f"attribute type {atype & NLA_TYPE_MASK} at {start}: bad length {length}"
            )
        spans[atype & NLA_TYPE_MASK] = (start + 4, start + length)
        start += (length + 3) & ~3
    return spans


def attr_bytes(data: bytes, start: int, end: int) -> dict[int, bytes]:
    """Map attribute type to a copy of its payload (the last occurrence wins)."""
    return {t: data[s:e] for t, (s, e) in attr_spans(data, start, end).items()}


# -- scalar decoding -------------------------------------------------------------


def get_u8(data: bytes, offset: int = 0) -> int:
    return int(_U8.unpack_from(data, offset)[0])


def get_be16(data: bytes, offset: int = 0) -> int:
    return int(_BE16.unpack_from(data, offset)[0])


def get_be32(data: bytes, offset: int = 0) -> int:
    return int(_BE32.unpack_from(data, offset)[0])


def get_be64(data: bytes, offset: int = 0) -> int:
    return int(_BE64.unpack_from(data, offset)[0])


def get_string(data: bytes, start: int = 0, end: int | None = None) -> str:
    """A NUL-terminated string attribute (bytes beyond the NUL are ignored)."""
    raw = data[start:end]
    nul = raw.find(b"\0")
    if nul >= 0:
        raw = raw[:nul]
    return raw.decode("utf-8", "surrogateescape")


# -- encoding --------------------------------------------------------------------


def attr(atype: int, payload: bytes, nested: bool = False) -> bytes:
    """Encode one attribute, padded to 4 bytes."""
    length = 4 + len(payload)
    if length > 0xFFFF:
        raise EncodeError(f"attribute type {atype}: payload of {len(payload)} bytes is too long")
    if nested:
        atype |= NLA_F_NESTED
    return NLATTR.pack(length, atype) + payload + b"\0" * (align4(length) - length)


def attr_u8(atype: int, value: int) -> bytes:
    return attr(atype, _U8.pack(value))


def attr_be16(atype: int, value: int) -> bytes:
    return attr(atype, _BE16.pack(value))


def attr_be32(atype: int, value: int) -> bytes:
    return attr(atype, _BE32.pack(value))


def attr_be64(atype: int, value: int) -> bytes:
    return attr(atype, _BE64.pack(value))


def attr_string(atype: int, value: str) -> bytes:
    return attr(atype, value.encode() + b"\0")


def attr_nested(atype: int, children: Iterable[bytes]) -> bytes:
    return attr(atype, b"".join(children), nested=True)


def nfgenmsg(family: int, res_id: int = 0, version: int = NFNETLINK_V0) -> bytes:
    """The 4-byte netfilter generic header that starts every nfnetlink payload."""
    return NFGENMSG.pack(family, version, res_id)


@dataclass(slots=True)
class ErrorReply:
    """A decoded NLMSG_ERROR: ``code`` 0 is an ACK, else a negative errno."""

    code: int
    request: Message | None = None
    message: str = ""
    offset: int | None = None
    extras: dict[int, bytes] = field(default_factory=dict)


def parse_error(payload: bytes, flags: int) -> ErrorReply:
    """Decode an NLMSG_ERROR payload, including extended-ack TLVs."""
    if len(payload) < NLMSGERR.size + HDRLEN:
        raise TruncatedError(f"NLMSG_ERROR of {len(payload)} bytes is too short")
    (code,) = NLMSGERR.unpack_from(payload, 0)
    length, mtype, mflags, seq, pid = NLMSGHDR.unpack_from(payload, 4)
    # The echo is at least the request header, even if its length field lies.
    echoed = HDRLEN if flags & NLM_F_CAPPED else max(HDRLEN, min(length, len(payload) - 4))
    echoed_end = 4 + echoed
    request = Message(mtype, mflags, seq, pid, payload[4 + HDRLEN : echoed_end])
    reply = ErrorReply(code, request)
    if flags & NLM_F_ACK_TLVS:
        tlvs = attr_bytes(payload, align4(echoed_end), len(payload))
        if NLMSGERR_ATTR_MSG in tlvs:
            reply.message = get_string(tlvs.pop(NLMSGERR_ATTR_MSG))
        if len(tlvs.get(NLMSGERR_ATTR_OFFS, b"")) >= _U32.size:
            reply.offset = _U32.unpack_from(tlvs.pop(NLMSGERR_ATTR_OFFS))[0]
        reply.extras = tlvs
    return reply


def encode_error(request: Message, code: int, message: str = "") -> Message:
    """Build the NLMSG_ERROR the kernel would send for ``request`` (for fakes)."""
    flags = NLM_F_CAPPED
    body = NLMSGERR.pack(code) + NLMSGHDR.pack(
        HDRLEN + len(request.payload), request.type, request.flags, request.seq, request.pid
    )
    if message:
        flags |= NLM_F_ACK_TLVS
        body += attr(NLMSGERR_ATTR_MSG, message.encode() + b"\0")
    return Message(NLMSG_ERROR, flags, request.seq, request.pid, body)
