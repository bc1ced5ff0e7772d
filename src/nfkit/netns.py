"""Low-level network-namespace helpers (stdlib + ctypes only).

The central piece is :func:`entered`, a context manager that moves the *calling
thread* into a named network namespace and moves it back afterwards::

    with entered("nfk-1234-abcdef-a"):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    # back in the original namespace here, but ``sock`` still lives in the lab
    # namespace: a socket keeps the namespace it was created in for its whole
    # life, no matter which namespace the thread is in when it is used.

Only the calling thread changes namespace (``setns(2)`` on a thread of a
multi-threaded process is per-thread for CLONE_NEWNET).  Other threads of the
process, and children started with :mod:`subprocess` from *other* threads, stay
where they were.  Things that resolve through the thread-group leader, such as
``/proc/net`` (a symlink to ``/proc/self/net``), do **not** follow the switch;
``/proc/sys/net`` and every socket created inside the block do.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Iterator

__all__ = [
    "CLONE_NEWNET",
    "NETNS_RUN_DIR",
    "current_netns_inode",
    "entered",
    "exists",
    "list_netns",
    "netns_inode",
    "netns_path",
    "setns",
]

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

_libc: ctypes.CDLL | None = None


def _get_libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.setns.restype = ctypes.c_int
        _libc = libc
    return _libc


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """Thin wrapper around ``setns(2)``; raises :class:`OSError` on failure."""
    if _get_libc().setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(fd={fd}, nstype={nstype:#x}): {os.strerror(err)}")


def netns_path(name: str) -> str:
    """Path of a named namespace (``ip netns`` convention); paths are passed through."""
    if "/" in name:
        return name
    return os.path.join(NETNS_RUN_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def list_netns() -> list[str]:
    """Names of all namespaces registered under /run/netns (sorted)."""
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def netns_inode(name: str) -> int:
    """Inode number identifying the namespace behind a name (or path)."""
    return os.stat(netns_path(name)).st_ino


def current_netns_inode() -> int:
    """Inode number of the calling thread's current network namespace."""
    return os.stat("/proc/thread-self/ns/net").st_ino


@contextlib.contextmanager
def entered(ns_name: str) -> Iterator[None]:
    """Move the calling thread into network namespace ``ns_name`` for the block.

    ``ns_name`` is a name under /run/netns or a path to a namespace file (for
    instance ``/proc/<pid>/ns/net``).  The original namespace is always
    restored on exit, also when the block raises.  Sockets created inside the
    block stay in ``ns_name`` after the block ends.  Blocks nest.
    """
    orig_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target_fd = os.open(netns_path(ns_name), os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(target_fd, CLONE_NEWNET)
        finally:
            os.close(target_fd)
        try:
            yield
        finally:
            try:
                setns(orig_fd, CLONE_NEWNET)
            except OSError as exc:  # pragma: no cover - should never happen
                raise RuntimeError(
                    "nfkit.netns.entered: could not restore the original network "
                    f"namespace of this thread: {exc}"
                ) from exc
    finally:
        os.close(orig_fd)
