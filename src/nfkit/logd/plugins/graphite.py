"""GRAPHITE: accounting counters to a Graphite (carbon) server, plaintext protocol.

Each event (an NFACCT object) becomes two lines on a TCP connection::

    <prefix>.<sum.name>.pkts <packets> <time>
    <prefix>.<sum.name>.bytes <bytes> <time>

``time`` is ``oob.time.sec`` when set and non-zero (NFACCT ``timestamp=1``),
else now. Unlike ulogd2, a server that is down neither fails the start nor
loses lines silently: :class:`LineSender` keeps them in a bounded buffer and
reconnects in the background, so the daemon's other stacks go on logging.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence

from nfkit.logd.errors import ConfigError, StartError
from nfkit.logd.keys import Event, KeyType, keys
from nfkit.logd.plugin import ERROR, DataType, Option, Plugin, Role
from nfkit.logd.plugins.json_output import LineSender, resolve
from nfkit.logd.registry import register

# Whitespace would split a Graphite line; control characters could forge lines.
_UNSAFE = {code: "_" for code in (*range(0x21), 0x7F)}
NAME_CACHE_SIZE = 1024


@register
class GRAPHITE(Plugin):
    name = "GRAPHITE"
    summary = "send accounting counters to a Graphite server (plaintext protocol over TCP)"
    role = Role.OUTPUT
    input_type = DataType.SUM
    output_type = DataType.SINK
    options = (
        Option("host", str, "", help="Graphite server name or address"),
        Option("port", str, "", help="its plaintext port (carbon: 2003)"),
        Option("prefix", str, "", help="metric path prefix, e.g. netfilter.nfacct"),
    )
    input_keys = keys(
        ("sum.name", KeyType.STRING),
        ("sum.pkts", KeyType.UINT64),
        ("sum.bytes", KeyType.UINT64),
        ("oob.time.sec", KeyType.UINT32),
    )
    sender: LineSender | None = None

    def configure(self, upstream: Sequence[Plugin]) -> None:
        for option in ("host", "port"):
            if not self.settings[option]:
                raise ConfigError(
                    f"no Graphite server {option}",
                    self.settings.where(option),
                    f"set {option}= in [{self.id}] (carbon listens on port 2003)",
                )
        prefix = str(self.settings["prefix"]).strip(".")
        # ulogd2 writes ".name.pkts" for an empty prefix: no leading dot here.
        self.prefix = f"{prefix}." if prefix else ""
        self._paths: dict[str, str] = {}

    def start(self) -> None:
        host, port = self.settings["host"], self.settings["port"]
        try:
            targets = resolve(host, port, socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise StartError(
                f"cannot resolve Graphite server {host}:{port}: {exc.strerror}",
                self.settings.where("host"),
                "fix host= and port= (port may be a number or a service name)",
            ) from None
        self.sender = LineSender(
            f"{self.id}:GRAPHITE", socket.SOCK_STREAM, targets, self.context.loop, self.log
        )
        self.sender.start()

    def path(self, name: str) -> str:
        """The metric path of an accounting object (cached)."""
        path = self._paths.get(name)
        if path is None:
            path = self.prefix + name.translate(_UNSAFE)
            if len(self._paths) < NAME_CACHE_SIZE:
                self._paths[name] = path
        return path

    def interp(self, event: Event) -> int | None:
        try:
            path = self.path(event["sum.name"])
            packets, octets = int(event["sum.pkts"]), int(event["sum.bytes"])
            stamp = int(event.get("oob.time.sec") or time.time())
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self.log.debug("%s: event without a usable sum.name/pkts/bytes: %r", self, exc)
            return ERROR
        sender = self.sender
        if sender is not None:
            # surrogateescape: a name that was not UTF-8 goes out as the kernel's bytes
            sender.send(f"{path}.pkts {packets} {stamp}\n".encode("utf-8", "surrogateescape"))
            sender.send(f"{path}.bytes {octets} {stamp}\n".encode("utf-8", "surrogateescape"))
        return None

    def stop(self) -> None:
        sender, self.sender = self.sender, None
        if sender is not None:
            sender.close()
