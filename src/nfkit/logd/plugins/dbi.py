"""DBI: the generic SQL output of ulogd2 (libdbi), on nfkit's backends.

``dbtype`` chooses the backend as libdbi's driver name did: ``pgsql``
(psycopg), ``mysql`` (PyMySQL) or ``sqlite3`` (the standard library; ``db``
is the database file). Everything else is as PGSQL and MYSQL (see
:mod:`nfkit.logd.db.output`); as ulogd2's DBI, the first column is always
left to the database. Unlike ulogd2's DBI, ``port`` and ``schema`` are used
(by the PostgreSQL and MariaDB backends).
"""

from __future__ import annotations

from collections.abc import Callable

from nfkit.logd.db.backend import Backend
from nfkit.logd.db.columns import FirstColumn
from nfkit.logd.db.output import (
    COMMON_OPTIONS,
    CONNECTION_OPTIONS,
    SPOOL_OPTIONS,
    DatabaseOutput,
)
from nfkit.logd.db.sqlite import SqliteBackend
from nfkit.logd.errors import ConfigError
from nfkit.logd.plugin import Option
from nfkit.logd.plugins.mysql import require_pymysql
from nfkit.logd.plugins.pgsql import require_psycopg
from nfkit.logd.registry import register

#: dbtype -> the backend (ConfigError when its driver is missing), given the option's place.
BACKENDS: dict[str, Callable[[str], type[Backend]]] = {
    "pgsql": require_psycopg,
    "mysql": require_pymysql,
    "sqlite3": lambda where: SqliteBackend,
}


@register
class DBI(DatabaseOutput):
    name = "DBI"
    summary = "insert one row per event through the backend dbtype names (pgsql, mysql, sqlite3)"
    first_column = FirstColumn.SKIPPED
    options = (
        *COMMON_OPTIONS,
        *CONNECTION_OPTIONS,
        Option("dbtype", str, "", mandatory=True),
        *SPOOL_OPTIONS,
    )

    def backend_class(self) -> type[Backend]:
        dbtype = self.settings["dbtype"]
        where = self.settings.where("dbtype")
        backend = BACKENDS.get(dbtype.lower())
        if backend is None:
            raise ConfigError(f"dbtype={dbtype!r} is not supported", where,
                              f"use one of {', '.join(BACKENDS)}")
        return backend(where)
