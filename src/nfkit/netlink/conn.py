"""Request/response conversations over a netlink transport.

A :class:`Connection` numbers requests, waits for the matching ACK or error,
collects multipart dump replies up to NLMSG_DONE, and turns kernel errors into
typed exceptions. It talks to a :class:`Transport`: a real
:class:`~nfkit.netlink.socket.NetlinkSocket`, or the in-memory fake from
:mod:`nfkit.netlink.testing` (fake at the message level, as mdlayher/netlink
learned to do).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Protocol

from nfkit.netlink.codec import (
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_NOOP,
    NLMSG_OVERRUN,
    Message,
    parse_error,
    parse_messages,
)
from nfkit.netlink.errors import BufferOverrun, NetlinkError
from nfkit.netlink.socket import NetlinkSocket


class Transport(Protocol):
    """What a Connection needs from a socket."""

    portid: int

    def send(self, data: bytes) -> None: ...

    def recv(self) -> bytes: ...

    def fileno(self) -> int: ...

    def close(self) -> None: ...


class DumpInterrupted(NetlinkError):
    """The kernel's table changed during a dump; ``partial`` holds what arrived."""

    def __init__(self, operation: str, partial: list[Message]) -> None:
        super().__init__(4, operation, "dump interrupted by a concurrent change (retry)")
        self.partial = partial


class Connection:
    """A netlink conversation partner.

    Parameters:
        transport: the socket (or fake) to talk through.
        on_unsolicited: called with messages that arrive while waiting for a
            reply but belong to nobody's request (events, packets); by
            default they are dropped.
    """

    def __init__(
        self,
        transport: Transport,
        on_unsolicited: Callable[[Message], None] | None = None,
    ) -> None:
        self.transport = transport
        self._seq = itertools.count(0)
        self._on_unsolicited = on_unsolicited

    @classmethod
    def open(cls, protocol: int, groups: int = 0) -> Connection:
        """Open a real netlink socket of ``protocol``."""
        return cls(NetlinkSocket(protocol, groups))

    def next_seq(self) -> int:
        """A fresh non-zero sequence number (kernel-originated messages use 0)."""
        return next(self._seq) % 0xFFFFFFFF + 1

    def send(self, *messages: Message) -> None:
        """Send messages in one datagram, without waiting for anything."""
        self.transport.send(b"".join(m.encode() for m in messages))

    def receive(self) -> list[Message]:
        """Receive one datagram and split it into messages."""
        return parse_messages(self.transport.recv())

    def request(self, message: Message, operation: str = "") -> list[Message]:
        """Send ``message`` as a request and return its reply messages.

        Dumps (``NLM_F_DUMP``) return every part up to NLMSG_DONE. Other
        requests are sent with NLM_F_ACK and return whatever data replies
        arrived before the ACK (usually none).

        Raises:
            NetlinkError: the kernel answered with an errno (typed subclass).
            DumpInterrupted: a dump was inconsistent (NLM_F_DUMP_INTR).
        """
        message.flags |= NLM_F_REQUEST
        dump = (message.flags & NLM_F_DUMP) == NLM_F_DUMP
        if not dump:
            message.flags |= NLM_F_ACK
        message.seq = self.next_seq()
        operation = operation or f"request type 0x{message.type:04x}"
        self.send(message)
        return list(self._collect(message.seq, dump, operation))

    def _collect(self, seq: int, dump: bool, operation: str) -> Iterator[Message]:
        replies: list[Message] = []
        interrupted = False
        while True:
            # A BufferOverrun propagates: replies to us may have been lost.
            for msg in self.receive():
                if msg.seq != seq or msg.type == NLMSG_NOOP:
                    if self._on_unsolicited is not None and msg.seq == 0:
                        self._on_unsolicited(msg)
                    continue
                if msg.type == NLMSG_ERROR:
                    err = parse_error(msg.payload, msg.flags)
                    if err.code:
                        raise NetlinkError.from_errno(-err.code, operation, err.message, err.offset)
                    yield from replies
                    return
                if msg.type == NLMSG_DONE:
                    if interrupted:
                        raise DumpInterrupted(operation, replies)
                    yield from replies
                    return
                if msg.type == NLMSG_OVERRUN:
                    raise BufferOverrun(operation=operation)
                if msg.flags & NLM_F_DUMP_INTR:
                    interrupted = True
                replies.append(msg)

    def close(self) -> None:
        self.transport.close()

    def fileno(self) -> int:
        return self.transport.fileno()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
