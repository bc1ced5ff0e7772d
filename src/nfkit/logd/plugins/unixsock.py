"""UNIXSOCK input: packets that other programs hand over a unix stream socket.

The records follow ulogd2's format (NuFW's nuauth writes it); every
multi-byte header field is big-endian::

    u32 marker        0x41c90fd4
    u16 total_size    bytes after the marker (the whole record minus 4)
    u32 version word  not checked
    u16 payload_length
    payload           an IPv4 or IPv6 packet, padded to 8 bytes
    options           u32 id, u32 length, value padded to 8 bytes; each

Options: 1 prefix, 2 input and 3 output interface (strings, NUL-terminated
or not), 4 time (u32 seconds, host order), 200 user name, 201 user id (u32,
host order), 202-205 OS name, release, version and application (strings),
206 state (u8, in ``raw.label``). :func:`encode_record` builds records.

Beyond ulogd2:

* any number of clients at once (ulogd2 rejects all but one);
* a socket file left by a daemon that died is removed at start, but only a
  socket nobody listens on; a live listener or another kind of file fails
  the start with the path and what to do;
* ``owner``/``group`` names are checked when the configuration is read;
* a record that does not follow the format is skipped, counted and logged
  (rate limited); a client whose stream cannot be followed any more (a bad
  marker) is disconnected, the others go on; ulogd2 exits on a read error;
* several stacks may share the instance (the same id in several ``stack=``).
"""

from __future__ import annotations

import enum
import errno
import functools
import grp
import logging
import os
import pwd
import socket
import stat
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from nfkit.logd.errors import ConfigError, StartError
from nfkit.logd.keys import Event, KeyType, keys
from nfkit.logd.plugin import DataType, InputPlugin, Option, Plugin
from nfkit.logd.registry import register
from nfkit.netlink.errors import DecodeError
from nfkit.ratelimit import LogLimiter

T = KeyType

MARKER = 0x41C90FD4
#: marker, total_size: enough to find where a record ends.
RECORD_PREFIX = struct.Struct("!IH")
#: marker, total_size, version word, payload_length.
RECORD_HEADER = struct.Struct("!IHIH")
OPTION_HEADER = struct.Struct("!II")
ALIGN = 8
#: total_size counts itself: the smallest value that delimits a record.
MIN_TOTAL_SIZE = 2
MAX_TOTAL_SIZE = 0xFFFF

UNIX_PATH_MAX = 108
LISTEN_BACKLOG = 10
#: Clients served at once; more are refused (each holds at most one record).
MAX_CLIENTS = 64
READ_SIZE = 65536
#: Reads per client and wake-up, so that one busy client cannot starve the others.
READS_PER_WAKEUP = 8
ACCEPTS_PER_WAKEUP = 16

_PEERCRED = struct.Struct("3i")
_FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}


class RecordOption(enum.IntEnum):
    PREFIX = 1
    IN = 2
    OUT = 3
    TIME = 4
    USER = 200
    USER_ID = 201
    OS_NAME = 202
    OS_RELEASE = 203
    OS_VERSION = 204
    APP_NAME = 205
    STATE = 206


OPTION_KEYS: dict[int, str] = {
    RecordOption.PREFIX: "oob.prefix",
    RecordOption.IN: "oob.in",
    RecordOption.OUT: "oob.out",
    RecordOption.TIME: "oob.time.sec",
    RecordOption.USER: "nufw.user.name",
    RecordOption.USER_ID: "nufw.user.id",
    RecordOption.OS_NAME: "nufw.os.name",
    RecordOption.OS_RELEASE: "nufw.os.rel",
    RecordOption.OS_VERSION: "nufw.os.vers",
    RecordOption.APP_NAME: "nufw.app.name",
    RecordOption.STATE: "raw.label",
}
#: Options holding a number (host byte order, as ulogd2 reads it); the others are strings.
NUMBER_LAYOUTS: dict[int, struct.Struct] = {
    RecordOption.TIME: struct.Struct("=I"),
    RecordOption.USER_ID: struct.Struct("=I"),
    RecordOption.STATE: struct.Struct("B"),
}


class MalformedRecord(DecodeError):
    """A record whose lengths do not add up; the stream goes on after it."""


def align(length: int) -> int:
    """``length`` rounded up to the record's 8-byte alignment."""
    return (length + ALIGN - 1) & ~(ALIGN - 1)


def _padded(data: bytes) -> bytes:
    return data + bytes(align(len(data)) - len(data))


def encode_record(packet: bytes, options: Iterable[tuple[int, str | int | bytes]] = ()) -> bytes:
    """One record as a client writes it.

    ``options`` are ``(id, value)``: a string is sent NUL-terminated, an
    integer in the option's layout (:data:`NUMBER_LAYOUTS`), bytes as they are.
    """
    parts = [_padded(packet)]
    for option, value in options:
        if isinstance(value, str):
            raw = value.encode("utf-8", "surrogateescape") + b"\0"
        elif isinstance(value, int):
            layout = NUMBER_LAYOUTS.get(option)
            if layout is None:
                raise ValueError(f"option {option} takes a string or bytes, not a number")
            raw = layout.pack(value)
        else:
            raw = value
        parts += [OPTION_HEADER.pack(option, len(raw)), _padded(raw)]
    body = b"".join(parts)
    total_size = RECORD_HEADER.size - 4 + len(body)
    if total_size > MAX_TOTAL_SIZE:
        raise ValueError(f"a record holds at most {MAX_TOTAL_SIZE + 4} bytes, not {total_size + 4}")
    return RECORD_HEADER.pack(MARKER, total_size, 0, len(packet)) + body


#: The options of a record, decoded: keys and values, ids of the unknown options.
DecodedOptions = tuple[Event, tuple[int, ...]]
#: Distinct option blocks a decoder remembers (a client's records mostly repeat theirs).
OPTION_CACHE_SIZE = 1024


def decode_record(
    record: bytes, cache: dict[bytes, DecodedOptions] | None = None
) -> tuple[Event, tuple[int, ...]]:
    """The event of one whole record, and the ids of the options it did not know.

    ``cache`` maps option blocks already seen to their decoding: one client's
    records mostly carry the same prefix, interfaces and time.

    Raises:
        MalformedRecord: the record's lengths do not add up.
    """
    end = len(record)
    if end < RECORD_HEADER.size:
        raise MalformedRecord(
            f"record of {end} bytes, shorter than its {RECORD_HEADER.size}-byte header"
        )
    length = RECORD_HEADER.unpack_from(record)[3]
    start = RECORD_HEADER.size
    if start + length > end:
        raise MalformedRecord(f"packet of {length} bytes in a record of {end}")
    payload = record[start : start + length]
    event: Event = {
        "oob.family": _FAMILIES.get(payload[0] >> 4, 0) if payload else 0,
        "raw.pkt": payload,
        "raw.pktlen": length,
        "raw.pktcount": 1,
    }
    # The last option's padding may be left out, the payload's too when no option follows.
    position = start + align(length)
    if position >= end:
        return event, ()
    block = record[position:]
    decoded = cache.get(block) if cache is not None else None
    if decoded is None:
        decoded = _decode_options(block)
        if cache is not None:
            if len(cache) >= OPTION_CACHE_SIZE:
                cache.clear()
            cache[block] = decoded
    event.update(decoded[0])
    return event, decoded[1]


def _decode_options(block: bytes) -> DecodedOptions:
    values: Event = {}
    unknown: list[int] = []
    position, end = 0, len(block)
    while position < end:
        if end - position < OPTION_HEADER.size:
            raise MalformedRecord(f"{end - position} bytes after the options: a cut option header")
        option, size = OPTION_HEADER.unpack_from(block, position)
        value_at = position + OPTION_HEADER.size
        if value_at + size > end:
            raise MalformedRecord(
                f"option {option} declares {size} bytes, the record has {end - value_at} left"
            )
        key = OPTION_KEYS.get(option)
        if key is None:
            unknown.append(option)
        else:
            layout = NUMBER_LAYOUTS.get(option)
            if layout is None:
                raw = block[value_at : value_at + size]
                nul = raw.find(b"\0")
                values[key] = (raw if nul < 0 else raw[:nul]).decode("utf-8", "surrogateescape")
            elif size < layout.size:
                raise MalformedRecord(f"option {option} of {size} bytes, {layout.size} needed")
            else:
                values[key] = layout.unpack_from(block, value_at)[0]
        position = value_at + align(size)
    return values, tuple(unknown)


class _Client:
    """One connected client: its socket and the bytes of a record not yet complete."""

    __slots__ = ("buffer", "name", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        try:
            pid, uid, _gid = _PEERCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            )
            self.name = f"client pid {pid} (uid {uid})"
        except OSError:
            self.name = f"client fd {sock.fileno()}"


class RecordCounts:
    """What one socket received and rejected; the daemon logs its summary line."""

    def __init__(self, owner: str, path: str) -> None:
        self.owner = owner
        self.path = path
        self.received = self.malformed = self.unknown_options = 0
        self.disconnected = self.refused = 0
        self._reported: tuple[int, ...] = (0,) * 5

    def statistics(self) -> dict[str, int]:
        return {
            "received": self.received,
            "malformed": self.malformed,
            "unknown_options": self.unknown_options,
            "disconnected": self.disconnected,
            "refused": self.refused,
        }

    def summary(self, force: bool = False) -> str | None:
        """One line for the daemon's log, when something changed (or ``force``)."""
        state = tuple(self.statistics().values())
        if not force and state == self._reported:
            return None
        self._reported = state
        return (
            f"UNIXSOCK {self.path}: {self.received} records received, {self.malformed} "
            f"malformed records skipped, {self.unknown_options} unknown options ignored, "
            f"{self.disconnected} clients disconnected for garbage, {self.refused} refused"
        )


def _lookup(kind: str, name: str, resolve: Callable[[str], Any], where: str) -> int:
    """The uid/gid of ``name`` (a name or a number); -1 (unchanged) for ""."""
    if not name:
        return -1
    if name.isdigit():
        return int(name)
    try:
        return int(resolve(name)[2])
    except KeyError:
        raise ConfigError(
            f"unknown {kind} {name!r} for the socket", where, f"give an existing {kind} name or id"
        ) from None


@register
class UNIXSOCK(InputPlugin):
    name = "UNIXSOCK"
    summary = "packets sent by other programs over a unix stream socket (ulogd2/NuFW records)"
    output_type = DataType.RAW
    needs_net_admin = False
    options = (
        Option("socket_path", str, "/var/run/ulogd/ulogd2.sock"),
        Option("bufsize", int, 0, help="largest record accepted, in bytes (0: up to 64 KiB)"),
        Option("perms", int, 0o600, help="mode of the socket file (octal with a leading 0)"),
        Option("owner", str, "", help="user owning the socket file"),
        Option("group", str, "", help="group owning the socket file"),
    )
    output_keys = keys(
        ("raw.mac", T.RAW),
        ("raw.pkt", T.RAW),
        ("raw.pktlen", T.UINT32),
        ("raw.pktcount", T.UINT32),
        ("oob.prefix", T.STRING),
        ("oob.time.sec", T.UINT32),
        ("oob.time.usec", T.UINT32),
        ("oob.mark", T.UINT32),
        ("oob.in", T.STRING),
        ("oob.out", T.STRING),
        ("oob.hook", T.UINT8),
        ("raw.mac_len", T.UINT16),
        ("oob.seq.local", T.UINT32),
        ("oob.seq.global", T.UINT32),
        ("oob.family", T.UINT8),
        ("oob.protocol", T.UINT16),
        ("oob.uid", T.UINT32),
        ("oob.gid", T.UINT32),
        ("raw.label", T.UINT8),
        ("raw.type", T.UINT16),
        ("raw.mac.saddr", T.RAW),
        ("raw.mac.addrlen", T.UINT16),
        ("nufw.user.name", T.STRING),
        ("nufw.user.id", T.UINT32),
        ("nufw.os.name", T.STRING),
        ("nufw.os.rel", T.STRING),
        ("nufw.os.vers", T.STRING),
        ("nufw.app.name", T.STRING),
    )

    _server: socket.socket | None = None

    def configure(self, upstream: Sequence[Plugin]) -> None:
        settings = self.settings
        path = settings["socket_path"]
        if not path or len(os.fsencode(path)) >= UNIX_PATH_MAX:
            raise ConfigError(
                f"socket_path must hold 1 to {UNIX_PATH_MAX - 1} bytes, not {len(path)}",
                settings.where("socket_path"),
                "choose a shorter path",
            )
        if not 0 <= settings["perms"] <= 0o7777:
            raise ConfigError(
                f"perms {settings['perms']:#o} is not a file mode",
                settings.where("perms"),
                "write the mode in octal with a leading 0, e.g. perms=0660",
            )
        if settings["bufsize"] < 0:
            raise ConfigError(
                "bufsize cannot be negative", settings.where("bufsize"), "use 0 or a size in bytes"
            )
        self._uid = _lookup("user", settings["owner"], pwd.getpwnam, settings.where("owner"))
        self._gid = _lookup("group", settings["group"], grp.getgrnam, settings.where("group"))

    # -- start and stop ----------------------------------------------------------

    def start(self) -> None:
        path = self.path = self.settings["socket_path"]
        counts = self.context.shared("unixsock", path, lambda: RecordCounts(self.id, path))
        if counts.owner != self.id:
            raise StartError(
                f"socket_path {path} is already used by UNIXSOCK instance {counts.owner}",
                self.settings.where("socket_path"),
                f"give each instance its own socket_path, or write {counts.owner}:UNIXSOCK "
                "in every stack that should read it",
            )
        self.counts: RecordCounts = counts
        self._clients: dict[int, _Client] = {}
        self._max_record = self.settings["bufsize"] or MAX_TOTAL_SIZE + 4
        self._report = LogLimiter(self.log, f"UNIXSOCK {self.id}")
        self._option_cache: dict[bytes, DecodedOptions] = {}
        try:
            self._listen(path)
        except BaseException:
            self.context.release("unixsock", path)
            raise

    def _listen(self, path: str) -> None:
        self._remove_stale(path)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            server.bind(path)
        except OSError as exc:
            server.close()
            raise StartError(
                f"cannot create the unix socket {path}: {exc.strerror}",
                self.settings.where("socket_path"),
                _BIND_FIXES.get(exc.errno or 0, "check the path and its directory"),
            ) from None
        try:
            st = os.stat(path)
            self._identity = (st.st_dev, st.st_ino)
            os.chmod(path, self.settings["perms"])
            if self._uid != -1 or self._gid != -1:
                os.chown(path, self._uid, self._gid)
            server.listen(LISTEN_BACKLOG)
        except OSError as exc:
            server.close()
            os.unlink(path)
            ownership = exc.errno == errno.EPERM
            raise StartError(
                f"cannot set up the unix socket {path}: {exc.strerror}",
                self.settings.where("owner" if ownership else "perms"),
                "changing the owner or group needs root" if ownership else "check perms",
            ) from None
        server.setblocking(False)
        self._server = server
        self.context.loop.add_reader(server.fileno(), self._accept)

    def _remove_stale(self, path: str) -> None:
        """Unlink a socket file nobody listens on; refuse anything else in the way."""
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        where = self.settings.where("socket_path")
        if not stat.S_ISSOCK(mode):
            raise StartError(
                f"{path} exists and is not a socket",
                where,
                "move the file away, or set socket_path to another path",
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        probe.setblocking(False)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)
            self.log.info("UNIXSOCK %s: removed the stale socket %s", self.id, path)
            return
        except BlockingIOError:
            pass  # a listener whose backlog is full is still alive
        except OSError as exc:
            raise StartError(
                f"cannot tell whether {path} is in use: {exc.strerror}",
                where,
                "remove the file if no program uses it, or set socket_path to another path",
            ) from None
        finally:
            probe.close()
        raise StartError(
            f"{path} is in use: another program listens on it",
            where,
            "stop that program (another ulogd or nfkit logd?) or set socket_path to another path",
        )

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        for client in list(self._clients.values()):
            self._close(client)
        self.context.loop.remove_reader(server.fileno())
        server.close()
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._identity:
                os.unlink(self.path)
        except OSError:
            pass  # already gone, or replaced by someone else's: leave it
        self._report.flush()
        self.context.release("unixsock", self.path)

    # -- clients -----------------------------------------------------------------

    def _accept(self) -> None:
        assert self._server is not None
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                sock, _address = self._server.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                self._report(logging.WARNING, "UNIXSOCK %s: accept failed: %s", self.id, exc)
                return
            if len(self._clients) >= MAX_CLIENTS:
                self.counts.refused += 1
                self._report(logging.WARNING,
                             "UNIXSOCK %s: %d clients already connected, refusing one more",
                             self.id, MAX_CLIENTS)  # fmt: skip
                sock.close()
                continue
            sock.setblocking(False)
            client = _Client(sock)
            self._clients[sock.fileno()] = client
            self.context.loop.add_reader(sock.fileno(), functools.partial(self._read, client))
            self.log.debug("UNIXSOCK %s: %s connected", self.id, client.name)

    def _close(self, client: _Client) -> None:
        fd = client.sock.fileno()
        if self._clients.get(fd) is client:
            del self._clients[fd]
            self.context.loop.remove_reader(fd)
            client.sock.close()

    def _read(self, client: _Client) -> None:
        events: list[Event] = []
        try:
            for _ in range(READS_PER_WAKEUP):
                if self._clients.get(client.sock.fileno()) is not client:
                    return  # closed by an earlier callback of this wake-up
                try:
                    data = client.sock.recv(READ_SIZE)
                except BlockingIOError:
                    return
                except OSError as exc:
                    self._report(logging.WARNING, "UNIXSOCK %s: %s: read error: %s",
                                 self.id, client.name, exc)  # fmt: skip
                    self._close(client)
                    return
                if not data:
                    if client.buffer:
                        self._skip(client, f"connection closed {len(client.buffer)} bytes "
                                           "into a record")  # fmt: skip
                    self.log.debug("UNIXSOCK %s: %s disconnected", self.id, client.name)
                    self._close(client)
                    return
                client.buffer += data
                if not self._decode(client, events):
                    return
        finally:
            if events:
                self.counts.received += len(events)
                self.emit_batch(events)

    def _decode(self, client: _Client, events: list[Event]) -> bool:
        """Turn the client's complete records into ``events``; False if it was dropped."""
        buffer = client.buffer
        end = len(buffer)
        position = 0
        cache = self._option_cache
        with memoryview(buffer) as view:
            while end - position >= RECORD_PREFIX.size:
                marker, total_size = RECORD_PREFIX.unpack_from(view, position)
                if marker != MARKER or total_size < MIN_TOTAL_SIZE:
                    self.counts.disconnected += 1
                    self._report(logging.WARNING,
                                 "UNIXSOCK %s: %s sent bytes that do not start a record "
                                 "(marker 0x%08x, expected 0x%08x): disconnected",
                                 self.id, client.name, marker, MARKER)  # fmt: skip
                    self._close(client)
                    return False
                size = total_size + 4
                if end - position < size:
                    break
                if size > self._max_record:
                    self._skip(client, f"record of {size} bytes, larger than bufsize")
                else:
                    record = view[position : position + size].tobytes()
                    try:
                        event, unknown = decode_record(record, cache)
                    except MalformedRecord as exc:
                        self._skip(client, str(exc))
                    else:
                        events.append(event)
                        if unknown:
                            self._unknown(client, unknown)
                position += size
        del buffer[:position]
        return True

    def _unknown(self, client: _Client, options: tuple[int, ...]) -> None:
        self.counts.unknown_options += len(options)
        self._report(logging.WARNING, "UNIXSOCK %s: %s: unknown option %s ignored",
                     self.id, client.name, ", ".join(map(str, options)))  # fmt: skip

    def _skip(self, client: _Client, reason: str) -> None:
        self.counts.malformed += 1
        self._report(logging.WARNING, "UNIXSOCK %s: %s: record skipped: %s",
                     self.id, client.name, reason)  # fmt: skip


_BIND_FIXES = {
    errno.ENOENT: "create the directory first (mkdir -p), or set socket_path elsewhere",
    errno.EACCES: "run as a user that may write to the directory, or set socket_path elsewhere",
    errno.EADDRINUSE: "another program just took the path; stop it or set socket_path elsewhere",
}
