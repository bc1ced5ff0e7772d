"""SQLITE3: one row per event in a table of an SQLite database.

As in ulogd2, the table's columns choose what is stored: each column names
a key with ``.`` written ``_`` (``ip_saddr_str`` is ``ip.saddr.str``), and a
column that matches no key of the stack is an error. Differences:

* the columns are read when the configuration is checked, so a bad column
  is reported with the table, the file and the keys that are available;
  a column also matches a key whose own name contains ``_`` (``raw_mac_len``
  is ``raw.mac_len``), which ulogd2 cannot store;
* values are stored exactly: 32- and 64-bit counters as integers (ulogd2
  wraps them to signed 32 bits; the rare 64-bit value above 2**63-1 is
  stored as decimal text), IPv4 addresses (``IP addr`` keys) as the integer
  value of the address, 192.168.1.10 -> 3232235786 (ulogd2 stores the
  network-order word read on a little-endian host, 167880896), IPv6
  addresses as NULL (as ulogd2 2.0.9; store ``ip_saddr_str`` from IP2STR
  instead), raw data as BLOBs;
* rows are written in batches, one transaction per batch (every
  ``batch_size`` rows and at least every second); a database that refuses
  writes (locked, disk full) keeps the rows in memory and is retried; every
  row accepted is written at stop.

ulogd2's ``--info`` shows a third option line, ``Var:  (Unknown)``: its
option table declares three entries and fills two. It is not reproduced.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from nfkit.logd.db.backend import Column, quote_identifier
from nfkit.logd.db.columns import FirstColumn, map_columns
from nfkit.logd.errors import ConfigError, StartError
from nfkit.logd.keys import Event, KeyType
from nfkit.logd.plugin import ERROR, DataType, Option, Plugin, Role
from nfkit.logd.plugins._wildcard import upstream_keys
from nfkit.logd.registry import register

# A value the database refuses, for this row only.
_BAD_ROW = (
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    OverflowError,
    UnicodeEncodeError,
    ValueError,
)
_STORABLE = (int, float, str, bytes, type(None))
INT64_MAX = 2**63 - 1
SQLITE_READONLY_DBMOVED = 1032


def table_columns(path: str, table: str) -> list[str]:
    """The column names of ``table``, read without creating or changing the file.

    Raises sqlite3.Error.
    """
    uri = f"file:{urllib.parse.quote(path)}?mode=ro"
    connection = sqlite3.connect(uri, uri=True)
    try:
        # The table name is used verbatim, as ulogd2 does ("main.ulog_pkt" works).
        cursor = connection.execute(f"select * from {table} limit 0")
        return [column[0] for column in cursor.description or ()]
    finally:
        connection.close()


def storable(value: Any) -> Any:
    """A value the database refused, made storable without losing information."""
    if isinstance(value, int) and value > INT64_MAX:
        return str(value)
    if isinstance(value, str):
        # Undecodable bytes from the kernel (kept as surrogates) become \\xNN escapes.
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return value if isinstance(value, _STORABLE) else None


@register
class SQLITE3(Plugin):
    name = "SQLITE3"
    summary = "insert one row per event into an SQLite table whose columns name the keys"
    role = Role.OUTPUT
    input_type = DataType.PACKET | DataType.FLOW
    output_type = DataType.SINK
    dynamic_inputs = True
    options = (
        Option("db", str, "", mandatory=True),
        Option("table", str, "", mandatory=True),
    )

    batch_size = 500
    flush_interval = 1.0
    busy_timeout = 0.3  # ulogd2's 300 ms: a locked table must not stall packet reading long
    stop_busy_timeout_ms = 5000
    max_pending = 100_000

    connection: sqlite3.Connection | None = None
    _timer: Any = None

    def configure(self, upstream: Sequence[Plugin]) -> None:
        path, table = self.settings["db"], self.settings["table"]
        try:
            columns = table_columns(path, table)
        except sqlite3.Error as exc:
            raise ConfigError(
                f"cannot read the columns of table {table!r} in database file {path!r}: {exc}",
                self.settings.where("table"),
                "create the table first (e.g. sqlite3 FILE < /usr/share/doc/ulogd2/sqlite3.table), "
                "check db= and table=",
            ) from None
        mapping = map_columns(
            [Column(name) for name in columns],
            {key.name: key for key in upstream_keys(upstream)},
            FirstColumn.WRITTEN,
            f"table {table!r} in {path!r}",
            self.settings.where("table"),
        )
        self.columns = columns
        self.names = mapping.names
        self.address_slots = tuple(
            index for index, key in enumerate(mapping.keys) if key.type is KeyType.IPADDR
        )
        self.inputs = mapping.inputs
        self.sql = (
            f"insert into {table} ({', '.join(map(quote_identifier, columns))}) "
            f"values ({', '.join('?' * len(columns))})"
        )

    def start(self) -> None:
        self.pending: list[Sequence[Any]] = []
        self.written = 0
        self.dropped = 0
        self.rejected = 0
        self._failing = False
        self._dropped_before = 0
        self.connection = self._connect()
        loop = self.context.loop
        self._timer = loop.call_every(self.flush_interval, self.flush) if loop else None

    def _connect(self) -> sqlite3.Connection:
        path = self.settings["db"]
        try:
            return sqlite3.connect(path, timeout=self.busy_timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise StartError(
                f"cannot open database file {path!r}: {exc}",
                self.settings.where("db"),
                "check the path and its permissions",
            ) from None

    def interp(self, event: Event) -> int | None:
        get = event.get
        if self.address_slots:
            try:
                row: Sequence[Any] = self._with_addresses(list(map(get, self.names)))
            except TypeError:  # not an address from BASE: drop the event, not the daemon
                return ERROR
        else:
            row = tuple(map(get, self.names))
        pending = self.pending
        if len(pending) >= self.max_pending:
            self._drop()
            return None
        pending.append(row)
        if len(pending) >= self.batch_size and not self._failing:
            self.flush()
        return None

    def _with_addresses(self, row: list[Any]) -> list[Any]:
        for index in self.address_slots:
            address = row[index]
            if address is not None:
                # IPv4: the address as a number; IPv6 does not fit an SQLite integer.
                row[index] = int.from_bytes(address, "big") if len(address) == 4 else None
        return row

    def flush(self) -> bool:
        """Write every pending row in one transaction; False if the database refused."""
        rows = self.pending
        if not rows:
            return True
        connection = self.connection
        assert connection is not None
        self.pending = []
        try:
            try:
                self._transaction(lambda: connection.executemany(self.sql, rows))
            except _BAD_ROW:
                self._transaction(lambda: self._insert_each(rows))
        except sqlite3.Error as exc:
            self._keep(rows, exc)
            return False
        self.written += len(rows)
        if self._failing:
            self._failing = False
            self.log.info(
                "%s: writing to %s works again; %d rows were dropped meanwhile",
                self, self.settings["db"], self.dropped - self._dropped_before,
            )
        return True

    def _transaction(self, work: Callable[[], Any]) -> None:
        assert self.connection is not None
        self.connection.execute("begin")
        try:
            work()
        except BaseException:
            if self.connection.in_transaction:
                self.connection.execute("rollback")
            raise
        self.connection.execute("commit")

    def _insert_each(self, rows: list[Sequence[Any]]) -> None:
        """Row by row: a row the database refuses is stored fixed, or left out and counted."""
        assert self.connection is not None
        execute = self.connection.execute
        for row in rows:
            try:
                execute(self.sql, row)
            except _BAD_ROW:
                try:
                    execute(self.sql, [storable(value) for value in row])
                except _BAD_ROW as exc:
                    if not self.rejected:
                        self.log.error("%s: row refused by %s: %s", self, self.settings["db"], exc)
                    self.rejected += 1

    def _keep(self, rows: list[Sequence[Any]], exc: sqlite3.Error) -> None:
        """The database refuses writes (locked, full, read-only): keep the rows, retry later."""
        if not self._failing:
            self._failing = True
            self._dropped_before = self.dropped
            moved = getattr(exc, "sqlite_errorcode", None) == SQLITE_READONLY_DBMOVED
            self.log.error(
                "%s: cannot write to %s: %s%s; keeping up to %d rows, retrying every %g s",
                self, self.settings["db"], exc,
                " (the file was moved: send SIGHUP after rotating it)" if moved else "",
                self.max_pending, self.flush_interval,
            )
        self.pending = rows + self.pending

    def _drop(self) -> None:
        if self.dropped == self._dropped_before:
            self.log.error(
                "%s: %d rows are waiting for %s; dropping new rows until it accepts them",
                self, self.max_pending, self.settings["db"],
            )
        self.dropped += 1

    def reopen(self) -> None:
        """SIGHUP: write what is pending and reopen the file (it may have been moved)."""
        if self.connection is None:
            return
        try:
            fresh = self._connect()
        except StartError as exc:
            self.log.error("%s: not reopening: %s", self, exc)
            return
        self.flush()  # into the old file, if SQLite still writes to it once moved
        self.connection.close()
        self.connection = fresh
        self.flush()  # what it refused

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        connection = self.connection
        if connection is None:
            return
        # Waiting is fine now: give a busy database time to let the last rows in.
        connection.execute(f"pragma busy_timeout = {self.stop_busy_timeout_ms}")
        if not self.flush():
            self.log.error(
                "%s: %d rows could not be written to %s and are lost",
                self, len(self.pending), self.settings["db"],
            )
        if self.dropped:
            self.log.error("%s: %d rows were dropped while %s refused writes",
                           self, self.dropped, self.settings["db"])
        connection.close()
        self.connection = None
