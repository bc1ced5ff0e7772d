"""Many datagrams per system call: ``recvmmsg(2)`` through ctypes.

The kernel sends every queued packet in a datagram of its own, so reading
them one ``recv`` at a time costs a system call per packet. ``recvmmsg``
takes up to :data:`BURST` of them in one call, each into its own slot of one
preallocated buffer; what arrived is copied out as ``bytes`` (packets may be
kept beyond the next call). Without ctypes or a libc that has ``recvmmsg``,
and for stand-in transports (tests), :func:`burst_reader` reads datagram by
datagram.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import mmap
import os
import sys
from collections.abc import Callable
from typing import Protocol

from nfkit.netlink.conn import Transport
from nfkit.netlink.errors import BufferOverrun, NetlinkError
from nfkit.netlink.socket import NetlinkSocket

#: Datagrams read per call at most.
BURST = 64
MSG_DONTWAIT = 0x40
#: Block for the first datagram only, take the others that are already there.
MSG_WAITFORONE = 0x10000
#: What a packet message holds besides the packet (up to the copy range): headers,
#: devices, conntrack entry, security context, L2 header.
HEADROOM = 4096


class _IoVec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _MsgHdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _MMsgHdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint))


def _load_recvmmsg() -> Callable[..., int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).recvmmsg
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int,
                         ctypes.c_void_p)  # fmt: skip
    function.restype = ctypes.c_int
    return function


_recvmmsg = _load_recvmmsg()


class Reader(Protocol):
    """Reads bursts of datagrams; tells the length and any 32-bit word of each."""

    def receive(self, wait: bool) -> list[bytes]:
        """The datagrams that are there (``wait``: block until one comes, or SO_RCVTIMEO).

        Raises:
            BlockingIOError: nothing came (the socket's receive timeout passed).
            InterruptedError: a signal came while waiting.
            BufferOverrun: the kernel dropped datagrams (ENOBUFS).
            NetlinkError, DecodeError: any other error of the socket.
        """
        ...

    def lengths(self) -> list[int]:
        """The length of each datagram of the last burst."""
        ...

    def words(self, offset: int) -> list[int]:
        """The native 32-bit word at ``offset`` of each datagram of the last burst
        (meaningless beyond a datagram's length)."""
        ...


class BurstReceiver:
    """Reads up to ``count`` datagrams of at most ``size`` bytes from ``fd`` per call.

    A datagram longer than a slot comes out cut to the slot's size (its
    netlink header then claims more bytes than it has).
    """

    def __init__(self, fd: int, size: int, count: int = BURST) -> None:
        if _recvmmsg is None:
            raise OSError(errno.ENOSYS, "recvmmsg is not available")
        self._call = _recvmmsg
        self._fd = fd
        self._count = count
        self.size = size = (size + 4095) & ~4095
        # Pages of the slots are touched only as far as datagrams fill them.
        self._slots = mmap.mmap(-1, size * count)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self._slots))
        self._iovecs = (_IoVec * count)()
        for i, iovec in enumerate(self._iovecs):
            iovec.iov_base, iovec.iov_len = base + i * size, size
        iovec_at = ctypes.addressof(self._iovecs)
        self._headers = (_MMsgHdr * count)()
        for i, header in enumerate(self._headers):
            header.msg_hdr.msg_iov = iovec_at + i * ctypes.sizeof(_IoVec)
            header.msg_hdr.msg_iovlen = 1
        self._headers_at = ctypes.addressof(self._headers)
        # msg_len of every header, and any word of every slot: strided views as unsigned ints.
        words = memoryview(self._headers).cast("B").cast("I")
        self._msg_lens = words[_MMsgHdr.msg_len.offset // 4 :: ctypes.sizeof(_MMsgHdr) // 4]
        self._slot_words = memoryview(self._slots).cast("I")
        self._starts = range(0, size * count, size)
        self._received = 0
        self._lengths: list[int] = []

    def receive(self, wait: bool) -> list[bytes]:
        count = self._call(self._fd, self._headers_at, self._count,
                           MSG_WAITFORONE if wait else MSG_DONTWAIT, None)  # fmt: skip
        if count > 0:
            self._received = count
            self._lengths = lengths = self._msg_lens[:count].tolist()
            slots, starts = self._slots, self._starts[:count]
            return [slots[at : at + length] for at, length in zip(starts, lengths, strict=True)]
        code = ctypes.get_errno() if count < 0 else errno.EAGAIN
        if code == errno.EAGAIN:
            raise BlockingIOError(code, os.strerror(code))
        if code == errno.EINTR:
            raise InterruptedError(code, os.strerror(code))
        if code == errno.ENOBUFS:
            raise BufferOverrun()
        raise NetlinkError.from_errno(code, "recvmmsg")

    def lengths(self) -> list[int]:
        return self._lengths

    def words(self, offset: int) -> list[int]:
        step = self.size // 4
        first = offset // 4
        return self._slot_words[first : first + self._received * step : step].tolist()


class OneByOne:
    """A :class:`Reader` made of one ``recv`` per datagram.

    An error after the first datagram is raised by the next call, so that
    what came before it is not lost.
    """

    def __init__(self, recv: Callable[[], bytes], recv_nowait: Callable[[], bytes],
                 count: int = BURST) -> None:  # fmt: skip
        self._recv = recv
        self._recv_nowait = recv_nowait
        self._count = count
        self._error: Exception | None = None
        self._last: list[bytes] = []

    def receive(self, wait: bool) -> list[bytes]:
        error = self._error
        if error is not None:
            self._error = None
            raise error
        recv_nowait = self._recv_nowait
        self._last = datagrams = [self._recv() if wait else recv_nowait()]
        try:
            while len(datagrams) < self._count:
                datagrams.append(recv_nowait())
        except (BlockingIOError, TimeoutError, InterruptedError):
            pass
        except Exception as exc:  # whatever it is, the next call raises it
            self._error = exc
        return datagrams

    def lengths(self) -> list[int]:
        return [len(datagram) for datagram in self._last]

    def words(self, offset: int) -> list[int]:
        return [
            int.from_bytes(datagram[offset : offset + 4], sys.byteorder) for datagram in self._last
        ]


def burst_reader(transport: Transport, size: int) -> Reader:
    """How to read bursts of datagrams of at most ``size`` bytes from ``transport``."""
    if not isinstance(transport, NetlinkSocket):
        return OneByOne(transport.recv, transport.recv)
    if _recvmmsg is not None:
        return BurstReceiver(transport.fileno(), size)
    return OneByOne(transport.recv, functools.partial(transport.recv, MSG_DONTWAIT))
