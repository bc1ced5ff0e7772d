"""IFINDEX: interface indexes (``oob.ifindex_in/out``) to names (``oob.in/out``).

Names are cached; the cache is emptied whenever the kernel announces a link change
(an rtnetlink ``RTMGRP_LINK`` subscription, shared by every instance), or every few
seconds if that subscription cannot be opened. A miss asks the kernel directly.

Differences from ulogd 2.0.8: an index the kernel does not know (an interface deleted
meanwhile) gives the index number as text, e.g. ``"7"``, where ulogd repeated the previous
packet's name. As in ulogd, index 0 or no index gives ``""`` and both keys are always set.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from typing import Any

from nfkit.logd.keys import Event, KeyType, keys
from nfkit.logd.plugin import BatchPlugin, Context, DataType
from nfkit.logd.registry import register

T = KeyType

RTMGRP_LINK = 0x1
#: Invalidation period when link notifications are not available.
FALLBACK_REFRESH_SECONDS = 5.0
_SHARED_KIND = "ifindex-names"
#: Bound on cached names (unknown indexes are cached too, as their number).
MAX_CACHED = 4096


def _kernel_name(index: int) -> str:
    try:
        return socket.if_indextoname(index)
    except OSError:
        return str(index)


class InterfaceNames:
    """The daemon-wide index -> name cache, and what keeps it fresh."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.names: dict[int, str] = {0: ""}
        self.users = 0
        self._sock: socket.socket | None = None
        self._timer: Any = None

    def lookup(self, index: int) -> str:
        """The name of ``index`` (cache miss path)."""
        name = _kernel_name(index)
        if len(self.names) > MAX_CACHED:
            self.invalidate()
        self.names[index] = name
        return name

    def invalidate(self) -> None:
        self.names.clear()
        self.names[0] = ""

    def acquire(self) -> None:
        self.users += 1
        loop = self.context.loop
        if self.users > 1 or loop is None:
            return
        try:
            sock = socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.NETLINK_ROUTE
            )
            sock.bind((0, RTMGRP_LINK))
        except OSError as exc:
            self.context.log.info(
                "IFINDEX: no link notifications (%s); refreshing names every %g s",
                exc,
                FALLBACK_REFRESH_SECONDS,
            )
            self._timer = loop.call_every(FALLBACK_REFRESH_SECONDS, self.invalidate)
            return
        self._sock = sock
        loop.add_reader(sock.fileno(), self._on_link_change)

    def release(self) -> None:
        self.users -= 1
        if self.users > 0:
            return
        if self._sock is not None:
            self.context.loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.context.release(_SHARED_KIND, None)

    def _on_link_change(self) -> None:
        # Any message (or an overrun) may mean a renamed, new or deleted link: drop it all.
        assert self._sock is not None
        with contextlib.suppress(BlockingIOError, OSError):
            while self._sock.recv(65536):
                pass
        self.invalidate()


@register
class IFINDEX(BatchPlugin):
    name = "IFINDEX"
    summary = "convert interface indexes to names (oob.in, oob.out)"
    input_type = DataType.PACKET | DataType.FLOW
    output_type = DataType.PACKET | DataType.FLOW
    input_keys = keys(("oob.ifindex_in", T.UINT32), ("oob.ifindex_out", T.UINT32))
    output_keys = keys(("oob.in", T.STRING), ("oob.out", T.STRING))

    def __init__(self, instance_id: str, settings: Any, context: Context) -> None:
        super().__init__(instance_id, settings, context)
        self.cache: InterfaceNames = context.shared(
            _SHARED_KIND, None, lambda: InterfaceNames(context)
        )
        self._started = False

    def start(self) -> None:
        self.cache.acquire()
        self._started = True

    def stop(self) -> None:
        if self._started:
            self._started = False
            self.cache.release()

    def interp_batch(self, events: list[Event], finish: Callable[[int], None]) -> list[Event]:
        cache = self.cache
        names = cache.names
        for event in events:
            index = event.get("oob.ifindex_in", 0)
            name = names.get(index)
            event["oob.in"] = name if name is not None else cache.lookup(index)
            index = event.get("oob.ifindex_out", 0)
            name = names.get(index)
            event["oob.out"] = name if name is not None else cache.lookup(index)
        return events
