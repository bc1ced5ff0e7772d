"""Extended accounting objects (nfacct) over nfnetlink_acct.

An accounting object is a named pair of packet and byte counters kept by the
kernel; rules update it (``iptables -m nfacct --nfacct-name NAME``, nft
``counter name NAME`` does not use it). Objects may carry a quota, in packets
or bytes, that the ``nfacct`` match turns into a condition::

    from nfkit.nfacct import Nfacct

    with Nfacct() as acct:
        acct.create("http", quota=10_000_000, quota_in="bytes")
        for obj in acct.list(reset=True):  # read and zero every counter
            print(obj.name, obj.packets, obj.bytes)

Everything needs CAP_NET_ADMIN in the network namespace; objects live in the
namespace of the socket.
"""

from __future__ import annotations

import builtins
import enum
import errno
import struct
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from nfkit.netlink.codec import (
    NFGEN_LEN,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    Message,
    attr,
    attr_be32,
    attr_be64,
    attr_spans,
    get_string,
    nfgenmsg,
    nfnl_type,
)
from nfkit.netlink.conn import Connection, Transport
from nfkit.netlink.errors import DecodeError, EncodeError, NetlinkError
from nfkit.netlink.socket import NETLINK_NETFILTER, NetlinkSocket

NFNL_SUBSYS_ACCT = 7

# enum nfnl_acct_msg_types (uapi linux/netfilter/nfnetlink_acct.h)
MSG_NEW = 0
MSG_GET = 1
MSG_GET_CTRZERO = 2
MSG_DEL = 3
MSG_OVERQUOTA = 4

# enum nfnl_acct_type
ATTR_NAME = 1
ATTR_PKTS = 2
ATTR_BYTES = 3
ATTR_USE = 4
ATTR_FLAGS = 5
ATTR_QUOTA = 6
ATTR_FILTER = 7
ATTR_PAD = 8

#: NFACCT_NAME_MAX counts the terminating NUL.
NAME_MAX = 31

#: Seconds a request waits for the kernel before giving up (it answers at once).
DEFAULT_TIMEOUT = 5.0

_AF_UNSPEC = 0
_BE32 = struct.Struct("!I")
_BE64 = struct.Struct("!Q")

PERMISSION_HINT = "needs CAP_NET_ADMIN in this network namespace (run as root)"


class Flag(enum.IntFlag):
    """NFACCT_F_*: which counter the quota applies to, and whether it was reached."""

    NONE = 0
    QUOTA_PKTS = 1
    QUOTA_BYTES = 2
    #: Set by the kernel once the quota is reached (reset by a read-and-reset).
    OVERQUOTA = 4


@dataclass(frozen=True, slots=True)
class Accounting:
    """One accounting object as the kernel reported it.

    Attributes:
        name: the object's name (at most 31 bytes).
        packets, bytes: the counters (since the last reset when read with reset).
        flags: :class:`Flag` bits; NONE without a quota.
        quota: the quota, in packets or bytes (see :attr:`quota_in`); None without one.
        use: the kernel's reference count: 1 for the object itself plus one
            per rule that refers to it (None when the kernel did not say).
    """

    name: str
    packets: int = 0
    bytes: int = 0
    flags: Flag = Flag.NONE
    quota: int | None = None
    use: int | None = None

    @property
    def quota_in(self) -> Literal["packets", "bytes"] | None:
        """The unit of :attr:`quota`, or None without a quota."""
        if self.flags & Flag.QUOTA_PKTS:
            return "packets"
        if self.flags & Flag.QUOTA_BYTES:
            return "bytes"
        return None

    @property
    def over_quota(self) -> bool:
        return bool(self.flags & Flag.OVERQUOTA)


def decode(payload: bytes) -> Accounting:
    """The :class:`Accounting` in one nfacct message (the bytes after nlmsghdr).

    Raises:
        DecodeError: the message is truncated or lacks a name.
    """
    spans = attr_spans(payload, NFGEN_LEN, len(payload))
    if ATTR_NAME not in spans:
        raise DecodeError("nfacct message without a name")
    name = get_string(payload, *spans[ATTR_NAME])
    try:
        return Accounting(
            name,
            packets=_unsigned(payload, spans, ATTR_PKTS, _BE64) or 0,
            bytes=_unsigned(payload, spans, ATTR_BYTES, _BE64) or 0,
            flags=Flag(_unsigned(payload, spans, ATTR_FLAGS, _BE32) or 0),
            quota=_unsigned(payload, spans, ATTR_QUOTA, _BE64),
            use=_unsigned(payload, spans, ATTR_USE, _BE32),
        )
    except struct.error as exc:
        raise DecodeError(f"nfacct object {name!r}: {exc}") from None


def _unsigned(
    payload: bytes, spans: dict[int, tuple[int, int]], atype: int, layout: struct.Struct
) -> int | None:
    span = spans.get(atype)
    if span is None:
        return None
    if span[1] - span[0] != layout.size:
        raise DecodeError(f"nfacct attribute {atype}: {span[1] - span[0]} bytes")
    return int(layout.unpack_from(payload, span[0])[0])


def name_attribute(name: str) -> bytes:
    """The NFACCT_NAME attribute, after checking what the kernel would refuse."""
    raw = name.encode()
    if not raw or len(raw) > NAME_MAX or b"\0" in raw:
        raise EncodeError(f"nfacct name {name!r}: 1 to {NAME_MAX} bytes without NUL expected")
    return attr(ATTR_NAME, raw + b"\0")


def request(msg_type: int, flags: int = 0, *attributes: bytes) -> Message:
    """An nfacct request message (sequence number and NLM_F_REQUEST added on sending)."""
    payload = nfgenmsg(_AF_UNSPEC) + b"".join(attributes)
    return Message(nfnl_type(NFNL_SUBSYS_ACCT, msg_type), flags, payload=payload)


def list_request(reset: bool = False) -> Message:
    """The dump of every object; ``reset`` zeroes each counter as it is read."""
    return request(MSG_GET_CTRZERO if reset else MSG_GET, NLM_F_DUMP)


class Nfacct:
    """A client of the kernel's accounting objects.

    Parameters:
        transport: the netlink socket to use (default: a new NETLINK_NETFILTER
            socket; pass a :class:`~nfkit.netlink.testing.FakeTransport` in tests).
        timeout: seconds to wait for an answer.
    """

    def __init__(self, transport: Transport | None = None, timeout: float | None = None) -> None:
        if transport is None:
            sock = NetlinkSocket(NETLINK_NETFILTER)
            sock.set_timeout(DEFAULT_TIMEOUT if timeout is None else timeout)
            transport = sock
        self.conn = Connection(transport)

    def list(self, reset: bool = False) -> list[Accounting]:
        """Every object, in creation order; ``reset`` reads and zeroes the counters atomically."""
        operation = "nfacct list" + (" reset" if reset else "")
        replies = self._request(list_request(reset), operation)
        return [decode(m.payload) for m in replies if _is_object(m)]

    def get(self, name: str, reset: bool = False) -> Accounting:
        """One object; raises :class:`~nfkit.netlink.NetlinkNotFound` if it does not exist."""
        message = request(MSG_GET_CTRZERO if reset else MSG_GET, 0, name_attribute(name))
        replies = [m for m in self._request(message, f"nfacct get {name}") if _is_object(m)]
        if len(replies) != 1:
            raise DecodeError(f"nfacct get {name}: {len(replies)} objects in the answer")
        return decode(replies[0].payload)

    def create(
        self,
        name: str,
        *,
        packets: int = 0,
        bytes: int = 0,
        quota: int | None = None,
        quota_in: Literal["packets", "bytes"] = "bytes",
        replace: bool = False,
    ) -> None:
        """Create an object, optionally with initial counters and a quota.

        An existing object makes it fail with :class:`~nfkit.netlink.NetlinkExists`,
        unless ``replace``: then the kernel zeroes the existing object's
        counters (and its over-quota flag) and ignores the other arguments.
        """
        attributes = [name_attribute(name)]
        if packets:
            attributes.append(attr_be64(ATTR_PKTS, packets))
        if bytes:
            attributes.append(attr_be64(ATTR_BYTES, bytes))
        if quota is not None:
            flag = Flag.QUOTA_PKTS if quota_in == "packets" else Flag.QUOTA_BYTES
            attributes += [attr_be32(ATTR_FLAGS, flag), attr_be64(ATTR_QUOTA, quota)]
        flags = NLM_F_CREATE | (NLM_F_REPLACE if replace else NLM_F_EXCL)
        self._request(request(MSG_NEW, flags, *attributes), f"nfacct add {name}")

    def delete(self, name: str | None = None) -> None:
        """Delete an object; None deletes every object no rule uses.

        Raises :class:`~nfkit.netlink.NetlinkBusy` while a rule uses the
        object, :class:`~nfkit.netlink.NetlinkNotFound` if it does not exist.
        """
        attributes = [name_attribute(name)] if name is not None else []
        operation = f"nfacct delete {name}" if name is not None else "nfacct flush"
        self._request(request(MSG_DEL, 0, *attributes), operation)

    def _request(self, message: Message, operation: str) -> builtins.list[Message]:
        try:
            return self.conn.request(message, operation)
        except NetlinkError as exc:
            hint = _HINTS.get(exc.errno or 0)
            if hint is None:
                raise
            text = "; ".join(part for part in (exc.message, hint) if part)
            raise NetlinkError.from_errno(exc.errno or 0, operation, text) from None

    def close(self) -> None:
        self.conn.close()

    def fileno(self) -> int:
        return self.conn.fileno()

    def __enter__(self) -> Nfacct:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_HINTS = {
    errno.EPERM: PERMISSION_HINT,
    errno.EACCES: PERMISSION_HINT,
    errno.EBUSY: "a rule still uses it (-m nfacct --nfacct-name); delete the rule first",
}


def _is_object(message: Message) -> bool:
    return message.type == nfnl_type(NFNL_SUBSYS_ACCT, MSG_NEW)
