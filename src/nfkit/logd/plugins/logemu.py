"""LOGEMU: syslog-like text lines, ``Mmm dd hh:mm:ss host <print>``."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from nfkit.logd.files import OutputFile
from nfkit.logd.keys import Event, KeyType, keys
from nfkit.logd.plugin import BatchPlugin, DataType, Option, Role
from nfkit.logd.registry import register


@register
class LOGEMU(BatchPlugin):
    name = "LOGEMU"
    summary = "write the 'print' key as syslog-style lines to a file"
    role = Role.OUTPUT
    input_type = DataType.PACKET | DataType.FLOW
    output_type = DataType.SINK
    options = (
        Option("file", str, "/var/log/ulogd_syslogemu.log"),
        Option("sync", int, 0),
    )
    input_keys = keys(("print", KeyType.STRING), ("oob.time.sec", KeyType.UINT32, "optional"))

    def start(self) -> None:
        # ulogd prints the short host name, read once.
        self.host = socket.gethostname().split(".", 1)[0]
        self.out = OutputFile.opened_for(self)
        self._second = -1
        self._stamp = ""

    def interp_batch(self, events: list[Event], finish: Callable[[int], None]) -> list[Event]:
        lines: list[str] = []
        append = lines.append
        second, stamp = self._second, self._stamp
        for event in events:
            text = event.get("print")
            if text is None:
                continue
            when = event.get("oob.time.sec")
            if when is None:
                when = int(time.time())
            if when != second:
                # "Mmm dd hh:mm:ss" in local time, computed once per second.
                second = when
                stamp = f"{time.ctime(when)[4:19]} {self.host} "
            append(stamp)
            append(text)
        self._second, self._stamp = second, stamp
        if lines:
            self.out.write("".join(lines))  # one write (and with sync=1 one flush) per batch
        return events

    def reopen(self) -> None:
        self.out.reopen()

    def stop(self) -> None:
        out = getattr(self, "out", None)
        if out is not None:
            out.close()
