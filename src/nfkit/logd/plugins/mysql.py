"""MYSQL: one row per event in MariaDB or MySQL, through a table, a view or a routine.

ulogd2's MYSQL options and semantics (see :mod:`nfkit.logd.db.output` for the
shared ones and nfkit's additions): the columns of ``table`` name the keys,
the first column is always left to the database (an auto-increment id), and
``procedure`` is ``INSERT`` (multi-row inserts, one transaction per batch),
``INSERT INTO other``, ``CALL proc`` or the name of a function called as
``SELECT f(...)`` with one argument per column (``INSERT_PACKET_FULL`` with
``table="ulog"``).

``host="localhost"`` means the local unix socket, as for libmysqlclient:
``$MYSQL_UNIX_PORT`` or ``/run/mysqld/mysqld.sock``; nfkit also takes the
socket's path itself (``host="/run/mysqld/mysqld.sock"``); any other host is
reached over TCP on ``port`` (0: 3306). Addresses go into ``binary(16)``
columns from IP2BIN's ``0x...`` values (or straight from ``ip.saddr``...),
IPv4 mapped to ``::ffff:a.b.c.d`` as ulogd2 stores them.
"""

from __future__ import annotations

import importlib.util

from nfkit.logd.db.backend import Backend
from nfkit.logd.db.columns import FirstColumn
from nfkit.logd.db.mariadb import DRIVER_FIX, MariaDBBackend
from nfkit.logd.db.output import COMMON_OPTIONS, SPOOL_OPTIONS, DatabaseOutput
from nfkit.logd.errors import ConfigError
from nfkit.logd.plugin import Option
from nfkit.logd.registry import register


def require_pymysql(where: str) -> type[Backend]:
    """The MariaDB backend; ConfigError when PyMySQL is not installed."""
    if importlib.util.find_spec("pymysql") is None:
        raise ConfigError("the MariaDB/MySQL driver (PyMySQL) is not installed", where,
                          DRIVER_FIX)
    return MariaDBBackend


@register
class MYSQL(DatabaseOutput):
    name = "MYSQL"
    summary = "insert one row per event into MariaDB/MySQL (table, view or routine of the columns)"
    first_column = FirstColumn.SKIPPED
    options = (
        *COMMON_OPTIONS,
        Option("db", str, "", mandatory=True),
        Option("host", str, "", mandatory=True,
               help="localhost: the local socket ($MYSQL_UNIX_PORT); a path: that socket"),
        Option("user", str, "", mandatory=True),
        Option("pass", str, "", mandatory=True),
        Option("port", int, 0, help="TCP port (0: 3306)"),
        *SPOOL_OPTIONS,
    )

    def backend_class(self) -> type[Backend]:
        return require_pymysql(self.settings.where("db"))
