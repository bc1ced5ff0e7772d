"""The MariaDB/MySQL backend (PyMySQL): multi-row inserts, batched function calls.

Where the server is (``host=``, as ulogd2's MYSQL reads it, plus one extension):

* ``localhost`` or empty: the local unix socket, as libmysqlclient does it:
  ``$MYSQL_UNIX_PORT`` if set, else ``/run/mysqld/mysqld.sock``;
* a path (starting with ``/``): that unix socket (nfkit only);
* anything else: TCP to ``host:port`` (port 0: 3306).

How rows are written, one transaction per batch:

* ``procedure="INSERT"`` / ``"INSERT INTO t"``: multi-row
  ``INSERT ... VALUES (...),(...)`` statements of at most
  :attr:`MariaDBBackend.max_statement` bytes;
* a function (``SELECT f(...)``) or a procedure (``CALL p(...)``): one
  statement per row, sent together as one multi-statement query per chunk,
  so a batch costs one round trip per chunk instead of one per row.

Values are rendered by the driver's rules for literals (strings escaped, bytes
as ``X'..'``, ``NULL``), never pasted as text from the configuration or the
packet; identifiers are always quoted with backticks. The session runs with
``sql_mode=STRICT_ALL_TABLES`` so that a value a column cannot hold is refused
(the row goes to the reject file) instead of being truncated silently.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import Any

from nfkit.logd.db.backend import (
    Backend,
    Column,
    ConnectParams,
    Converter,
    DatabaseMisconfigured,
    DatabaseUnreachable,
    Name,
    RowRejected,
    Statement,
    StatementKind,
    redact,
)
from nfkit.logd.db.columns import clean_text
from nfkit.logd.keys import Key, KeyType

DEFAULT_SOCKET = "/run/mysqld/mysqld.sock"
DEFAULT_PORT = 3306
DRIVER_FIX = "pip install 'nfkit[mysql]' (PyMySQL), or apt install python3-pymysql"

# Server error numbers (mysqld_error.h) by what the writer should do about them.
_CREDENTIALS = {1044, 1045, 1698, 1251}  # access denied (database, user, unix_socket auth)
_UNKNOWN_DATABASE = 1049
_MISCONFIGURED = {
    1054,  # unknown column
    1064,  # syntax error
    1109,  # unknown table
    1142,  # command denied on table
    1143,  # column access denied
    1146,  # no such table
    1227,  # access denied (privilege needed)
    1305,  # function/procedure does not exist
    1318,  # wrong number of arguments for a procedure
    1356,  # view references invalid tables/columns
    1370,  # execute command denied on routine
    1582,  # wrong parameter count for a native function
    1584,  # wrong parameters for a stored function
    1290,  # server runs with --read-only
}
_ROW_REJECTED = {
    1048,  # column cannot be null
    1062,  # duplicate entry
    1216, 1217, 1451, 1452,  # foreign keys
    1264,  # out of range
    1265,  # data truncated
    1292,  # incorrect value
    1366,  # incorrect integer/string value
    1406,  # data too long
    1411,  # incorrect value for a function
    1644,  # SIGNAL raised by a stored routine
    1690,  # BIGINT value out of range
    3819, 4025,  # CHECK constraint
}  # fmt: skip
_AT_ROW = re.compile(r"\bat row (\d+)")

_ESCAPES = str.maketrans({
    "\0": "\\0", "\n": "\\n", "\r": "\\r", "\x1a": "\\Z",
    "\\": "\\\\", "'": "\\'", '"': '\\"',
})  # fmt: skip
_TEXT_MEMO_LIMIT = 4096


def quote_identifier(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def socket_path(host: str) -> str | None:
    """The unix socket ``host`` means, or None for TCP."""
    if host in ("", "localhost"):
        return os.environ.get("MYSQL_UNIX_PORT") or DEFAULT_SOCKET
    return host if host.startswith("/") else None


class Literals:
    """SQL literals of row values, as the server's parser reads them.

    Strings repeat (interface names, prefixes, MAC headers): their literals are
    memoized in a bounded dict, undecodable bytes (surrogates) escaped once
    there rather than for every row.
    """

    def __init__(self) -> None:
        self._texts: dict[str, str] = {}
        self._by_type: dict[type, Callable[[Any], str]] = {
            int: str, str: self._text, bytes: _hex, bytearray: _hex, bool: _boolean,
            float: _float, type(None): _null,
        }  # fmt: skip

    def row(self, values: Sequence[Any]) -> str:
        """``(v1,v2,...)``; raises TypeError for a value that has no literal."""
        by_type = self._by_type
        try:
            return "(" + ",".join([
                "NULL" if value is None
                else str(value) if type(value) is int
                else by_type[type(value)](value)
                for value in values
            ]) + ")"  # fmt: skip
        except KeyError as exc:
            raise TypeError(f"no SQL literal for a value of type {exc.args[0].__name__}") from None

    def _text(self, value: str) -> str:
        texts = self._texts
        literal = texts.get(value)
        if literal is None:
            if len(texts) >= _TEXT_MEMO_LIMIT:
                texts.clear()
            literal = texts[value] = "'" + clean_text(value).translate(_ESCAPES) + "'"
        return literal


def _hex(value: bytes) -> str:
    return "X'" + value.hex() + "'" if value else "''"


def _boolean(value: bool) -> str:
    return "1" if value else "0"


def _float(value: float) -> str:
    if value != value or value in (float("inf"), float("-inf")):
        raise TypeError("NaN and infinite numbers have no SQL literal")
    return repr(value)


def _null(_value: None) -> str:
    return "NULL"


class MariaDBBackend(Backend):
    """One PyMySQL connection; see the module documentation."""

    dbtype = "mysql"
    #: Upper bound of one statement's text (the server's max_allowed_packet is 16 MiB+).
    max_statement = 1 << 20

    def __init__(self, params: ConnectParams) -> None:
        super().__init__(params)
        self._connection: Any = None
        self._literals = Literals()
        self._prefix = ""
        self._per_row: str | None = None  # CALL/SELECT routine

    def converter(self, key: Key, column: Column) -> Converter | None:
        if key.type is KeyType.STRING:
            return None  # Literals cleans each distinct string once
        return super().converter(key, column)

    # -- connection ----------------------------------------------------------------

    def connect(self) -> None:
        try:
            import pymysql
            from pymysql.constants import CLIENT
        except ImportError:
            raise DatabaseMisconfigured("PyMySQL is not installed", DRIVER_FIX) from None
        params = self.params
        socket = socket_path(params.host)
        where = {"unix_socket": socket} if socket else {
            "host": params.host, "port": params.port or DEFAULT_PORT,
        }  # fmt: skip
        try:
            self._connection = pymysql.connect(
                user=params.user,
                password=params.password,
                database=params.database,
                connect_timeout=params.timeout or 10,
                read_timeout=None,
                charset="utf8mb4",
                autocommit=False,
                client_flag=CLIENT.MULTI_STATEMENTS,
                init_command="SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'",
                **where,
            )
        except pymysql.Error as exc:
            raise self._classify(exc, connecting=True) from None

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:
                connection._force_close()

    # -- configure time --------------------------------------------------------------

    def columns(self, table: Name) -> list[Column]:
        schema = table.parts[0] if len(table.parts) == 2 else None
        rows = self._query(
            "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = COALESCE(%s, DATABASE()) AND TABLE_NAME = %s "
            "ORDER BY ORDINAL_POSITION",
            (schema, table.last),
        )
        if not rows:
            raise DatabaseMisconfigured(
                f"there is no table or view {'.'.join(table.parts)!r} in database "
                f"{schema or self.params.database!r}",
                "create it (nfkit db init --dsn mysql://... --flat loads the flat schema), "
                "or check table= and db=",
                option="table",
            )
        return [Column(name, kind.lower()) for name, kind in rows]

    def prepare(self, statement: Statement) -> Sequence[Column]:
        target = statement.target.render(quote_identifier, self.fold)
        if statement.kind in (StatementKind.INSERT, StatementKind.INSERT_INTO):
            names = ",".join(quote_identifier(column.name) for column in statement.columns)
            # Fails with "no such table/column" now rather than with the first batch.
            self._query(f"SELECT {names} FROM {target} LIMIT 0")
            self._prefix = statement.sql(quote_identifier, "%s").partition(" VALUES ")[0]
            self._prefix += " VALUES "
            self._per_row = None
            return statement.columns
        routine = "FUNCTION" if statement.kind is StatementKind.FUNCTION else "PROCEDURE"
        arguments = self._arguments(statement.target, routine, len(statement.columns))
        self._per_row = ("SELECT " if routine == "FUNCTION" else "CALL ") + target
        return arguments

    def _arguments(self, name: Name, routine: str, expected: int) -> list[Column]:
        """The arguments of a stored function or procedure, checked against the columns."""
        schema = name.parts[0] if len(name.parts) == 2 else None
        found = self._query(
            "SELECT p.PARAMETER_NAME, p.DTD_IDENTIFIER FROM information_schema.ROUTINES r "
            "LEFT JOIN information_schema.PARAMETERS p ON p.SPECIFIC_SCHEMA = r.ROUTINE_SCHEMA "
            "AND p.SPECIFIC_NAME = r.ROUTINE_NAME AND p.ORDINAL_POSITION > 0 "
            "WHERE r.ROUTINE_SCHEMA = COALESCE(%s, DATABASE()) AND r.ROUTINE_NAME = %s "
            "AND r.ROUTINE_TYPE = %s ORDER BY p.ORDINAL_POSITION",
            (schema, name.last, routine),
        )
        shown = ".".join(name.parts)
        if not found:
            how = "SELECT name(...)" if routine == "FUNCTION" else "CALL name(...)"
            raise DatabaseMisconfigured(
                f"there is no {routine.lower()} {shown!r} in database "
                f"{schema or self.params.database!r} (procedure= asks for {how})",
                "load the schema that defines it, or check procedure= "
                "(INSERT writes the table directly)",
                option="procedure",
            )
        arguments = [Column(name, (kind or "").lower()) for name, kind in found if name]
        if len(arguments) != expected:
            raise DatabaseMisconfigured(
                f"{routine.lower()} {shown!r} takes {len(arguments)} arguments, but the "
                f"table gives {expected} columns after the first",
                "use the table or view that matches the routine (ulogd2: table=\"ulog\" "
                "for INSERT_PACKET_FULL)",
                option="table",
            )
        return arguments

    # -- writing ------------------------------------------------------------------------

    def write(self, rows: Sequence[Sequence[Any]]) -> None:
        connection = self._connection
        if connection is None:
            raise DatabaseUnreachable(f"not connected to {self.params.describe()}")
        import pymysql

        done = 0  # rows of the statements that went through, to place a refused row
        results = 0  # result sets read in the current chunk (function calls: one per row)
        try:
            chunks = self._chunks(rows)  # RowRejected before anything is sent
            with connection.cursor() as cursor:
                for chunk, count in chunks:
                    results = 0
                    cursor.execute(chunk)
                    results = 1
                    while cursor.nextset():
                        results += 1
                    done += count
            connection.commit()
        except pymysql.Error as exc:
            error = self._classify(exc)
            if isinstance(error, RowRejected):
                at_row = _AT_ROW.search(error.reason)
                if self._per_row is None and at_row:
                    error.index = done + int(at_row.group(1)) - 1
                elif self._per_row is not None and self._per_row.startswith("SELECT"):
                    error.index = done + results
            if not isinstance(error, DatabaseUnreachable):
                self._rollback()
            raise error from None

    def _chunks(self, rows: Sequence[Sequence[Any]]) -> list[tuple[str, int]]:
        """The query texts of a batch, each with the number of rows it carries."""
        row_literal = self._row_literal
        limit = self.max_statement
        chunks: list[tuple[str, int]] = []
        if self._per_row is None:
            prefix = self._prefix
            values: list[str] = []
            size = len(prefix)
            for index, row in enumerate(rows):
                literal = row_literal(row, index)
                if values and size + len(literal) + 1 > limit:
                    chunks.append((prefix + ",".join(values), len(values)))
                    values, size = [], len(prefix)
                values.append(literal)
                size += len(literal) + 1
            if values:
                chunks.append((prefix + ",".join(values), len(values)))
            return chunks
        call = self._per_row
        calls: list[str] = []
        size = 0
        for index, row in enumerate(rows):
            text = call + row_literal(row, index)
            if calls and size + len(text) + 1 > limit:
                chunks.append((";".join(calls), len(calls)))
                calls, size = [], 0
            calls.append(text)
            size += len(text) + 1
        if calls:
            chunks.append((";".join(calls), len(calls)))
        return chunks

    def _row_literal(self, row: Sequence[Any], index: int) -> str:
        try:
            return self._literals.row(row)
        except TypeError as exc:
            raise RowRejected(str(exc), index) from None

    def _rollback(self) -> None:
        try:
            self._connection.rollback()
        except Exception:
            self.close()

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        import pymysql

        if self._connection is None:
            raise DatabaseUnreachable(f"not connected to {self.params.describe()}")
        try:
            with self._connection.cursor() as cursor:
                cursor.execute(sql, args or None)
                return list(cursor.fetchall())
        except pymysql.Error as exc:
            raise self._classify(exc) from None

    # -- errors ---------------------------------------------------------------------------

    def _classify(
        self, exc: Exception, connecting: bool = False
    ) -> DatabaseUnreachable | RowRejected | DatabaseMisconfigured:
        """The backend error for a driver error; closes the connection when it broke."""
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
        text = redact(str(exc.args[1]) if len(exc.args) > 1 else str(exc), self.params)
        if code in _CREDENTIALS:
            return DatabaseMisconfigured(text, "check user= and pass= (and the user's grants)",
                                         "pass")  # fmt: skip
        if code == _UNKNOWN_DATABASE:
            return DatabaseMisconfigured(text, "create the database or check db=", "db")
        if code in _MISCONFIGURED:
            return DatabaseMisconfigured(text, "check table= and procedure=")
        if code in _ROW_REJECTED and not connecting:
            return RowRejected(text)
        self.close()
        return DatabaseUnreachable(text or "connection lost")
