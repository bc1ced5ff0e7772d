"""A fake netlink transport for unit tests, in the spirit of mdlayher's nltest.

The fake is a function from one request message to its reply messages::

    def handler(request: Message) -> list[Message]:
        return [ack(request)]

    conn = Connection(FakeTransport(handler))

Bytes go through the real codec both ways, so tests exercise encoding and
decoding exactly as against the kernel. ``inject()`` queues unsolicited
datagrams (events, logged packets) for the next ``recv``.
"""

from __future__ import annotations

import errno
import os
from collections import deque
from collections.abc import Callable, Iterable

from nfkit.netlink.codec import (
    NLM_F_ACK,
    NLM_F_MULTI,
    NLMSG_DONE,
    NLMSGERR,
    Message,
    encode_error,
    parse_messages,
)

Handler = Callable[[Message], Iterable[Message] | None]


def ack(request: Message) -> Message:
    """The success ACK for ``request``."""
    return encode_error(request, 0)


def error(request: Message, code: int, message: str = "") -> Message:
    """An NLMSG_ERROR refusing ``request`` with errno ``code``."""
    return encode_error(request, -code, message)


def done(request: Message) -> Message:
    """The NLMSG_DONE that ends a dump."""
    return Message(NLMSG_DONE, NLM_F_MULTI, request.seq, request.pid, NLMSGERR.pack(0))


class FakeTransport:
    """An in-memory stand-in for NetlinkSocket.

    Replies are stamped with the request's seq and our port id unless the
    handler set them. A request carrying NLM_F_ACK gets an ACK appended when
    the handler's replies contain no NLMSG_ERROR.
    """

    def __init__(self, handler: Handler, portid: int = 4242) -> None:
        self.handler = handler
        self.portid = portid
        self.sent: list[Message] = []
        self._pending: deque[bytes] = deque()
        self._closed = False
        self._read_fd, self._write_fd = os.pipe()  # a real fd for selectors

    def send(self, data: bytes) -> None:
        for request in parse_messages(data):
            request.pid = request.pid or self.portid
            self.sent.append(request)
            replies = list(self.handler(request) or [])
            for reply in replies:
                reply.seq = reply.seq or request.seq
                reply.pid = reply.pid or self.portid
            if request.flags & NLM_F_ACK and not any(r.type == 2 for r in replies):
                replies.append(ack(request))
            if replies:
                self.inject(b"".join(r.encode() for r in replies))

    def inject(self, datagram: bytes) -> None:
        """Queue a datagram for the next recv()."""
        self._pending.append(datagram)
        os.write(self._write_fd, b"x")

    def recv(self) -> bytes:
        if not self._pending:
            raise BlockingIOError(errno.EAGAIN, "no fake datagram pending")
        os.read(self._read_fd, 1)
        return self._pending.popleft()

    def fileno(self) -> int:
        return self._read_fd

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._read_fd)
            os.close(self._write_fd)
