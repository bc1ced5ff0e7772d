"""A thin, typed wrapper over an AF_NETLINK socket.

Python's socket module lacks the netlink socket options, so their numbers are
defined here. Receiving uses one preallocated buffer per socket; a datagram
that overflows it is detected (MSG_TRUNC) rather than silently cut.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
from types import TracebackType

from nfkit.netlink.errors import BufferOverrun, DecodeError, NetlinkError

NETLINK_ROUTE = 0
NETLINK_NETFILTER = 12

SOL_NETLINK = 270
SO_RCVBUFFORCE = 33
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_DROP_MEMBERSHIP = 2
NETLINK_BROADCAST_ERROR = 4
NETLINK_NO_ENOBUFS = 5
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11

DEFAULT_RECV_SIZE = 1 << 17  # the kernel never builds NFLOG batches above 128 KiB
# A plain int: OR-ing the socket module's IntFlag member costs a microsecond per recv.
_MSG_TRUNC = int(socket.MSG_TRUNC)


class NetlinkSocket:
    """An AF_NETLINK datagram socket bound to a kernel-assigned port id.

    Parameters:
        protocol: netlink family, e.g. :data:`NETLINK_NETFILTER`.
        groups: legacy multicast group bitmask to join at bind time.
        recv_size: size of the receive buffer handed to ``recv_into``.
    """

    def __init__(self, protocol: int, groups: int = 0, recv_size: int = DEFAULT_RECV_SIZE) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        try:
            self._sock.bind((0, groups))
        except OSError:
            self._sock.close()
            raise
        self.protocol = protocol
        self.portid: int = self._sock.getsockname()[0]
        # Let the kernel say *why* it refused a request (text and offset in
        # NetlinkError); kernels before 4.12 lack the option.
        with contextlib.suppress(OSError):
            self.set_option(NETLINK_EXT_ACK)
        self._buffer = bytearray(recv_size)
        self._view = memoryview(self._buffer)

    # -- options -------------------------------------------------------------

    def set_receive_buffer(self, size: int) -> int:
        """Ask for a ``size``-byte kernel receive buffer; return what was granted.

        SO_RCVBUFFORCE ignores ``net.core.rmem_max`` but needs CAP_NET_ADMIN
        in the initial user namespace, so fall back to SO_RCVBUF.
        """
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
        except OSError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        return self.receive_buffer

    @property
    def receive_buffer(self) -> int:
        """The kernel's receive buffer size (it reports twice the asked value)."""
        return int(self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))

    def set_option(self, option: int, enabled: bool = True) -> None:
        """Set a SOL_NETLINK boolean option (NETLINK_NO_ENOBUFS, NETLINK_EXT_ACK, ...)."""
        self._sock.setsockopt(SOL_NETLINK, option, int(enabled))

    def join_group(self, group: int) -> None:
        """Join a multicast group by number (beyond the 32 legacy bitmask groups too)."""
        self._sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)

    def leave_group(self, group: int) -> None:
        self._sock.setsockopt(SOL_NETLINK, NETLINK_DROP_MEMBERSHIP, group)

    def set_blocking(self, blocking: bool) -> None:
        self._sock.setblocking(blocking)

    def set_timeout(self, seconds: float | None) -> None:
        self._sock.settimeout(seconds)

    def set_receive_timeout(self, seconds: float) -> None:
        """SO_RCVTIMEO: a blocking recv gives up (BlockingIOError) after ``seconds``.

        Unlike :meth:`set_timeout` it costs no poll() before each recv.
        """
        whole = int(seconds)
        timeval = struct.pack("@ll", whole, int((seconds - whole) * 1e6))
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)

    # -- I/O -----------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Send one datagram (which may hold several messages) to the kernel."""
        try:
            self._sock.sendto(data, (0, 0))
        except OSError as exc:
            raise NetlinkError.from_errno(exc.errno or errno.EIO, "send") from None

    def recv(self, flags: int = 0) -> bytes:
        """Receive one datagram; ``flags`` are extra MSG_* flags (MSG_DONTWAIT).

        Raises:
            BufferOverrun: the kernel dropped messages since the last read.
            BlockingIOError: non-blocking socket with nothing to read.
            DecodeError: the datagram did not fit the receive buffer.
        """
        try:
            size = self._sock.recv_into(self._buffer, 0, _MSG_TRUNC | flags)
        except (BlockingIOError, TimeoutError, InterruptedError):
            raise
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                raise BufferOverrun() from None
            raise NetlinkError.from_errno(exc.errno or errno.EIO, "recv") from None
        if size > len(self._buffer):
            # MSG_TRUNC makes the kernel report the datagram's real length.
            raise DecodeError(
                f"netlink datagram of {size} bytes exceeds the {len(self._buffer)}-byte buffer"
            )
        return bytes(self._view[:size])

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    @property
    def closed(self) -> bool:
        return self._sock.fileno() < 0

    def __enter__(self) -> NetlinkSocket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
