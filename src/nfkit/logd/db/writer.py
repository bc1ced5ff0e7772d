"""The writer: one thread per database output, between the daemon loop and the database.

The daemon loop only appends rows (:meth:`Writer.put`) and never waits for
the database. Rows flow through, in order:

1. the memory queue (``queue_rows`` rows), written in batches of
   ``batch_size`` rows or every ``batch_timeout`` seconds, whichever first;
2. the spool (:mod:`nfkit.logd.db.spool`), whenever the queue is full, the
   database is unreachable, or older rows are still spooled. Once the
   database is back, the spool is replayed before any new row, and new
   rows go to the queue again when it is empty.

A row the database refuses (:class:`RowRejected`) is found by splitting its
batch and goes to the reject file with the reason; the others are stored.
When the spool is full, rows are dropped, counted and reported.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from nfkit.logd.db.backend import (
    Backend,
    DatabaseError,
    DatabaseMisconfigured,
    RowRejected,
)
from nfkit.logd.db.spool import Row, Spool, decode

NOTICE = 25  # the daemon's NOTICE level (ulogd's 5)


@dataclass(frozen=True)
class WriterSettings:
    """Batching, memory and retry parameters (seconds for times)."""

    batch_size: int = 1000
    batch_timeout: float = 0.2
    queue_rows: int = 10_000
    #: seconds between connection attempts; 0: never reconnect (ulogd2's
    #: "permanently disabling plugin"), rows are spooled for the next start.
    reconnect: float = 2.0
    #: how long stop() lets the thread write what is left in memory.
    stop_timeout: float = 10.0


#: seconds stop() waits beyond ``stop_timeout`` for a write in progress
STOP_GRACE = 5.0


class Unfinished(Exception):
    """The database failed in the middle of a batch; ``rows`` are not stored yet."""

    def __init__(self, error: DatabaseError, rows: list[Row]) -> None:
        super().__init__(str(error))
        self.error = error
        self.rows = rows


class RejectFile:
    """Rows the database refused, one JSON object per line: time, reason, row.

    The file is opened for each write (rejects are rare), so it can be
    rotated without a signal. Without a path the rows go to the log.
    """

    def __init__(self, path: str, table: str, columns: Sequence[str], log: logging.Logger):
        self.path = path
        self.table = table
        self.columns = tuple(columns)
        self.log = log

    def write(self, row: Row, reason: str) -> None:
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "table": self.table,
            "reason": reason,
            "row": dict(zip(self.columns, map(_jsonable, row), strict=True)),
        }
        line = json.dumps(record, ensure_ascii=False)
        if self.path:
            try:
                with open(self.path, "a", encoding="utf-8", errors="backslashreplace") as file:
                    file.write(line + "\n")
                return
            except OSError as exc:
                self.log.error("cannot write reject file %s: %s", self.path, exc.strerror)
        self.log.error("row refused by the database: %s", line)


def _jsonable(value: Any) -> Any:
    return value.hex() if isinstance(value, bytes | bytearray) else value


@dataclass
class Counters:
    """What happened to the rows handed to :meth:`Writer.put`."""

    #: stored in the database
    written: int = 0
    #: went through the spool
    spooled: int = 0
    #: refused by the database, in the reject file
    rejected: int = 0
    #: lost because the spool was full (or memory-only and the daemon stopped)
    dropped: int = 0


class Writer:
    """The thread writing one output's rows.

    Parameters:
        name: for messages (``pg1:PGSQL``).
        open_backend: returns a connected backend with the statement prepared;
            raises DatabaseUnreachable or DatabaseMisconfigured.
        where: describes the database for messages (never the password).
        spool: where rows wait while the database cannot take them.
        rejects: where refused rows go.
    """

    def __init__(
        self,
        name: str,
        open_backend: Callable[[], Backend],
        where: str,
        spool: Spool,
        rejects: RejectFile,
        settings: WriterSettings,
        log: logging.Logger,
        persistent_spool: bool,
    ) -> None:
        self.name = name
        self.open_backend = open_backend
        self.where = where
        self.spool = spool
        self.rejects = rejects
        self.settings = settings
        self.log = log
        self.persistent_spool = persistent_spool
        self.counters = Counters()
        self._cond = threading.Condition(threading.Lock())
        self._queue: list[Row] = []
        # Rows go to the spool (not the queue) while this is set: rows spooled
        # by an earlier run are written first.
        self._spooling = bool(spool)
        self._stopping = False
        self._stop_by = float("inf")
        self._abandoned = False
        self._in_flight: list[Row] = []
        self._dropping = False
        self._dropped_mark = 0
        self._thread = threading.Thread(target=self._run, name=f"logd {name}", daemon=True)

    # -- the daemon loop's side ---------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def put(self, rows: list[Row]) -> None:
        """Hand rows over, oldest first; never waits for the database."""
        with self._cond:
            queue = self._queue
            if not self._spooling:
                room = self.settings.queue_rows - len(queue)
                if len(rows) <= room:
                    started = not queue  # the thread waits without a deadline until now
                    queue.extend(rows)
                    if started or len(queue) >= self.settings.batch_size:
                        self._cond.notify()
                    return
                queue.extend(rows[:room])
                rows = rows[room:]
                self._spooling = True
                self._cond.notify()
            self._to_spool(rows)

    def _to_spool(self, rows: Sequence[Row]) -> None:
        """(locked) Append rows to the spool; count those that do not fit."""
        append = self.spool.append
        counters = self.counters
        for row in rows:
            if append(row):
                counters.spooled += 1
            else:
                counters.dropped += 1
        if counters.dropped != self._dropped_mark and not self._dropping:
            self._dropping = True
            self.log.error(
                "%s: spool full (%d bytes): dropping rows until the database catches up",
                self.name, self.spool.max_bytes,
            )

    def stop(self) -> None:
        """Write what is waiting for up to ``stop_timeout`` seconds, then stop.

        What the database does not take by then stays in the spool (a
        persistent one keeps it for the next start).
        """
        timeout = self.settings.stop_timeout
        with self._cond:
            self._stopping = True
            self._stop_by = time.monotonic() + timeout
            self._cond.notify()
        self._thread.join(timeout + STOP_GRACE)
        with self._cond:
            if self._thread.is_alive():
                self._abandoned = True
                self.log.error(
                    "%s: the database did not answer within %g s; keeping %d rows in the spool "
                    "(those being written may be stored twice)",
                    self.name, timeout + STOP_GRACE,
                    len(self._in_flight) + len(self._queue),
                )
                self._save_memory()
            lost = 0 if self.persistent_spool else self.spool.rows + len(self._queue)
            if self.spool.rows and self.persistent_spool:
                self.log.info(
                    "%s: %d rows stay in the spool for the next start", self.name, self.spool.rows
                )
            self.spool.close()
        if lost:
            self.counters.dropped += lost
            self.log.error(
                "%s: %d rows not written to %s are lost (no spool_dir)", self.name, lost, self.where
            )
        self.log.info("%s: %s", self.name, self.status())

    def status(self) -> str:
        c = self.counters
        return (
            f"{c.written} rows written, {c.spooled} spooled ({self.spool.rows} waiting), "
            f"{c.rejected} rejected, {c.dropped} dropped"
        )

    # -- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        except Exception:  # a bug must not lose rows silently: spool them and say so
            self.log.exception("%s: writer failed; rows are spooled from now on", self.name)
            with self._cond:
                self._spooling = True
                if not self._abandoned:
                    self._save_memory()

    def _serve(self) -> None:
        backend: Backend | None = None
        failing = False
        while True:
            if backend is None:
                if failing and (self._stopping or self.settings.reconnect <= 0):
                    return
                backend, failing = self._connect(failing)
                if backend is None:
                    self._sleep(self.settings.reconnect)
                    continue
            batch = self._take()
            if batch is None:
                backend.close()
                return
            rows, from_spool = batch
            try:
                self._store(backend, [decode(r) for r in rows] if from_spool else rows)
            except Unfinished as stop:
                backend.close()
                backend, failing = None, True
                done = len(rows) - len(stop.rows)
                if from_spool:
                    with self._cond:
                        if not self._abandoned:
                            self.spool.consume(rows[:done])
                self._outage(stop.error, [] if from_spool else rows[done:])
                continue
            with self._cond:
                self._in_flight = []
                if from_spool and not self._abandoned:
                    self.spool.consume(rows)

    def _connect(self, failing: bool) -> tuple[Backend | None, bool]:
        try:
            backend = self.open_backend()
        except DatabaseError as exc:
            if not failing:
                self._outage(exc, [])
            return None, True
        if failing:
            self.log.log(
                NOTICE, "%s: connected to %s again; writing %d spooled rows first",
                self.name, self.where, self.spool.rows,
            )
        return backend, False

    def _sleep(self, seconds: float) -> None:
        """Wait, or until stop; spooled rows reach the disk every batch timeout meanwhile."""
        deadline = time.monotonic() + seconds
        with self._cond:
            while not self._stopping:
                self.spool.flush()
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(min(left, self.settings.batch_timeout))

    def _take(self) -> tuple[list[Any], bool] | None:
        """The next batch (rows, or spool records when the flag is set); None: stop."""
        size = self.settings.batch_size
        deadline: float | None = None
        with self._cond:
            while True:
                queue = self._queue
                if self._abandoned:
                    return None
                if queue:
                    now = time.monotonic()
                    if deadline is None:
                        deadline = now + self.settings.batch_timeout
                    if len(queue) >= size or self._stopping or now >= deadline:
                        batch = queue[:size]
                        del queue[:size]
                        self._in_flight = batch
                        return batch, False
                    self._cond.wait(deadline - now)
                    continue
                if self.spool:
                    if time.monotonic() > self._stop_by:
                        return None
                    records = self.spool.read(size)
                    if records:
                        return records, True
                    self._cond.wait(self.settings.batch_timeout)  # the disk refuses: later
                    continue
                if self._spooling:
                    self._caught_up()
                if self._stopping:
                    return None
                self._cond.wait()

    def _caught_up(self) -> None:
        """(locked) Spool empty while connected: rows go to the queue again."""
        self._spooling = False
        if self._dropping:
            self._dropping = False
            self.log.error(
                "%s: caught up; %d rows were dropped while the spool was full",
                self.name, self.counters.dropped - self._dropped_mark,
            )
            self._dropped_mark = self.counters.dropped

    def _store(self, backend: Backend, rows: list[Row]) -> None:
        """Write rows; a refused row is found by splitting and goes to the reject file.

        Raises Unfinished with the rows not handled yet when the database fails:
        the rows before them are stored or rejected.
        """
        work: collections.deque[list[Row]] = collections.deque([rows])
        while work:
            part = work.popleft()
            if not part:
                continue
            try:
                backend.write(part)
            except RowRejected as exc:
                if len(part) == 1:
                    self.counters.rejected += 1
                    self.rejects.write(part[0], exc.reason)
                    continue
                index = exc.index
                if index is not None and 0 <= index < len(part):
                    pieces = [part[:index], part[index : index + 1], part[index + 1 :]]
                else:
                    half = len(part) // 2
                    pieces = [part[:half], part[half:]]
                work.extendleft(reversed(pieces))
                continue
            except DatabaseError as exc:
                raise Unfinished(exc, [row for piece in (part, *work) for row in piece]) from exc
            self.counters.written += len(part)

    def _outage(self, exc: DatabaseError, batch: list[Row]) -> None:
        """The database went away: every row in memory goes to the spool, in order."""
        fatal = isinstance(exc, DatabaseMisconfigured)
        retry = self.settings.reconnect
        self.log.error(
            "%s: %s %s: %s; rows go to the spool, %s",
            self.name,
            "the database refuses" if fatal else "no connection to",
            self.where,
            exc,
            f"reconnecting every {retry:g} s" if retry > 0 else "no reconnection (reconnect=0)",
        )
        with self._cond:
            self._spooling = True
            self._in_flight = batch
            if not self._abandoned:
                self._save_memory()

    def _save_memory(self) -> None:
        """(locked) Put the rows being written and the queue in front of the spool."""
        rows = self._in_flight + self._queue
        self._in_flight = []
        self._queue.clear()
        try:
            self.spool.prepend(rows)
        except OSError as exc:  # disk trouble: keep them in memory, in order
            self.log.error("%s: cannot spool %d rows: %s", self.name, len(rows), exc)
            self._queue[:0] = rows
            return
        self.counters.spooled += len(rows)
