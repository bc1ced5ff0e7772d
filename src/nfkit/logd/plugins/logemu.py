"""LOGEMU: syslog-like text lines, ``Mmm dd hh:mm:ss host <print>``."""

from __future__ import annotations

import socket
import time

from nfkit.logd.files import OutputFile
from nfkit.logd.keys import Event, KeyType, keys
from nfkit.logd.plugin import DataType, Option, Plugin, Role
from nfkit.logd.registry import register


@register
class LOGEMU(Plugin):
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
        self.out = OutputFile(
            self.settings["file"],
            sync=bool(self.settings["sync"]),
            where=self.settings.where("file"),
            loop=self.context.loop,
        )
        self.out.open()
        self._second = -1
        self._stamp = ""

    def interp(self, event: Event) -> int | None:
        text = event.get("print")
        if text is None:
            return None
        second = event.get("oob.time.sec")
        if second is None:
            second = int(time.time())
        if second != self._second:
            # "Mmm dd hh:mm:ss" in local time, computed once per second.
            self._second = second
            self._stamp = f"{time.ctime(second)[4:19]} {self.host} "
        self.out.write(self._stamp + text)
        return None

    def reopen(self) -> None:
        self.out.reopen()

    def stop(self) -> None:
        out = getattr(self, "out", None)
        if out is not None:
            out.close()
