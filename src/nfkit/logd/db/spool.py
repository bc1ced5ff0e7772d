"""The spool: rows waiting for the database, in order, bounded, on disk or in memory.

Rows are stored as records: a 4-byte length, a 4-byte CRC-32 and the row in
Python's marshal format (version 4: None, bool, int, float, str, bytes, a
fraction of JSON's cost; the CRC is checked before a record is loaded, and
the directory is the daemon's own, mode 0700). Segments of the first
format, JSON, left by an earlier version are converted at start-up.

On disk a spool is a series of segment files ``<name>.<sequence>.spool`` in
the spool directory, replayed in sequence order; a segment is deleted once
every row in it is stored, and ``<segment>.pos`` remembers how far replay
got, so a restart resumes there.

Durability: appended records are buffered and written to the file when
64 KiB are pending, at every :meth:`Spool.flush` (the writer calls it at
least every batch timeout) and at stop; segments are fsync'ed when full,
when rows are put back in front (:meth:`Spool.prepend`) and at close. A
crash of the daemon loses at most the rows of the last flush interval; a
crash of the machine may lose what the kernel had not written yet. A torn
or damaged record ends its segment: the rest of it is skipped and counted.

Nothing here is thread-safe: the writer calls every method under its lock.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import errno
import fcntl
import json
import logging
import marshal
import os
import pwd
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Row = Sequence[Any]

_HEADER = struct.Struct(">II")  # payload length, CRC-32 of the payload
_MAGIC = b"NFKIT-SPOOL 2\n"
_MAGIC_JSON = b"NFKIT-SPOOL 1\n"  # rows as JSON, bytes as {"b": hex}
_MARSHAL_VERSION = 4
_WRITE_AT = 64 * 1024
_FIRST_SEQUENCE = 10**9  # room below for rows put back in front
MAX_SHARING = 64  # instances of one id (in as many stacks) sharing a spool directory
#: Bytes read from a segment at a time: a batch of rows, not the rest of a segment
#: (reading all of it for every batch made replay quadratic in the segment's size).
_READ_CHUNK = 1 << 20


def _plain(value: Any) -> Any:
    """A value of a subclass (an IntEnum...) as its base type, which marshal takes."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"cannot spool a {type(value).__name__}")


def encode(row: Row) -> bytes:
    """One record: header and the row (lone surrogates in text kept)."""
    try:
        payload = marshal.dumps(row, _MARSHAL_VERSION)  # type: ignore[arg-type]  # a list
    except ValueError:
        payload = marshal.dumps([_plain(value) for value in row], _MARSHAL_VERSION)
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def decode(record: bytes) -> list[Any]:
    """The row of a record returned by :meth:`Spool.read`."""
    return list(marshal.loads(record[_HEADER.size :]))


def _decode_json(record: bytes) -> list[Any]:
    """The row of a record of the JSON format."""
    def hex_bytes(obj: dict[str, Any]) -> bytes:
        return bytes.fromhex(obj["b"])

    payload = record[_HEADER.size :].decode("utf-8", "surrogatepass")
    result: list[Any] = json.loads(payload, object_hook=hex_bytes)
    return result


class Spool(abc.ABC):
    """Rows in order: appended at the end, read and consumed at the front.

    Parameters:
        max_bytes: records beyond this total are refused (:meth:`append` is False).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        #: bytes of records held
        self.size = 0
        #: rows held
        self.rows = 0
        #: records found damaged (skipped)
        self.damaged = 0

    def __bool__(self) -> bool:
        return self.rows > 0

    def append(self, row: Row) -> bool:
        """Add a row at the end; False (not stored) when the spool is full."""
        record = encode(row)
        if self.size + len(record) > self.max_bytes:
            return False
        self._append(record)
        self.size += len(record)
        self.rows += 1
        return True

    def prepend(self, rows: Sequence[Row]) -> None:
        """Put rows older than every row held in front of them (even beyond max_bytes)."""
        if rows:
            records = [encode(row) for row in rows]
            self._prepend(records)
            self.size += sum(map(len, records))
            self.rows += len(records)

    @abc.abstractmethod
    def read(self, limit: int) -> list[bytes]:
        """Up to ``limit`` records from the front, left in place until :meth:`consume`."""

    def consume(self, records: Sequence[bytes]) -> None:
        """Forget the records of the last :meth:`read` (they are stored)."""
        self._consume(records)
        self.size -= sum(map(len, records))
        self.rows -= len(records)

    @abc.abstractmethod
    def flush(self) -> None:
        """Hand buffered records to the storage."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flush, and release files (the rows stay for the next start)."""

    @abc.abstractmethod
    def _append(self, record: bytes) -> None: ...

    @abc.abstractmethod
    def _prepend(self, records: list[bytes]) -> None: ...

    @abc.abstractmethod
    def _consume(self, records: Sequence[bytes]) -> None: ...


class MemorySpool(Spool):
    """A spool in memory (ulogd's ``backlog_memcap``): lost when the daemon stops."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes)
        self._records: collections.deque[bytes] = collections.deque()

    def read(self, limit: int) -> list[bytes]:
        records = self._records
        return [records[index] for index in range(min(limit, len(records)))]

    def _append(self, record: bytes) -> None:
        self._records.append(record)

    def _prepend(self, records: list[bytes]) -> None:
        self._records.extendleft(reversed(records))

    def _consume(self, records: Sequence[bytes]) -> None:
        for _ in records:
            self._records.popleft()

    def flush(self) -> None:
        """Nothing is buffered."""

    def close(self) -> None:
        """The rows are lost with the process; the writer reports them."""


def _hand_over(directory: str, created: bool, owner: tuple[int, int]) -> None:
    """Give a directory created for the daemon to its user; check that an existing one is
    writable for them (OSError EACCES if not)."""
    uid, gid = owner
    if created:
        os.chown(directory, uid, gid)
        return
    status = os.stat(directory)
    try:
        entry = pwd.getpwuid(uid)
        groups = set(os.getgrouplist(entry.pw_name, gid))
    except KeyError:
        groups = {gid}
    mode = status.st_mode
    writable = (
        uid == 0
        or (status.st_uid == uid and mode & 0o300 == 0o300)
        or (status.st_uid != uid and status.st_gid in groups and mode & 0o030 == 0o030)
        or (status.st_uid != uid and status.st_gid not in groups and mode & 0o003 == 0o003)
    )
    if not writable:
        raise OSError(errno.EACCES, f"not writable for uid {uid} (-u): chown it to that user")


@dataclass
class _Segment:
    sequence: int
    path: str
    #: bytes in the file (the magic included)
    end: int
    #: where replay continues
    offset: int


class FileSpool(Spool):
    """A spool in segment files of ``directory``, kept across restarts.

    Segments left by an earlier run are found at construction and come first.

    Parameters:
        directory: where the segments are (created if missing).
        name: the segments' prefix (the output instance's id).
        max_bytes: total size bound.
        log: where damaged records are reported.
        owner: (uid, gid) of the daemon after it drops privileges: a directory
            created here and this spool's files become theirs; an existing
            directory must be writable for them.

    Raises OSError when the directory cannot be used.
    """

    def __init__(
        self, directory: str, name: str, max_bytes: int, log: logging.Logger | None = None,
        owner: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(max_bytes)
        self.directory = directory
        self.log = log or logging.getLogger("nfkit.logd")
        self.segment_bytes = max(1 << 20, min(64 << 20, max_bytes // 8))
        created = not os.path.isdir(directory)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if owner is not None:
            _hand_over(directory, created, owner)
        self._lock_fd, self.name = self._claim(name)
        self._segments: list[_Segment] = []
        self._pending = bytearray()
        self._fd: int | None = None  # of the last segment, appending
        self._failing = False
        self._load()
        if owner is not None:
            for entry in os.listdir(directory):
                if entry.startswith(self.name + "."):
                    os.chown(os.path.join(directory, entry), *owner)

    # -- start-up -------------------------------------------------------------

    def _claim(self, name: str) -> tuple[int, str]:
        """Lock the first free spool of ``name``: ``name``, ``name@2``...

        The same instance id in several stacks makes several instances with
        the same options: each takes its own spool; any of them may replay
        what another left (they write the same rows to the same table).
        """
        for number in range(1, MAX_SHARING + 1):
            candidate = name if number == 1 else f"{name}@{number}"
            path = os.path.join(self.directory, candidate + ".lock")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return fd, candidate
        raise OSError(errno.EBUSY, f"{MAX_SHARING} spools of {name} are in use already")

    def _load(self) -> None:
        pattern = re.compile(re.escape(self.name) + r"\.(\d+)\.spool")
        found = sorted(
            (int(match.group(1)), entry)
            for entry in os.listdir(self.directory)
            if (match := pattern.fullmatch(entry))
        )
        for sequence, entry in found:
            path = os.path.join(self.directory, entry)
            segment = self._scan(sequence, path)
            if segment is None:
                self._remove(path)
            else:
                self._segments.append(segment)
        if self.rows:
            self.log.info(
                "spool %s: %d rows (%d bytes) from an earlier run will be written first",
                self._glob(), self.rows, self.size,
            )

    def _scan(self, sequence: int, path: str) -> _Segment | None:
        """A segment of an earlier run, counted; None if it holds nothing to replay."""
        with open(path, "rb") as file:
            data = file.read()
        if data.startswith(_MAGIC_JSON):
            data = self._convert(path, data)
        if not data.startswith(_MAGIC):
            self.log.error("spool %s: not a spool file, left alone", path)
            os.replace(path, path + ".bad")
            return None
        offset = max(len(_MAGIC), self._saved_offset(path))
        end = offset
        rows = 0
        while end < len(data):
            length = self._record_length(data, end)
            if length is None:
                self.damaged += 1
                self.log.error(
                    "spool %s: damaged record at byte %d; the %d bytes after it are skipped",
                    path, end, len(data) - end,
                )
                break
            end += length
            rows += 1
        if not rows:
            return None
        if end < len(data):
            os.truncate(path, end)
        self.size += end - offset
        self.rows += rows
        return _Segment(sequence, path, end, offset)

    def _convert(self, path: str, data: bytes) -> bytes:
        """Rewrite a JSON segment's rows still to replay in the current format; its new data."""
        at = max(len(_MAGIC_JSON), self._saved_offset(path))
        records = []
        while (length := self._record_length(data, at)) is not None:
            records.append(encode(_decode_json(data[at : at + length])))
            at += length
        converted = _MAGIC + b"".join(records) + data[at:]  # a damaged tail stays (and counts)
        with open(path + ".new", "wb") as file:
            file.write(converted)
            os.fsync(file.fileno())
        # The old offset means nothing in the new file; a crash right here replays
        # stored rows again rather than skip rows.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + ".pos")
        os.replace(path + ".new", path)
        self.log.info("spool %s: converted to the current format", path)
        return converted

    @staticmethod
    def _record_length(data: bytes, at: int) -> int | None:
        """The length of the whole record at ``at`` if it is complete and intact."""
        if at + _HEADER.size > len(data):
            return None
        length: int
        crc: int
        length, crc = _HEADER.unpack_from(data, at)
        start = at + _HEADER.size
        if start + length > len(data) or zlib.crc32(data[start : start + length]) != crc:
            return None
        return _HEADER.size + length

    @staticmethod
    def _saved_offset(path: str) -> int:
        try:
            with open(path + ".pos", "rb") as file:
                return int(file.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _glob(self) -> str:
        return os.path.join(self.directory, f"{self.name}.*.spool")

    # -- files ------------------------------------------------------------------

    def _path(self, sequence: int) -> str:
        return os.path.join(self.directory, f"{self.name}.{sequence:012d}.spool")

    def _create(self, sequence: int, records: Sequence[bytes] = ()) -> tuple[_Segment, int]:
        path = self._path(sequence)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC,
                     0o600)
        data = _MAGIC + b"".join(records)
        os.write(fd, data)
        return _Segment(sequence, path, len(data), len(_MAGIC)), fd

    def _remove(self, path: str) -> None:
        for name in (path, path + ".pos"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    def _close_fd(self, sync: bool) -> None:
        if self._fd is not None:
            if sync:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    # -- the Spool interface ---------------------------------------------------------

    def _append(self, record: bytes) -> None:
        self._pending += record
        if len(self._pending) >= _WRITE_AT:
            self.flush()

    def flush(self) -> None:
        """Write the buffered records; on a disk error they stay buffered (and counted)."""
        if not self._pending:
            return
        try:
            if self._fd is None or self._segments[-1].end >= self.segment_bytes:
                self._close_fd(sync=True)
                sequence = self._segments[-1].sequence + 1 if self._segments else _FIRST_SEQUENCE
                segment, self._fd = self._create(sequence)
                self._segments.append(segment)
            written = os.write(self._fd, self._pending)
        except OSError as exc:
            if not self._failing:
                self.log.error("spool %s: cannot write: %s; rows wait in memory",
                               self._glob(), exc.strerror)
            self._failing = True
            return
        self._failing = False
        self._segments[-1].end += written
        del self._pending[:written]

    def _prepend(self, records: list[bytes]) -> None:
        sequence = self._segments[0].sequence - 1 if self._segments else _FIRST_SEQUENCE
        segment, fd = self._create(sequence, records)
        os.fsync(fd)
        os.close(fd)
        self._segments.insert(0, segment)

    def read(self, limit: int) -> list[bytes]:
        self.flush()
        records: list[bytes] = []
        for segment in self._segments:
            if len(records) >= limit:
                break
            records += self._read_segment(segment, limit - len(records))
        return records

    @staticmethod
    def _read_segment(segment: _Segment, limit: int) -> list[bytes]:
        """Up to ``limit`` records of ``segment`` from its replay offset."""
        records: list[bytes] = []
        with open(segment.path, "rb") as file:
            file.seek(segment.offset)
            left = segment.end - segment.offset
            data, at = b"", 0
            while not records and left:  # more than one chunk only for a record larger
                chunk = file.read(min(left, _READ_CHUNK))
                if not chunk:
                    break
                left -= len(chunk)
                data, at = data[at:] + chunk, 0
                while len(records) < limit:
                    length = FileSpool._record_length(data, at)
                    if length is None:
                        break  # incomplete: the next read starts with it
                    records.append(data[at : at + length])
                    at += length
        return records

    def _consume(self, records: Sequence[bytes]) -> None:
        left = sum(map(len, records))
        while left and self._segments:
            segment = self._segments[0]
            take = min(left, segment.end - segment.offset)
            segment.offset += take
            left -= take
            if segment.offset < segment.end:
                self._save_offset(segment)
                continue
            if len(self._segments) == 1:
                self._close_fd(sync=False)
            self._segments.pop(0)
            self._remove(segment.path)

    @staticmethod
    def _save_offset(segment: _Segment) -> None:
        with open(segment.path + ".pos", "wb") as file:
            file.write(b"%d\n" % segment.offset)

    def close(self) -> None:
        self.flush()
        self._close_fd(sync=True)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = -1
