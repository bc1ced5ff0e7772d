"""OPRINT: a debug dump of every upstream key, one ``name=value`` line each.

Each event starts with ``===>PACKET BOUNDARY``; then every valid key in stack order, a
name provided by several plugins at each place (``oob.protocol`` from NFLOG and BASE).
Values as ulogd2 prints them (raw data as the word ``default``, untyped keys as
``<none>``) except addresses: ulogd 2.0.8 printed IPv4 byte-reversed (192.168.1.10 as
``10.1.168.192``) and IPv6 as a reversed dotted quad of its first bytes; nfkit prints
both families as inet_ntop does (as 2.0.9).
"""

from __future__ import annotations

from collections.abc import Sequence

from nfkit.logd.keys import Event, KeyType
from nfkit.logd.plugin import DataType, Option, Plugin
from nfkit.logd.plugins._text_output import KeyValueFormat, TextFileOutput
from nfkit.logd.plugins._wildcard import every_upstream_key, upstream_keys
from nfkit.logd.registry import register

BOUNDARY = "===>PACKET BOUNDARY\n"
# What ulogd prints for the keys it cannot show (its switch's "default" arm).
_LITERALS = {
    KeyType.NONE: "<none>",
    KeyType.RAW: "default",
    KeyType.RAWSTR: "default",
    KeyType.IP6ADDR: "default",
}


@register
class OPRINT(TextFileOutput):
    name = "OPRINT"
    summary = "dump every upstream key as name=value lines (debugging)"
    input_type = DataType.PACKET | DataType.FLOW
    dynamic_inputs = True
    options = (
        Option("file", str, "/var/log/ulogd_oprint.log"),
        Option("sync", int, 0),
    )

    def configure(self, upstream: Sequence[Plugin]) -> None:
        # Raw keys print "default" when valid, so every key is read.
        self.inputs = upstream_keys(upstream)
        self.format = KeyValueFormat(every_upstream_key(upstream), "\n", _LITERALS)

    def record(self, event: Event) -> str:
        return BOUNDARY + self.format.items(event)
