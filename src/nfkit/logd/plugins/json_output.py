"""JSON: one object per event and per line, to a file or a socket.

The line is byte-for-byte what ulogd2 2.0.8 (jansson) writes: fields in stack
order, ``", "``/``": "`` separators, CIM names (``src_ip``...), no address or
raw keys, ``\\u00XX`` escapes in upper case, strings that are not valid
UTF-8 left out. One deliberate difference: the timestamp always carries its
UTC offset (``+0000`` on a UTC host, where ulogd2 drops it).

Socket modes (``tcp``, ``udp``, ``unix``) go through :class:`LineSender`:
unlike ulogd2, a peer that is down does not fail the start nor lose lines
silently; they wait in a bounded buffer while a reconnection is attempted
every few seconds.
"""

from __future__ import annotations

import collections
import errno
import os
import select
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from nfkit.logd.errors import ConfigError, StartError
from nfkit.logd.files import OutputFile
from nfkit.logd.keys import Event, Key, KeyType
from nfkit.logd.plugin import ERROR, DataType, Option, Plugin, Role
from nfkit.logd.plugins._wildcard import tuple_getter, upstream_keys
from nfkit.logd.registry import register

MODES = ("file", "tcp", "udp", "unix")
UNIX_PATH_MAX = 108
STRING_CACHE_SIZE = 4096

# jansson's escapes: short forms, other control characters as \uXXXX in upper case.
_ESCAPES = {code: f"\\u{code:04X}" for code in range(0x20)} | {
    ord('"'): '\\"', ord("\\"): "\\\\", 8: "\\b", 9: "\\t", 10: "\\n", 12: "\\f", 13: "\\r"
}

# INT64 included, as ulogd 2.0.9 does (2.0.8 left it out).
_INTEGER_TYPES = frozenset(t for t in KeyType if t.is_integer)


def json_string(text: str) -> str | None:
    """``text`` as jansson dumps it, or None when jansson would refuse it (bad UTF-8)."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: undecodable bytes from the kernel
            return None
    return '"' + text.translate(_ESCAPES) + '"'


def utc_offset(tm: time.struct_time) -> str:
    """``+HHMM``/``-HHMM``; ulogd2 prints nothing for UTC and ``+00MM`` for -00:MM."""
    seconds = tm.tm_gmtoff or 0
    sign = "-" if seconds < 0 else "+"
    minutes = abs(seconds) // 60
    return f"{sign}{minutes // 60:02d}{minutes % 60:02d}"


class _Layout:
    """How to print events that have one given set of keys (a "shape").

    ``template % values`` is the body of the line, where ``values`` is
    ``getter(event)`` with the strings JSON-encoded and the label translated.
    """

    __slots__ = ("getter", "label", "strings", "template")
    template: str
    strings: tuple[int, ...]
    label: int | None
    getter: Any

    def __init__(self, template: str, names: Sequence[str], strings: tuple[int, ...],
                 label: int | None) -> None:
        self.template = template
        self.strings = strings
        self.label = label
        self.getter = tuple_getter(names)


class LineFormat:
    """Turns events into JSON lines.

    Events of one kind (TCP over IPv4 from NFLOG, say) always hold the same
    keys in the same order, so the layout of their line — which fields,
    where, integer or string — is computed once per key set and cached; a
    line is then one ``%`` formatting of the values.

    Parameters:
        fields: the wildcard input keys, in output order.
        timestamp: emit ``timestamp`` (``@timestamp`` with ``eventv1``).
        eventv1: Logstash event v1: ``@version`` first.
        device: the ``dvc`` value.
        boolean_label: ``raw.label`` becomes ``"action": "allowed"|"blocked"``.
    """

    max_layouts = 1024

    def __init__(
        self,
        fields: Sequence[Key],
        *,
        timestamp: bool = True,
        eventv1: bool = False,
        device: str = "Netfilter",
        boolean_label: bool = False,
    ) -> None:
        # name -> (position, JSON name, is a string, is the label)
        self.fields: dict[str, tuple[int, str, bool, bool]] = {}
        for key in fields:
            is_string = key.type is KeyType.STRING
            if not is_string and key.type not in _INTEGER_TYPES:
                continue  # addresses, raw data: ulogd leaves them out
            is_label = boolean_label and key.name == "raw.label" and key.type is KeyType.UINT8
            json_name = "action" if is_label else key.cim_name or key.name
            self.fields[key.name] = (len(self.fields), json_name, is_string, is_label)
        self.timestamp = timestamp
        version = '"@version": 1, ' if eventv1 else ""
        stamp_name = '"@timestamp"' if eventv1 else '"timestamp"'
        self._open = "{" + version + (f'{stamp_name}: "' if timestamp else "")
        dvc = json_string(device) or '""'
        self._close = ('", ' if timestamp else "") + f'"dvc": {dvc}'
        self._layouts: dict[tuple[str, ...], _Layout] = {}
        self._strings: dict[str, str] = {}
        self._second = -1
        self._date = ""
        self._zone = ""
        self._plain_head = ""

    def line(self, event: Event) -> str:
        """The event as one JSON object followed by a newline."""
        shape = tuple(event)
        layout = self._layouts.get(shape)
        if layout is None:
            layout = self._layout(shape)
            if len(self._layouts) < self.max_layouts:
                self._layouts[shape] = layout
        values: tuple[Any, ...] = layout.getter(event)
        if layout.strings or layout.label is not None:
            translated = self._translate(values, layout)
            if translated is None:  # a string jansson would refuse: print without it
                bad = {key for key in shape if key in self.fields and self._refused(event[key])}
                layout = self._layout(tuple(key for key in shape if key not in bad))
                translated = self._translate(layout.getter(event), layout)
                assert translated is not None
            values = translated
        return self._head(event) + layout.template % values

    def _layout(self, shape: Sequence[str]) -> _Layout:
        """Field order is the stack's; a JSON name set twice keeps its first place
        and takes the later value, as a jansson object does."""
        fields = self.fields
        slots: dict[str, str] = {}  # JSON name -> key name, in output order
        for name in sorted((n for n in shape if n in fields), key=lambda n: fields[n][0]):
            slots[fields[name][1]] = name
        template = []
        strings = []
        label = None
        for index, (json_name, name) in enumerate(slots.items()):
            _, _, is_string, is_label = fields[name]
            if is_string:
                strings.append(index)
            if is_label:
                label = index
            conversion = "%s" if is_string or is_label else "%d"
            template.append(f", {json_string(json_name)}: ".replace("%", "%%") + conversion)
        return _Layout("".join(template) + "}\n", list(slots.values()), tuple(strings), label)

    def _translate(self, values: tuple[Any, ...], layout: _Layout) -> tuple[Any, ...] | None:
        """Strings JSON-encoded, the label as text; None if a string is refused."""
        out = list(values)
        cache = self._strings
        for index in layout.strings:
            text = out[index]
            encoded = cache.get(text)
            if encoded is None:
                encoded = json_string(text) or ""
                if len(cache) < STRING_CACHE_SIZE:
                    cache[text] = encoded
            if not encoded:
                return None
            out[index] = encoded
        if layout.label is not None:
            out[layout.label] = '"allowed"' if out[layout.label] else '"blocked"'
        return tuple(out)

    def _refused(self, value: Any) -> bool:
        return isinstance(value, str) and json_string(value) is None

    def _head(self, event: Event) -> str:
        """``{`` up to the ``dvc`` field: ``@version``, timestamp (local time)."""
        if not self.timestamp:
            return self._open + self._close
        second = event.get("oob.time.sec")
        if second is None:
            second = int(time.time())
        if second != self._second:
            tm = time.localtime(second)
            self._second = second
            self._date = time.strftime("%Y-%m-%dT%H:%M:%S", tm)
            self._zone = utc_offset(tm)
            self._plain_head = self._open + self._date + self._zone + self._close
        usec = event.get("oob.time.usec")
        if usec is None:
            return self._plain_head
        return f"{self._open}{self._date}.{usec:06d}{self._zone}{self._close}"


def resolve(host: str, port: str | int, kind: int, flags: int = 0) -> list[tuple[int, Any]]:
    """``(family, address)`` of every address ``host``/``port`` name (socket.gaierror if none)."""
    found = socket.getaddrinfo(host, port, socket.AF_UNSPEC, kind, 0, flags)
    return [(family, address) for family, _, _, _, address in found]


class LineSender:
    """Lines to a stream or datagram peer that may come and go, without blocking.

    Lines that cannot be sent at once wait in a buffer of ``capacity`` lines
    (further lines are counted and dropped while it is full) and go out, in
    order, as soon as the peer accepts them. A failed connection is retried
    after ``retry_interval`` seconds, the wait doubling after each further
    failure up to ``max_retry_interval``; a line cut by a broken stream is
    sent again whole on the next connection. Datagrams sent while a UDP peer
    is down are lost: the kernel only reports the refusal on a later send
    (that later line is kept).

    Parameters:
        label: names the instance in log messages.
        kind: socket type (stream or datagram).
        targets: ``(family, address)`` pairs; successive attempts rotate through them.
        loop: the daemon loop (retries and flushes run from its timers).
        log: the daemon's logger.
        capacity: lines kept while the peer is down or slow.
        unit: what a line is, in log messages (``messages`` for IPFIX).
        greeting: returns what a new connection must carry before the buffered
            lines (IPFIX templates); called on each connection.
    """

    retry_interval = 2.0
    max_retry_interval = 30.0
    datagram_settle = 1.0
    poll_interval = 0.1
    connect_timeout = 5.0
    stop_timeout = 1.0

    def __init__(
        self,
        label: str,
        kind: int,
        targets: Sequence[tuple[int, Any]],
        loop: Any,
        log: Any,
        capacity: int = 10000,
        unit: str = "lines",
        greeting: Callable[[], bytes] | None = None,
    ) -> None:
        self.label = label
        self.kind = kind
        self.targets = list(targets)
        self.loop = loop
        self.log = log
        self.capacity = capacity
        self.unit = unit
        self.greeting = greeting
        self._greeting_sent: bytes | None = None  # the greeting at the head of the backlog
        self.backlog: collections.deque[bytes] = collections.deque()
        self.sent_of_first = 0  # bytes of backlog[0] already written to this connection
        self.dropped = 0
        self.sock: socket.socket | None = None
        self.connected = False
        self._attempt = 0
        self._retry_delay = self.retry_interval
        self._connected_at = 0.0
        self._connect_started = 0.0
        self._timer: Any = None
        self._down_since: float | None = None
        self._dropped_reported = 0
        self._closing = False

    @property
    def peer(self) -> str:
        family, address = self._target()
        if family == socket.AF_UNIX:
            return f"unix:{address}"
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _target(self) -> tuple[int, Any]:
        return self.targets[self._attempt % len(self.targets)]

    # -- public -----------------------------------------------------------------

    def start(self) -> None:
        self._connect()

    def send(self, data: bytes) -> None:
        """Send one line now, or buffer it until the peer accepts it."""
        if self.connected and not self.backlog:
            self._send_direct(data)
        elif len(self.backlog) < self.capacity:
            self.backlog.append(data)
            if self.connected:
                self._flush()
        else:
            self._drop()

    def reconnect(self, targets: Sequence[tuple[int, Any]] | None = None) -> None:
        """SIGHUP: a fresh connection (to new ``targets``); buffered lines are kept."""
        if targets:
            self.targets = list(targets)
            self._attempt = 0
        self.log.info("%s: reconnecting to %s", self.label, self.peer)
        self._connect()

    def close(self) -> None:
        """Deliver what is buffered if the peer allows it within a second, then close."""
        self._closing = True
        self._cancel_timer()
        if self.backlog:
            self._final_flush()
        if self.backlog:
            self.log.error(
                "%s: %d buffered %s could not be delivered to %s and are lost",
                self.label, len(self.backlog), self.unit, self.peer,
            )
            self.backlog.clear()
        self._disconnect()

    # -- connection -------------------------------------------------------------

    def _connect(self) -> None:
        self._cancel_timer()
        self._disconnect()
        family, address = self._target()
        sock = socket.socket(family, self.kind)
        sock.setblocking(False)
        self.sock = sock
        code = sock.connect_ex(address)
        if code == 0:
            self._connected()
        elif code in (errno.EINPROGRESS, errno.EAGAIN):
            self._connect_started = time.monotonic()
            self._schedule(self.poll_interval, self._check_connect)
        else:
            self._failed(OSError(code, os.strerror(code)))

    def _check_connect(self) -> None:
        self._timer = None
        sock = self.sock
        if sock is None:
            return
        _, writable, _ = select.select([], [sock], [], 0)
        if writable:
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code == 0:
                self._connected()
            else:
                self._failed(OSError(code, os.strerror(code)))
        elif time.monotonic() - self._connect_started > self.connect_timeout:
            self._failed(TimeoutError(errno.ETIMEDOUT, "connection timed out"))
        else:
            self._schedule(self.poll_interval, self._check_connect)

    def _connected(self) -> None:
        assert self.sock is not None
        self.connected = True
        self._connected_at = time.monotonic()
        if self.kind == socket.SOCK_STREAM:
            # A readable stream means the peer closed it: notice it now rather
            # than when the next line goes into a dead connection.
            self.loop.add_reader(self.sock.fileno(), self._on_readable)
            self._recovered()
        self._greet()
        self._flush()

    def _recovered(self) -> None:
        """The peer takes data again: say so once, retry quickly next time."""
        self._retry_delay = self.retry_interval
        if self._down_since is not None:
            self.log.info(
                "%s: connected to %s after %.0f s; delivering %d buffered %s",
                self.label, self.peer, time.monotonic() - self._down_since, len(self.backlog),
                self.unit,
            )
            self._down_since = None

    def _delivered(self) -> None:
        """A send went through while the peer counted as down.

        A datagram peer is back only if the connection lived a while: the
        kernel reports a refusal on the send after the refused datagram, so
        the first sends of a new connection always succeed.
        """
        if time.monotonic() - self._connected_at >= self.datagram_settle:
            self._recovered()

    def _greet(self) -> None:
        """Put the greeting of a new connection in front of the buffered lines."""
        if self.greeting is not None:
            self._greeting_sent = self.greeting()
            self.backlog.appendleft(self._greeting_sent)

    def _failed(self, exc: OSError) -> None:
        """A connection attempt or a send failed: try again later."""
        if self._down_since is None:
            self._down_since = time.monotonic()
            self.log.error(
                "%s: cannot deliver to %s: %s; buffering up to %d %s, retrying every %g s"
                " at first, then less often (up to every %g s)",
                self.label, self.peer, exc.strerror or exc, self.capacity, self.unit,
                self.retry_interval, self.max_retry_interval,
            )
        self._disconnect()
        self._attempt += 1
        if not self._closing:
            self._schedule(self._retry_delay, self._connect)
            self._retry_delay = min(self._retry_delay * 2, self.max_retry_interval)

    def _disconnect(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            if self.connected and self.kind == socket.SOCK_STREAM:
                self.loop.remove_reader(sock.fileno())
            sock.close()
        self.connected = False
        self.sent_of_first = 0
        greeting, self._greeting_sent = self._greeting_sent, None
        if greeting is not None and self.backlog and self.backlog[0] is greeting:
            self.backlog.popleft()  # not delivered: the next connection gets its own

    def _on_readable(self) -> None:
        if self.sock is None:
            return
        try:
            data = self.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError as exc:
            self._failed(exc)
            return
        if not data:
            self._failed(ConnectionResetError(errno.ECONNRESET, "connection closed by the peer"))

    # -- sending ----------------------------------------------------------------

    def _send_direct(self, data: bytes) -> None:
        assert self.sock is not None
        try:
            sent = self.sock.send(data, socket.MSG_NOSIGNAL)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            if not self._oversized(exc, data):
                self.backlog.append(data)
                self._failed(exc)
            return
        if sent < len(data):
            self.backlog.append(data)
            self.sent_of_first = sent
            self._schedule(self.poll_interval, self._flush)
        elif self._down_since is not None:
            self._delivered()

    def _flush(self) -> None:
        """Send buffered lines until none is left or the peer stops accepting them."""
        self._timer = None
        backlog = self.backlog
        while backlog and self.connected:
            assert self.sock is not None
            data = backlog[0]
            try:
                sent = self.sock.send(memoryview(data)[self.sent_of_first :], socket.MSG_NOSIGNAL)
            except BlockingIOError:
                self._schedule(self.poll_interval, self._flush)
                return
            except OSError as exc:
                if self._oversized(exc, data):
                    backlog.popleft()
                    continue
                self._failed(exc)
                return
            self.sent_of_first += sent
            if self.sent_of_first < len(data):
                self._schedule(self.poll_interval, self._flush)
                return
            backlog.popleft()
            self.sent_of_first = 0
            if self._down_since is not None:
                self._delivered()
        if not backlog and self.dropped > self._dropped_reported:
            self.log.warning(
                "%s: buffer drained; %d %s were dropped while it was full",
                self.label, self.dropped - self._dropped_reported, self.unit,
            )
            self._dropped_reported = self.dropped

    def _oversized(self, exc: OSError, data: bytes) -> bool:
        """A line too long for one UDP datagram can never be sent: drop it, say so."""
        if exc.errno != errno.EMSGSIZE:
            return False
        self.log.error("%s: %d bytes do not fit in a datagram; dropped", self.label, len(data))
        return True

    def _final_flush(self) -> None:
        """At stop: blocking sends bounded by ``stop_timeout`` each."""
        try:
            if not self.connected:
                self._disconnect()
                family, address = self._target()
                self.sock = socket.socket(family, self.kind)
                self.sock.settimeout(self.stop_timeout)
                self.sock.connect(address)
                self._greet()
            assert self.sock is not None
            self.sock.settimeout(self.stop_timeout)
            while self.backlog:
                self.sock.sendall(memoryview(self.backlog[0])[self.sent_of_first :])
                self.backlog.popleft()
                self.sent_of_first = 0
        except OSError:
            return

    def _drop(self) -> None:
        if self.dropped == self._dropped_reported:
            self.log.error(
                "%s: the buffer of %d %s for %s is full; dropping new %s until it drains",
                self.label, self.capacity, self.unit, self.peer, self.unit,
            )
        self.dropped += 1

    def _schedule(self, delay: float, callback: Any) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


@register
class JSON(Plugin):
    name = "JSON"
    summary = "write every upstream key as one JSON object per line (file or socket)"
    role = Role.OUTPUT
    input_type = DataType.PACKET | DataType.FLOW | DataType.SUM
    output_type = DataType.SINK
    dynamic_inputs = True
    out: OutputFile | None = None
    sender: LineSender | None = None
    options = (
        Option("file", str, "/var/log/ulogd.json", help="output file; socket path in unix mode"),
        Option("sync", int, 0),
        Option("timestamp", int, 1),
        Option("eventv1", int, 0),
        Option("device", str, "Netfilter"),
        Option("boolean_label", int, 0),
        Option("mode", str, "file"),
        Option("host", str, "127.0.0.1"),
        Option("port", str, "12345"),
    )

    def configure(self, upstream: Sequence[Plugin]) -> None:
        mode = str(self.settings["mode"]).lower()
        if mode not in MODES:
            raise ConfigError(
                f"unknown mode {self.settings['mode']!r}",
                self.settings.where("mode"),
                f"use one of: {', '.join(MODES)}",
            )
        self.mode = mode
        if mode == "unix":
            path = self.settings["file"]
            if not path or len(path.encode()) >= UNIX_PATH_MAX:
                raise ConfigError(
                    f"unix socket path {path!r} is empty or longer than {UNIX_PATH_MAX - 1} bytes",
                    self.settings.where("file"),
                    "set file= to the path of the listening unix stream socket",
                )
        fields = upstream_keys(upstream)
        self.format = LineFormat(
            fields,
            timestamp=bool(self.settings["timestamp"]),
            eventv1=bool(self.settings["eventv1"]),
            device=self.settings["device"],
            boolean_label=bool(self.settings["boolean_label"]),
        )
        printed = set(self.format.fields) | {"oob.time.sec", "oob.time.usec"}
        self.inputs = tuple(k for k in fields if k.name in printed)

    def start(self) -> None:
        if self.mode == "file":
            self.out = OutputFile.opened_for(self)
        else:
            self.sender = self._sender()
            self.sender.start()

    def _sender(self) -> LineSender:
        kind = socket.SOCK_DGRAM if self.mode == "udp" else socket.SOCK_STREAM
        return LineSender(f"{self.id}:JSON", kind, self._targets(), self.context.loop, self.log)

    def _targets(self) -> list[tuple[int, Any]]:
        """Where to connect: the unix path, or every address ``host``/``port`` resolve to."""
        if self.mode == "unix":
            return [(socket.AF_UNIX, self.settings["file"])]
        kind = socket.SOCK_DGRAM if self.mode == "udp" else socket.SOCK_STREAM
        host, port = self.settings["host"], self.settings["port"]
        try:
            return resolve(host, port, kind)
        except socket.gaierror as exc:
            raise StartError(
                f"cannot resolve {host}:{port} for JSON mode {self.mode}: {exc.strerror}",
                self.settings.where("host"),
                "fix host= and port= (port may be a number or a service name)",
            ) from None

    def interp(self, event: Event) -> int | None:
        try:
            line = self.format.line(event)
        except (TypeError, ValueError, AttributeError) as exc:
            # A value of an unexpected type from a filter: drop the event, not the daemon.
            self.log.debug("%s: cannot format event: %s", self, exc)
            return ERROR
        if self.out is not None:
            self.out.write(line)
        elif self.sender is not None:
            self.sender.send(line.encode())
        return None

    def reopen(self) -> None:
        if self.out is not None:
            if not self.out.reopen():
                self.log.error("%s: cannot reopen %s; still writing to the old file", self,
                               self.out.path)
        elif self.sender is not None:
            try:
                targets = self._targets()  # the name may point elsewhere now
            except StartError as exc:
                self.log.error("%s: %s; keeping the previous address", self, exc.what)
                targets = []
            self.sender.reconnect(targets)

    def stop(self) -> None:
        out, self.out = self.out, None
        if out is not None:
            out.close()
        sender, self.sender = self.sender, None
        if sender is not None:
            sender.close()
