"""The interface every database backend implements, and the statements they run.

A database output (PGSQL, MYSQL, DBI, SQLITE3) is a plugin in front of a
:class:`Backend`: the plugin maps the columns of the configured table or view
to keys (:mod:`nfkit.logd.db.columns`), the writer (:mod:`nfkit.logd.db.writer`)
turns events into rows and hands them to the backend in batches. A backend
owns one connection and is only ever used by one thread at a time.

A backend reports failures with three exception types, and the writer acts
on the type alone:

* :class:`DatabaseUnreachable`: no connection, or it broke (server down,
  network, timeout). The batch is kept; rows go to the spool; reconnect later.
* :class:`RowRejected`: the database refused a value (out of range, bad
  address, constraint). The batch was rolled back; the writer finds the bad
  row(s) and puts them in the reject file, the rest are written.
* :class:`DatabaseMisconfigured`: waiting will not help (wrong password,
  missing table or function, permission denied). Fatal at start-up (exit 2);
  at run time the rows are spooled and the error logged.

Messages never contain the password: :class:`ConnectParams` hides it from
``repr`` and :meth:`ConnectParams.describe` names the server without it.
"""

from __future__ import annotations

import abc
import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from nfkit.logd.keys import Key


def quote_identifier(name: str) -> str:
    """An SQL identifier in standard double quotes (PostgreSQL, SQLite)."""
    return '"' + name.replace('"', '""') + '"'


class DatabaseError(Exception):
    """Base of the backend errors; ``str()`` is safe to log (no password)."""


class DatabaseUnreachable(DatabaseError):
    """The database cannot be reached now; retrying later may work."""


class RowRejected(DatabaseError):
    """The database refused a row of the batch; nothing of the batch was stored.

    Parameters:
        reason: the database's message.
        index: the position of the refused row in the batch, when the database says.
    """

    def __init__(self, reason: str, index: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.index = index


class DatabaseMisconfigured(DatabaseError):
    """Retrying will not help: credentials, missing table/function, permissions.

    Parameters:
        what: the problem.
        fix: how to fix it.
        option: the configuration option it concerns (``table``, ``pass``...).
    """

    def __init__(self, what: str, fix: str = "", option: str = "") -> None:
        super().__init__(what)
        self.what = what
        self.fix = fix
        self.option = option


@dataclass(frozen=True)
class ConnectParams:
    """Where and how to connect; every field as the configuration gives it.

    ``connstring``, when set, replaces the others (as ulogd's PGSQL does).
    ``timeout`` is in seconds (0: the driver's default).
    """

    database: str
    host: str = ""
    port: int = 0
    user: str = ""
    password: str = field(default="", repr=False)
    schema: str = ""
    connstring: str = field(default="", repr=False)
    timeout: float = 0.0

    def describe(self) -> str:
        """``user@host:port/database`` for messages; never the password."""
        if self.connstring:
            return "the server of connstring=" + _without_password(self.connstring)
        where = self.host or "local socket"
        if self.port:
            where += f":{self.port}"
        user = f"{self.user}@" if self.user else ""
        return f"{user}{where}/{self.database}"


_PASSWORD_IN_CONNSTRING = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_PASSWORD_IN_URI = re.compile(r"(://[^:/@\s]*:)[^@\s]*(@)")


def _without_password(text: str) -> str:
    text = _PASSWORD_IN_CONNSTRING.sub(r"\1***", text)
    return _PASSWORD_IN_URI.sub(r"\1***\2", text)


def redact(text: str, params: ConnectParams) -> str:
    """``text`` (a driver's message) with the password and connstring secrets masked."""
    text = _without_password(text)
    if params.password:
        text = text.replace(params.password, "***")
    return text


@dataclass(frozen=True, slots=True)
class Column:
    """A column of a table or view, or an argument of a function, in order.

    ``type`` is the database's spelling, lower case (``inet``, ``bigint``,
    ``character varying``, ``binary(16)``...); empty when unknown.
    """

    name: str
    type: str = ""


class StatementKind(enum.Enum):
    """What ``procedure`` asks for (ulogd2's util/db.c semantics)."""

    #: ``INSERT``: insert into the configured table (COPY where the backend can).
    INSERT = "insert"
    #: ``INSERT [modifiers] INTO target``: insert into another table.
    INSERT_INTO = "insert into"
    #: ``CALL name``: a stored procedure, one argument per active column.
    CALL = "call"
    #: any other name: ``SELECT name(...)``, a function, one argument per column.
    FUNCTION = "function"


# MySQL's insert modifiers; nothing else may stand between INSERT and INTO.
_INSERT_MODIFIERS = ("LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE")
_BARE = r"[A-Za-z_][A-Za-z0-9_$]*"
_QUOTED = r'"(?:[^"]|"")+"|`(?:[^`]|``)+`'
_PART = rf"(?:{_BARE}|{_QUOTED})"
_NAME = re.compile(rf"{_PART}(?:\.{_PART})?")
_INSERT_INTO = re.compile(
    rf"INSERT\s+((?:(?:{'|'.join(_INSERT_MODIFIERS)})\s+)*)INTO\s+(.+)", re.IGNORECASE
)


@dataclass(frozen=True)
class Name:
    """A possibly schema-qualified SQL name from the configuration.

    Bare parts are folded as the database folds unquoted names (``fold``);
    quoted parts (``"Mixed"`` or ```Mixed```) are kept exactly. Rendering
    always quotes, so a name can never inject SQL.
    """

    parts: tuple[str, ...]
    quoted: tuple[bool, ...]

    @classmethod
    def parse(cls, text: str) -> Name:
        """Raises ValueError when ``text`` is not a name or ``schema.name``."""
        text = text.strip()
        if not _NAME.fullmatch(text):
            raise ValueError(f"{text!r} is not a name or schema.name")
        parts = re.findall(_PART, text)
        quoted = tuple(part[0] in "\"`" for part in parts)
        plain = tuple(
            part[1:-1].replace(part[0] * 2, part[0]) if was_quoted else part
            for part, was_quoted in zip(parts, quoted, strict=True)
        )
        return cls(plain, quoted)

    @property
    def last(self) -> str:
        return self.parts[-1]

    def folded(self, fold: Callable[[str], str]) -> tuple[str, ...]:
        """The parts as the database stores them."""
        return tuple(
            part if was_quoted else fold(part)
            for part, was_quoted in zip(self.parts, self.quoted, strict=True)
        )

    def render(self, quote: Callable[[str], str], fold: Callable[[str], str]) -> str:
        return ".".join(map(quote, self.folded(fold)))


@dataclass(frozen=True)
class Statement:
    """The statement of one output: kind, target and the columns it writes, in order.

    ``columns`` are the *active* columns: the values of every row, in this order.
    """

    kind: StatementKind
    table: Name
    columns: tuple[Column, ...]
    #: The INSERT INTO / CALL / function target (the table for INSERT).
    target: Name
    #: INSERT INTO only: the modifiers between INSERT and INTO, upper case.
    modifiers: tuple[str, ...] = ()

    @classmethod
    def parse(cls, procedure: str, table: str, columns: Sequence[Column]) -> Statement:
        """The statement ``procedure=`` asks for; raises ValueError with the reason."""
        table_name = Name.parse(table)
        text = procedure.strip()
        if text.upper() == "INSERT":
            return cls(StatementKind.INSERT, table_name, tuple(columns), table_name)
        insert = _INSERT_INTO.fullmatch(text)
        if insert:
            return cls(
                StatementKind.INSERT_INTO,
                table_name,
                tuple(columns),
                Name.parse(insert.group(2)),
                tuple(insert.group(1).upper().split()),
            )
        if re.match(r"INSERT\s", text, re.IGNORECASE):
            raise ValueError(
                f"{procedure!r}: write INSERT, or INSERT INTO table "
                f"(optionally with {', '.join(_INSERT_MODIFIERS)})"
            )
        if text[:5].upper() == "CALL " or text.upper() == "CALL":
            return cls(StatementKind.CALL, table_name, tuple(columns), Name.parse(text[5:]))
        return cls(StatementKind.FUNCTION, table_name, tuple(columns), Name.parse(text))

    def sql(
        self,
        quote: Callable[[str], str],
        placeholder: str,
        fold: Callable[[str], str] = str,
    ) -> str:
        """The statement for one row, with ``placeholder`` for each value.

        ``quote`` quotes one identifier; ``fold`` is how the database folds
        unquoted names (PostgreSQL: ``str.lower``).
        """
        values = ", ".join([placeholder] * len(self.columns))
        target = self.target.render(quote, fold)
        if self.kind is StatementKind.FUNCTION:
            return f"SELECT {target}({values})"
        if self.kind is StatementKind.CALL:
            return f"CALL {target}({values})"
        names = ", ".join(quote(column.name) for column in self.columns)
        insert = " ".join(("INSERT", *self.modifiers))
        return f"{insert} INTO {target} ({names}) VALUES ({values})"


Converter = Callable[[Any], Any]


class Backend(abc.ABC):
    """One connection to one database, driven by one thread.

    Lifecycle: ``connect()``, then ``columns()`` (configure time) or
    ``prepare()`` followed by any number of ``write()``; ``close()`` at the
    end or after an error. ``connect`` may be called again after ``close``.
    """

    #: The DBI ``dbtype`` naming this backend (``pgsql``, ``mysql``, ``sqlite3``).
    dbtype: ClassVar[str] = ""

    def __init__(self, params: ConnectParams) -> None:
        self.params = params

    def fold(self, name: str) -> str:
        """How the database folds an unquoted name (PostgreSQL: to lower case)."""
        return name

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the connection (within ``params.timeout`` seconds when set).

        Raises DatabaseUnreachable or DatabaseMisconfigured.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection; safe to call when not connected."""

    @abc.abstractmethod
    def columns(self, table: Name) -> list[Column]:
        """The columns of a table or view, in order (connected).

        Raises DatabaseMisconfigured when there is no such table or view.
        """

    @abc.abstractmethod
    def prepare(self, statement: Statement) -> Sequence[Column]:
        """Check and compile ``statement`` for the following writes (connected).

        Returns what each value goes to, in order: ``statement.columns``, or
        for a function or procedure its arguments with their types when the
        database tells them (the values are converted for these types).
        Raises DatabaseMisconfigured (no such function or table, wrong number
        of arguments) or DatabaseUnreachable.
        """

    @abc.abstractmethod
    def write(self, rows: Sequence[Sequence[Any]]) -> None:
        """Store ``rows`` (values in statement column order) in one transaction.

        All or nothing: raises RowRejected (nothing stored), DatabaseUnreachable
        (closed; nothing stored, or the commit's fate is unknown) or
        DatabaseMisconfigured.
        """

    def converter(self, key: Key, column: Column) -> Converter | None:
        """How a value of ``key`` becomes a parameter for ``column`` (None: as is).

        The default suits most drivers; a backend overrides it for its types.
        """
        from nfkit.logd.db.columns import default_converter

        return default_converter(key, column)
