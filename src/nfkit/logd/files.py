"""Appending output files shared by the file-writing plugins.

Every file output behaves the same way: opened in append mode at start (an
unwritable path fails the start with a clear message), flushed after every
record with ``sync=1`` and at least once a second otherwise (ulogd2 could keep
records in its stdio buffer indefinitely), reopened on SIGHUP for log
rotation, flushed on stop.
"""

from __future__ import annotations

import os
from typing import IO, TYPE_CHECKING, Any

from nfkit.logd.errors import StartError

if TYPE_CHECKING:
    from nfkit.logd.plugin import Plugin

FLUSH_INTERVAL = 1.0


class OutputFile:
    """An append-mode file with ulogd's ``sync`` semantics.

    Parameters:
        path: file to append to.
        binary: bytes records instead of text.
        sync: flush after every record.
        where: the option's location, for error messages.
        loop: the daemon loop, for the periodic flush (None: no timer).
    """

    def __init__(
        self, path: str, binary: bool = False, sync: bool = False, where: str = "", loop: Any = None
    ) -> None:
        self.path = path
        self.binary = binary
        self.sync = sync
        self.where = where
        self.loop = loop
        self.file: IO[Any] | None = None
        self._timer: Any = None
        self._dirty = False

    @classmethod
    def opened_for(cls, plugin: Plugin, binary: bool = False) -> OutputFile:
        """The file of ``plugin``'s ``file`` and ``sync`` options, opened (or StartError)."""
        settings = plugin.settings
        out = cls(
            settings["file"],
            binary=binary,
            sync=bool(settings["sync"]),
            where=settings.where("file"),
            loop=plugin.context.loop,
        )
        out.open()
        return out

    def open(self) -> None:
        try:
            self.file = open(  # noqa: SIM115 - lives as long as the plugin
                self.path,
                "ab" if self.binary else "a",
                encoding=None if self.binary else "utf-8",
                errors=None if self.binary else "surrogateescape",
            )
        except OSError as exc:
            raise StartError(
                f"cannot open output file {self.path!r}: {exc.strerror}",
                self.where,
                "create the directory, fix its permissions, or set file= to a writable path",
            ) from None
        if self.loop is not None and not self.sync and self._timer is None:
            self._timer = self.loop.call_every(FLUSH_INTERVAL, self.flush)

    @property
    def size(self) -> int:
        """Bytes in the file now (after a flush)."""
        self.flush()
        return os.fstat(self.file.fileno()).st_size if self.file else 0

    def write(self, record: Any) -> None:
        file = self.file
        if file is None:
            return
        file.write(record)
        if self.sync:
            file.flush()

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()

    def reopen(self) -> bool:
        """SIGHUP: switch to a fresh handle on the path; keep the old one on failure."""
        old = self.file
        try:
            self.open()
        except StartError:
            self.file = old
            return False
        if old is not None:
            old.close()
        return True

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.file is not None:
            self.file.close()
            self.file = None
