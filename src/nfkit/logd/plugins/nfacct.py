"""NFACCT input: the counters of the kernel's accounting objects, read periodically.

Every ``pollinterval`` seconds (and on SIGUSR2) the objects are dumped, with
``zerocounter=1`` read-and-reset so that each event carries what was counted
since the previous poll; each object becomes one event (``sum.name``,
``sum.pkts``, ``sum.bytes``, ``sum`` = the :class:`~nfkit.nfacct.Accounting`),
stamped with the time of the request when ``timestamp=1``.

Unlike ulogd2 the start fails (with the reason) when the kernel refuses to
list the objects, and a poll that fails later is logged, never fatal.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Sequence

from nfkit.logd.errors import ConfigError, StartError
from nfkit.logd.keys import Event, KeyType, keys
from nfkit.logd.plugin import DataType, InputPlugin, Option, Plugin
from nfkit.logd.registry import register
from nfkit.netlink import DecodeError, NetlinkError, NetlinkPermissionError
from nfkit.nfacct import Accounting, Nfacct
from nfkit.ratelimit import LogLimiter

T = KeyType


@register
class NFACCT(InputPlugin):
    name = "NFACCT"
    summary = "counters of nfacct accounting objects (iptables -m nfacct), polled"
    output_type = DataType.SUM
    options = (
        Option("pollinterval", int, 0, help="seconds between two reads of the counters (> 0)"),
        Option("zerocounter", int, 1, help="1: reset on read (deltas), 0: cumulative counters"),
        Option("timestamp", int, 0, help="1: oob.time.sec/usec = when the counters were read"),
    )
    output_keys = keys(
        ("sum.name", T.STRING),
        ("sum.pkts", T.UINT64),
        ("sum.bytes", T.UINT64),
        ("sum", T.RAW),
        ("oob.time.sec", T.UINT32),
        ("oob.time.usec", T.UINT32),
    )

    client: Nfacct | None = None

    def configure(self, upstream: Sequence[Plugin]) -> None:
        if self.settings["pollinterval"] <= 0:
            raise ConfigError(
                "NFACCT reads the counters every pollinterval seconds; it must be > 0",
                self.settings.where("pollinterval"),
                f"set e.g. pollinterval=10 in [{self.id}]",
            )

    def start(self) -> None:
        self._reset = bool(self.settings["zerocounter"])
        self._timestamp = bool(self.settings["timestamp"])
        self._with_object = self.wanted is None or "sum" in self.wanted
        self._report = LogLimiter(self.log, f"NFACCT {self.id}")
        self.failures = 0
        client = Nfacct()
        try:
            # A read without reset: nothing counted so far is lost, and a
            # missing privilege is reported now rather than at every poll.
            client.list()
        except NetlinkPermissionError as exc:
            client.close()
            raise StartError(
                f"cannot read the nfacct objects: {exc.strerror}",
                fix="nfkit logd needs root (CAP_NET_ADMIN) in this network namespace",
            ) from None
        except (NetlinkError, DecodeError, OSError) as exc:
            client.close()
            raise StartError(
                f"cannot read the nfacct objects: {exc}",
                fix="the kernel needs nfnetlink_acct (CONFIG_NETFILTER_NETLINK_ACCT)",
            ) from None
        self.client = client
        self._timer = self.context.loop.call_every(self.settings["pollinterval"], self.poll)

    def poll(self) -> None:
        """Read every object (and reset it with zerocounter=1); one event each."""
        if self.client is None:
            return
        stamp = time.time_ns() // 1000
        try:
            objects = self.client.list(reset=self._reset)
        except (DecodeError, OSError) as exc:  # NetlinkError is an OSError
            self.failures += 1
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            self._report(logging.ERROR, "NFACCT %s: reading the counters failed: %s",
                         self.id, reason)  # fmt: skip
            return
        if self.failures:
            self._report.flush()
            self.log.info("NFACCT %s: counters read again after %d failed polls",
                          self.id, self.failures)  # fmt: skip
            self.failures = 0
        if objects:
            self.emit_batch([self._event(obj, stamp) for obj in objects])

    def _event(self, obj: Accounting, stamp: int) -> Event:
        event: Event = {"sum.name": obj.name, "sum.pkts": obj.packets, "sum.bytes": obj.bytes}
        if self._with_object:
            event["sum"] = obj
        if self._timestamp:
            event["oob.time.sec"], event["oob.time.usec"] = divmod(stamp, 1_000_000)
        return event

    def signal(self, signo: int) -> None:
        if signo == signal.SIGUSR2:
            self.poll()

    def stop(self) -> None:
        if self.client is not None:
            self._timer.cancel()
            self._report.flush()
            self.client.close()
            self.client = None
