"""SYSLOG: the ``print`` key as a message to the local syslog daemon.

ulogd2 calls glibc's ``syslog()`` after ``openlog("ulogd", LOG_NDELAY|LOG_PID,
LOG_DAEMON)``. This plugin writes the very datagram glibc would send —
``<PRI>Mmm dd hh:mm:ss ulogd[PID]: message`` on the ``/dev/log`` unix
datagram socket — with its own socket, so that:

* it is testable: ``socket_path`` (an option ulogd2 does not have, default
  ``/dev/log``) points it at any datagram socket;
* it never blocks the daemon: when the syslog daemon does not keep up, the
  message is dropped and counted instead of stalling packet reading (glibc
  would block);
* it does not share ``openlog()``'s process-wide state with the daemon's
  own log.

As with glibc, the facility ``LOG_KERN`` (0, the default) is replaced by the
``openlog()`` default ``LOG_DAEMON``: ulogd2's default messages arrive as
``daemon.notice``, and so do these. The trailing newline PRINTPKT puts at
the end of ``print`` is removed.
"""

from __future__ import annotations

import errno
import os
import socket
import syslog
import time
from collections.abc import Sequence

from nfkit.logd.errors import ConfigError
from nfkit.logd.keys import Event, KeyType, keys
from nfkit.logd.plugin import DataType, Option, Plugin, Role
from nfkit.logd.registry import register

# The names ulogd2 accepts, in its order.
FACILITIES = {
    name: getattr(syslog, name)
    for name in ("LOG_DAEMON", "LOG_KERN", *(f"LOG_LOCAL{i}" for i in range(8)), "LOG_USER")
}
LEVELS = {
    name: getattr(syslog, name)
    for name in (
        "LOG_EMERG", "LOG_ALERT", "LOG_CRIT", "LOG_ERR",
        "LOG_WARNING", "LOG_NOTICE", "LOG_INFO", "LOG_DEBUG",
    )
}
# glibc formats the date in the C locale whatever the environment says.
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
RECONNECT_INTERVAL = 1.0
# The syslog daemon went away or was restarted: the socket must be reopened.
_STALE = frozenset({errno.ECONNREFUSED, errno.ENOTCONN, errno.ENOENT, errno.ECONNRESET})


def syslog_date(second: int) -> str:
    """``Mmm dd hh:mm:ss`` in local time, day padded with a space (``%h %e %T``)."""
    tm = time.localtime(second)
    return f"{MONTHS[tm.tm_mon - 1]} {tm.tm_mday:2d} " + time.strftime("%H:%M:%S", tm)


@register
class SYSLOG(Plugin):
    name = "SYSLOG"
    summary = "send the 'print' key to the local syslog daemon"
    role = Role.OUTPUT
    input_type = DataType.PACKET | DataType.FLOW
    output_type = DataType.SINK
    options = (
        Option("facility", str, "LOG_KERN"),
        Option("level", str, "LOG_NOTICE"),
        Option("socket_path", str, "/dev/log", help="syslog daemon's datagram socket (nfkit)"),
    )
    input_keys = keys(("print", KeyType.STRING))

    sock: socket.socket | None = None

    def configure(self, upstream: Sequence[Plugin]) -> None:
        facility = self._lookup("facility", FACILITIES)
        level = self._lookup("level", LEVELS)
        # glibc: a priority without facility bits gets openlog()'s, LOG_DAEMON.
        self.priority = level | (facility or syslog.LOG_DAEMON)

    def _lookup(self, option: str, table: dict[str, int]) -> int:
        name = self.settings[option]
        if name not in table:
            raise ConfigError(
                f"unknown {option} {name!r}",
                self.settings.where(option),
                f"use one of: {', '.join(table)}",
            )
        return table[name]

    def start(self) -> None:
        self.path = self.settings["socket_path"]
        self.dropped = 0
        self._reported = 0
        self._next_connect = 0.0
        self._second = -1
        self._prefix = b""
        # After a fork to the background, so this is the daemon's pid.
        self._tag = f" ulogd[{os.getpid()}]: "
        error = self._connect()
        if error is not None:
            # glibc (so ulogd2) starts anyway; the syslog daemon may come up later.
            self.log.warning(
                "%s: cannot connect to the syslog socket %s: %s; messages are dropped until "
                "it can", self, self.path, error,
            )

    def _connect(self) -> str | None:
        """Open the socket; the error text on failure."""
        self._close_socket()
        self._next_connect = time.monotonic() + RECONNECT_INTERVAL
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            return exc.strerror or str(exc)
        self.sock = sock
        return None

    def interp(self, event: Event) -> int | None:
        text = event.get("print")
        if text is None:
            return None
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._prefix = f"<{self.priority}>{syslog_date(second)}{self._tag}".encode()
        if text.endswith("\n"):
            text = text[:-1]
        self._send(self._prefix + text.encode("utf-8", "surrogateescape"))
        return None

    def _send(self, message: bytes) -> None:
        if self._deliver(message):
            if self.dropped > self._reported:
                self.log.warning(
                    "%s: syslog socket %s works again; %d messages were dropped",
                    self, self.path, self.dropped - self._reported,
                )
                self._reported = self.dropped
            return
        if self.dropped == self._reported:
            self.log.warning(
                "%s: cannot send to the syslog socket %s; dropping messages until it works",
                self, self.path,
            )
        self.dropped += 1

    def _deliver(self, message: bytes) -> bool:
        if self.sock is None and (time.monotonic() < self._next_connect or self._connect()):
            return False
        assert self.sock is not None
        try:
            self.sock.send(message)
            return True
        except BlockingIOError:
            return False  # the syslog daemon is not keeping up: drop rather than stall
        except OSError as exc:
            if exc.errno not in _STALE:
                return False
        # The syslog daemon was restarted: a new socket, one more try.
        if self._connect() is not None:
            return False
        assert self.sock is not None
        try:
            self.sock.send(message)
            return True
        except OSError:
            return False

    def _close_socket(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()

    def reopen(self) -> None:
        """SIGHUP: a new socket, for a syslog daemon restarted meanwhile."""
        self._connect()

    def stop(self) -> None:
        self._close_socket()
