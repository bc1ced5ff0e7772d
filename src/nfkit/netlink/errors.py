"""Netlink errors.

:class:`NetlinkError` carries the errno the kernel answered with, the
extended-ack text and offset when the kernel gave them, and the operation
that failed. Well-known errnos get subclasses that also derive from the
matching builtin, so ``except PermissionError`` works as Python users expect.
"""

from __future__ import annotations

import errno as _errno
import os

from nfkit.errors import NfkitError


class NetlinkError(NfkitError, OSError):
    """The kernel refused a netlink request."""

    def __init__(
        self,
        code: int,
        operation: str = "",
        message: str = "",
        offset: int | None = None,
    ) -> None:
        text = _KERNEL_ONLY_ERRNOS.get(code) or os.strerror(code)
        if message:
            text = f"{text}: {message}"
        if operation:
            text = f"{operation}: {text}"
        super().__init__(code, text)
        self.operation = operation
        self.message = message
        self.offset = offset

    @staticmethod
    def from_errno(
        code: int, operation: str = "", message: str = "", offset: int | None = None
    ) -> NetlinkError:
        """Build the most specific subclass for ``code``."""
        cls = _BY_ERRNO.get(code, NetlinkError)
        return cls(code, operation, message, offset)


# errnos the kernel leaks although libc has no text for them ("Unknown error 524").
_KERNEL_ONLY_ERRNOS = {524: "Operation not supported (ENOTSUPP)"}


class NetlinkPermissionError(NetlinkError, PermissionError):
    """EPERM/EACCES: missing CAP_NET_ADMIN, or another socket owns the resource."""


class NetlinkNotFound(NetlinkError, FileNotFoundError):
    """ENOENT: no such object (conntrack entry, queue id...)."""


class NetlinkExists(NetlinkError, FileExistsError):
    """EEXIST: the object already exists."""


class NetlinkBusy(NetlinkError):
    """EBUSY: already bound (by this very socket, for NFLOG/NFQUEUE)."""


class NetlinkNoDevice(NetlinkError):
    """ENODEV: the group or queue is not bound."""


class NetlinkNotSupported(NetlinkError):
    """EOPNOTSUPP/ENOTSUP(524): the kernel lacks the feature."""


class BufferOverrun(NetlinkError):
    """ENOBUFS: the socket's receive buffer overflowed and messages were lost.

    The socket stays usable; callers decide how to resynchronise (NFLOG
    cannot, conntrack can dump the table again).
    """

    def __init__(
        self,
        code: int = _errno.ENOBUFS,
        operation: str = "recv",
        message: str = "",
        offset: int | None = None,
    ) -> None:
        super().__init__(code, operation, message or "receive buffer overrun", offset)


_BY_ERRNO: dict[int, type[NetlinkError]] = {
    _errno.EPERM: NetlinkPermissionError,
    _errno.EACCES: NetlinkPermissionError,
    _errno.ENOENT: NetlinkNotFound,
    _errno.EEXIST: NetlinkExists,
    _errno.EBUSY: NetlinkBusy,
    _errno.ENODEV: NetlinkNoDevice,
    _errno.EOPNOTSUPP: NetlinkNotSupported,
    524: NetlinkNotSupported,  # kernel-internal ENOTSUPP leaks to userspace
    _errno.ENOBUFS: BufferOverrun,
}


class DecodeError(NfkitError, ValueError):
    """Bytes from the kernel (or a file) do not form a valid message."""


class TruncatedError(DecodeError):
    """A message or attribute ends before its declared length."""


class EncodeError(NfkitError, ValueError):
    """A value cannot be encoded into a netlink message."""
