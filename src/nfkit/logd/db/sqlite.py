"""The SQLite backend (stdlib ``sqlite3``), for DBI with ``dbtype="sqlite3"``.

``db`` is the database file's path; it must exist (with its tables), it is
never created. SQLite has no stored functions or procedures: ``procedure``
must be ``INSERT`` or ``INSERT INTO table``. A batch is one transaction; a
locked database counts as unreachable (the rows wait in the spool).
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from collections.abc import Sequence
from typing import Any

from nfkit.logd.db.backend import (
    Backend,
    Column,
    DatabaseError,
    DatabaseMisconfigured,
    DatabaseUnreachable,
    Name,
    RowRejected,
    Statement,
    StatementKind,
)
from nfkit.logd.db.backend import quote_identifier as quote

BUSY_TIMEOUT = 1.0
_ROW_ERRORS = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError, OverflowError,
               UnicodeEncodeError, ValueError)


class SqliteBackend(Backend):
    dbtype = "sqlite3"

    connection: sqlite3.Connection | None = None
    _sql = ""

    def connect(self) -> None:
        path = self.params.database
        uri = f"file:{urllib.parse.quote(path)}?mode=rw"
        try:
            self.connection = sqlite3.connect(
                uri, uri=True, timeout=BUSY_TIMEOUT, isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise DatabaseMisconfigured(
                f"cannot open database file {path!r}: {exc}",
                "create the file with its tables first (sqlite3 FILE < schema.sql), check db=",
                option="db",
            ) from None

    def close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.close()

    def _cursor(self) -> sqlite3.Connection:
        if self.connection is None:
            raise DatabaseUnreachable("not connected")
        return self.connection

    def columns(self, table: Name) -> list[Column]:
        name = table.render(quote, self.fold)
        try:
            found = self._cursor().execute(
                f"SELECT name, type FROM pragma_table_info({quote(table.last)}"
                + (f", {quote(table.parts[0])})" if len(table.parts) == 2 else ")")
            ).fetchall()
        except sqlite3.Error as exc:
            raise DatabaseMisconfigured(str(exc), "check table=") from None
        if not found:
            raise DatabaseMisconfigured(
                f"no table or view {name} in {self.params.database!r}",
                "create it first, or check table=",
            )
        return [Column(column, str(kind).lower()) for column, kind in found]

    def prepare(self, statement: Statement) -> Sequence[Column]:
        if statement.kind not in (StatementKind.INSERT, StatementKind.INSERT_INTO):
            raise DatabaseMisconfigured(
                "SQLite has no stored functions or procedures",
                'write procedure="INSERT" (or "INSERT INTO table")',
                option="procedure",
            )
        self._sql = statement.sql(quote, "?", self.fold)
        return statement.columns

    def write(self, rows: Sequence[Sequence[Any]]) -> None:
        connection = self._cursor()
        try:
            connection.execute("BEGIN")
            try:
                connection.executemany(self._sql, rows)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        except _ROW_ERRORS as exc:
            raise RowRejected(str(exc)) from None
        except sqlite3.OperationalError as exc:
            raise self._operational(exc) from None
        except sqlite3.Error as exc:
            raise DatabaseUnreachable(str(exc)) from None

    def _operational(self, exc: sqlite3.OperationalError) -> DatabaseError:
        message = str(exc)
        if message.startswith(("no such table", "table ", "no such column", "attempt to write")):
            return DatabaseMisconfigured(message, "check table= and the file's permissions")
        return DatabaseUnreachable(message)  # locked, busy, disk I/O, full
