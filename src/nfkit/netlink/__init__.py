"""Netlink core: sockets, message and attribute codec, typed errors.

This package knows nothing about any netfilter subsystem; NFLOG, NFQUEUE and
conntrack build on it.
"""

from nfkit.netlink.codec import Message, attr, attr_spans, iter_attrs, iter_message_spans
from nfkit.netlink.conn import Connection, DumpInterrupted, Transport
from nfkit.netlink.errors import (
    BufferOverrun,
    DecodeError,
    EncodeError,
    NetlinkBusy,
    NetlinkError,
    NetlinkExists,
    NetlinkNoDevice,
    NetlinkNotFound,
    NetlinkNotSupported,
    NetlinkPermissionError,
    TruncatedError,
)
from nfkit.netlink.socket import NETLINK_NETFILTER, NETLINK_ROUTE, NetlinkSocket

__all__ = [
    "NETLINK_NETFILTER",
    "NETLINK_ROUTE",
    "BufferOverrun",
    "Connection",
    "DecodeError",
    "DumpInterrupted",
    "EncodeError",
    "Message",
    "NetlinkBusy",
    "NetlinkError",
    "NetlinkExists",
    "NetlinkNoDevice",
    "NetlinkNotFound",
    "NetlinkNotSupported",
    "NetlinkPermissionError",
    "NetlinkSocket",
    "Transport",
    "TruncatedError",
    "attr",
    "attr_spans",
    "iter_attrs",
    "iter_message_spans",
]
