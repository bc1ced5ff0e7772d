"""MARK: pass only events whose mark matches, ``(mark & mask) == mark_option``.

``ct.mark`` is tested when valid, else ``oob.mark``; an event with neither passes.
A mismatch returns STOP: the event is silently dropped for this stack.
"""

from __future__ import annotations

from collections.abc import Sequence

from nfkit.logd.errors import ConfigError
from nfkit.logd.keys import Event, KeyType, keys
from nfkit.logd.plugin import STOP, DataType, Option, Plugin
from nfkit.logd.registry import register

T = KeyType

U32 = 0xFFFFFFFF


@register
class MARK(Plugin):
    name = "MARK"
    summary = "drop events whose ct.mark / oob.mark does not match mark/mask"
    input_type = DataType.PACKET | DataType.FLOW
    output_type = DataType.PACKET | DataType.FLOW
    dynamic_outputs = True
    options = (
        Option("mark", int, 0, help="value the masked mark must equal"),
        Option("mask", int, U32, help="bits of the mark to compare"),
    )
    input_keys = keys(("ct.mark", T.UINT32, "optional"), ("oob.mark", T.UINT32, "optional"))

    def configure(self, upstream: Sequence[Plugin]) -> None:
        values = {}
        for option in ("mark", "mask"):
            value = self.settings[option]
            # ulogd reads 32-bit options, so -1 means 0xffffffff.
            if not -(2**31) <= value <= U32:
                raise ConfigError(
                    f"{option}={value} does not fit in 32 bits",
                    self.settings.where(option),
                    f"use a value between 0 and 0x{U32:x}",
                )
            values[option] = value & U32
        self.mark, self.mask = values["mark"], values["mask"]
        if self.mark & ~self.mask & U32:
            self.log.warning(
                "%s: mark 0x%x has bits outside mask 0x%x: every marked event will be dropped",
                self.settings.where("mark"),
                self.mark,
                self.mask,
            )

    def interp(self, event: Event) -> int | None:
        mark = event.get("ct.mark")
        if mark is None:
            mark = event.get("oob.mark")
            if mark is None:
                return None
        if mark & self.mask != self.mark:
            return STOP
        return None
