"""The PostgreSQL backend (psycopg 3).

Writes: ``procedure="INSERT"`` into a table is a COPY per batch, the fastest
way into PostgreSQL; a function (``SELECT f(...)``) gets the batch by COPY
into a temporary table typed and named like its arguments, then one
statement calls it for those rows in order, or, when the function has a
set-based twin ``f_batch(regclass)`` (the schemas' ``INSERT_PACKET_FULL``
has), that twin once with the table; a procedure (``CALL``) or an insert into a view
or another table is the statement run for every row of the batch in
pipeline mode (one round trip per batch), each value cast to the type of
its argument, as the database declares it. One transaction per batch.

Errors are classified by SQLSTATE: data and constraint errors (classes 22,
23, a function's RAISE) refuse a row; syntax, privilege and missing objects
(42, 28, 3D...) are configuration errors; everything else, and any error
that leaves the connection broken, means the database is unreachable.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from typing import Any

from nfkit.logd.db.backend import (
    Backend,
    Column,
    ConnectParams,
    DatabaseError,
    DatabaseMisconfigured,
    DatabaseUnreachable,
    Name,
    RowRejected,
    Statement,
    StatementKind,
    redact,
)
from nfkit.logd.db.backend import quote_identifier as quote

try:
    import psycopg
    from psycopg import conninfo as _conninfo
    from psycopg import sql as _sql
    DRIVER_LOADED = True
except ImportError:  # the plugin reports it at configure time
    DRIVER_LOADED = False

MISSING_DRIVER_FIX = "pip install 'nfkit[pgsql]' (psycopg 3), or apt install python3-psycopg"

_ROW_CLASSES = ("22", "23", "P0", "2F", "38", "39")
_CONFIG_CLASSES = ("42", "28", "3D", "3F", "0A", "2B", "44")
# FATAL answers at connect time that mean "try again later".
_TRANSIENT = re.compile(
    r"starting up|shutting down|in recovery|too many|connection slots|not yet accepting",
    re.IGNORECASE,
)
_COPY_LINE = re.compile(r"\bline (\d+)")
#: The temporary table a function's rows are copied to.
_STAGING = "nfkit_batch"
#: A function's set-based twin: its name and this suffix, one regclass argument.
_TWIN_SUFFIX = "_batch"
# A server that vanished without closing the TCP connection is noticed in
# about 30 s instead of the kernel's 15 minutes (unix sockets ignore these).
_DEAD_PEER = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
              "keepalives_count": 3, "tcp_user_timeout": 30_000}


def _one_line(message: str) -> str:
    """libpq's multi-line messages as one log line."""
    return " ".join(message.split())


class PostgresBackend(Backend):
    dbtype = "pgsql"

    def fold(self, name: str) -> str:
        return name.lower()

    def __init__(self, params: ConnectParams) -> None:
        super().__init__(params)
        self.connection: Any = None
        self._sql = ""
        self._copy = False
        self._call = ""  # functions: the statement calling it for the copied rows

    # -- connection -------------------------------------------------------------------

    def conninfo(self) -> str:
        params = self.params
        if params.connstring:
            return params.connstring
        fields: dict[str, Any] = {"dbname": params.database, **_DEAD_PEER}
        for name, value in (("host", params.host), ("port", params.port),
                            ("user", params.user), ("password", params.password)):
            if value:
                fields[name] = value
        return str(_conninfo.make_conninfo(**fields))

    def connect(self) -> None:
        if not DRIVER_LOADED:
            raise DatabaseMisconfigured("the psycopg module is missing", MISSING_DRIVER_FIX)
        params = self.params
        timeout = max(1, round(params.timeout)) if params.timeout else None
        try:
            extra: dict[str, Any] = {"connect_timeout": timeout} if timeout else {}
            self.connection = psycopg.connect(self.conninfo(), autocommit=False, **extra)
        except psycopg.Error as exc:
            message = _one_line(redact(str(exc), params))
            if "FATAL:" in message and not _TRANSIENT.search(message):
                raise DatabaseMisconfigured(
                    message,
                    "check db=, user= and pass= (or connstring=), and the server's pg_hba.conf",
                    option="db",
                ) from None
            raise DatabaseUnreachable(message) from None
        if params.schema and not params.connstring:
            self._use_schema(params.schema)

    def _use_schema(self, schema: str) -> None:
        """As ulogd2: the schema must exist; other than public it leads the search path."""
        found = self._query("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        if not found:
            self.close()
            raise DatabaseMisconfigured(
                f"schema {schema!r} not found", "create it, or set schema= to an existing one",
                option="schema",
            )
        if schema != "public":
            self._query(_sql.SQL("SET search_path TO {}, public").format(_sql.Identifier(schema)))

    def close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            with contextlib.suppress(psycopg.Error):
                connection.close()

    def _query(self, query: Any, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a catalog query and commit; errors classified."""
        try:
            with self.connection.cursor() as cursor:
                cursor.execute(query, args)
                rows = cursor.fetchall() if cursor.description else []
            self.connection.commit()
        except psycopg.Error as exc:
            raise self._classify(exc) from None
        return list(rows)

    # -- what the table and the procedure are -------------------------------------------------

    def columns(self, table: Name) -> list[Column]:
        name = table.render(quote, self.fold)
        found = self._query(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), c.relkind "
            "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum",
            (name,),
        )
        if not found:
            raise DatabaseMisconfigured(
                f"no table or view {name} (search path: schema {self.params.schema or 'public'})",
                "create it (nfkit db init loads ulogd2's schemas), or check table= and schema=",
            )
        self._relkind = found[0][2]
        return [Column(attname, str(typename)) for attname, typename, _ in found]

    def prepare(self, statement: Statement) -> Sequence[Column]:
        columns = statement.columns
        names = _sql.SQL(", ").join(_sql.Identifier(column.name) for column in columns)
        target = _sql.SQL(statement.target.render(quote, self.fold))
        self._copy = False
        self._call = ""
        if statement.kind is StatementKind.INSERT and self._is_table(statement.table):
            self._copy = True
            self._sql = _sql.SQL("COPY {} ({}) FROM STDIN").format(target, names).as_string(None)
            return columns
        if statement.kind in (StatementKind.INSERT, StatementKind.INSERT_INTO):
            values = _sql.SQL(", ").join(_sql.Placeholder() * len(columns))
            insert = _sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(target, names, values)
            self._sql = insert.as_string(None)
            return columns
        arguments, argument_names, schema = self._arguments(statement)
        if statement.kind is StatementKind.FUNCTION:
            twin = self._twin(statement.target, schema)
            self._stage(target, arguments, argument_names, twin)
            return arguments
        casts = ", ".join(f"%s::{column.type}" for column in arguments)
        verb = "CALL" if statement.kind is StatementKind.CALL else "SELECT"
        self._sql = f"{verb} {target.as_string(None)}({casts})"
        return arguments

    def _stage(self, function: Any, arguments: Sequence[Column], argument_names: Sequence[str],
               twin: Any) -> None:
        """Prepare the writes of a function: COPY to a temporary table, then one call per row
        in a single statement (a statement per row costs the client 7 times the CPU), or one
        call of its set-based ``twin`` (the server's CPU per row a fraction of that)."""
        staging = _sql.Identifier(_STAGING)
        names = [_sql.Identifier(name) for name in argument_names]
        typed = _sql.SQL(", ").join(
            _sql.SQL("{} {}").format(name, _sql.SQL(argument.type))  # the catalog's spelling
            for name, argument in zip(names, arguments, strict=True)
        )
        listed = _sql.SQL(", ").join(names)
        self._query(_sql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(staging))
        self._query(_sql.SQL("CREATE TEMPORARY TABLE {} (_n bigserial, {}) "
                             "ON COMMIT DELETE ROWS").format(staging, typed))
        self._copy = True
        self._sql = _sql.SQL("COPY {} ({}) FROM STDIN").format(staging, listed).as_string(None)
        if twin is not None:
            call = _sql.SQL("SELECT {}({})").format(
                twin, _sql.Literal(f"pg_temp.{_STAGING}")
            )
        else:
            call = _sql.SQL(
                "SELECT count({}({})) FROM (SELECT * FROM {} ORDER BY _n) AS batch"
            ).format(function, listed, staging)
        self._call = call.as_string(None)

    def _twin(self, function: Name, schema: str) -> Any:
        """The set-based twin of a function (same schema, ``<name>_batch(regclass)``), or None."""
        name = function.folded(self.fold)[-1] + _TWIN_SUFFIX
        found = self._query(
            "SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE p.proname = %s AND n.nspname = %s AND p.prokind = 'f' "
            "AND p.proargtypes = '2205'::oidvector",  # regclass
            (name, schema),
        )
        return _sql.Identifier(schema, name) if found else None

    def _is_table(self, table: Name) -> bool:
        found = self._query("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)",
                            (table.render(quote, self.fold),))
        return bool(found) and found[0][0] in ("r", "p")

    def _arguments(self, statement: Statement) -> tuple[list[Column], list[str], str]:
        """The arguments of the function (or procedure), checked: the statement's columns
        typed as the arguments, the arguments' names (``a<n>`` where unnamed), its schema."""
        parts = statement.target.folded(self.fold)
        where = "n.nspname = %s" if len(parts) == 2 else "pg_function_is_visible(p.oid)"
        found = self._query(
            "SELECT p.prokind, p.pronargs, "
            "ARRAY(SELECT format_type(t.oid, NULL) FROM unnest(p.proargtypes) "
            "WITH ORDINALITY AS t(oid, n) ORDER BY t.n), p.proargnames, n.nspname "
            "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            f"WHERE p.proname = %s AND {where}",
            (parts[-1], *parts[:-1]),
        )
        wanted = len(statement.columns)
        kind = "p" if statement.kind is StatementKind.CALL else "f"
        name = ".".join(parts)
        matching = [row for row in found if row[1] == wanted]
        if not matching:
            arities = sorted({row[1] for row in found})
            raise DatabaseMisconfigured(
                f"no function {name} taking {wanted} arguments (one per column of "
                f"{statement.table.render(quote, self.fold)})"
                + (f"; it takes {', '.join(map(str, arities))}" if arities else ""),
                "load the schema that defines it (nfkit db init), or make table= the view "
                "whose columns are its arguments",
                option="procedure",
            )
        prokind, _, types, declared_names, schema = matching[0]
        if prokind != kind:
            spelling = f"CALL {name}" if prokind == "p" else name
            raise DatabaseMisconfigured(
                f"{name} is a {'procedure' if prokind == 'p' else 'function'}",
                f'write procedure="{spelling}"',
                option="procedure",
            )
        typed = [
            Column(column.name, str(typename))
            for column, typename in zip(statement.columns, types, strict=True)
        ]
        names = [f"a{index}" for index in range(wanted)]
        # Named staging columns serve a twin; OUT arguments or a clash keep the a<n> names.
        if declared_names and len(set(declared_names) - {"", "_n"}) == wanted:
            names = list(declared_names)
        return typed, names, str(schema)

    # -- writing --------------------------------------------------------------------------

    def write(self, rows: Sequence[Sequence[Any]]) -> None:
        connection = self.connection
        if connection is None:
            raise DatabaseUnreachable("not connected")
        copying = self._copy
        try:
            with connection.cursor() as cursor:
                if copying:
                    with cursor.copy(self._sql) as copy:
                        write_row = copy.write_row
                        for row in rows:
                            write_row(row)
                    copying = False
                    if self._call:
                        cursor.execute(self._call)
                else:
                    cursor.executemany(self._sql, rows)
            connection.commit()
        except psycopg.Error as exc:
            error = self._classify(exc)
            if isinstance(error, RowRejected) and copying:  # COPY names the line
                line = _COPY_LINE.search(getattr(exc.diag, "context", None) or "")
                if line:
                    error.index = int(line.group(1)) - 1
            raise error from None

    def _classify(self, exc: Exception) -> DatabaseError:
        """The typed error for a psycopg error; rolls back, or closes a broken connection."""
        message = _one_line(redact(str(exc), self.params))
        connection = self.connection
        state = getattr(exc, "sqlstate", None) or ""
        if connection is None or connection.broken or connection.closed:
            self.close()
            return DatabaseUnreachable(message)
        try:
            connection.rollback()
        except psycopg.Error:
            self.close()
            return DatabaseUnreachable(message)
        if state.startswith(_ROW_CLASSES) or isinstance(exc, psycopg.DataError):
            return RowRejected(message)
        if state.startswith(_CONFIG_CLASSES):
            return DatabaseMisconfigured(message, "check the table, procedure and privileges")
        self.close()
        return DatabaseUnreachable(message)
