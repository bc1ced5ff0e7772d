"""``nfkit db``: create the schemas of the database outputs.

::

    nfkit db init --dsn postgresql://ulog@localhost/ulog2
    nfkit db init --dsn 'host=/run/postgresql dbname=ulog2 user=ulog' --flat
    nfkit db init --dsn mysql://ulog:secret@localhost/ulog2 --flat
    nfkit db init --dsn sqlite:///var/log/ulog/ulog.db
    nfkit db init --dsn postgresql:// --print > ulog2.sql

The schemas are compatible by name with ulogd2's (docs/databases.md). A
schema is created where it is missing and left as it is where it exists
(functions and views are replaced), so ``init`` can be run again. Errors
go to stderr with the fix and exit with status 2; the password is never
printed.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from nfkit.logd.db.backend import ConnectParams, redact
from nfkit.logd.db.schemas import MYSQL, PGSQL, SQLITE3, Schema, schema_for, statements

PROG = "nfkit db"
CONNECT_TIMEOUT = 10
FAILED = 2
MYSQL_DUPLICATE_ENTRY = 1062

DSN_FORMS = (
    "postgresql://USER[:PASSWORD]@HOST[:PORT]/DB, a libpq conninfo "
    "('host=/run/postgresql dbname=DB user=USER'), "
    "mysql://USER[:PASSWORD]@HOST[:PORT]/DB[?unix_socket=PATH], or sqlite:///PATH"
)
DRIVERS = {
    PGSQL: ("psycopg", "PostgreSQL", "pip install 'nfkit[pgsql]'  (psycopg 3)"),
    MYSQL: ("pymysql", "MariaDB/MySQL", "pip install 'nfkit[mysql]'  (PyMySQL)"),
}


class DbError(Exception):
    """A failure to report: what happened and how to fix it."""

    def __init__(self, what: str, fix: str = "") -> None:
        super().__init__(what)
        self.what = what
        self.fix = fix


@dataclass(frozen=True)
class Target:
    """The database ``--dsn`` names, parsed; ``describe()`` never shows the password."""

    engine: str
    dsn: str = field(repr=False)
    host: str = ""
    port: int = 0
    user: str = ""
    password: str = field(default="", repr=False)
    database: str = ""
    unix_socket: str = ""

    def describe(self) -> str:
        if self.engine == SQLITE3:
            return self.database
        where = self.unix_socket or self.host or "the local socket"
        if self.port:
            where += f":{self.port}"
        user = f"{self.user}@" if self.user else ""
        return f"{user}{where}/{self.database}"

    def redact(self, text: str) -> str:
        """A driver's message without the password."""
        return redact(text, ConnectParams(self.database, password=self.password))


def parse_dsn(dsn: str) -> Target:
    """The engine and connection parameters of ``dsn``; DbError if it is none of the forms."""
    scheme = dsn.partition(":")[0].lower()
    if scheme in ("postgresql", "postgres") or ("=" in dsn and "://" not in dsn):
        return _pgsql_target(dsn)
    if scheme in ("mysql", "mariadb"):
        return _mysql_target(dsn)
    if scheme == "sqlite":
        path = dsn[len("sqlite:") :]
        # sqlite:///var/x.db is /var/x.db; sqlite:x.db is relative.
        path = path[2:] if path.startswith("//") else path
        if not path:
            raise DbError("--dsn sqlite: names no file", "write sqlite:///PATH/FILE.db")
        return Target(SQLITE3, dsn, database=path)
    shown = redact(dsn, ConnectParams(""))
    raise DbError(f"--dsn {shown!r} is not a database address", f"write {DSN_FORMS}")


def _pgsql_target(dsn: str) -> Target:
    psycopg = _driver(PGSQL)
    try:
        parts = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        shown = redact(str(exc), ConnectParams(""))
        raise DbError(f"--dsn is not a valid PostgreSQL address: {shown}", DSN_FORMS) from None
    port = str(parts.get("port") or "")
    return Target(
        PGSQL,
        dsn,
        host=str(parts.get("host") or ""),
        port=int(port) if port.isdigit() else 0,
        user=str(parts.get("user") or ""),
        password=str(parts.get("password") or ""),
        database=str(parts.get("dbname") or parts.get("user") or ""),
    )


def _mysql_target(dsn: str) -> Target:
    url = urllib.parse.urlsplit(dsn)
    query = urllib.parse.parse_qs(url.query)
    unknown = sorted(set(query) - {"unix_socket"})
    database = urllib.parse.unquote(url.path.lstrip("/"))
    if unknown or not database:
        raise DbError(
            f"--dsn {redact(dsn, ConnectParams(''))!r}: "
            + (f"unknown parameter {unknown[0]!r}" if unknown else "no database name"),
            "write mysql://USER[:PASSWORD]@HOST[:PORT]/DB[?unix_socket=PATH]",
        )
    try:
        port = url.port or 0
    except ValueError:
        raise DbError(
            "--dsn: the port is not a number", "write mysql://USER@HOST:3306/DB"
        ) from None
    return Target(
        MYSQL,
        dsn,
        host=url.hostname or "localhost",
        port=port,
        user=urllib.parse.unquote(url.username or ""),
        password=urllib.parse.unquote(url.password or ""),
        database=database,
        unix_socket=query.get("unix_socket", [""])[0],
    )


def _driver(engine: str) -> Any:
    module, server, command = DRIVERS[engine]
    try:
        return __import__(module)
    except ImportError:
        raise DbError(
            f"{server} needs the {module} driver, which is not installed", command
        ) from None


# -- creating a schema ----------------------------------------------------------------------


def init(target: Target, schema: Schema, warn: Callable[[str], None]) -> int:
    """Create ``schema`` in ``target``; the number of objects that already existed."""
    runners = {PGSQL: _init_pgsql, MYSQL: _init_mysql, SQLITE3: _init_sqlite}
    return runners[target.engine](target, schema, warn)


def _init_pgsql(target: Target, schema: Schema, warn: Callable[[str], None]) -> int:
    psycopg = _driver(PGSQL)
    try:
        connection = psycopg.connect(target.dsn, connect_timeout=CONNECT_TIMEOUT)
    except psycopg.Error as exc:
        raise _connect_error(target, str(exc)) from None
    existing = 0

    def notice(diagnostic: Any) -> None:
        nonlocal existing
        if diagnostic.severity_nonlocalized == "NOTICE":
            existing += "already exists" in (diagnostic.message_primary or "")
        else:
            hint = f"\n  fix: {diagnostic.message_hint}" if diagnostic.message_hint else ""
            warn(f"{diagnostic.severity}: {diagnostic.message_primary}{hint}")

    connection.add_notice_handler(notice)
    try:
        with connection:  # one transaction: all or nothing
            connection.execute(schema.sql())
    except psycopg.Error as exc:
        message = exc.diag.message_primary or str(exc)
        hint = exc.diag.message_hint or _permission_fix(message)
        raise DbError(target.redact(f"{target.describe()}: {message}"), hint) from None
    finally:
        connection.close()
    return existing


def _init_mysql(target: Target, schema: Schema, warn: Callable[[str], None]) -> int:
    pymysql = _driver(MYSQL)
    options: dict[str, Any] = {
        "user": target.user,
        # As the mariadb client: a password kept out of the command line (ps).
        "password": target.password or os.environ.get("MYSQL_PWD", ""),
        "database": target.database,
        "connect_timeout": CONNECT_TIMEOUT,
        "charset": "utf8mb4",
    }
    if target.unix_socket:
        options["unix_socket"] = target.unix_socket
    else:
        options.update(host=target.host, port=target.port or 3306)
    try:
        connection = pymysql.connect(**options)
    except pymysql.Error as exc:
        raise _connect_error(target, str(exc)) from None
    existing = 0
    try:
        with connection.cursor() as cursor:
            for statement in statements(schema.sql()):
                cursor.execute(statement)
                for level, code, message in _warnings(cursor):
                    existing += "already exists" in message
                    # Notes come from IF [NOT] EXISTS, 1062 from INSERT IGNORE of known rows.
                    if level != "Note" and code != MYSQL_DUPLICATE_ENTRY:
                        warn(f"{level}: {message}")
        connection.commit()
    except pymysql.Error as exc:
        raise DbError(
            target.redact(f"{target.describe()}: {exc}"), _permission_fix(str(exc))
        ) from None
    finally:
        connection.close()
    return existing


def _warnings(cursor: Any) -> list[tuple[str, int, str]]:
    if not cursor.warning_count:
        return []
    cursor.execute("SHOW WARNINGS")
    return list(cursor.fetchall())


def _init_sqlite(target: Target, schema: Schema, warn: Callable[[str], None]) -> int:
    path = Path(target.database)
    if not path.parent.is_dir():
        raise DbError(f"{path.parent} is not a directory", "create it first, or fix the path")
    try:
        connection = sqlite3.connect(path)
    except sqlite3.Error as exc:
        raise DbError(f"cannot open {path}: {exc}", "check the path and its permissions") from None
    try:
        before = _sqlite_objects(connection)
        connection.executescript(schema.sql())
        return len(before)
    except sqlite3.Error as exc:
        raise DbError(f"{path}: {exc}", "check that the file is an SQLite database") from None
    finally:
        connection.close()


def _sqlite_objects(connection: sqlite3.Connection) -> list[str]:
    rows = connection.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
    return [row[0] for row in rows]


def _connect_error(target: Target, message: str) -> DbError:
    text = target.redact(message.strip())
    lowered = text.lower()
    if "password" in lowered or "access denied" in lowered or "authentication" in lowered:
        fix = "check the user and password (and the server's authentication rules)"
    elif "does not exist" in lowered or "unknown database" in lowered:
        fix = "create the database and its owner first (createdb -O USER DB / CREATE DATABASE DB)"
    else:
        fix = "check that the server runs and that host, port or socket are right"
    return DbError(f"cannot connect to {target.describe()}: {text}", fix)


def _permission_fix(message: str) -> str:
    lowered = message.lower()
    if "permission denied" in lowered or "denied" in lowered:
        return "connect as the database owner, or grant CREATE on the database to the user"
    return ""


# -- command line -----------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Database schemas for nfkit logd's outputs.")
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    init_parser = commands.add_parser(
        "init",
        help="create the schema in a database",
        description="Create the tables, views and functions of the database outputs "
        "(compatible by name with ulogd2's schemas).",
    )
    init_parser.add_argument("--dsn", required=True, help=f"the database: {DSN_FORMS}")
    init_parser.add_argument(
        "--flat",
        action="store_true",
        help='one wide packet table for procedure="INSERT" (PostgreSQL; required for MariaDB)',
    )
    init_parser.add_argument(
        "--print",
        dest="print_sql",
        action="store_true",
        help="write the SQL to stdout instead of connecting (only the DSN's kind is used)",
    )
    return p


def main(argv: Sequence[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = parser().parse_args(argv)
    try:
        target = _target_for_print(args.dsn) if args.print_sql else parse_dsn(args.dsn)
        schema = _schema(target.engine, args.flat)
        if args.print_sql:
            out.write(schema.sql())
            return 0
        existing = init(target, schema, lambda text: print(f"{PROG}: {text}", file=err))
    except DbError as exc:
        print(f"{PROG}: {exc.what}", file=err)
        if exc.fix:
            print(f"{PROG}: fix: {exc.fix}", file=err)
        return FAILED
    state = f" ({existing} objects were already there and were kept)" if existing else ""
    print(f"{PROG}: {schema.title} schema ready in {target.describe()}{state}", file=out)
    for table, procedure, what in schema.usage:
        option = f'procedure="{procedure}"' if procedure != "-" else "(SQLITE3)"
        print(f'  {what}: table="{table}" {option}', file=out)
    return 0


def _target_for_print(dsn: str) -> Target:
    """The engine of ``dsn`` without parsing it fully (no driver needed)."""
    scheme = dsn.partition(":")[0].lower()
    if scheme in ("mysql", "mariadb"):
        return Target(MYSQL, dsn)
    if scheme == "sqlite":
        return Target(SQLITE3, dsn)
    if scheme in ("postgresql", "postgres") or "=" in dsn:
        return Target(PGSQL, dsn)
    return parse_dsn(dsn)


def _schema(engine: str, flat: bool) -> Schema:
    try:
        return schema_for(engine, flat)
    except KeyError:
        raise DbError(
            "nfkit has no normalized schema for MariaDB/MySQL, only the flat one",
            'add --flat (table ulog2 with procedure="INSERT")',
        ) from None
