"""GPRINT: every upstream key on one line, ``name=value,name=value``, in stack order.

A name provided by several plugins is printed at each place, as ulogd2 does. The line
optionally starts with ``timestamp=YYYY/MM/DD-HH:MM:SS,`` (the local time of writing, as
in ulogd2). Raw data is left out. Addresses print as inet_ntop text; ulogd 2.0.8 printed
the first four bytes of an IPv6 address as a dotted quad (``2001:db8::1`` became
``32.1.13.184``). Values are not escaped, as in ulogd2. Unlike ulogd2 there is no
4096-byte line limit (ulogd overran its buffer there).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from nfkit.logd.keys import Event
from nfkit.logd.plugin import DataType, Option, Plugin
from nfkit.logd.plugins._text_output import KeyValueFormat, TextFileOutput
from nfkit.logd.plugins._wildcard import every_upstream_key, upstream_keys
from nfkit.logd.registry import register


@register
class GPRINT(TextFileOutput):
    name = "GPRINT"
    summary = "write every upstream key as one name=value,... line"
    input_type = DataType.RAW | DataType.PACKET | DataType.FLOW | DataType.SUM
    dynamic_inputs = True
    options = (
        Option("file", str, "/var/log/ulogd_gprint.log"),
        Option("sync", int, 0),
        Option("timestamp", int, 0, help="start each line with the local time of writing"),
    )

    def configure(self, upstream: Sequence[Plugin]) -> None:
        self.format = KeyValueFormat(every_upstream_key(upstream), ",")
        self.inputs = tuple(key for key in upstream_keys(upstream) if key.name in self.format.names)
        self.timestamp = bool(self.settings["timestamp"])
        self._second = -1
        self._stamp = ""

    def record(self, event: Event) -> str:
        items = self.format.items(event)
        if self.timestamp:
            items = self._now() + items
        # Every item ends with a comma; the line's last one is replaced by the newline.
        return items[:-1] + "\n" if items else "\n"

    def _now(self) -> str:
        """``timestamp=YYYY/MM/DD-HH:MM:SS,`` in local time, formatted once per second."""
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("timestamp=%Y/%m/%d-%H:%M:%S,", time.localtime(second))
        return self._stamp
