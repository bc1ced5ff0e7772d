"""PGSQL: one row per event in PostgreSQL, through a table, a view or a function.

ulogd2's PGSQL options and semantics (see :mod:`nfkit.logd.db.output` for the
shared ones and nfkit's additions): the columns of ``table`` name the keys,
the first column is left to the database when its name starts with ``_``
(``_id``), and ``procedure`` is ``INSERT`` (a COPY per batch into a table),
``INSERT INTO other``, ``CALL proc`` or the name of a function called with one
argument per column (``INSERT_PACKET_FULL`` with ``table="ulog"``).
"""

from __future__ import annotations

from nfkit.logd.db import postgres
from nfkit.logd.db.backend import Backend
from nfkit.logd.db.columns import FirstColumn
from nfkit.logd.db.output import (
    COMMON_OPTIONS,
    CONNECTION_OPTIONS,
    SPOOL_OPTIONS,
    DatabaseOutput,
)
from nfkit.logd.errors import ConfigError
from nfkit.logd.plugin import Option
from nfkit.logd.registry import register


def require_psycopg(where: str) -> type[Backend]:
    """The PostgreSQL backend; ConfigError when psycopg is not installed."""
    if not postgres.DRIVER_LOADED:
        raise ConfigError("the PostgreSQL driver (psycopg 3) is not installed", where,
                          postgres.MISSING_DRIVER_FIX)
    return postgres.PostgresBackend


@register
class PGSQL(DatabaseOutput):
    name = "PGSQL"
    summary = "insert one row per event into PostgreSQL (table, view or function of the columns)"
    first_column = FirstColumn.UNDERSCORE
    options = (
        *COMMON_OPTIONS,
        *CONNECTION_OPTIONS,
        Option("connstring", str, ""),
        *SPOOL_OPTIONS,
    )

    def backend_class(self) -> type[Backend]:
        return require_psycopg(self.settings.where("db"))
